"""The result cache: durable, keyed by everything that defines a training, exportable."""

from __future__ import annotations

from mixerlab.config import TrainConfig
from mixerlab.evaluate import ResultCache
from mixerlab.tasks import Task, baseline_setting
from mixerlab.train.job import TrainJob
from mixerlab.train.result import EpochRecord, TrainResult


def result(key: str, score: float = 0.5) -> TrainResult:
    return TrainResult(
        key=key, task="memorize", setting="memorize[baseline]", lr=1e-3, weight_decay=0.0, seed=0, score=score,
        score_last=score, token_acc=score, best_epoch=0, epochs_trained=1, stopped_early=False, steps=2,
        seconds=0.1, trainer="batched", device="cpu",
        history=[EpochRecord(epoch=0, train_loss=1, test_loss=1, test_acc=score, test_token_acc=score, test_ppl=2.7)],
    )


def test_round_trip_survives_reopen_and_exports(tmp_path) -> None:
    path = tmp_path / "c.sqlite"
    cache = ResultCache(path)
    cache.put(result("a", 0.25), "hash1", "m")
    cache.put(result("b", 0.75), "hash2", "n")
    cache.close()
    reopened = ResultCache(path)
    got = reopened.get_many(["a", "b", "missing"])
    assert set(got) == {"a", "b"} and got["a"].score == 0.25
    assert reopened.count("hash1") == 1 and reopened.count() == 2
    assert reopened.export_jsonl(tmp_path / "out.jsonl", mixer_hash="hash2") == 1
    fresh = ResultCache(tmp_path / "other.sqlite")
    assert fresh.import_jsonl(tmp_path / "out.jsonl") == 1
    assert fresh.get_many(["b"])["b"].score == 0.75


def test_cache_key_covers_what_defines_a_training() -> None:
    job = TrainJob(setting=baseline_setting(Task.memorize), lr=1e-3, weight_decay=0.0)
    key = job.cache_key("abc", TrainConfig())
    assert key == TrainJob(setting=baseline_setting(Task.memorize), lr=1e-3, weight_decay=0.0).cache_key("abc", TrainConfig())
    variants = [
        job.cache_key("abd", TrainConfig()),
        job.model_copy(update={"lr": 5e-4}).cache_key("abc", TrainConfig()),
        job.model_copy(update={"seed": 1}).cache_key("abc", TrainConfig()),
        job.model_copy(update={"weight_decay": 0.1}).cache_key("abc", TrainConfig()),
        job.cache_key("abc", TrainConfig(lr_schedule="cosine")),
        job.cache_key("abc", TrainConfig(max_epochs=10)),
        job.cache_key("abc", TrainConfig(init="normal")),
        job.cache_key("abc", TrainConfig(patience=20)),
    ]
    assert key not in variants and len(set(variants)) == len(variants)
    # precision as configured does not matter, the numerics it resolves to do
    assert job.cache_key("abc", TrainConfig(precision="bf16")) == key
    assert job.cache_key("abc", TrainConfig(), numerics="bf16") != key


def test_unwritable_cache_is_a_clear_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    try:
        ResultCache(blocker / "sub" / "c.sqlite")
    except ValueError as err:
        assert "cannot open the result cache" in str(err) and "--cache" in str(err)
    else:  # pragma: no cover
        raise AssertionError("expected ValueError")


def test_import_takes_another_cache_file_and_explains_bad_files(tmp_path) -> None:
    """A cache brought back from a GPU machine merges as it is; anything else is named and explained."""
    import gzip

    import pytest

    remote = ResultCache(tmp_path / "remote.sqlite")
    remote.put(result("r1", 0.9), "h", "m")
    remote.put(result("r2", 0.1), "h", "m")
    remote.close()
    local = ResultCache(tmp_path / "local.sqlite")
    assert local.import_file(tmp_path / "remote.sqlite") == 2
    assert local.get_many(["r1"])["r1"].score == 0.9 and local.count("h") == 2
    assert local.import_file(tmp_path / "remote.sqlite") == 2 and local.count() == 2  # idempotent
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "plain.jsonl.gz").write_text('{"not": "gzip"}\n')
    (tmp_path / "wrong.jsonl").write_text('{"mixer_hash": "h"}\n')
    for name, message in [("binary.jsonl", "not a JSON lines file"), ("plain.jsonl.gz", "not a JSON lines file"),
                          ("wrong.jsonl", "wrong.jsonl:1: not a mixerlab result line")]:
        with pytest.raises(ValueError, match=message):
            local.import_file(tmp_path / name)
    good_line = (tmp_path / "export.jsonl")
    remote = ResultCache(tmp_path / "remote.sqlite")
    remote.put(result("r3", 0.5), "h", "m")
    remote.export_jsonl(good_line)
    remote.close()
    (tmp_path / "half.jsonl").write_text(good_line.read_text() + "{broken\n")
    with pytest.raises(ValueError, match="half.jsonl:4: not a mixerlab result line"):
        local.import_file(tmp_path / "half.jsonl")
    assert local.count() == 2 and not local.get_many(["r3"]), "a file with a bad line imports nothing"
    with gzip.open(tmp_path / "ok.jsonl.gz", "wt") as fh:
        fh.write("")
    assert local.import_file(tmp_path / "ok.jsonl.gz") == 0
