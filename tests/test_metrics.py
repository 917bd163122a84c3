"""MAD's accuracy: macro-averaged multiclass accuracy with ignore index, exactly as torchmetrics computes it."""

from __future__ import annotations

import pytest
import torch
import torchmetrics  # the reference implementation MAD uses (a dev dependency)

from mixerlab.train.metrics import batch_metrics


def test_macro_accuracy_matches_torchmetrics_on_random_batches() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        vocab = int(torch.randint(3, 40, (), generator=gen))
        n = int(torch.randint(5, 200, (), generator=gen))
        logits = torch.randn(n, vocab, generator=gen)
        targets = torch.randint(0, vocab, (n,), generator=gen)
        logits[torch.arange(n), targets] += 3 * torch.rand(n, generator=gen)
        targets[torch.rand(n, generator=gen) < 0.5] = -100
        if (targets != -100).sum() == 0:
            continue
        expected = torchmetrics.classification.MulticlassAccuracy(num_classes=vocab, ignore_index=-100)(logits.argmax(-1), targets)
        got = batch_metrics(logits[None], targets[None], vocab)
        assert got["macro_acc"].item() == pytest.approx(expected.item(), abs=1e-6)
        valid = targets != -100
        token = (logits.argmax(-1)[valid] == targets[valid]).float().mean()
        assert got["token_acc"].item() == pytest.approx(token.item(), abs=1e-6)


def test_macro_differs_from_token_accuracy_and_is_vectorised() -> None:
    # class 0 is frequent and always right, class 1 rare and always wrong: token 0.9, macro 0.5
    targets = torch.tensor([[0] * 9 + [1], [1] * 10])
    logits = torch.zeros(2, 10, 3)
    logits[0, :, 0] = 1.0
    logits[1, :, 1] = 1.0
    m = batch_metrics(logits, targets, 3)
    assert m["token_acc"].tolist() == pytest.approx([0.9, 1.0])
    assert m["macro_acc"].tolist() == pytest.approx([0.5, 1.0])


def test_predicting_a_class_that_never_occurs_counts_against_macro() -> None:
    targets = torch.tensor([[0, 0, 1, 1]])
    logits = torch.zeros(1, 4, 3)
    logits[0, [0, 1, 2], [0, 0, 1]] = 1.0
    logits[0, 3, 2] = 1.0  # wrong class 2, never a target
    m = batch_metrics(logits, targets, 3)
    assert m["macro_acc"].item() == pytest.approx((1.0 + 0.5 + 0.0) / 3)
