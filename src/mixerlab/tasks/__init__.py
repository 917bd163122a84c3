"""The six MAD synthetic tasks: settings, the benchmark sweep and seeded, vectorised generators.

`generate(setting, split, seed)` returns a `TaskData` (inputs and targets, `[N, T]` int64 on CPU). Data
depend only on (setting, split, seed): the same call gives the same tensors on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

from .compress import generate_compress
from .fuzzy import generate_fuzzy_recall
from .memorize import generate_memorize
from .recall import generate_recall
from .sampling import generator, stable_seed
from .selective_copy import generate_selective_copy
from .settings import (
    IGNORE_INDEX,
    TASK_NAMES,
    TASK_ORDER,
    Task,
    TaskSetting,
    baseline_setting,
    parse_task,
    sweep_settings,
)

Split = Literal["train", "test"]

__all__ = [
    "IGNORE_INDEX",
    "TASK_NAMES",
    "TASK_ORDER",
    "Split",
    "Task",
    "TaskData",
    "TaskSetting",
    "baseline_setting",
    "generate",
    "parse_task",
    "sweep_settings",
]


@dataclass(frozen=True)
class TaskData:
    inputs: torch.Tensor  # [N, T] int64 token ids
    targets: torch.Tensor  # [N, T] int64, IGNORE_INDEX where not scored

    def __len__(self) -> int:
        return self.inputs.shape[0]


def data_seed(setting: TaskSetting, seed: int, purpose: str) -> int:
    return stable_seed("mixerlab-data", setting.key(), seed, purpose)


@lru_cache(maxsize=64)
def generate(setting: TaskSetting, split: Split, seed: int = 0) -> TaskData:
    """Generate the train or test set of a task setting (cached in memory; cheap to regenerate)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    train = split == "train"
    num = setting.num_train if train else setting.num_test
    gen = generator(data_seed(setting, seed, split))
    task = setting.task
    if task in (Task.context_recall, Task.noisy_recall):
        inputs, targets = generate_recall(setting, num, train, gen)
    elif task is Task.fuzzy_recall:
        inputs, targets = generate_fuzzy_recall(setting, num, train, gen)
    elif task is Task.memorize:
        inputs, targets = generate_memorize(setting, num, train, gen, map_seed=data_seed(setting, seed, "map"))
    elif task is Task.compress:
        inputs, targets = generate_compress(setting, num, train, gen)
    elif task is Task.selective_copy:
        inputs, targets = generate_selective_copy(setting, num, train, gen)
    else:  # pragma: no cover - the enum is exhaustive
        raise ValueError(f"no generator for {task}")
    assert inputs.shape == (num, setting.input_len) == targets.shape, (task, inputs.shape)
    return TaskData(inputs, targets)
