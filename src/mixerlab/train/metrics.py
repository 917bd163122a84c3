"""Test metrics, vectorised over any leading dimensions (members of a batched training, test batches).

MAD scores with torchmetrics' `MulticlassAccuracy(num_classes=V, ignore_index=-100)` (average="macro") on
each test batch, and Lightning averages the per-batch values over the epoch (weighted by batch size).
Macro accuracy is the mean, over classes that occur as a target or a prediction in the batch, of
per-class recall tp / (tp + fn); positions whose target is the ignore index are dropped first. A class that
is predicted but never a target counts with recall 0. Per-token accuracy is reported beside it.
"""

from __future__ import annotations

import torch

from mixerlab.tasks import IGNORE_INDEX


def position_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scored position: (negative log-likelihood of the target, argmax prediction), both [n].

    logits: [n, V], one row per scored position; targets: [n] (no ignored positions). Every scorer, the
    in-process one and the trusted side of the sandbox (which gets only these rows from the worker), calls
    this on rows, so both give the same numbers for the same logits.
    """
    logits = logits.float()
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    return nll, logits.argmax(-1)


def metrics_from_positions(
    nll: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> dict[str, torch.Tensor]:
    """MAD's metrics of each test batch from per-position results.

    nll, preds, targets: [..., N]; targets is IGNORE_INDEX where not scored (nll must be 0 there, preds are
    ignored there). Leading dimensions `...` index independent batches. Returns tensors of shape `...`:
    macro_acc, token_acc, nll (mean negative log-likelihood over scored tokens), ppl (exp of nll, as
    torchmetrics' Perplexity), count.
    """
    lead = targets.shape[:-1]
    flat_targets = targets.reshape(-1, targets.shape[-1])
    nll = nll.reshape(flat_targets.shape)
    preds = preds.reshape(flat_targets.shape)
    groups = flat_targets.shape[0]
    valid = flat_targets != IGNORE_INDEX
    safe_targets = flat_targets.clamp(min=0)
    count = valid.sum(-1)
    mean_nll = nll.sum(-1) / count.clamp(min=1)
    correct = (preds == safe_targets) & valid
    offsets = (torch.arange(groups, device=targets.device) * num_classes)[:, None]

    def per_class(index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(groups * num_classes, device=targets.device)
        out.index_add_(0, (index + offsets).reshape(-1), weight.reshape(-1).float())
        return out.view(groups, num_classes)

    tp = per_class(safe_targets, correct)
    support = per_class(safe_targets, valid)  # tp + fn
    predicted = per_class(preds.clamp(min=0, max=num_classes - 1), valid)  # tp + fp
    present = (support + predicted) > 0  # tp + fp + fn > 0
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    macro = (recall * present).sum(-1) / present.sum(-1).clamp(min=1)

    return {
        "macro_acc": macro.view(lead),
        "token_acc": (correct.sum(-1) / count.clamp(min=1)).view(lead),
        "nll": mean_nll.view(lead),
        "ppl": mean_nll.exp().view(lead),
        "count": count.view(lead),
    }


def scatter_positions(values: torch.Tensor, scored: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
    """Per-position values [n] back into the padded layout of `scored` [..., L] (`fill` where not scored)."""
    out = torch.full(scored.shape, fill, dtype=values.dtype, device=values.device)
    out[scored] = values
    return out


def batch_metrics(
    logits: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> dict[str, torch.Tensor]:
    """Metrics of each test batch from full logits.

    logits: [..., N, V] (float), targets: [..., N] with IGNORE_INDEX where not scored. Leading dimensions
    `...` index independent batches. The scored rows go through `position_stats`, as on every scoring path.
    """
    valid = targets != IGNORE_INDEX
    nll, preds = position_stats(logits[valid], targets[valid])
    return metrics_from_positions(scatter_positions(nll, valid), scatter_positions(preds, valid), targets, num_classes)
