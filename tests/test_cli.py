"""`mixerlab` end to end, through a real subprocess: output, JSON, cache reuse. User errors in-process through
typer's CliRunner (`invoke`): the same command, without a Python start per case; `check missing.py` keeps one
subprocess to show the exit status a shell sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixerlab.check import CHECK_ORDER
from mixerlab.config import PROFILES
from mixerlab.table import parse_table
from mixerlab.tasks import Task


def mixerlab(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mixerlab.cli", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=600,
    )


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def invoke(*args: str, env: dict | None = None):
    from typer.testing import CliRunner

    from mixerlab.cli import app

    return CliRunner().invoke(app, list(args), env=env)


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit 2 with the message, and no exception escaping the command (a traceback would be one)."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.mark.slow
def test_eval_prints_the_seed_table_writes_json_and_reuses_the_cache(tmp_path: Path) -> None:
    env = {"MIXERLAB_CACHE": str(tmp_path / "c.sqlite")}
    out = tmp_path / "report.json"
    first = mixerlab("eval", "--mixer", "delta_net", "--profile", "tiny", "--tasks", "memorize,context_recall",
                     "--device", "cpu", "--json", str(out), env=env)
    assert first.returncode == 0, first.stderr
    table = parse_table(first.stdout.split("\ntiny profile")[0])
    assert list(table["Unnamed: 0"]) == ["delta_net_4layer"]
    assert 0.2 < table["Memorize"][0] <= 1.0 and table["Context Recall"][0] > 0.5
    assert table[["Compress", "Fuzzy Recall"]].isna().all().all()
    report = json.loads(out.read_text())
    assert report["trained_now"] == 2 and report["from_cache"] == 0
    assert set(report["tasks"]) == {"memorize", "context_recall"}

    again = mixerlab("eval", "--mixer", "delta_net", "--profile", "tiny", "--tasks", "memorize,in-context-recall",
                     "--device", "cpu", "--json", str(out), env=env)
    assert again.returncode == 0
    report2 = json.loads(out.read_text())
    assert report2["trained_now"] == 0 and report2["from_cache"] == 2
    assert report2["tasks"]["memorize"]["mean"] == report["tasks"]["memorize"]["mean"]

    # with a patience the trainings are new ones (own cache keys), read off the first epochs of those above
    patient = mixerlab("eval", "--mixer", "delta_net", "--profile", "tiny", "--tasks", "memorize,context_recall",
                       "--device", "cpu", "--patience", "2", "--json", str(out), env=env)
    assert patient.returncode == 0, patient.stderr
    report3 = json.loads(out.read_text())
    assert (report3["trained_now"], report3["from_cache"], report3["from_longer"], report3["patience"]) == (0, 2, 2, 2)
    assert "patience 2 epochs" in patient.stdout and "read off the first epochs" in patient.stdout
    info = mixerlab("cache", "info", "--profile", "tiny", "--patience", "2", env={**env, "COLUMNS": "160"})
    assert info.returncode == 0, info.stderr
    rows = {cells[0]: cells[1:] for line in info.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip().strip("│").split("│")]) == 6}
    assert rows["context_recall"][:3] == ["1/1", "1/1", f"{report3['tasks']['context_recall']['mean']:.4f}"]
    assert "`tiny` sweep, patience 2" in info.stdout
    assert_one_line_error(invoke("cache", "info", "--patience", "2", env=env), "--patience", "give --profile too")

    # how far the `tiny` sweep got: two of its six tasks, each one training (a finished task has no range)
    info = mixerlab("cache", "info", "--profile", "tiny", env={**env, "COLUMNS": "160"})
    assert info.returncode == 0, info.stderr
    rows = {cells[0]: cells[1:] for line in info.stdout.splitlines()
            if len(cells := [c.strip() for c in line.strip().strip("│").split("│")]) == 6}
    assert rows["memorize"] == ["1/1", "1/1", f"{report['tasks']['memorize']['mean']:.4f}", "", "0"]
    fuzzy = PROFILES["tiny"].settings[Task.fuzzy_recall][0]
    steps = -(-fuzzy.num_train // PROFILES["tiny"].train.batch_size) * PROFILES["tiny"].train.max_epochs
    # not run yet: the score can still end anywhere
    assert rows["fuzzy_recall"] == ["0/1", "0/1", "-", "0.0000-1.0000", f"{steps * PROFILES['tiny'].train.batch_size * fuzzy.input_len:,}"]
    assert "CPU, fp32" in info.stdout and "`tiny` sweep" in info.stdout
    assert_one_line_error(invoke("cache", "info", "--profile", "ful", env=env), "unknown profile 'ful'", "use one of")


def test_seeds_give_mean_and_std(tmp_path: Path) -> None:
    proc = mixerlab("eval", "--profile", "tiny", "--tasks", "memorize", "--seeds", "2", "--device", "cpu",
                    "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    score = json.loads((tmp_path / "r.json").read_text())["tasks"]["memorize"]
    assert len(score["seeds"]) == 2 and score["seeds"][0] != score["seeds"][1]
    assert score["std"] > 0
    assert "+-" in proc.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--profile", "huge"], ["unknown profile 'huge'", "tiny"]),
        (["--tasks", "recal"], ["unknown task 'recal'"]),
        (["--mixer", "deltanet"], ["unknown mixer 'deltanet'"]),
        (["--mixer", "no/such/file.py"], ["does not exist"]),
        (["--device", "tpu"], ["unknown device 'tpu'"]),
        (["--lr-schedule", "linear"], ["unknown lr schedule 'linear'"]),
        (["--init", "xavier"], ["unknown init 'xavier'", "normal", "fla-xavier"]),
        (["--init-seed", "layer"], ["unknown init seed 'layer'", "setting or run"]),
        (["--compile", "--device", "cpu"], ["--compile", "CUDA"]),
        (["--max-seq-len", "0"], ["--max-seq-len 0", "greater than or equal to 1"]),
        (["--patience", "0"], ["--patience 0", "greater than or equal to 1"]),
        # brackets in the message are text, not rich markup: the example label must come through whole
        (["--profile", "full", "--tasks", "selective_copy", "--settings", "vocab=128"],
         ["unknown setting 'vocab=128'", "vocab_size=128", "selective_copy[num_tokens_to_copy=96]"]),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(invoke("eval", *args), *fragments)


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("def f(:\n", "syntax error"),
        ("x = 1\n", "no mixer class"),
        ("import torch\nfrom torch import nn\nclass DeltaNet(nn.Module):\n    def __init__(self, d_model):\n        super().__init__()\n"
         "        self.w = nn.Linear(d_model, 4 * d_model)\n    def forward(self, x):\n        return self.w(x).sum(-1)\n",
         "must have the input's shape"),
    ],
)
def test_bad_mixer_files(tmp_path: Path, source: str, fragment: str) -> None:
    path = tmp_path / "candidate.py"
    path.write_text(source)
    assert_one_line_error(invoke("eval", "--mixer", str(path), "--profile", "tiny"), fragment)


@pytest.mark.slow
def test_eval_of_a_file_runs_it_in_the_sandbox_unless_trusted(tmp_path: Path) -> None:
    """`eval FILE.py` checks the file and trains it in the sandbox: its code never runs in the eval process. The
    file prints a marker when imported; the sandbox keeps the worker's output, --trusted imports it here."""
    from mixerlab.mixers import template_source

    path = tmp_path / "marked.py"
    path.write_text(template_source("delta_net") + '\nprint("IMPORTED-IN-THIS-PROCESS")\n')
    args = ["eval", "--mixer", str(path), "--profile", "tiny", "--tasks", "memorize", "--no-cache"]
    sandboxed, trusted = mixerlab(*args), mixerlab(*args, "--trusted")
    assert sandboxed.returncode == 0 and trusted.returncode == 0, sandboxed.stderr + trusted.stderr
    assert "IMPORTED-IN-THIS-PROCESS" not in sandboxed.stdout + sandboxed.stderr
    assert "in the sandbox" in sandboxed.stderr
    assert "IMPORTED-IN-THIS-PROCESS" in trusted.stdout
    score = lambda out: out.split("Memorize")[1].split("\n")[1]  # noqa: E731 - the row under the header
    assert score(sandboxed.stdout) == score(trusted.stdout)  # scored on the trusted side, the same numbers


@pytest.mark.slow
def test_check_exit_codes_and_json(tmp_path: Path) -> None:
    candidates = Path(__file__).parent / "candidates"
    bad = mixerlab("check", str(candidates / "reversed_cumsum.py"))
    assert bad.returncode == 1 and "FAIL" in bad.stdout and "after position" in bad.stdout
    good = mixerlab("check", "delta_net", "--json")
    assert good.returncode == 0
    report = json.loads(good.stdout)
    assert [c["status"] for c in report["checks"]] == ["pass"] * len(CHECK_ORDER)
    assert_user_error(mixerlab("check", "missing.py"), "does not exist")
    assert_one_line_error(invoke("check"), "Missing argument")


def test_serve_history_and_report_bad_input(tmp_path: Path) -> None:
    assert_one_line_error(invoke("serve", "--db", f"sqlite:///{tmp_path}/missing.db"), "no database at")
    assert_one_line_error(invoke("serve"), "give --db URL or --run-dir DIR")
    assert_one_line_error(invoke("report", "--out", str(tmp_path / "r"), "--run-dir", str(tmp_path)), "no database at")
    assert_one_line_error(invoke("history", "--db", "mysql://x/y"), "unsupported database 'mysql'")
    assert_one_line_error(invoke("history", "--run-dir", str(tmp_path), "--format", "xml"), "unknown format 'xml'")


@pytest.mark.slow
def test_cache_import_export_round_trip_and_bad_file(tmp_path: Path) -> None:
    committed = Path(__file__).parents[1] / "benchmarks" / "results" / "cache" / "gpu_results.jsonl.gz"
    proc = mixerlab("cache", "import", str(committed), "--cache", str(tmp_path / "a.sqlite"))
    assert proc.returncode == 0 and "imported" in proc.stdout, proc.stderr
    n = int(proc.stdout.split("imported ")[1].split()[0])
    proc = mixerlab("cache", "import", str(tmp_path / "a.sqlite"), "--cache", str(tmp_path / "b.sqlite"))
    assert proc.returncode == 0 and f"imported {n} trainings" in proc.stdout, proc.stderr
    proc = mixerlab("cache", "export", str(tmp_path / "b.jsonl"), "--cache", str(tmp_path / "b.sqlite"))
    assert proc.returncode == 0 and len((tmp_path / "b.jsonl").read_text().splitlines()) == n
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert_user_error(mixerlab("cache", "import", str(tmp_path / "image.png"), "--cache", str(tmp_path / "b.sqlite")),
                      "not a JSON lines file", "mixerlab cache export")


def test_cache_readers_refuse_a_missing_cache_instead_of_creating_one(tmp_path: Path) -> None:
    missing = tmp_path / "typo.sqlite"
    for args in (("export", str(tmp_path / "out.jsonl")), ("pack-checkpoints", str(tmp_path / "packed"))):
        assert_one_line_error(invoke("cache", *args, "--cache", str(missing)), "no cache at", "pass --cache")
    assert not missing.exists() and not (tmp_path / "out.jsonl").exists() and not (tmp_path / "packed").exists()


def test_a_partial_row_says_how_far_each_unfinished_task_can_still_move(tmp_path: Path) -> None:
    env = {"MIXERLAB_CACHE": str(tmp_path / "c.sqlite")}
    out = tmp_path / "report.json"
    # tiny's memorize setting is 16 tokens long, context_recall's 32: --max-seq-len 16 leaves the latter out
    proc = mixerlab("eval", "--mixer", "delta_net", "--profile", "tiny", "--tasks", "memorize,context_recall",
                    "--device", "cpu", "--max-seq-len", "16", "--json", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["unfinished"] == {"context_recall": {"done": 0, "planned": 1, "score_range": [0.0, 1.0]}}
    assert "context_recall: 0 of 1 trainings; can end in 0.0000-1.0000" in proc.stdout
    assert "memorize:" not in proc.stdout.split("Selective Copy")[1]  # a finished task gets no such line
    assert "1 of 2 trainings were left out" in proc.stderr


@pytest.mark.slow
def test_cache_info_mixer_narrows_the_sweep_tables(tmp_path: Path) -> None:
    committed = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cache" / "gpu_results.jsonl.gz"
    env = {"MIXERLAB_CACHE": str(tmp_path / "c.sqlite"), "COLUMNS": "160"}
    assert mixerlab("cache", "import", str(committed), env=env).returncode == 0
    listed = mixerlab("cache", "info", env=env).stdout
    delta_hash = next(line.split("(")[1].split(")")[0] for line in listed.splitlines()
                      if line.strip().startswith("delta_net_4layer ("))

    def sweeps(*args: str) -> list[str]:
        proc = mixerlab("cache", "info", "--profile", "full", *args, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "gdn_v1 (" in proc.stdout  # the counts still list every mixer
        return [line.split(" (")[0] for line in proc.stdout.splitlines() if "`full` sweep" in line]

    assert {"delta_net_4layer", "gated_delta_net_4layer", "gdn_v1"} <= set(sweeps())
    assert sweeps("--mixer", "gated_delta_net") == ["gated_delta_net_4layer"]  # a built-in name
    assert sweeps("--mixer", delta_hash[:6], "--mixer", "gdn_v1") == ["delta_net_4layer", "gdn_v1"]
    assert_user_error(mixerlab("cache", "info", "--mixer", "gdn_v2", env=env),
                      "no mixer 'gdn_v2' in this cache", "gated_delta_net_4layer", "pass --mixer")


def test_the_eval_options_are_declared_once_in_their_model() -> None:
    """`mixerlab eval`'s options are generated from EvalArgs: every field is an option with the model's flag,
    default and description, and nothing else is."""
    import inspect

    from mixerlab.cli.evaluate import EvalArgs, eval_command

    options = inspect.signature(eval_command).parameters
    assert list(options) == list(EvalArgs.model_fields)
    for name, info in EvalArgs.model_fields.items():
        option = options[name].default
        assert option.param_decls == (EvalArgs.flag(name),) and option.default == info.default
        assert option.help == info.description and option.help
    assert options["only_keys"].default.hidden and not options["seeds"].default.hidden
