"""Mid-training state of batched groups, so a time limit, a crash or a kill never throws training away.

A `full` sweep has groups that train for longer than one machine lease or one call on a lent GPU (Fuzzy
Recall at 1,024 tokens: six trainings of 200 epochs). The result cache keeps finished trainings; this keeps
the unfinished ones: every member's stacked parameters, AdamW moments, partial epoch loss, epoch history and
the group's step counter, written atomically (a temporary file, then a rename) at the trainer's sync points
every `every` seconds and when a time limit ends the run. The next run picks the state up, member by member,
and continues exactly where it stopped (tests/test_checkpoint.py holds a resumed training to an
uninterrupted one). Checkpoints sit beside the result cache, in `<cache>.checkpoints/`, one file per group,
and are deleted when their group finishes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def group_id(keys: Iterable[str]) -> str:
    """A group's file name: the hash of its members' cache keys (order-free)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:20]


class CheckpointStore:
    """A folder of group states; `every` is how many seconds of training a kill may cost at most."""

    def __init__(self, folder: str | Path, every: float = 120.0) -> None:
        self.folder = Path(folder)
        self.every = every

    @classmethod
    def beside(cls, cache_path: str | Path, every: float = 120.0) -> "CheckpointStore":
        cache_path = Path(cache_path)
        return cls(cache_path.with_name(cache_path.name + ".checkpoints"), every)

    def path(self, ident: str) -> Path:
        return self.folder / f"{ident}.pt"

    def save(self, ident: str, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(ident)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        torch.save({"version": FORMAT_VERSION, **state}, tmp)
        os.replace(tmp, target)  # atomic: a kill mid-write leaves the previous checkpoint intact

    def remove(self, ident: str) -> None:
        self.path(ident).unlink(missing_ok=True)

    def load_all(self) -> list[tuple[str, dict[str, Any]]]:
        """Every readable group state, newest first; unreadable files are skipped with a warning, not fatal."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                # memory-mapped: tensors of groups this run does not resume are never read into memory
                state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            except Exception as err:  # a truncated or foreign file costs its group's progress, nothing else
                log.warning("ignoring unreadable checkpoint %s (%s); its trainings start over", path, err)
                continue
            if state.get("version") != FORMAT_VERSION:
                log.warning("ignoring checkpoint %s of format %s (this mixerlab writes %s)", path, state.get("version"),
                            FORMAT_VERSION)
                continue
            found.append((path.stem, state))
        return found
