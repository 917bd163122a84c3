"""Is the code that trains and scores a candidate still the code we wrote? A second fence behind the
static rules (check/static.py), run inside the sandbox worker.

Before the candidate is loaded, `Integrity.snapshot()` records the identity of every function and class
attribute that training and scoring go through: torch's functional API and Tensor methods, nn.Module and
the layers of the backbone, and mixerlab's trainer, scorer and channel modules; and the number of global
module hooks and of active torch function/dispatch modes. `verify(when)` raises `IntegrityError` naming
the first thing that changed. The worker verifies after the candidate's module is loaded, after every
check, at every scored evaluation and at the end: a candidate that patches `Tensor.argmax`, replaces
`F.cross_entropy`, installs a global forward hook or leaves a TorchFunctionMode pushed is stopped there.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import torch
from torch import nn

# modules whose attributes trained code reaches; attributes added later (lazy submodules) are allowed
WATCHED_MODULES = (
    "builtins", "math", "functools", "json", "os", "hmac", "struct",
    "torch", "torch.nn.functional", "torch.nn.init", "torch.linalg", "torch.autograd", "torch.func",
    "torch.random", "torch.nn.modules.module",
    "mixerlab.model", "mixerlab.train.batched", "mixerlab.train.common", "mixerlab.train.metrics",
    "mixerlab.train.result", "mixerlab.train.scoring", "mixerlab.train.schedule", "mixerlab.evaluate.runner",
    "mixerlab.check.dynamic", "mixerlab.check.remote", "mixerlab.sandbox.channel", "mixerlab.evaluate.remote_scoring",
    "mixerlab.evaluate.remote", "mixerlab.sandbox.entry",
    "mixerlab.sandbox.worker", "mixerlab.tasks",
)
# classes whose attributes must not change, nor gain new ones (a new `argmax` on Tensor shadows the real one)
WATCHED_CLASSES: tuple[type, ...] = (
    torch.Tensor, nn.Module, nn.Linear, nn.Embedding, nn.RMSNorm, nn.LayerNorm, nn.Conv1d, nn.Parameter,
    torch.autograd.Function, nn.ModuleList, nn.Sequential,
)
GLOBAL_HOOKS = (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks", "_global_module_registration_hooks",
    "_global_parameter_registration_hooks", "_global_forward_hooks_with_kwargs",
)


class IntegrityError(RuntimeError):
    """Trusted code was changed by the candidate; the message names what."""


def _trusted_alternatives() -> dict[tuple[str, str], set[int]]:
    """Attributes that trusted code itself swaps while training, with every value it may leave there: the
    triangular solve routed to mixerlab's kernel (ops/tril_solve.py) while any group steps, in any thread."""
    from mixerlab.ops import tril_solve

    return {("torch.linalg", "solve_triangular"): {id(tril_solve._library_solve), id(tril_solve.routed_solve_triangular)}}


def _module_attributes(module: types.ModuleType) -> dict[str, int]:
    return {name: id(value) for name, value in vars(module).items()}


@dataclass
class Integrity:
    modules: dict[str, tuple[int, dict[str, int]]]  # name -> (id of the module object, attribute ids)
    classes: dict[str, dict[str, int]]
    hooks: dict[str, int]
    modes: tuple[int, int]
    alternatives: dict[tuple[str, str], set[int]] = field(default_factory=_trusted_alternatives)

    @staticmethod
    def _hooks() -> dict[str, int]:
        registry = sys.modules["torch.nn.modules.module"]
        return {name: len(getattr(registry, name, ())) for name in GLOBAL_HOOKS}

    @staticmethod
    def _modes() -> tuple[int, int]:
        return torch._C._len_torch_function_stack(), torch._C._len_torch_dispatch_stack()

    @classmethod
    def snapshot(cls) -> "Integrity":
        modules = {name: (id(sys.modules[name]), _module_attributes(sys.modules[name]))
                   for name in WATCHED_MODULES if name in sys.modules}
        classes = {f"{c.__module__}.{c.__qualname__}": {n: id(v) for n, v in vars(c).items()} for c in WATCHED_CLASSES}
        return cls(modules, classes, cls._hooks(), cls._modes())

    def problems(self) -> list[str]:
        found = []
        for name, (ident, attributes) in self.modules.items():
            module = sys.modules.get(name)
            if module is None or id(module) != ident:
                found.append(f"the module {name} was replaced in sys.modules")
                continue
            now = vars(module)
            for attr, value_id in attributes.items():
                if attr not in now:
                    found.append(f"{name}.{attr} was deleted")
                elif id(now[attr]) != value_id and not attr.startswith("__") \
                        and not {value_id, id(now[attr])} <= self.alternatives.get((name, attr), set()):
                    found.append(f"{name}.{attr} was replaced")
        for cls in WATCHED_CLASSES:
            name = f"{cls.__module__}.{cls.__qualname__}"
            before, now = self.classes[name], vars(cls)
            for attr in set(before) | set(now):
                if attr in ("__annotations__", "__doc__", "__weakref__", "__parameters__", "_abc_impl"):
                    continue
                if before.get(attr) != (id(now[attr]) if attr in now else None):
                    found.append(f"{name}.{attr} was {'added' if attr not in before else 'changed'}")
        for hook, count in self._hooks().items():
            if count != self.hooks[hook]:
                found.append(f"a global module hook was registered ({hook})")
        if self._modes() != self.modes:
            found.append("a torch function or dispatch mode was left active (it sees every operation)")
        return found

    def verify(self, when: str) -> None:
        problems = self.problems()
        if problems:
            raise IntegrityError(f"the candidate changed trusted code {when}: {'; '.join(problems[:4])}; a mixer must "
                                 "not patch torch, mixerlab or global state (docs/candidates.md)")
