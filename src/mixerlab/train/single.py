"""The reference trainer: one model, plain eager PyTorch, torch.optim.AdamW. Readable and slow.

It defines what a MAD training is (the batched trainer must match it, and a test holds them together) and
is the one-at-a-time baseline of the speed benchmark.
"""

from __future__ import annotations

import time

import torch

from mixerlab.config import TrainConfig
from mixerlab.model import MixerFactory
from mixerlab.tasks import generate

from .common import init_model, make_result, token_losses
from .job import TrainJob
from .metrics import batch_metrics
from .result import EpochRecord, TrainResult, select_epochs
from .schedule import batches_per_epoch, epoch_order, lr_for_epoch


@torch.no_grad()
def evaluate(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, train: TrainConfig, autocast) -> dict[str, float]:
    """MAD's epoch metrics: each test batch scored on its own, then averaged weighted by batch size."""
    model.eval()
    totals = {"macro_acc": 0.0, "token_acc": 0.0, "nll": 0.0, "ppl": 0.0}
    for start in range(0, len(inputs), train.eval_batch_size):
        x, y = inputs[start : start + train.eval_batch_size], targets[start : start + train.eval_batch_size]
        with torch.autocast(x.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            logits = model(x)
        vocab = logits.shape[-1]
        metrics = batch_metrics(logits.reshape(1, -1, vocab), y.reshape(1, -1), vocab)  # one group: the batch
        for name in totals:
            totals[name] += metrics[name].item() * len(x) / len(inputs)
    model.train()
    return totals


def train_single(job: TrainJob, train: TrainConfig, mixer_factory: MixerFactory, device: str = "cpu", key: str = "") -> TrainResult:
    start_time = time.perf_counter()
    setting = job.setting
    train_data, test_data = generate(setting, "train", job.seed), generate(setting, "test", job.seed)
    x_train, y_train = train_data.inputs.to(device), train_data.targets.to(device)
    x_test, y_test = test_data.inputs.to(device), test_data.targets.to(device)
    autocast = train.autocast_dtype(torch.device(device).type)

    model = init_model(job, train, mixer_factory).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=job.lr, weight_decay=job.weight_decay, betas=train.betas, eps=train.eps
    )
    history: list[EpochRecord] = []
    steps = 0
    n_batches = batches_per_epoch(len(x_train), train.batch_size)
    for epoch in range(train.max_epochs):
        for group in optimizer.param_groups:
            group["lr"] = lr_for_epoch(train, job.lr, epoch)
        order = epoch_order(job.shuffle_seed, epoch, len(x_train)).to(device)
        loss_sum = torch.zeros((), device=device)
        for b in range(n_batches):
            rows = order[b * train.batch_size : (b + 1) * train.batch_size]
            with torch.autocast(torch.device(device).type, dtype=autocast or torch.float32, enabled=autocast is not None):
                logits = model(x_train[rows])
            losses = token_losses(logits, y_train[rows])
            loss = losses.sum() / (y_train[rows] != -100).sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            steps += 1
        metrics = evaluate(model, x_test, y_test, train, autocast)
        history.append(
            EpochRecord(
                epoch=epoch,
                train_loss=(loss_sum / n_batches).item(),
                test_loss=metrics["nll"],
                test_acc=metrics["macro_acc"],
                test_token_acc=metrics["token_acc"],
                test_ppl=metrics["ppl"],
            )
        )
        if select_epochs(history, train.stop_accuracy, train.patience)[1]:
            break
    return make_result(job, key, history, train, steps, time.perf_counter() - start_time, "single", device)
