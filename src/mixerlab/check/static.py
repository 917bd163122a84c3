"""Check 1: the file parses, defines the mixer class, and uses only what a mixer needs. Nothing of the
candidate runs: the source is read as an AST, and attribute chains that start at an imported module are
looked up on the real modules (torch, einops, math) to see where they lead.

The rules are an allow-list (docs/candidates.md says them in words):
- imports: the modules in contract.ALLOWED_MODULES; of torch only the submodules in ALLOWED_TORCH_MODULES;
  of functools and einops only the names listed;
- names: the file's own, its imports, and the builtins in ALLOWED_BUILTINS;
- attributes: no name starting with `_` except on `self`/`cls` (and `__init__`, `__name__`, `__doc__`);
  no frame, code or traceback attributes; nothing in FORBIDDEN_ATTRIBUTES; and an attribute chain from a
  module may lead only to allowed modules (`torch.os`, `torch.nn.modules.module` are refused);
- assignments and deletions of attributes or items only on `self` (the object a method belongs to) or on
  objects the same function created; no mutation of module-level objects (append, in-place tensor ops,
  `out=`); no `global`, `nonlocal`, generators, async code or metaclasses.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import types
from typing import Any

from ..mixers.loading import MAX_SOURCE_BYTES, parse_source
from .contract import (
    ALLOWED_BUILTINS,
    NAME_TAKING_BUILTINS,
    ALLOWED_DUNDERS,
    ALLOWED_FROM_IMPORTS,
    ALLOWED_MODULES,
    ALLOWED_TORCH_MODULES,
    FORBIDDEN_ATTRIBUTES,
    FRAME_ATTRIBUTES,
    MUTATING_METHODS,
)
from .report import CheckResult

MIXER_CLASSES = ("DeltaNet", "GatedDeltaNet")
_MISSING = object()


def _module_allowed(name: str) -> str | None:
    """None if importing module `name` is allowed, else the reason."""
    top = name.split(".")[0]
    if top not in ALLOWED_MODULES:
        return f"imports {name!r}; only {', '.join(sorted(ALLOWED_MODULES - {'__future__'}))} may be imported"
    if top == "torch" and name not in ALLOWED_TORCH_MODULES:
        return (f"imports {name!r}; of torch only {', '.join(sorted(ALLOWED_TORCH_MODULES))} may be used (others reach "
                "files, processes, global hooks or native code)")
    if top == "einops" and name not in ("einops", "einops.layers.torch"):
        return f"imports {name!r}; of einops only einops and einops.layers.torch may be used"
    return None


def _resolve(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return _MISSING


def _allowed_object(obj: Any, path: str) -> str | None:
    """Where an attribute chain from a module leads: None if allowed, else the reason."""
    if isinstance(obj, types.ModuleType):
        return _module_allowed(obj.__name__) and f"`{path}` reaches the module {obj.__name__!r}, which a mixer may not use"
    return None


def _chain(node: ast.AST) -> tuple[str, list[str]] | None:
    """`a.b.c` -> ("a", ["b", "c"]); None if the root is not a plain name."""
    attrs: list[str] = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, attrs[::-1]
    return None


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node


class _Scope:
    """What a function (or the module) binds: its parameters, its locals, and the object a method belongs to."""

    def __init__(self, node: ast.AST | None, owner: str | None, parent: "_Scope | None") -> None:
        self.owner, self.parent = owner, parent
        self.params: set[str] = set()
        self.made: set[str] = set()  # locals bound only to values computed here (calls, literals, expressions)
        self.aliases: set[str] = set()  # locals bound to a name or an attribute chain (possibly a shared object)
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            args = node.args
            self.params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            self.params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}


class _Visitor(ast.NodeVisitor):
    def __init__(self, tree: ast.Module) -> None:
        self.problems: list[str] = []
        self.modules: dict[str, str] = {}  # local name -> module it is bound to by an import
        self.module_level: set[str] = set()  # names the file binds at module level by assignment (shared state)
        self.defined: set[str] = set()  # classes and functions the file defines at module level
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                self.defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            self.module_level.add(name.id)
        self.scope = _Scope(None, None, None)
        self.class_depth = 0
        self.called: set[int] = set()  # ids of the nodes that are the function of a call (the rest are values)

    def flag(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    # imports ---------------------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if reason := _module_allowed(alias.name):
                self.flag(node, reason)
            elif alias.asname:
                self.modules[alias.asname] = alias.name
            else:
                self.modules[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            self.flag(node, "relative import; a candidate is one self-contained file")
            return
        if reason := _module_allowed(module):
            self.flag(node, reason)
            return
        allowed = ALLOWED_FROM_IMPORTS.get(module)
        source = _resolve(module)
        for alias in node.names:
            full = f"{module}.{alias.name}"
            if alias.name == "*":
                self.flag(node, f"`from {module} import *`; import the names you use")
                continue
            if allowed is not None and alias.name not in allowed:
                self.flag(node, f"imports {full!r}; from {module} only {', '.join(sorted(allowed))} may be imported")
                continue
            if alias.name in FORBIDDEN_ATTRIBUTES or alias.name.startswith("_") and module != "__future__":
                self.flag(node, f"imports {full!r}, which can reach files, processes, native code or global state")
                continue
            obj = getattr(source, alias.name, _MISSING) if source is not _MISSING else _MISSING
            if isinstance(obj, types.ModuleType):
                if reason := _module_allowed(obj.__name__):
                    self.flag(node, reason)
                    continue
                self.modules[alias.asname or alias.name] = obj.__name__

    # names and attributes ------------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load) and hasattr(builtins, node.id) and node.id not in ALLOWED_BUILTINS \
                and not self._bound(node.id):
            self.flag(node, f"uses the builtin {node.id!r}; a mixer may use only {_builtins_hint()}")
        elif isinstance(node.ctx, ast.Load) and node.id in NAME_TAKING_BUILTINS and id(node) not in self.called \
                and not self._bound(node.id):
            self.flag(node, f"passes the builtin {node.id!r} as a value; call {node.id}(obj, 'name') directly with a "
                      "literal name")
        elif node.id.startswith("__") and node.id not in ALLOWED_DUNDERS:
            self.flag(node, f"uses {node.id!r}; interpreter internals are off limits")

    def _bound(self, name: str) -> bool:
        """Whether the file binds `name` itself (then it is not the builtin)."""
        scope: _Scope | None = self.scope
        while scope is not None:
            if name in scope.params or name in scope.made or name in scope.aliases:
                return True
            scope = scope.parent
        return name in self.defined or name in self.module_level or name in self.modules

    def visit_Attribute(self, node: ast.Attribute) -> None:
        attr = node.attr
        root = _root(node)
        on_self = isinstance(root, ast.Name) and root.id in ("self", "cls") and node.value is root
        is_super = isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name) and node.value.func.id == "super"
        if attr in FRAME_ATTRIBUTES:
            self.flag(node, f"uses attribute {attr!r} (frames, code, tracebacks): interpreter internals are off limits")
        elif attr in FORBIDDEN_ATTRIBUTES and not on_self:
            self.flag(node, f"uses attribute {attr!r}, which can reach files, processes, native code or global state")
        elif attr.startswith("__") and attr not in ALLOWED_DUNDERS:
            self.flag(node, f"uses attribute {attr!r}; interpreter internals are off limits")
        elif attr.startswith("_") and not attr.startswith("__") and not on_self and not is_super:
            self.flag(node, f"uses the private attribute {attr!r} of another object; only `self._name` is allowed")
        else:
            self._check_module_chain(node)
        self.generic_visit(node)

    def _check_module_chain(self, node: ast.Attribute) -> None:
        chain = _chain(node)
        if chain is None or chain[0] not in self.modules or self._local(chain[0]):
            return
        name, attrs = chain
        module = self.modules[name]
        allowed = ALLOWED_FROM_IMPORTS.get(module)
        if allowed is not None and attrs and attrs[0] not in allowed:
            self.flag(node, f"uses {module}.{attrs[0]}; of {module} only {', '.join(sorted(allowed))} may be used")
            return
        obj = _resolve(module)
        path = name
        for attr in attrs:
            if obj is _MISSING:
                return
            obj = getattr(obj, attr, _MISSING)
            path += f".{attr}"
            if reason := _allowed_object(obj, path):
                self.flag(node, reason)
                return

    def _local(self, name: str) -> bool:
        scope: _Scope | None = self.scope
        while scope is not None and scope.parent is not None:
            if name in scope.params or name in scope.made or name in scope.aliases:
                return True
            scope = scope.parent
        return False

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        self.called.add(id(func))
        if isinstance(func, ast.Name) and func.id in NAME_TAKING_BUILTINS and not self._bound(func.id):
            name = node.args[1] if len(node.args) > 1 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)) or node.keywords or \
                    any(isinstance(a, ast.Starred) for a in node.args):
                self.flag(node, f"calls {func.id}() with a computed name; use the attribute directly")
            elif name.value in FORBIDDEN_ATTRIBUTES or name.value in FRAME_ATTRIBUTES or name.value.startswith("_"):
                self.flag(node, f"calls {func.id}(..., {name.value!r}); not allowed")
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and self._shared(func.value.id) \
                and (func.attr in MUTATING_METHODS or (func.attr.endswith("_") and not func.attr.startswith("_"))):
            self.flag(node, f"`{func.value.id}.{func.attr}(...)` changes a module-level object: a mixer keeps no state "
                      "between calls outside `self`")
        for keyword in node.keywords:
            if keyword.arg == "out":
                self.flag(node, "passes `out=`; write results to new tensors")
        self.generic_visit(node)

    def _shared(self, name: str) -> bool:
        """A module-level object reached from inside a function: shared across calls."""
        return name in self.module_level and not self._local(name)

    def _owners(self) -> set[str]:
        """The names of the objects the enclosing methods belong to (`self`, `cls`, an autograd `ctx`)."""
        owners, scope = set(), self.scope
        while scope is not None:
            if scope.owner:
                owners.add(scope.owner)
            scope = scope.parent
        return owners

    # assignments ------------------------------------------------------------------------------------

    def _check_target(self, target: ast.AST, node: ast.AST, verb: str) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._check_target(element, node, verb)
            return
        if isinstance(target, ast.Starred):
            self._check_target(target.value, node, verb)
            return
        if isinstance(target, ast.Name):
            return
        root = _root(target)
        name = root.id if isinstance(root, ast.Name) else None
        scope = self.scope
        if name is not None and scope.parent is None:  # module level: only the file's own classes and functions
            if name in self.defined and isinstance(target, ast.Attribute):
                return
        elif name is not None and (name in scope.made or name in self._owners()):
            return
        what = "an attribute" if isinstance(target, ast.Attribute) else "an item"
        owner = f"of {name!r}" if name else "of a computed object"
        self.flag(node, f"{verb} {what} {owner}; a mixer may change only `self` and objects its own code created "
                  "(not modules, classes, parameters or shared objects)")

    def _bind(self, target: ast.AST, value: ast.AST | None) -> None:
        names = [n.id for n in ast.walk(target) if isinstance(n, ast.Name)] if isinstance(target, (ast.Tuple, ast.List, ast.Name, ast.Starred)) else []
        if not names or self.scope.parent is None:
            return
        aliasing = value is None or isinstance(value, (ast.Name, ast.Attribute, ast.Subscript)) \
            or any(isinstance(v, (ast.Name, ast.Attribute)) for v in (value.elts if isinstance(value, (ast.Tuple, ast.List)) else []))
        for name in names:
            if aliasing:
                self.scope.aliases.add(name)
                self.scope.made.discard(name)
            elif name not in self.scope.aliases:  # once possibly shared, always treated as shared
                self.scope.made.add(name)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._check_target(target, node, "assigns")
            self._bind(target, node.value)
            self.visit(target)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self._check_target(node.target, node, "assigns")
        self._bind(node.target, node.value)
        self.visit(node.target)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self._check_target(node.target, node, "changes")
        self.visit(node.target)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._check_target(target, node, "deletes")
            self.visit(target)

    def visit_For(self, node: ast.For) -> None:
        self.visit(node.iter)
        self._bind(node.target, node.iter)
        self.visit(node.target)
        for statement in node.body + node.orelse:
            self.visit(statement)

    def visit_With(self, node: ast.With) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self._bind(item.optional_vars, item.context_expr)
        for statement in node.body:
            self.visit(statement)

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self._bind(node.target, node.value)

    # structure --------------------------------------------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for decorator in node.decorator_list:
            self.visit(decorator)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(default)
        params = node.args.posonlyargs + node.args.args
        static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in node.decorator_list)
        owner = params[0].arg if self.class_depth and params and (not static or params[0].arg == "ctx") else None
        outer, self.scope = self.scope, _Scope(node, owner, self.scope)
        depth, self.class_depth = self.class_depth, 0
        for statement in node.body:
            self.visit(statement)
        self.scope, self.class_depth = outer, depth

    def visit_Lambda(self, node: ast.Lambda) -> None:
        outer, self.scope = self.scope, _Scope(node, None, self.scope)
        self.visit(node.body)
        self.scope = outer

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for keyword in node.keywords:
            self.flag(node, f"class {node.name} passes `{keyword.arg}=`; a mixer class takes only base classes")
        for expr in node.bases + node.decorator_list:
            self.visit(expr)
        self.class_depth += 1
        for statement in node.body:
            self.visit(statement)
        self.class_depth -= 1

    def visit_Global(self, node: ast.Global) -> None:
        self.flag(node, "uses `global`; keep state inside the module")

    def visit_Nonlocal(self, node: ast.Nonlocal) -> None:
        self.flag(node, "uses `nonlocal`; a mixer keeps no state between calls outside `self`")

    def visit_Yield(self, node: ast.Yield) -> None:
        self.flag(node, "defines a generator (`yield`); a mixer is plain functions and modules")

    visit_YieldFrom = visit_Yield

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.flag(node, "defines an async function; a mixer is plain synchronous code")

    def visit_Await(self, node: ast.Await) -> None:
        self.flag(node, "uses `await`; a mixer is plain synchronous code")


def _builtins_hint() -> str:
    return "common builtins (range, len, min, max, isinstance, super, ...)"


def static_check(source: str, filename: str = "<candidate>") -> tuple[CheckResult, ast.Module | None]:
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:  # before parsing: an 11.7 MB file once took 115 s and 3 GB here
        return CheckResult.fail("static", f"the file has {size:,} bytes, more than one mixer needs (at most "
                                f"{MAX_SOURCE_BYTES:,}); keep the candidate to the mixer's own code"), None
    try:
        tree = parse_source(source, filename)
    except SyntaxError as err:
        return CheckResult.fail("static", f"syntax error at line {err.lineno}: {err.msg}; fix the Python syntax"), None
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    if not any(name in MIXER_CLASSES for name in classes):
        found = f" (found {', '.join(classes)})" if classes else ""
        return CheckResult.fail(
            "static", f"no mixer class: define `class DeltaNet(nn.Module)` at module level{found}; see docs/candidates.md"
        ), tree
    visitor = _Visitor(tree)
    visitor.visit(tree)
    if visitor.problems:
        shown = visitor.problems[:8]
        more = f" (+{len(visitor.problems) - 8} more)" if len(visitor.problems) > 8 else ""
        return CheckResult.fail("static", "; ".join(shown) + more, problems=visitor.problems), tree
    return CheckResult.ok("static", "parses, defines the mixer class; only allowed imports, names and attributes"), tree
