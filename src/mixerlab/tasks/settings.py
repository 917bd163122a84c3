"""Task names, one task setting, and the MAD benchmark sweep (baseline settings plus one-at-a-time changes).

The numbers follow mad-lab's `configs/tasks/*.yml` (see docs/protocol.md): 66 settings in all.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

IGNORE_INDEX = -100
NUM_TEST_EXAMPLES = 1280


class Task(str, Enum):
    """The six MAD tasks, named after the seed table's columns in snake case."""

    compress = "compress"
    context_recall = "context_recall"
    fuzzy_recall = "fuzzy_recall"
    memorize = "memorize"
    noisy_recall = "noisy_recall"
    selective_copy = "selective_copy"

    @property
    def column(self) -> str:
        """Column title in the seeds' history table."""
        return COLUMNS[self]

    @property
    def backbone(self) -> str:
        """Compress trains an auto-encoder; every other task a language model."""
        return "autoencoder" if self is Task.compress else "language_model"


COLUMNS: dict[Task, str] = {
    Task.compress: "Compress",
    Task.context_recall: "Context Recall",
    Task.fuzzy_recall: "Fuzzy Recall",
    Task.memorize: "Memorize",
    Task.noisy_recall: "Noisy Recall",
    Task.selective_copy: "Selective Copy",
}
TASK_ORDER: tuple[Task, ...] = tuple(COLUMNS)
TASK_NAMES: tuple[str, ...] = tuple(t.value for t in TASK_ORDER)  # the history table's columns, in order

# MAD's own task names, accepted wherever a task name is.
MAD_NAMES: dict[str, Task] = {
    "compression": Task.compress,
    "in-context-recall": Task.context_recall,
    "fuzzy-in-context-recall": Task.fuzzy_recall,
    "memorization": Task.memorize,
    "noisy-in-context-recall": Task.noisy_recall,
    "selective-copying": Task.selective_copy,
}


def parse_task(name: str) -> Task:
    """Accept snake-case names, the seeds' column titles and MAD's names (case-insensitive)."""
    key = name.strip().lower()
    for task in Task:
        if key in {task.value, task.column.lower(), task.column.lower().replace(" ", "_")}:
            return task
    key_dashed = key.replace("_", "-")
    if key_dashed in MAD_NAMES:
        return MAD_NAMES[key_dashed]
    valid = ", ".join(t.value for t in Task)
    raise ValueError(f"unknown task {name!r}: use one of {valid} (MAD's names are accepted too)")


class TaskSetting(BaseModel):
    """Everything that defines one dataset of one task (MAD's task fields)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Task
    vocab_size: int = Field(ge=4)
    seq_len: int = Field(ge=4)
    num_train: int = Field(ge=1)
    num_test: int = Field(default=NUM_TEST_EXAMPLES, ge=1)
    noise_vocab_size: int = Field(default=0, ge=0)
    frac_noise: float = Field(default=0.0, ge=0.0, lt=1.0)
    k_motif_size: int = Field(default=1, ge=1)
    v_motif_size: int = Field(default=1, ge=1)
    num_tokens_to_copy: int = Field(default=0, ge=0)
    change: str = Field(default="baseline", description="which field differs from the baseline setting")

    @model_validator(mode="after")
    def _check(self) -> "TaskSetting":
        t = self.task
        if t in (Task.context_recall, Task.noisy_recall):
            if self.seq_len % 2:
                raise ValueError("recall seq_len must be even (key-value pairs)")
            if (self.vocab_size - self.noise_vocab_size) < 4:
                raise ValueError("recall needs at least 4 non-noise tokens")
            if self.frac_noise > 0 and self.noise_vocab_size == 0:
                raise ValueError("frac_noise > 0 needs noise_vocab_size > 0")
        if t is Task.fuzzy_recall:
            if self.frac_noise or self.noise_vocab_size:
                raise ValueError("fuzzy recall noise is not part of MAD's sweep and is not supported")
            key_vocab = (self.vocab_size - 1) // 2
            if key_vocab < self.k_motif_size or (self.vocab_size - 1 - key_vocab) < self.v_motif_size:
                raise ValueError("fuzzy recall vocab too small for the motif sizes")
            if self.seq_len <= 4 * (self.k_motif_size + self.v_motif_size):
                raise ValueError("fuzzy recall seq_len too short for the motif sizes")
        if t is Task.selective_copy and self.seq_len <= 2 * self.num_tokens_to_copy + 1:
            raise ValueError("selective copy needs seq_len > 2 * num_tokens_to_copy + 1")
        if t is Task.selective_copy and self.num_tokens_to_copy < 1:
            raise ValueError("selective copy needs num_tokens_to_copy >= 1")
        if t is Task.memorize and self.seq_len % 2:
            raise ValueError("memorize seq_len must be even (key, insert-token pairs)")
        return self

    @property
    def input_len(self) -> int:
        """Length of the model input (MAD drops the last token of recall sequences)."""
        if self.task in (Task.context_recall, Task.noisy_recall):
            return self.seq_len - 1
        return self.seq_len

    @property
    def label(self) -> str:
        """Short human-readable id, e.g. `context_recall[seq_len=512]`."""
        return f"{self.task.value}[{self.change_label}]"

    @property
    def change_label(self) -> str:
        """The setting within its task: `baseline` or the one changed field, e.g. `seq_len=512`."""
        return "baseline" if self.change == "baseline" else f"{self.change}={getattr(self, self.change)}"

    def key(self) -> dict:
        """The fields that define the data (used in cache keys)."""
        return self.model_dump(mode="json", exclude={"change"})


# --- the MAD benchmark sweep -------------------------------------------------------------------

BASELINES: dict[Task, dict] = {
    Task.compress: dict(vocab_size=16, seq_len=32, num_train=12_800),
    Task.context_recall: dict(vocab_size=16, seq_len=128, num_train=12_800),
    Task.fuzzy_recall: dict(vocab_size=16, seq_len=128, num_train=12_800, k_motif_size=3, v_motif_size=3),
    Task.memorize: dict(vocab_size=256, seq_len=32, num_train=256),
    Task.noisy_recall: dict(vocab_size=32, seq_len=128, num_train=12_800, noise_vocab_size=16, frac_noise=0.2),
    Task.selective_copy: dict(vocab_size=16, seq_len=256, num_train=12_800, num_tokens_to_copy=16),
}

_TRAIN_SIZES = [6400, 3200, 1600, 800]
CHANGES: dict[Task, dict[str, list]] = {
    Task.compress: dict(vocab_size=[32, 64, 128], seq_len=[64, 128, 256], num_train=_TRAIN_SIZES),
    Task.context_recall: dict(vocab_size=[32, 64, 128], seq_len=[256, 512, 1024], num_train=_TRAIN_SIZES),
    Task.fuzzy_recall: dict(vocab_size=[32, 64, 128], seq_len=[256, 512, 1024], num_train=_TRAIN_SIZES),
    Task.memorize: dict(vocab_size=[512, 1024, 2048, 4096, 8192]),
    Task.noisy_recall: dict(
        vocab_size=[48, 80, 144], seq_len=[256, 512, 1024], num_train=_TRAIN_SIZES, frac_noise=[0.4, 0.6, 0.8]
    ),
    Task.selective_copy: dict(
        vocab_size=[32, 64, 128], seq_len=[512, 1024], num_train=_TRAIN_SIZES, num_tokens_to_copy=[32, 64, 96]
    ),
}


def baseline_setting(task: Task) -> TaskSetting:
    return TaskSetting(task=task, **BASELINES[task])


def sweep_settings(task: Task) -> list[TaskSetting]:
    """MAD's settings of one task: the baseline first, then each change applied alone."""
    settings = [baseline_setting(task)]
    for field, values in CHANGES[task].items():
        for value in values:
            settings.append(TaskSetting(task=task, **{**BASELINES[task], field: value, "change": field}))
    return settings
