"""Does DeltaNet on fla's kernels score what the PyTorch form scores? `python benchmarks/reproduction/fla_parity.py`.

`delta_net_fla` (mixers/fla_kernels.py) is the same layer and parameters as `delta_net`, with fla's bf16
chunkwise kernels in place of mixerlab's float32 chunk math; it trains about 1.5x faster per step
(step_anatomy.md). Its `quick` trainings were run on a GPU; `delta_net`'s `quick` is read off its committed
`full` trainings (evaluate/prefix.py: same jobs, init and data, first 100 epochs). Only settings with all
their `quick` trainings in on both sides are compared. Writes benchmarks/results/fla_parity.{md,json}.

    python benchmarks/reproduction/fla_parity.py [--import FILE.jsonl.gz ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.evaluate import ResultCache  # noqa: E402
from mixerlab.reproduction import fla_parity  # noqa: E402


def markdown(report: dict) -> str:
    lines = ["# DeltaNet on fla's kernels against the PyTorch form (`quick`)", "",
             "Written by `python benchmarks/reproduction/fla_parity.py` from the committed GPU results. `fla` is "
             "`delta_net_fla` trained with `quick` on an H200 (fla-core 0.6, bf16 kernels); `pytorch` is "
             "`delta_net`'s `quick` read off its `full` trainings (float32 chunk math). Same jobs, "
             "initialisation and data; only settings with both of their `quick` trainings in on both sides "
             "are compared. Seconds are the fla trainings' shares of their groups' wall time (compiles and "
             "per-epoch evaluation included).", "",
             "| task | settings | fla | pytorch | fla - pytorch | mean abs. difference per setting | fla tokens | fla s | Mtokens/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for task, t in report["tasks"].items():
        rate = f"{t['fla_tokens_per_s'] / 1e6:.2f}" if t["fla_tokens_per_s"] else "-"
        lines.append(f"| {task} | {t['settings_compared']}/{t['settings_planned']} | {t['fla']:.4f} | "
                     f"{t['pytorch']:.4f} | {t['difference']:+.4f} | {t['mean_abs_setting_difference']:.4f} | "
                     f"{t['fla_tokens'] / 1e9:.2f}G | {t['fla_seconds']:.0f} | {rate} |")
    lines += ["", "Per setting (best over the two learning rates on each side):", "",
              "| task | setting | fla | pytorch | fla - pytorch |", "|---|---|---|---|---|"]
    for task, t in report["tasks"].items():
        for s in t["settings"]:
            lines.append(f"| {task} | {s['setting']} | {s['fla']:.4f} | {s['pytorch']:.4f} | {s['difference']:+.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--import", dest="imports", nargs="*",
                        default=[str(ROOT / "results" / "cache" / "gpu_results.jsonl.gz")])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args()
    cache = ResultCache(Path(tempfile.mkdtemp()) / "cache.sqlite")
    for path in args.imports:
        cache.import_file(path)
    report = fla_parity(cache)
    notes = ROOT / "results" / "fla_parity_notes.md"  # what the runs were and what the figures mean
    text = markdown(report) + ("\n" + notes.read_text() if notes.exists() else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fla_parity.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "fla_parity.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
