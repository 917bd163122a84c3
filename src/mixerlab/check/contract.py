"""The candidate contract in code (docs/candidates.md says it in words).

A candidate is one Python file, an edit of a baseline template (`mixerlab/mixers/delta_net.py`), defining
a DeltaNet-family mixer: `class DeltaNet(nn.Module)` (or `GatedDeltaNet`), constructed as `cls(d_model=D)`
with every other argument defaulted, and `forward(x: [B, T, D]) -> [B, T, D]`, causal in T and
sub-quadratic in cost. It may import only the modules below and must not touch files, processes, the
network or the interpreter.
"""

from __future__ import annotations

# top-level modules a candidate may import (submodules of torch are allowed unless denied below)
ALLOWED_MODULES = frozenset({"__future__", "torch", "einops", "math", "typing", "functools"})

DENIED_TORCH_MODULES = frozenset({
    "torch.multiprocessing", "torch.distributed", "torch.hub", "torch.utils.cpp_extension", "torch.package",
    "torch._C", "torch.utils.data", "torch.cuda.memory", "torch.jit", "torch.onnx", "torch.export",
    "torch.utils.benchmark", "torch.library", "torch.ops",
})

# builtins that reach files, processes, the interpreter or arbitrary attributes
FORBIDDEN_CALLS = frozenset({
    "open", "exec", "eval", "compile", "__import__", "input", "breakpoint", "exit", "quit", "help",
    "globals", "locals", "vars", "setattr", "delattr", "memoryview",
})

# attribute names that lead out of the sandbox (files, processes, native code, pickles)
FORBIDDEN_ATTRIBUTES = frozenset({
    "load", "save", "from_file", "load_library", "cpp_extension", "multiprocessing", "distributed", "hub",
    "system", "popen", "spawn", "fork", "_C", "ops", "classes", "package", "jit", "library", "compile",
    "manual_seed", "set_default_device", "set_default_dtype", "set_num_threads", "use_deterministic_algorithms",
})

# dunder attributes a mixer may use; every other dunder (e.g. __class__, __subclasses__, __globals__,
# __builtins__, __dict__) is an escape hatch
ALLOWED_DUNDERS = frozenset({"__init__", "__call__", "__name__", "__doc__", "__future__", "__annotations__"})

# module names that must never appear, imported or not
FORBIDDEN_NAMES = frozenset({
    "os", "sys", "subprocess", "socket", "pickle", "shutil", "pathlib", "importlib", "builtins", "ctypes",
    "threading", "multiprocessing", "signal", "requests", "urllib", "http", "io", "marshal", "gc", "inspect",
})

DEFAULT_PARAM_BUDGET = 0.5  # candidate parameters within +-50% of its reference baseline at the same width
CAUSALITY_TOLERANCE = 1e-4  # relative change allowed at positions before the perturbation (float32)
WARMUP_CALLS = 64  # forwards before causality is tested: a leak that waits for later calls shows in the state check
COST_EXPONENT_LIMIT = 1.5  # fitted exponent of the largest tensor in T must stay below this
# fitted exponent of forward time in T may exceed the reference DeltaNet's, timed beside it on the same machine,
# by at most this (linear mixers measure T^1.1..T^1.45 on CPUs where cache and page costs grow with the input)
COST_RELATIVE_LIMIT = 0.5
COST_LENGTHS = (512, 1024, 2048, 4096, 8192)
