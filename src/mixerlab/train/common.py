"""Pieces both trainers share: seeded model construction, the training loss and result assembly."""

from __future__ import annotations

import threading
import torch
import torch.nn.functional as F
from torch import nn

from mixerlab.config import TrainConfig
from mixerlab.model import MixerFactory, build_model, pad_vocabulary
from mixerlab.tasks import IGNORE_INDEX

from .job import TrainJob
from .result import EpochRecord, TrainResult, best_epoch, select_epochs


_GLOBAL_RNG_LOCK = threading.Lock()


def init_model(job: TrainJob, train: TrainConfig, mixer_factory: MixerFactory, vocab_size: int | None = None) -> nn.Module:
    """Build the job's model on the CPU from its own seed (independent of any global RNG state). Models are
    seeded through torch's one global generator, so groups built in other threads at the same time wait."""
    setting = job.setting
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(job.init_seed if train.init_seed == "setting" else job.run_init_seed)
        model = build_model(
            setting.task.backbone, setting.vocab_size, setting.input_len, train.d_model, mixer_factory, train.init
        )
    return pad_vocabulary(model, vocab_size or setting.vocab_size)


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy [..., T] (0 where the target is ignored), computed in float32."""
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return flat.view(targets.shape)


def make_result(
    job: TrainJob,
    key: str,
    history: list[EpochRecord],
    train: TrainConfig,
    steps: int,
    seconds: float,
    trainer: str,
    device: str,
) -> TrainResult:
    kept, stopped = select_epochs(history, train.stop_accuracy, train.patience)
    best = best_epoch(kept)
    return TrainResult(
        key=key,
        task=job.setting.task.value,
        setting=job.setting.label,
        lr=job.lr,
        weight_decay=job.weight_decay,
        seed=job.seed,
        score=best.test_acc,
        score_last=kept[-1].test_acc,
        token_acc=best.test_token_acc,
        best_epoch=best.epoch,
        epochs_trained=len(kept),
        stopped_early=stopped,
        steps=steps,
        seconds=seconds,
        trainer=trainer,
        device=device,
        history=kept,
    )
