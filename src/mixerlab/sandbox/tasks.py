"""What the sandbox worker does with a candidate: run checks 2-7, or train it. Runs inside the worker."""

from __future__ import annotations

import time
from typing import Any, Callable

from mixerlab.check import dynamic
from mixerlab.check.report import CheckResult
from mixerlab.mixers.loading import MixerSpec

Send = Callable[[dict], None]


def run_checks(spec: MixerSpec, options: dict[str, Any], send: Send) -> None:
    d_model = options.get("d_model", 128)

    def emit(result: CheckResult, started: float) -> bool:
        result = result.model_copy(update={"seconds": time.perf_counter() - started})
        send({"type": "check", "result": result.model_dump()})
        return result.passed

    send({"type": "start", "name": "instantiate"})
    started = time.perf_counter()
    try:
        cls = spec.load_class()
    except Exception as err:  # a MixerLoadError or anything the module's top level raised
        emit(CheckResult.fail("instantiate", str(err)), started)
        return
    result, module = dynamic.check_instantiate(cls, d_model, options["reference_params"], options.get("budget", 0.5))
    if not emit(result, started):
        return
    for name, check in (("forward", dynamic.check_forward), ("backward", dynamic.check_backward),
                        ("causality", dynamic.check_causality), ("cost", dynamic.check_cost),
                        ("determinism", dynamic.check_determinism)):
        send({"type": "start", "name": name})
        started = time.perf_counter()
        try:
            result = check(module, d_model)
        except Exception as err:
            result = CheckResult.fail(name, f"raised {type(err).__name__}: {str(err)[:300]}")
        if not emit(result, started):
            return


def run_evaluation(spec: MixerSpec, options: dict[str, Any], send: Send) -> None:
    from mixerlab.config import get_profile
    from mixerlab.evaluate.runner import EvalOptions, evaluate_mixer
    from mixerlab.tasks import parse_task

    profile = get_profile(options["profile"])
    eval_options = EvalOptions(
        tasks=tuple(parse_task(t) for t in options["tasks"]),
        seeds=options.get("seeds", 1),
        device=options.get("device", "cpu"),
        time_limit=options.get("time_limit"),
        train_overrides=options.get("train_overrides", {}),
    )
    known = set(options.get("skip_keys", []))

    class Skip:  # finished trainings the parent already has: a tiny in-memory cache
        def get_many(self, keys):
            from mixerlab.train.result import TrainResult

            return {k: TrainResult.model_validate(v) for k, v in options.get("cached", {}).items() if k in set(keys)}

        def put(self, result, mixer_hash, mixer_name):
            if result.key not in known:
                send({"type": "training", "result": result.model_dump(mode="json")})

    report = evaluate_mixer(spec, profile, eval_options, cache=Skip())
    send({"type": "report", "report": report.model_dump(mode="json")})
