"""Write the Gated DeltaNet probe variants: the baseline's file with one part switched off or swapped, to find which
part keeps it from learning Selective Copy at vocab 128 and Fuzzy Recall (docs/reproduction.md,
"Gated DeltaNet's trap").

    python benchmarks/probes/gdn_variants.py OUTDIR   # -> OUTDIR/gdn_no_decay.py, gdn_no_gate.py, gdn_v1.py, ...

Each variant is generated from `src/mixerlab/mixers/gated_delta_net.py` by exact text edits (an edit that no
longer matches the template fails loudly), so the same template always gives the same file and the same code
hash: results cached on a GPU machine match the files regenerated at home. Variants that keep the baseline's
parameter shapes start from the same initial weights as the baseline (a paired comparison).
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[2] / "src" / "mixerlab" / "mixers" / "gated_delta_net.py"

MIX = "        o = self.mix(q, k, v, beta, g)\n"
GATE = "        o = self.o_norm(o, self.split_heads(self.g_proj(x)))\n"
EXPAND = "        expand_v: int = 2,\n"
NO_GATE = (GATE, "        o = nn.RMSNorm.forward(self.o_norm, o)  # probe: no output gate\n")
SIGMOID_GATE = ("        return super().forward(x) * F.silu(gate)\n",
                "        return super().forward(x) * torch.sigmoid(gate)  # probe: sigmoid gate\n")
EXPAND_1 = (EXPAND, "        expand_v: int = 1,\n")

# name -> (what it tests, [(old, new), ...])
VARIANTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "gdn_no_decay": ("the decay gate off (g = 0): DeltaNet's state with Gated DeltaNet's output gate and values; "
                     "same initial weights as the baseline",
                     [(MIX, "        o = self.mix(q, k, v, beta, g * 0.0)  # probe: no decay\n")]),
    "gdn_no_gate": ("the output gate off (plain RMSNorm); same initial weights as the baseline",
                    [NO_GATE]),
    "gdn_sigmoid_gate": ("the output gate as sigmoid(W_g x) instead of SiLU(W_g x): a gate near 0.5 at init instead of "
                         "one near 0 that changes sign; same initial weights as the baseline",
                         [SIGMOID_GATE]),
    "gdn_v1": ("values as wide as keys (expand_v 1) instead of twice", [EXPAND_1]),
    "gdn_no_gate_v1": ("no output gate and expand_v 1: DeltaNet plus the decay gate",
                       [NO_GATE, EXPAND_1]),
}


def variant_source(name: str, template: str) -> str:
    source = template
    for old, new in VARIANTS[name][1]:
        if source.count(old) != 1:
            raise SystemExit(f"{TEMPLATE}: the line {old.strip()!r} for variant {name} is no longer there once; "
                             "update benchmarks/probes/gdn_variants.py to the template")
        source = source.replace(old, new)
    return source


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/probes/gdn_variants.py OUTDIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    template = TEMPLATE.read_text()
    for name, (what, _) in VARIANTS.items():
        (out / f"{name}.py").write_text(variant_source(name, template))
        print(f"{out / name}.py: {what}")


if __name__ == "__main__":
    main()
