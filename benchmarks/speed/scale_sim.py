"""Where does a large run hit its first bottleneck? Measures the driver-side costs that do not shrink when
GPUs are added, and turns them into a ceiling on cluster size: `python benchmarks/speed/scale_sim.py`.

Measured here: experiment-record writes/s and training-result writes/s (SQLite, and PostgreSQL when its
server binaries are installed), and data generation time for all of `full`'s datasets. Taken from our
other measurements: GPU time per candidate. Assumed (stated): language-model latency per proposal.
Writes benchmarks/results/scale_sim.{json,md}.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT.parent / "tests"))

from mixerlab.config import PROFILES  # noqa: E402
from mixerlab.evaluate import ResultCache  # noqa: E402
from mixerlab.store import Store  # noqa: E402
from mixerlab.tasks import TASK_ORDER, generate  # noqa: E402
from mixerlab.train.result import EpochRecord, TrainResult  # noqa: E402

WRITES_PER_EXPERIMENT = 12  # add + status updates + attempts + events, as the loop does
TRAININGS_PER_CANDIDATE = {"tiny": 6, "quick": 116, "full": 396}
# H200 hours per candidate, measured (thirty-second and thirty-third sessions, eval_speed.md): the committed `full`
# trainings are 73.8G training tokens for DeltaNet and 84.5G for Gated DeltaNet, `quick` read off them 7.8G and 8.8G
# (baselines.md); their `full` Fuzzy Recall trainings ran at 8.2M and 5.3M tokens/s all told (compiles, evaluation,
# checkpoints), which puts Gated DeltaNet, the slower baseline, at 4.4 hours for `full` and 0.6 for `quick` (with ~50 s
# of compile for each of its 12 group shapes); DeltaNet at 2.5 and 0.4
GPU_HOURS_PER_CANDIDATE = {"quick": 0.6, "full": 4.4}
LLM_SECONDS_PER_PROPOSAL = 60.0  # assumption for a frontier model with a long prompt (llama.cpp SmolLM2: ~3 s)


def experiment_writes_per_second(url: str, n: int = 200) -> float:
    store = Store(url)
    run = store.create_run(f"bench-{time.time_ns()}", {})
    start = time.perf_counter()
    for i in range(n):
        e = store.add_experiment(run_id=run.id, name=f"e{i}", kind="candidate", code="x" * 4000, code_hash="h",
                                 novelty_hash=f"{i}", status="checking")
        for stage in ("evaluating", "done"):
            store.update_experiment(e.id, status=stage)
        store.log_event(run.id, "done", "", i, f"e{i}")
    return 4 * n / (time.perf_counter() - start)


def training_writes_per_second(path: Path, n: int = 500) -> float:
    cache = ResultCache(path)
    history = [EpochRecord(epoch=e, train_loss=1.0, test_loss=1.0, test_acc=0.5, test_token_acc=0.5, test_ppl=2.0) for e in range(200)]
    start = time.perf_counter()
    for i in range(n):
        cache.put(TrainResult(key=f"k{i}", task="compress", setting="s", lr=1e-3, weight_decay=0.0, seed=0, score=0.5,
                              score_last=0.5, token_acc=0.5, best_epoch=1, epochs_trained=200, stopped_early=False,
                              steps=20000, seconds=1.0, trainer="batched", device="cuda", history=history), "m", "m")
    return n / (time.perf_counter() - start)


def data_generation_seconds() -> float:
    start = time.perf_counter()
    for task in TASK_ORDER:
        for setting in PROFILES["full"].settings[task]:
            generate(setting, "train")
            generate(setting, "test")
            generate.cache_clear()
    return time.perf_counter() - start


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    results: dict = {"sqlite_experiment_writes_per_s": experiment_writes_per_second(f"sqlite:///{folder / 'db.sqlite'}"),
                     "training_writes_per_s": training_writes_per_second(folder / "cache.sqlite"),
                     "full_data_generation_s": data_generation_seconds()}
    try:
        from services import postgres_server

        with postgres_server() as url:
            results["postgres_experiment_writes_per_s"] = experiment_writes_per_second(url)
    except Exception as err:  # noqa: BLE001 - PostgreSQL not installed here
        results["postgres_experiment_writes_per_s"] = None
        results["postgres_note"] = str(err)
    ceilings = {}
    for profile, gpu_hours in GPU_HOURS_PER_CANDIDATE.items():
        writes_per_candidate = WRITES_PER_EXPERIMENT + TRAININGS_PER_CANDIDATE[profile]
        per_gpu_hour = 1 / gpu_hours  # candidates per GPU-hour
        db = min(results["sqlite_experiment_writes_per_s"], results["training_writes_per_s"]) * 3600 / writes_per_candidate
        llm_one_stream = 3600 / LLM_SECONDS_PER_PROPOSAL
        ceilings[profile] = {
            "candidates_per_gpu_hour": per_gpu_hour,
            "gpus_before_db_saturates": db / per_gpu_hour,
            "gpus_before_one_llm_stream_saturates": llm_one_stream / per_gpu_hour,
            "data_generation_share_of_candidate_time": results["full_data_generation_s"] / 3600 / gpu_hours,
        }
    results["ceilings"] = ceilings
    (ROOT / "results" / "scale_sim.json").write_text(json.dumps(results, indent=2))
    lines = ["# Where the first bottleneck appears", "",
             "Measured on this 2-core CPU machine (the driver's side of a run); GPU time per candidate: H200 hours from",
             "the committed trainings' tokens at the rates they ran (GPU_HOURS_PER_CANDIDATE in the script);",
             "language-model latency assumed 60 s per proposal (a frontier model, long prompt).", "",
             f"- SQLite: {results['sqlite_experiment_writes_per_s']:.0f} experiment-record writes/s; "
             f"result cache: {results['training_writes_per_s']:.0f} training writes/s (200-epoch histories)",
             f"- PostgreSQL: {results['postgres_experiment_writes_per_s']:.0f} experiment-record writes/s" if results["postgres_experiment_writes_per_s"] else "- PostgreSQL: not measured here",
             f"- generating every dataset of `full` once: {results['full_data_generation_s']:.1f} s on one core", "",
             "| profile | candidates per GPU-hour | GPUs before the database saturates | GPUs before one proposal stream saturates | data generation, share of a candidate's time (on its worker) |",
             "|---|---|---|---|---|"]
    for profile, c in ceilings.items():
        lines.append(f"| {profile} | {c['candidates_per_gpu_hour']:.2f} | {c['gpus_before_db_saturates']:,.0f} | "
                     f"{c['gpus_before_one_llm_stream_saturates']:,.0f} | {c['data_generation_share_of_candidate_time']:.2%} |")
    lines += ["", "Data are generated inside each evaluation (on its worker), so they scale with the workers. The first",
              "ceiling is therefore the language model: one proposal stream at 60 s per proposal keeps about",
              f"{ceilings['quick']['gpus_before_one_llm_stream_saturates']:.0f} GPUs busy on `quick`; beyond that, run several proposal "
              "threads (`--proposal-threads`) within the endpoint's rate limit (`--llm-rate`)."]
    (ROOT / "results" / "scale_sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
