"""Mid-training state of batched groups, so a time limit, a crash or a kill never throws training away.

A `full` sweep has groups that train for longer than one machine lease or one call on a lent GPU (Fuzzy
Recall at 1,024 tokens: six trainings of 200 epochs). The result cache keeps finished trainings; this keeps
the unfinished ones: every member's stacked parameters, AdamW moments, partial epoch loss, epoch history and
the group's step counter, written atomically (a temporary file, then a rename) at the trainer's sync points
every `every` seconds and when a time limit ends the run. The next run picks the state up, member by member,
and continues exactly where it stopped (tests/test_checkpoint.py holds a resumed training to an
uninterrupted one). Checkpoints sit beside the result cache, in `<cache>.checkpoints/`, one file per group,
and are deleted when their group finishes.

A group's members are independent (each has its own rows of every tensor and its own data order), so any
subset of a checkpoint's members is a checkpoint too: `pack` splits the states into files under a size limit
and keeps the most valuable members within a byte budget, so a machine that returns only small files (a lent
GPU: 16 MiB each, 64 MiB in all) brings back as much unfinished training as fits rather than none.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# what a state holds per member, row i for member i (beside "keys" and "histories", lists of the same length)
MEMBER_TENSORS = ("flat", "exp_avg", "exp_avg_sq", "loss_sum")


def group_id(keys: Iterable[str]) -> str:
    """A group's file name: the hash of its members' cache keys (order-free)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:20]


def select_members(state: dict[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """The state of the members `rows` alone: a checkpoint that resumes exactly those trainings."""
    idx = torch.tensor(list(rows), dtype=torch.long)
    sub = dict(state)
    sub["keys"] = [state["keys"][r] for r in rows]
    sub["histories"] = [state["histories"][r] for r in rows]
    for name in MEMBER_TENSORS:
        sub[name] = state[name][idx].clone()
    sub["buffers"] = {k: v[idx].clone() for k, v in state["buffers"].items()}
    # a member's recorded time is the group's time x its share of the group's member-steps: the subset keeps
    # each unfinished member's share (all of them trained `steps_done` steps)
    sub["member_steps"] = len(rows) * state["steps_done"]
    sub["elapsed"] = member_seconds(state) * len(rows)
    return sub


def without_members(states: list[tuple[str, dict[str, Any]]], keys: Collection[str]) -> list[tuple[str, dict[str, Any]]]:
    """`states` without the members `keys`: a checkpoint taken before some of its members stopped early still
    holds them, though the cache has them finished (resuming skips them; listing or carrying them misleads)."""
    kept = []
    for ident, state in states:
        rows = [row for row, key in enumerate(state["keys"]) if key not in keys]
        kept.append((ident, state if len(rows) == len(state["keys"]) else select_members(state, rows)))
    return kept  # a group with nothing to drop stays as it is: no copy of its tensors


def member_seconds(state: dict[str, Any]) -> float:
    """Seconds of training behind each unfinished member of a state: what carrying it saves."""
    return state["elapsed"] * state["steps_done"] / max(1, state["member_steps"])


@dataclass
class PackReport:
    files: list[Path] = field(default_factory=list)
    carried: int = 0  # unfinished trainings whose state is in `files`
    left: int = 0  # unfinished trainings that did not fit: they start over where the files go
    bytes: int = 0


class CheckpointStore:
    """A folder of group states; `every` is how many seconds of training a kill may cost at most."""

    def __init__(self, folder: str | Path, every: float = 120.0) -> None:
        self.folder = Path(folder)
        self.every = every

    @classmethod
    def beside(cls, cache_path: str | Path, every: float = 120.0) -> "CheckpointStore":
        cache_path = Path(cache_path)
        return cls(cache_path.with_name(cache_path.name + ".checkpoints"), every)

    def pack(self, out: str | Path, max_file_bytes: int, max_total_bytes: int,
             states: list[tuple[str, dict[str, Any]]] | None = None) -> PackReport:
        """Write the unfinished members into `out` as checkpoints of at most `max_file_bytes` each and
        `max_total_bytes` together, the members with the most training behind them first.

        `states`: the groups to pack (default: every one in this store), e.g. `without_members` of those that
        finished after their checkpoint was taken.

        Every file is an ordinary checkpoint (named, like any group, by its members' keys): copied into
        another cache's checkpoint folder, it resumes its members exactly, and the rest train from the start.
        """
        packed = CheckpointStore(out)
        packed.folder.mkdir(parents=True, exist_ok=True)
        report = PackReport()
        states = sorted(self.load_all() if states is None else states, key=lambda item: member_seconds(item[1]),
                        reverse=True)
        for _, state in states:
            count, start = len(state["keys"]), 0
            per_member = _member_bytes(state)
            while start < count:
                room = min(max_file_bytes, max_total_bytes - report.bytes)
                take = min(count - start, max(0, room // per_member))
                written = None
                while take > 0:
                    sub = select_members(state, range(start, start + take))
                    ident = group_id(sub["keys"])
                    packed.save(ident, sub)
                    size = packed.path(ident).stat().st_size
                    if size <= room:
                        written = packed.path(ident)
                        break
                    packed.remove(ident)
                    take = min(take - 1, take * room // size)  # the estimate missed the file's overhead
                if written is None:
                    break
                report.files.append(written)
                report.carried += take
                report.bytes += size
                start += take
            report.left += count - start
        return report

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


def _member_bytes(state: dict[str, Any]) -> int:
    """Bytes one member adds to a saved state (its tensor rows; its history's pickle is small beside them)."""
    tensors = [state[name] for name in MEMBER_TENSORS] + list(state["buffers"].values())
    return max(1, sum(t[0].numel() * t.element_size() for t in tensors if t.shape[0] > 0))
