"""Turn mixer source code into a module class: the one place candidate code is executed in-process.

A `MixerSpec` carries the source text itself (not a path), so it pickles to worker processes, hashes to a
stable id for caching, and rebuilds the same class anywhere.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

CONTRACT_CLASSES = ("DeltaNet", "GatedDeltaNet")  # looked for first, in this order


class MixerLoadError(ValueError):
    """A mixer file or name that cannot be turned into a mixer; the message says what to fix."""


@dataclass(frozen=True)
class MixerSpec:
    name: str  # display name, e.g. "delta_net_4layer"
    source: str  # the whole Python file
    filename: str = "<mixer>"
    class_name: str | None = None  # None: find it (see `find_mixer_class`)
    extra_sources: tuple[str, ...] = field(default=())  # code it builds on (hashed, not executed)

    @property
    def code_hash(self) -> str:
        """Hash of what the code does: comments, docstrings and formatting do not change it."""
        digest = hashlib.sha256(normalized_code(self.source).encode())
        for extra in self.extra_sources:
            digest.update(b"\0" + normalized_code(extra).encode())
        return digest.hexdigest()[:16]

    def load_class(self) -> type[nn.Module]:
        module = load_module(self.source, self.filename, f"mixerlab_candidate_{self.code_hash}")
        return find_mixer_class(module, self.class_name, self.filename)

    def factory(self):
        """A picklable-free callable d_model -> mixer instance (loads the class once)."""
        cls = self.load_class()
        return lambda d_model: cls(d_model=d_model)


_AST_LOCK = threading.Lock()


def parse_source(source: str, filename: str = "<unknown>") -> ast.Module:
    """`ast.parse` behind a process-wide lock.

    CPython 3.11's AST conversion keeps its recursion counter in interpreter-global state, so two threads
    parsing at once (proposal threads do) can fail with "SystemError: AST constructor recursion depth
    mismatch". Every parse in mixerlab goes through here. The lock alone was not enough: once in a full test run
    (2026-12-06) the threaded test still met the mismatch, and a garbage collection inside the parse can run a
    finaliser that lets another thread run; so the collector is paused for the parse too. Parsing a candidate
    takes milliseconds; serialising it costs nothing measurable.
    """
    with _AST_LOCK:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return ast.parse(source, filename)
        finally:
            if collecting:
                gc.enable()


def normalized_code(source: str) -> str:
    """The AST of `source` without docstrings, as text; the raw source if it does not parse.

    The text must be the same on every Python the code runs on (results computed on a GPU machine are
    looked up on a CPU one), so it is written by `_canonical`, not `ast.dump`, whose output changes
    between versions (3.12 adds `type_params=[]` to every function, 3.13 omits empty fields).
    """
    try:
        tree = parse_source(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return _canonical(tree)


def _canonical(node: object) -> str:
    """Node type and non-empty fields by name: fields that a Python version adds empty leave it unchanged."""
    if isinstance(node, ast.AST):
        fields = ((name, getattr(node, name, None)) for name in node._fields)
        return f"{type(node).__name__}({', '.join(f'{n}={_canonical(v)}' for n, v in fields if v is not None and v != [])})"
    if isinstance(node, list):
        return f"[{', '.join(_canonical(item) for item in node)}]"
    return repr(node)


def load_module(source: str, filename: str, module_name: str) -> types.ModuleType:
    if module_name in sys.modules:
        return sys.modules[module_name]
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as err:
        raise MixerLoadError(f"{filename}:{err.lineno}: syntax error: {err.msg}; fix the Python syntax") from None
    module = types.ModuleType(module_name)
    module.__file__ = filename
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        exec(code, module.__dict__)  # noqa: S102 - this is the loader; untrusted code goes through `check` first
    except Exception as err:
        del sys.modules[module_name]
        raise MixerLoadError(f"{filename}: importing the mixer raised {type(err).__name__}: {err}") from None
    return module


def find_mixer_class(module: types.ModuleType, class_name: str | None, filename: str) -> type[nn.Module]:
    def is_mixer(obj: object) -> bool:
        return isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__

    if class_name is not None:
        obj = getattr(module, class_name, None)
        if not is_mixer(obj):
            raise MixerLoadError(f"{filename}: no nn.Module class named {class_name!r}; define it or fix the name")
        return obj  # type: ignore[return-value]
    for name in CONTRACT_CLASSES:
        if is_mixer(getattr(module, name, None)):
            return getattr(module, name)
    candidates = [obj for obj in vars(module).values() if is_mixer(obj)]
    if not candidates:
        raise MixerLoadError(
            f"{filename}: defines no nn.Module class; define `class DeltaNet(nn.Module)` "
            "with __init__(self, d_model, ...) and forward(x) -> x (see docs/candidates.md)"
        )
    return candidates[-1]  # the last one defined: helpers come first in a file


MAX_SOURCE_BYTES = 256 * 1024  # the templates are ~6 kB; an 11.7 MB file once took 115 s and 3 GB to check


def spec_from_file(path: str | Path, name: str | None = None) -> MixerSpec:
    path = Path(path)
    if path.is_dir():
        raise MixerLoadError(f"mixer file {str(path)!r} is a folder; pass a .py file")
    if not path.exists():
        raise MixerLoadError(f"mixer file {str(path)!r} does not exist; pass an existing .py file or a builtin name")
    if not path.is_file():
        raise MixerLoadError(f"mixer file {str(path)!r} is not a regular file (a device, a FIFO or a socket); pass "
                             "a .py file")
    if path.suffix != ".py":
        raise MixerLoadError(f"mixer file {str(path)!r} is not a .py file; pass a Python file")
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise MixerLoadError(f"mixer file {str(path)!r} has {size:,} bytes, more than one mixer needs (at most "
                             f"{MAX_SOURCE_BYTES:,}); pass the mixer's own code")
    try:
        source = path.read_text(encoding="utf-8-sig")  # a UTF-8 byte-order mark, as Python itself accepts
    except UnicodeDecodeError:
        raise MixerLoadError(f"mixer file {str(path)!r} is not UTF-8 text; pass a Python source file") from None
    except OSError as err:
        raise MixerLoadError(f"cannot read mixer file {str(path)!r} ({err.strerror})") from None
    if "\x00" in source:
        raise MixerLoadError(f"mixer file {str(path)!r} holds NUL bytes; pass a Python source file")
    return MixerSpec(name=name or path.stem, source=source, filename=str(path))


def preflight(spec: MixerSpec, d_model: int) -> None:
    """Fail fast, with a fix, when a mixer cannot even be built or returns the wrong shape."""
    import torch

    cls = spec.load_class()
    try:
        mixer = cls(d_model=d_model)
    except Exception as err:
        raise MixerLoadError(
            f"{spec.filename}: {cls.__name__}(d_model={d_model}) failed: {type(err).__name__}: {err}; "
            "the constructor must accept d_model and give every other argument a default"
        ) from None
    x = torch.randn(2, 19, d_model)
    try:
        with torch.no_grad():
            y = mixer(x)
    except Exception as err:
        raise MixerLoadError(f"{spec.filename}: forward on [2, 19, {d_model}] raised {type(err).__name__}: {err}") from None
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise MixerLoadError(
            f"{spec.filename}: forward must map [batch, length, {d_model}] to the same shape; "
            f"got {got} for input (2, 19, {d_model})"
        )
