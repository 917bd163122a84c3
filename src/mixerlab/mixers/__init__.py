"""Sequence mixers: the builtin baselines, and loading any mixer from a Python file.

`resolve_mixer("delta_net" | "gated_delta_net" | "delta_net_fla" | "gated_delta_net_fla" | "path/to/file.py")`
returns a `MixerSpec`. The baseline files are the candidate templates (docs/candidates.md).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

from .loading import MixerLoadError, MixerSpec, parse_source, preflight, spec_from_file

_HERE = Path(__file__).parent

# builtin name -> (file, class, display name in the history table)
BUILTINS: dict[str, tuple[str, str, str]] = {
    "delta_net": ("delta_net.py", "DeltaNet", "delta_net_4layer"),
    "gated_delta_net": ("gated_delta_net.py", "GatedDeltaNet", "gated_delta_net_4layer"),
    "delta_net_fla": ("fla_kernels.py", "FlaDeltaNet", "delta_net_4layer_fla"),
    "gated_delta_net_fla": ("fla_kernels.py", "FlaGatedDeltaNet", "gated_delta_net_4layer_fla"),
}
BASELINES = ("delta_net", "gated_delta_net")


def template_source(name: str = "delta_net") -> str:
    """Source of a baseline file, the starting point of every candidate."""
    return (_HERE / BUILTINS[name][0]).read_text()


@lru_cache(maxsize=None)
def template_definition(template: str, definition: str) -> str:
    """The source text of one top-level function or class of a template (to copy into a candidate file,
    which must be self-contained)."""
    source = template_source(template)
    for node in parse_source(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == definition:
            return ast.get_source_segment(source, node)
    raise KeyError(f"template {template!r} defines no {definition!r}")


def builtin_spec(name: str) -> MixerSpec:
    file, cls, display = BUILTINS[name]
    extras: tuple[str, ...] = ()
    if file == "fla_kernels.py":  # it builds on both templates and the fla ops
        extras = (template_source("delta_net"), template_source("gated_delta_net"),
                  (_HERE / "fla_ops.py").read_text())
    return MixerSpec(name=display, source=(_HERE / file).read_text(), filename=str(_HERE / file),
                     class_name=cls, extra_sources=extras)


def resolve_mixer(name_or_path: str) -> MixerSpec:
    if name_or_path in BUILTINS:
        return builtin_spec(name_or_path)
    if name_or_path.endswith(".py") or "/" in name_or_path:
        return spec_from_file(name_or_path)
    raise MixerLoadError(
        f"unknown mixer {name_or_path!r}: use one of {', '.join(BUILTINS)} or a path to a .py file"
    )


__all__ = ["BASELINES", "BUILTINS", "MixerLoadError", "MixerSpec", "builtin_spec", "preflight", "resolve_mixer", "template_source"]
