"""Dashboard server time on a database of 5,000 experiments: `python benchmarks/speed/web_speed.py`.

Fills a SQLite database with experiments shaped like real ones (code, diff, insights, per-task scores with
seeds, judgement, curves, check report, attempts), then times each page and API call in-process (server
time, no network), median of 9. Writes benchmarks/results/web.{md,json}. Goal: every page under 300 ms.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from fastapi.testclient import TestClient  # noqa: E402

from mixerlab.mixers import template_source  # noqa: E402
from mixerlab.store import Attempt, Experiment, Run, Store  # noqa: E402
from mixerlab.store.models import summarize  # noqa: E402
from mixerlab.web.app import create_app  # noqa: E402
from mixerlab.tasks import TASK_NAMES  # noqa: E402



def fill(url: str, n: int) -> None:
    store = Store(url)
    rng = random.Random(0)
    code = template_source("delta_net")
    insights = {k: ("• observation with numbers 0.1234 -> 0.2345\n" * 6) for k in
                ("observations", "code_issues", "reasoning", "expected", "lessons")}
    with store.session.begin() as s:
        run = Run(name="bench", config={"profile": "tiny"}, status="finished")
        s.add(run)
        s.flush()
        ids: list[int] = []
        for i in range(n):
            scores = {t: {"mean": rng.random(), "std": 0.01, "seeds": [rng.random()] * 3} for t in TASK_NAMES}
            verdicts = {t: {"delta": 0.01, "noise": 0.01, "verdict": rng.choice(["better", "worse", "within noise"])} for t in TASK_NAMES}
            e = Experiment(
                run_id=run.id, name=f"delta_net_4layer_change_{i}", kind="baseline" if i < 2 else "candidate", iteration=i,
                parent_id=rng.choice(ids[-200:]) if ids else None, proposer="catalog", edits=["tanh_on_error"],
                code=code, code_hash=f"{i:016x}", novelty_hash=f"{i:016x}", diff="--- parent.py\n+++ candidate.py\n" + "+x\n" * 20,
                insights=insights, expected={t: 0.5 for t in TASK_NAMES}, status="done", success=True, scores=scores,
                mean_score=sum(v["mean"] for v in scores.values()) / 6,
                judgement={"vs_parent": {"tasks": verdicts}, "vs_baselines": {"delta_net_4layer": {"tasks": verdicts}}},
                curves={t: {"setting": "x", "lr": 1e-3, "weight_decay": 0.0, "test_acc": [rng.random() for _ in range(8)],
                            "train_loss": [rng.random() for _ in range(8)]} for t in TASK_NAMES},
                check_report={"checks": [{"name": "static", "status": "pass", "reason": "ok", "seconds": 0.1}]},
                timings={"eval_s": 40.0}, tokens={}, profile="tiny", timestamp="20261123_120000",
            )
            e.summary = summarize(e.scores, e.judgement)
            s.add(e)
            s.flush()
            ids.append(e.id)
            s.add(Attempt(experiment_id=e.id, number=0, code=code, passed=True, reason="ok", check_report={}))


def timed(client: TestClient, path: str, repeats: int = 9) -> tuple[float, float]:
    """Median server time (the app's Server-Timing header) and median round trip through the test client."""
    client.get(path)
    server, total = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        response = client.get(path, headers={"accept": "text/html"})
        total.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
        server.append(float(response.headers["server-timing"].split("dur=")[1]))
    return statistics.median(server), statistics.median(total)


def main(n: int = 5000) -> None:
    folder = Path(tempfile.mkdtemp())
    url = f"sqlite:///{folder / 'bench.db'}"
    start = time.perf_counter()
    fill(url, n)
    print(f"filled {n} experiments in {time.perf_counter() - start:.1f} s")
    client = TestClient(create_app(url), base_url="http://127.0.0.1")
    paths = {
        "leaderboard page (/)": "/",
        "leaderboard sorted by a task": "/?sort=fuzzy_recall&order=asc",
        "leaderboard filtered": "/?q=change_49",
        "experiment page": f"/experiments/{n // 2}",
        "lineage page": "/lineage",
        "live page": "/live",
        "compare page": "/compare?ids=10,20",
        "API: leaderboard (1000 rows)": "/api/experiments",
        "API: experiment": f"/api/experiments/{n // 2}",
        "API: lineage": "/api/lineage",
    }
    rows = []
    for label, path in paths.items():
        server, total = timed(client, path)
        rows.append({"what": label, "path": path, "ms": server, "round_trip_ms": total})
        print(f"{label:32s} {server:7.1f} ms server, {total:7.1f} ms through the test client")
    (ROOT / "results" / "web.json").write_text(json.dumps({"experiments": n, "rows": rows}, indent=2))
    lines = [f"# Dashboard speed: {n:,} experiments", "",
             "Server time = the app's own time per request (its `Server-Timing` header), median of 9, SQLite, on this",
             "2-core CPU machine; the round trip through FastAPI's test client (thread hand-offs included) beside it.",
             "Goal: every page under 300 ms of server time.", "",
             "| page | path | server ms | round trip ms | under 300 ms |", "|---|---|---|---|---|"]
    lines += [f"| {r['what']} | `{r['path']}` | {r['ms']:.0f} | {r['round_trip_ms']:.0f} | {'yes' if r['ms'] < 300 else 'NO'} |"
              for r in rows]
    (ROOT / "results" / "web.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
