"""Shared fixtures. Tests never touch the user's result cache."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXERLAB_CACHE", str(tmp_path / "cache.sqlite"))
    yield


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One result cache for the session: baseline trainings are computed once (as across a user's runs)."""
    return tmp_path_factory.mktemp("cache") / "results.sqlite"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shared_cache):
    """A real discovery run (catalog, tiny profile, 2 iterations, 2 workers): its directory and output."""
    import subprocess
    import sys

    run_dir = tmp_path_factory.mktemp("tiny-run") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "mixerlab.cli", "discover", "--device", "cpu", "--run-dir", str(run_dir),
         "--iterations", "2", "--workers", "2", "--cache", str(shared_cache)],
        capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run_dir, proc
