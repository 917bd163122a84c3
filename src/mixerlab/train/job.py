"""One training of the sweep: a task setting, a learning rate, a weight decay and a seed."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict

from mixerlab.config import PROTOCOL_VERSION, TrainConfig
from mixerlab.tasks import TaskSetting
from mixerlab.tasks.sampling import stable_seed


# Fields added to TrainConfig after results were first cached: left out of the key at their default, so
# every earlier result keeps its key (a non-default value still makes a new one).
_ADDED_LATER = {"init": "mad-lab", "init_seed": "setting", "patience": None}


def train_identity(train: TrainConfig) -> dict:
    """The part of a TrainConfig that changes a training's result (precision is covered by `numerics`; when the
    step compiles changes only its speed, as --compile itself)."""
    fields = train.model_dump(mode="json", exclude={"precision", "compile_after_tokens"})
    for name, default in _ADDED_LATER.items():
        if fields.get(name) == default:
            del fields[name]
    return fields


class TrainJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    setting: TaskSetting
    lr: float
    weight_decay: float
    seed: int = 0

    @property
    def init_seed(self) -> int:
        """Model init depends on (setting, seed) only: every (lr, wd) of a setting starts from the same weights."""
        return stable_seed("mixerlab-init", self.setting.key(), self.seed)

    @property
    def run_init_seed(self) -> int:
        """Model init of this one training (`init_seed="run"`): differs between the (lr, wd) of a setting."""
        return stable_seed("mixerlab-init-run", self.setting.key(), self.seed, self.lr, self.weight_decay)

    @property
    def shuffle_seed(self) -> int:
        return stable_seed("mixerlab-shuffle", self.setting.key(), self.seed)

    @property
    def label(self) -> str:
        return f"{self.setting.label} lr={self.lr:g} wd={self.weight_decay:g} seed={self.seed}"

    def cache_key(self, mixer_hash: str, train: TrainConfig, numerics: str = "fp32") -> str:
        """Identity of a finished training: mixer code, data, hyper-parameters, training, numerics (fp32 or
        bf16: a CPU result never answers for a GPU one) and protocol version."""
        blob = json.dumps(
            {
                "mixer": mixer_hash,
                "setting": self.setting.key(),
                "lr": self.lr,
                "wd": self.weight_decay,
                "seed": self.seed,
                "train": train_identity(train),
                "numerics": numerics,
                "protocol": PROTOCOL_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]
