"""Check 1: the file parses, defines the mixer class, imports only what is allowed and names nothing
that reaches files, processes, the network or the interpreter. Pure AST: nothing of the candidate runs."""

from __future__ import annotations

import ast

from ..mixers.loading import parse_source
from .contract import (
    ALLOWED_DUNDERS,
    ALLOWED_MODULES,
    DENIED_TORCH_MODULES,
    FORBIDDEN_ATTRIBUTES,
    FORBIDDEN_CALLS,
    FORBIDDEN_NAMES,
)
from .report import CheckResult

MIXER_CLASSES = ("DeltaNet", "GatedDeltaNet")


def _module_allowed(name: str) -> str | None:
    """None if importing `name` is allowed, else the reason."""
    top = name.split(".")[0]
    if top not in ALLOWED_MODULES:
        return f"imports {name!r}; only {', '.join(sorted(ALLOWED_MODULES - {'__future__'}))} may be imported"
    for denied in DENIED_TORCH_MODULES:
        if name == denied or name.startswith(denied + "."):
            return f"imports {name!r}, which can reach files, processes or native code; remove it"
    return None


class _Visitor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.problems: list[str] = []

    def flag(self, node: ast.AST, message: str) -> None:
        self.problems.append(f"line {getattr(node, 'lineno', '?')}: {message}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if reason := _module_allowed(alias.name):
                self.flag(node, reason)
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.flag(node, "relative import; a candidate is one self-contained file")
        elif reason := _module_allowed(node.module or ""):
            self.flag(node, reason)
        else:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if alias.name in FORBIDDEN_ATTRIBUTES or _module_allowed(full):
                    self.flag(node, f"imports {full!r}, which can reach files, processes or native code; remove it")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in FORBIDDEN_NAMES:
            self.flag(node, f"uses {node.id!r}; files, processes and the interpreter are off limits")
        elif node.id.startswith("__") and node.id not in ALLOWED_DUNDERS:
            self.flag(node, f"uses {node.id!r}; interpreter internals are off limits")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in FORBIDDEN_ATTRIBUTES:
            self.flag(node, f"uses attribute {node.attr!r}, which can reach files, processes, native code or global state")
        elif node.attr.startswith("__") and node.attr not in ALLOWED_DUNDERS:
            self.flag(node, f"uses attribute {node.attr!r}; interpreter internals are off limits")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in FORBIDDEN_CALLS:
                self.flag(node, f"calls {func.id}(); not allowed in a mixer")
            if func.id == "getattr":
                name = node.args[1] if len(node.args) > 1 else None
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                    self.flag(node, "calls getattr() with a computed name; use the attribute directly")
                elif name.value in FORBIDDEN_ATTRIBUTES or (name.value.startswith("__") and name.value not in ALLOWED_DUNDERS):
                    self.flag(node, f"calls getattr(..., {name.value!r}); not allowed")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        self.flag(node, "uses `global`; keep state inside the module")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.flag(node, "defines an async function; a mixer is plain synchronous code")


def static_check(source: str, filename: str = "<candidate>") -> tuple[CheckResult, ast.Module | None]:
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
    visitor = _Visitor()
    visitor.visit(tree)
    if visitor.problems:
        shown = visitor.problems[:8]
        more = f" (+{len(visitor.problems) - 8} more)" if len(visitor.problems) > 8 else ""
        return CheckResult.fail("static", "; ".join(shown) + more, problems=visitor.problems), tree
    return CheckResult.ok("static", "parses, defines the mixer class, imports only torch/einops/math/typing/functools"), tree
