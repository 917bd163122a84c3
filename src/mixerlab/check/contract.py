"""The candidate contract in code (docs/candidates.md says it in words).

A candidate is one Python file, an edit of a baseline template (`mixerlab/mixers/delta_net.py`), defining
a DeltaNet-family mixer: `class DeltaNet(nn.Module)` (or `GatedDeltaNet`), constructed as `cls(d_model=D)`
with every other argument defaulted, and `forward(x: [B, T, D]) -> [B, T, D]`, causal in T and
sub-quadratic in cost. It may import only the modules below and must not touch files, processes, the
network or the interpreter.
"""

from __future__ import annotations

# top-level modules a candidate may import
ALLOWED_MODULES = frozenset({"__future__", "torch", "einops", "math", "typing", "functools"})

# the parts of torch a mixer may use, imported or reached as attributes (`torch.nn.modules.module` with its
# global hooks, `torch.os`, `torch.overrides` with its function modes are not among them)
ALLOWED_TORCH_MODULES = frozenset({
    "torch", "torch.nn", "torch.nn.functional", "torch.nn.init", "torch.linalg", "torch.fft", "torch.special",
    "torch.autograd", "torch.func",
})

# `from MODULE import NAME`: the names a module may give (modules not listed: any public name)
ALLOWED_FROM_IMPORTS: dict[str, frozenset[str]] = {
    "functools": frozenset({"partial", "reduce"}),  # no caches: lru_cache and cache keep state between calls
    "einops": frozenset({"rearrange", "repeat", "reduce", "einsum", "pack", "unpack", "parse_shape"}),
    "einops.layers.torch": frozenset({"Rearrange", "Reduce", "EinMix"}),
}

# the builtins a mixer may name (no open, getattr with a computed name, type, vars, globals, exec, ...)
ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "callable", "dict", "divmod", "enumerate", "filter", "float", "format", "frozenset",
    "getattr", "hasattr", "hash", "int", "isinstance", "issubclass", "iter", "len", "list", "map", "max", "min", "next",
    "object", "pow", "print", "property", "range", "repr", "reversed", "round", "set", "slice", "sorted",
    "staticmethod", "classmethod", "str", "sum", "super", "tuple", "zip", "bytes", "complex", "ord", "chr",
    "True", "False", "None", "NotImplemented", "Ellipsis",
    "Exception", "ArithmeticError", "AssertionError", "IndexError", "KeyError", "NotImplementedError",
    "RuntimeError", "StopIteration", "TypeError", "ValueError", "ZeroDivisionError",
})

# builtins that take an attribute's name: only ever called directly, with a literal name (which the static rules
# then judge like an attribute chain); passed as a value (`reduce(getattr, [name built at run time], torch)`, an
# alias) they would reach any attribute the rules refuse by name
NAME_TAKING_BUILTINS = frozenset({"getattr", "hasattr"})

# attribute names of frames, code objects, generators and tracebacks: the way from a value to the caller's state
FRAME_ATTRIBUTES = frozenset({
    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "f_lasti", "gi_frame", "gi_code",
    "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code", "tb_frame", "tb_next", "tb_lasti",
    "co_code", "co_consts", "co_names", "co_varnames", "func_globals", "func_code", "mro", "with_traceback",
})

# methods that change the object they are called on, refused on module-level objects (state between calls)
MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault", "add", "discard",
    "sort", "reverse", "register_buffer", "register_parameter", "register_module",
})

# attribute names that lead out of the sandbox (files, processes, native code, pickles)
FORBIDDEN_ATTRIBUTES = frozenset({
    "load", "save", "from_file", "load_library", "cpp_extension", "multiprocessing", "distributed", "hub",
    "system", "popen", "spawn", "fork", "_C", "ops", "classes", "package", "jit", "library", "compile",
    "manual_seed", "seed", "set_default_device", "set_default_dtype", "set_default_tensor_type", "set_num_threads",
    "set_num_interop_threads", "use_deterministic_algorithms", "set_rng_state", "get_rng_state", "fork_rng",
    "set_printoptions", "set_flush_denormal", "set_float32_matmul_precision", "set_warn_always",
    "set_deterministic_debug_mode", "set_anomaly_enabled", "share_memory_", "untyped_storage", "storage",
    "register_module_forward_hook", "register_module_forward_pre_hook", "register_module_full_backward_hook",
    "register_module_backward_hook", "register_module_full_backward_pre_hook", "register_module_buffer_registration_hook",
    "register_module_module_registration_hook", "register_module_parameter_registration_hook", "overrides",
    "backends", "utils", "mps", "xpu", "profiler", "testing", "sys", "os", "builtins",
})

# dunder attributes a mixer may use; every other dunder (e.g. __class__, __subclasses__, __globals__,
# __builtins__, __dict__) is an escape hatch
ALLOWED_DUNDERS = frozenset({"__init__", "__name__", "__doc__", "__future__", "__annotations__"})


DEFAULT_PARAM_BUDGET = 0.5  # candidate parameters within +-50% of its reference baseline at the same width
CAUSALITY_TOLERANCE = 1e-4  # relative change allowed at positions before the perturbation (float32)
WARMUP_CALLS = 64  # forwards before causality is tested: a leak that waits for later calls shows in the state check
COST_EXPONENT_LIMIT = 1.5  # fitted exponent of the largest tensor in T must stay below this
# fitted exponent of forward time in T may exceed the reference DeltaNet's, timed beside it on the same machine,
# by at most this (linear mixers measure T^1.1..T^1.45 on CPUs where cache and page costs grow with the input)
COST_RELATIVE_LIMIT = 0.5
COST_LENGTHS = (512, 1024, 2048, 4096, 8192)
