"""The sandbox's layers one by one, each holding on its own: OS-level confinement with the audit hook off,
the signed message channel, the trusted scorer (same numbers as in-process, probes that catch a leak the
checks were not run on), the integrity snapshot, and the worker's errors reaching the caller."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from mixerlab.config import get_profile
from mixerlab.evaluate.runner import EvalOptions, evaluate_mixer
from mixerlab.evaluate.sandboxed import evaluate_untrusted
from mixerlab.mixers import builtin_spec, template_source
from mixerlab.mixers.loading import MixerSpec, spec_from_file
from mixerlab.sandbox import SandboxLimits, run_sandboxed
from mixerlab.sandbox.confine import landlock_abi
from mixerlab.tasks import Task

pytestmark = pytest.mark.slow
LIMITS = SandboxLimits(timeout_s=300, memory_gb=3.0)
EVAL_LIMITS = SandboxLimits(timeout_s=600, memory_gb=6.0, output_bytes=10_000_000)
HOSTILE = Path(__file__).parent / "candidates" / "hostile"
RECALL = EvalOptions(tasks=(Task.context_recall,))


def raw(source: str, **limits) -> object:
    """Code straight into the worker, with the audit hook off: only the OS-level confinement holds it."""
    return run_sandboxed({"kind": "run", "source": source, "lock_down": False}, replace(LIMITS, **limits))


def test_this_machine_confines_below_python() -> None:
    outcome = raw("send({'type': 'alive'})")
    assert outcome.status == "ok", outcome.output_tail
    assert landlock_abi() >= 1 and outcome.confinement["landlock_abi"] >= 1 and outcome.confinement["seccomp"]
    assert outcome.confinement["missing"] == []


def test_the_kernel_refuses_writes_outside_scratch_with_the_audit_hook_off(tmp_path: Path) -> None:
    target, via_torch = tmp_path / "written.txt", tmp_path / "from_file.bin"
    code = (f"import torch\nfor write in (lambda: open({str(target)!r}, 'w').write('x'),\n"
            f"              lambda: torch.from_file({str(via_torch)!r}, shared=True, size=16)):\n"
            "    try:\n        write()\n        send({'type': 'wrote'})\n"
            "    except (PermissionError, RuntimeError) as err:\n        send({'type': 'refused', 'why': str(err)[:200]})\n")
    outcome = raw(code)
    assert outcome.status == "ok", outcome.output_tail
    assert [m["type"] for m in outcome.messages if m["type"] in ("wrote", "refused")] == ["refused", "refused"]
    assert not target.exists() and not via_torch.exists()
    inside = raw("open('inside.txt', 'w').write('ok')\nsend({'type': 'wrote'})")
    assert {"type": "wrote"} in inside.messages


def test_the_kernel_refuses_the_network_and_the_parent_with_the_audit_hook_off() -> None:
    code = ("import os, socket\nfor name, act in (('tcp', lambda: socket.create_connection(('127.0.0.1', 9), timeout=1)),\n"
            "                  ('udp', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),\n"
            "                  ('signal', lambda: os.kill(os.getppid(), 0)),\n"
            "                  ('parent proc', lambda: open(f'/proc/{os.getppid()}/comm', 'w').write('hijacked'))):\n"
            "    try:\n        act()\n        send({'type': 'allowed', 'what': name})\n"
            "    except OSError as err:\n        send({'type': 'refused', 'what': name, 'errno': err.errno})\n")
    outcome = raw(code)
    assert outcome.status == "ok", outcome.output_tail
    refused = {m["what"] for m in outcome.messages if m["type"] == "refused"}
    assert refused == {"tcp", "udp", "signal", "parent proc"}, outcome.messages


def test_a_frame_without_the_key_stops_the_worker() -> None:
    code = ("import os, json, struct\nheader = json.dumps({'type': 'check', 'result': {'name': 'instantiate', "
            "'status': 'pass', 'reason': 'ok'}}).encode()\n"
            "os.write(int(os.environ['MIXERLAB_SANDBOX_FD']), struct.pack('>IQ32s', len(header), 0, bytes(32)) + header)\n"
            "import time\ntime.sleep(5)\n")
    outcome = raw(code)
    assert outcome.status == "protocol" and "wrong signature" in outcome.protocol_error
    assert not any(m.get("type") == "check" for m in outcome.messages)


def test_the_worker_imports_what_the_parent_can(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "only_on_the_parents_path.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a PYTHONPATH folder, not a site-packages one
    outcome = run_sandboxed({"kind": "run", "source": "import only_on_the_parents_path as m\nsend({'type': 'v', 'v': m.VALUE})"},
                            LIMITS)
    assert {"type": "v", "v": 42} in outcome.messages, outcome.output_tail


def test_the_worker_never_runs_more_threads_than_the_callers_cpus() -> None:
    """A caller pinned to one CPU (a test worker, a `taskset`) gets a one-thread worker, whatever the limit asks."""
    source = "import torch\nsend({'type': 'threads', 'v': torch.get_num_threads()})"
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        pinned = run_sandboxed({"kind": "run", "source": source}, replace(LIMITS, cpu_threads=4))
    finally:
        os.sched_setaffinity(0, before)
    assert {"type": "threads", "v": 1} in pinned.messages, pinned.output_tail
    assert replace(LIMITS, cpu_threads=4).threads == min(4, len(before))


def test_sandboxed_scores_equal_in_process_scores_exactly() -> None:
    """Two workers, each training its share of the trainings at once (options.workers), one of them training its
    two groups at once in threads that share its channel (options.concurrent_groups): the parent's scores of
    their logits equal the in-process scores bit for bit."""
    spec, profile = builtin_spec("delta_net"), get_profile("tiny")
    options = EvalOptions(tasks=(Task.memorize, Task.compress, Task.context_recall))  # cheap; both backbones
    here = evaluate_mixer(spec, profile, options)
    there = evaluate_untrusted(spec, profile, replace(options, workers=2, concurrent_groups=2), EVAL_LIMITS)
    assert there.ok, there.error
    assert there.workers == 2 and len(there.trainings) == here.trainings  # every training, scored once
    assert there.report.row() == here.row()  # the worker's logits, scored by the parent: bit for bit
    assert there.audit["probes_checked"] > 0 and there.audit["largest_probe_change"] == 0.0
    assert {t.device for t in there.trainings} == {"cpu"}


def test_a_spare_that_trained_its_warm_up_ahead_scores_exactly_as_in_process() -> None:
    """A spare evaluation worker trains the DeltaNet template briefly at the profile's shapes while it waits
    (SandboxLimits.ahead, evaluate/remote.py warm_up_training): the candidate's trainings after it are the same,
    bit for bit, as in a process that never trained anything else."""
    from mixerlab.sandbox import close_spares

    spec, profile = builtin_spec("delta_net"), get_profile("smoke")
    options = EvalOptions(tasks=(Task.memorize, Task.compress))
    here = evaluate_mixer(spec, profile, options)
    limits = replace(EVAL_LIMITS, spare=True, ahead=("train-warm-up:smoke",))
    close_spares()
    try:
        for _ in range(2):  # a fresh worker (the warm-up before its request), then the spare it left waiting
            there = evaluate_untrusted(spec, profile, options, limits)
            assert there.ok, there.error
            assert there.report.row() == here.row()
    finally:
        close_spares()


@pytest.mark.parametrize("filename, workers, concurrent", [("leak_in_eval_mode.py", 2, 1), ("batch_aware_leak.py", 1, 1),
                                                      ("leak_in_eval_mode.py", 1, 2)])
def test_the_scored_evaluation_catches_a_leak_the_checks_never_saw(filename: str, workers: int, concurrent: int) -> None:
    """batch_aware_leak.py looks ahead only on rows no other row of its forward call shares a prefix with, once
    trained: it passed the audit while probes were scored beside their examples (its score was recorded). With
    two workers, or two groups at once in one worker, the leak is named, not the stop it caused beside it."""
    tasks = (Task.context_recall, Task.memorize)[: max(workers, concurrent)]  # a training for each worker or group
    result = evaluate_untrusted(spec_from_file(HOSTILE / filename), get_profile("tiny"),
                                replace(RECALL, tasks=tasks, workers=workers, concurrent_groups=concurrent), EVAL_LIMITS)
    assert not result.ok and "causality audit failed during the scored evaluation" in result.error
    assert result.workers == workers
    if workers == concurrent == 1:
        assert result.trainings == []


@pytest.mark.parametrize("filename", ["patch_argmax.py", "patch_through_a_method.py"])
def test_a_patch_of_torch_stops_the_evaluation(filename: str) -> None:
    result = evaluate_untrusted(spec_from_file(HOSTILE / filename), get_profile("tiny"), RECALL, EVAL_LIMITS)
    assert not result.ok and "IntegrityError" in result.error and "torch.Tensor.argmax" in result.error


def test_the_workers_own_error_reaches_the_caller() -> None:
    source = template_source("delta_net").replace(
        "        batch, length, d_model = x.shape\n",
        "        batch, length, d_model = x.shape\n        if self.training:\n"
        "            raise RuntimeError(\"boom while training\")\n", 1)
    result = evaluate_untrusted(MixerSpec("boom", source, "boom.py"), get_profile("tiny"), RECALL, EVAL_LIMITS)
    assert not result.ok and "RuntimeError: boom while training" in result.error
    assert "Traceback" in result.error or "File " in result.error  # the end of the worker's traceback


def test_a_worker_exiting_early_is_no_success() -> None:
    outcome = raw("import os\nos._exit(0)")
    assert outcome.status == "crash" and "before it finished" in outcome.error



def test_a_spare_worker_serves_the_next_run_once_and_fresh() -> None:
    """With `spare`, a run leaves started workers (SPARES_PER_KIND) waiting for the next runs of the same limits:
    the next run gets the oldest (another process than the first, in its own scratch folder, confined), it is
    never reused, the waiting ones are topped up, and `close_spares` stops those left waiting."""
    from mixerlab.sandbox import _SPARES, SPARES_PER_KIND, close_spares

    source = ("import os, pathlib\nleft = sorted(p.name for p in pathlib.Path('.').iterdir())\n"
              "pathlib.Path('mine.txt').write_text('x')\n"
              "try:\n    open('/tmp/outside-the-scratch.txt', 'w')\n    wrote = True\nexcept OSError:\n    wrote = False\n"
              "send({'type': 'me', 'pid': os.getpid(), 'left': left, 'wrote_outside': wrote})")
    limits = replace(LIMITS, spare=True, timeout_s=100)
    close_spares()
    try:
        first = run_sandboxed({"kind": "run", "source": source}, limits)
        [waiting] = _SPARES.values()
        assert len(waiting) == SPARES_PER_KIND >= 2
        oldest = waiting[0].proc.pid
        second = run_sandboxed({"kind": "run", "source": source}, replace(limits, timeout_s=200))  # same kind of limits
        me = [next(m for m in o.messages if m["type"] == "me") for o in (first, second)]
        assert first.status == second.status == "ok"
        assert me[1]["pid"] == oldest != me[0]["pid"]
        assert "mine.txt" not in me[1]["left"] and not me[1]["wrote_outside"]  # nothing of the first run; confined
        [waiting] = _SPARES.values()
        assert len(waiting) == SPARES_PER_KIND and not {w.proc.pid for w in waiting} & {me[0]["pid"], me[1]["pid"]}
        spares = [w.proc for w in waiting]
    finally:
        close_spares()
    assert not _SPARES and all(spare.poll() is not None for spare in spares)


def test_spares_started_ahead_serve_the_first_run() -> None:
    """`start_spares` fills the pool before any request (the loop does so before its baselines train), so the first
    run of that kind is served by a waiting worker, not a fresh start; limits without `spare` start nothing."""
    from mixerlab.sandbox import _SPARES, SPARES_PER_KIND, close_spares, start_spares

    source = "import os\nsend({'type': 'me', 'pid': os.getpid()})"
    close_spares()
    try:
        start_spares(replace(LIMITS, timeout_s=100))
        assert not _SPARES
        limits = replace(LIMITS, spare=True, timeout_s=100)
        start_spares(limits)
        start_spares(limits)  # already full: no more
        [waiting] = _SPARES.values()
        assert len(waiting) == SPARES_PER_KIND
        ahead = [w.proc.pid for w in waiting]
        first = run_sandboxed({"kind": "run", "source": source}, replace(limits, timeout_s=50))
        assert first.status == "ok"
        assert next(m for m in first.messages if m["type"] == "me")["pid"] == ahead[0]
    finally:
        close_spares()


def test_the_spares_prepare_starts_are_the_kinds_checks_and_evaluations_take(monkeypatch) -> None:
    """The local executor's `prepare` on a GPU starts spares under the very key (limits and shared-memory slot) that
    its checks and evaluations then ask for; a mismatch would leave them waiting unused. No GPU needed: the pool is
    observed, no worker is started."""
    import mixerlab.sandbox as sandbox
    from mixerlab.executor import EvaluationJob
    from mixerlab.executor.local import LocalExecutor
    from mixerlab.mixers import MixerSpec, builtin_spec

    started, taken = [], []
    monkeypatch.setattr(sandbox, "_top_up", lambda key, limits, slot_bytes: started.append(key))

    def take(limits, slot_bytes):
        taken.append(sandbox._spare_key(limits, slot_bytes))
        return "no worker in this test"

    monkeypatch.setattr(sandbox, "_take", take)
    executor = LocalExecutor(device="cuda", gpus=1)
    executor.prepare("tiny")
    template = builtin_spec("delta_net")
    edit = ("u_i = u[:, :, i] - w[:, :, i] @ state", "u_i = torch.tanh(u[:, :, i] - w[:, :, i] @ state)")
    assert edit[0] in template.source
    spec = MixerSpec("tanh_on_error", template.source.replace(*edit), "tanh_on_error.py")  # new code: passes novelty
    report = executor.check(spec, {}, slot=0)
    assert report.checks[1].name == "novelty" and report.checks[1].status == "pass"
    outcome = executor.evaluate(spec, EvaluationJob(profile="tiny", tasks=["memorize"], timeout_s=600.0),
                                lambda result: None, slot=0)
    assert not outcome.ok and "no worker in this test" in (outcome.error or "")
    assert len(started) == 2 and started[0] != started[1]
    assert taken == started  # the checks' kind, then the evaluation's
