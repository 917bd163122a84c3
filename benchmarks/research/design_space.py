"""The offline proposer's design space: how many candidates it reaches, and what share of the candidates the
search proposer generates pass the full checker (the loop's own checks, sandboxed, at the tiny profile).

    python benchmarks/research/design_space.py [--proposals 20] [--seed 0]   -> benchmarks/results/design_space.{json,md}
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.check import check_candidate  # noqa: E402
from mixerlab.check.static import static_check  # noqa: E402
from mixerlab.mixers import MixerSpec, template_source  # noqa: E402
from mixerlab.propose import ExperimentView, ProposalContext, space  # noqa: E402
from mixerlab.propose.base import TASK_NAMES  # noqa: E402
from mixerlab.propose.search import SearchProposer  # noqa: E402


def distinct_vectors() -> int:
    """Vectors after folding those that render the same file (no convolution: `conv_on` means nothing)."""
    total = space.all_vectors()
    no_conv = total // len(space.AXES_BY_NAME["conv"].options)
    return total - no_conv + no_conv // len(space.AXES_BY_NAME["conv_on"].options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=20, help="search proposals to run through the full checker")
    parser.add_argument("--static-sample", type=int, default=3000, help="random vectors rendered and statically checked")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng, sources, static_failures = random.Random(args.seed), set(), 0
    start = time.perf_counter()
    while len(sources) < args.static_sample:
        source = space.render(space.random_vector(rng))
        if source not in sources:
            sources.add(source)
            static_failures += not static_check(source)[0].passed
    static_s = time.perf_counter() - start

    # a history that grows as the loop's would: each proposal joins it (scored like its parent, so the
    # archive and the option weights move), and every proposal is checked as the loop checks it
    scores = {t: {"mean": 0.6, "std": 0.0, "seeds": [0.6]} for t in TASK_NAMES}
    history = [ExperimentView(name="delta_net_4layer", kind="baseline", parent=None, edits=[], status="done", success=True,
                              scores=scores, mean_score=0.6, code=template_source("delta_net"))]
    proposer, rows = SearchProposer(seed=args.seed), []
    for i in range(args.proposals):
        parent = proposer.choose_parent(history)
        ctx = ProposalContext(history=history, parent=parent, references=[], iteration=i + 1,
                              taken_names={e.name for e in history})
        proposal = proposer.propose(ctx)
        t0 = time.perf_counter()
        report = check_candidate(MixerSpec(proposal.name, proposal.code, f"{proposal.name}.py"))
        failed = next((c for c in report.checks if c.status == "fail"), None)
        rows.append({"name": proposal.name, "edits": proposal.edits, "passed": report.passed,
                     "failed_check": failed.name if failed else None, "reason": failed.reason[:200] if failed else "",
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{i + 1}/{args.proposals} {proposal.name}: {'pass' if report.passed else 'FAIL ' + failed.name}", flush=True)
        history.append(ExperimentView(name=proposal.name, kind="candidate", parent=parent.name, edits=proposal.edits,
                                      status="done", success=True, scores=scores, mean_score=0.6, code=proposal.code))
    passed = sum(r["passed"] for r in rows)
    result = {"date": str(date.today()), "axes": len(space.AXES), "options": space.option_count(),
              "vectors": space.all_vectors(), "distinct_candidates": distinct_vectors(),
              "static_sample": args.static_sample, "static_failures": static_failures, "static_seconds": round(static_s, 1),
              "proposals": args.proposals, "passed_full_checker": passed, "pass_share": round(passed / max(1, len(rows)), 3),
              "failures": Counter(r["failed_check"] for r in rows if not r["passed"]), "rows": rows}
    (ROOT / "results" / "design_space.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# The design space of the search proposer", "",
             f"{result['date']}, `python benchmarks/research/design_space.py --proposals {args.proposals} --seed {args.seed}` on a "
             "2-core CPU (checks at the tiny profile, sandboxed as in the loop).", "",
             "| figure | value |", "| --- | --- |",
             f"| axes / options | {result['axes']} / {result['options']} |",
             f"| vectors / distinct candidate files | {result['vectors']:,} / {result['distinct_candidates']:,} |",
             f"| random distinct files that pass the static checks | {args.static_sample - static_failures} of {args.static_sample} |",
             f"| search proposals that pass the full checker | {passed} of {len(rows)} ({result['pass_share']:.0%}) |", "",
             "| proposal | edits | checker | seconds |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['name']} | {', '.join(r['edits'])} | {'pass' if r['passed'] else 'fail: ' + r['failed_check'] + ' ' + r['reason'][:80]} | {r['seconds']} |"
              for r in rows]
    (ROOT / "results" / "design_space.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:10]))


if __name__ == "__main__":
    main()
