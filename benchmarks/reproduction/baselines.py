"""Write benchmarks/results/baselines.{md,json}: our DeltaNet / Gated DeltaNet scores beside the seed rows.

Reads finished trainings from a result cache (default: the committed GPU results, imported into a
temporary cache) and reports, for `full` (1 seed) and `baseline` (3 seeds), every task's score, the seed
row, the difference, and how many of the protocol's trainings are done (a partial sweep is labelled so);
and the cheaper variants read off the `full` trainings without training (`quick`, `--patience P`), with
their score differences from `full` and their share of its training tokens.

    python benchmarks/reproduction/baselines.py [--cache FILE.sqlite] [--import FILE.jsonl.gz ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.config import PROFILES, Profile  # noqa: E402
from mixerlab.evaluate import ResultCache, aggregate  # noqa: E402
from mixerlab.evaluate.plan import plan_jobs  # noqa: E402
from mixerlab.evaluate.prefix import find_finished  # noqa: E402
from mixerlab.evaluate.runner import task_progress  # noqa: E402
from mixerlab.mixers import resolve_mixer  # noqa: E402
from mixerlab.reproduction import SEED_ROWS, target_checks, target_lines  # noqa: E402
from mixerlab.tasks import TASK_ORDER  # noqa: E402
from mixerlab.web.charts import score_grid  # noqa: E402

RUNS = {"full": 1, "baseline": 3}


def collect(cache: ResultCache, **overrides) -> dict:
    """Scores per profile, model and task from the cached trainings; `overrides` change the TrainConfig
    (e.g. lr_schedule="cosine", init="normal") to collect a variant's trainings instead of the protocol's."""
    out: dict = {}
    for profile_name, seeds in RUNS.items():
        profile = PROFILES[profile_name]
        train = profile.train.model_copy(update=overrides)
        out[profile_name] = {}
        for mixer in ("delta_net", "gated_delta_net"):
            spec = resolve_mixer(mixer)
            model = {}
            for task in TASK_ORDER:
                jobs = plan_jobs(profile, (task,), seeds)
                keys = [j.cache_key(spec.code_hash, train, "bf16") for j in jobs]
                found = cache.get_many(keys)
                if not found:
                    continue
                score = aggregate(list(found.values()))[task.value]
                runs = Counter(r.setting for r in found.values())
                model[task.value] = {"mean": score.mean, "std": score.std, "seeds": score.seeds,
                                     "settings": [{**s.model_dump(), "trainings_done": runs[s.setting],
                                                   "trainings_planned": len(jobs) // len(profile.settings[task])}
                                                  for s in score.settings],
                                     "trainings_done": len(found), "trainings_planned": len(jobs),
                                     "complete": len(found) == len(jobs),
                                     "seed_row": SEED_ROWS[spec.name][task.value],
                                     "difference": score.mean - SEED_ROWS[spec.name][task.value],
                                     "final_range": list(task_progress(jobs, dict(zip(jobs, keys)), found)
                                                         [task.value].score_range)}
            out[profile_name][spec.name] = model
    return out


def training_tokens(results: dict, jobs: dict, batch_size: int) -> int:
    """Tokens the trainings `results` (by key) ran: steps x batch x their job's input length."""
    return sum(r.steps * batch_size * jobs[key].setting.input_len for key, r in results.items())


PATIENCES = (10, 20, 30, 50)  # `--patience` values read off the `full` trainings (below)


def read_off_full(cache: ResultCache, variant: Profile) -> dict:
    """A cheaper variant of `full` per model and task, read off the cached `full` trainings (evaluate/prefix.py:
    `quick` is full's jobs up to 256 tokens, lr 5e-4/1e-3, wd 0, and their first 100 epochs; a patience ends
    the same trainings sooner), beside `full` itself, with what each costs in optimiser steps and training
    tokens. Only settings whose six `full` trainings are all in are compared: a partial task compares the
    variant and `full` on those settings alone (and says so)."""
    full = PROFILES["full"]
    out: dict = {}
    for mixer in ("delta_net", "gated_delta_net"):
        spec = resolve_mixer(mixer)
        model = {}
        for task in TASK_ORDER:
            full_keys = {j.cache_key(spec.code_hash, full.train, "bf16"): j for j in plan_jobs(full, (task,), 1)}
            full_got = cache.get_many(full_keys)
            per_setting = Counter(full_keys[k].setting.label for k in full_got)
            complete = {label for label, n in per_setting.items() if n == len(full.lrs) * len(full.weight_decays)}
            variant_jobs = [j for j in plan_jobs(variant, (task,), 1) if j.setting.label in complete]
            if not variant_jobs:
                continue
            variant_keys = {j.cache_key(spec.code_hash, variant.train, "bf16"): j for j in variant_jobs}
            got = find_finished(cache, variant_jobs, spec.code_hash, variant.train, "bf16")
            full_got = {k: r for k, r in full_got.items() if full_keys[k].setting.label in complete}
            score = aggregate(list(got.values()))[task.value].mean
            full_score = aggregate(list(full_got.values()))[task.value].mean
            model[task.value] = {
                "mean": score, "full_mean": full_score, "difference_from_full": score - full_score,
                "trainings_done": len(got), "trainings_planned": len(variant_jobs),
                "settings_compared": len(complete), "settings_in_full": len(full.settings[task]),
                "complete": len(got) == len(variant_jobs) and len(complete) == len(full.settings[task]),
                "member_steps": sum(r.steps for r in got.values()),
                "full_member_steps": sum(r.steps for r in full_got.values()),
                "tokens": training_tokens(got, variant_keys, full.train.batch_size),
                "full_tokens": training_tokens(full_got, full_keys, full.train.batch_size),
            }
        out[spec.name] = model
    return out


def with_patience(patience: int) -> Profile:
    full = PROFILES["full"]
    return full.model_copy(update={"name": f"full-patience{patience}",
                                   "train": full.train.model_copy(update={"patience": patience})})


def quick_lines(quick: dict) -> list[str]:
    rows = [(m, t, c) for m, tasks in quick.items() for t, c in tasks.items()]
    if not rows:
        return []
    lines = ["## `quick` against `full`", "",
             "`quick` (settings up to 256 tokens, lr {5e-4, 1e-3}, wd 0, 100 epochs, patience 20) read off the `full`",
             "trainings above: with a constant learning rate a 100-epoch training is the first 100 epochs of the",
             "200-epoch one (same init, data and steps), and the patience ends it where its epoch history says, so",
             "these are exact, not re-trained (`src/mixerlab/evaluate/prefix.py`). The patience was chosen here: 20",
             "keeps every cell within 0.05 of `full` (15 does not: gated selective copy -0.054) for 69% of the tokens",
             "of `quick` without it.",
             "Cost is what the trainings actually ran (early stops included): optimiser steps summed over trainings,",
             "and training tokens (steps x batch x length), the better proxy for GPU time. Where `full` is partial,",
             "both sides cover only its settings whose six trainings are in (so named).", "",
             "| model | task | quick | full | quick - full | trainings | steps, share of full | tokens, share of full |",
             "|---|---|---|---|---|---|---|---|"]
    for model, task, c in rows:
        flag = "" if c["complete"] else f" ({c['settings_compared']} of {c['settings_in_full']} settings)"
        lines.append(f"| {model} | {task} | {c['mean']:.4f}{flag} | {c['full_mean']:.4f} | {c['difference_from_full']:+.4f} | "
                     f"{c['trainings_done']}/{c['trainings_planned']} | {c['member_steps']:,} "
                     f"({c['member_steps'] / c['full_member_steps']:.0%}) | {c['tokens'] / 1e9:.2f}G "
                     f"({c['tokens'] / c['full_tokens']:.0%}) |")
    steps = sum(c["member_steps"] for _, _, c in rows), sum(c["full_member_steps"] for _, _, c in rows)
    tokens = sum(c["tokens"] for _, _, c in rows), sum(c["full_tokens"] for _, _, c in rows)
    lines += ["", f"Over these cells `quick` costs {steps[0] / steps[1]:.0%} of `full`'s optimiser steps and "
              f"{tokens[0] / tokens[1]:.0%} of its training tokens.", ""]
    return lines


def patience_lines(by_patience: dict) -> list[str]:
    """`full --patience P` against `full`, every P in one table: score difference and share of training tokens."""
    cells = [(m, t) for m, tasks in next(iter(by_patience.values()), {}).items() for t in tasks]
    if not cells:
        return []
    lines = ["## `full --patience P` against `full`", "",
             "`--patience P` also stops a training once its test perplexity has not improved for P epochs (not MAD's",
             "rule; the score is still the best-perplexity epoch's, so a training's score changes only where a later",
             "epoch would have won). It ends each training sooner on the same path, so these are read off the `full`",
             "trainings' epoch histories exactly, not re-trained. Per cell: the score's difference from `full`, and",
             "(in brackets) the share of `full`'s training tokens it needs. Partial `full` tasks compare their",
             "complete settings only (the settings column).", "",
             "| model | task | settings | full | " + " | ".join(f"P = {p}" for p in by_patience) + " |",
             "|---|---|---|---|" + "---|" * len(by_patience)]
    for model, task in cells:
        first = by_patience[next(iter(by_patience))][model][task]
        row = [f"{c['difference_from_full']:+.4f} ({c['tokens'] / c['full_tokens']:.0%})"
               for c in (by_patience[p][model][task] for p in by_patience)]
        lines.append(f"| {model} | {task} | {first['settings_compared']}/{first['settings_in_full']} | "
                     f"{first['full_mean']:.4f} | " + " | ".join(row) + " |")
    totals = []
    for p, found in by_patience.items():
        cs = [c for tasks in found.values() for c in tasks.values()]
        worst = max(cs, key=lambda c: abs(c["difference_from_full"]))
        totals.append(f"P = {p}: {sum(c['tokens'] for c in cs) / sum(c['full_tokens'] for c in cs):.0%} of the tokens, "
                      f"largest change {worst['difference_from_full']:+.4f}")
    return lines + ["", "Over these cells: " + "; ".join(totals) + ".", ""]


def variant_lines(results: dict, variant: dict, title: str, intro: str, base: str, other: str) -> list[str]:
    """One line per (model, task) measured under a variant of `full`, beside the protocol's score."""
    if not any(variant.get("full", {}).values()):
        return []
    lines = [f"## {title}", "", intro, ""]
    for model, tasks in variant["full"].items():
        for task, c in tasks.items():
            const = results["full"].get(model, {}).get(task)
            if const:
                lines.append(f"- {model} {task}: {base} {const['mean']:.4f}, {other} {c['mean']:.4f} "
                             f"({c['trainings_done']}/{c['trainings_planned']}), seed row {c['seed_row']:.4f}")
    return lines + [""]


def markdown(results: dict, cosine: dict, normal_init: dict, run_init: dict, quick: dict, patience: dict) -> str:
    lines = [
        "# Baselines against the seed rows",
        "",
        "Written by `python benchmarks/reproduction/baselines.py` from the result cache (committed trainings:",
        "`benchmarks/results/cache/gpu_results.jsonl.gz`, import with `mixerlab cache import`).",
        "GPUs: NVIDIA H100 80GB HBM3 (23-25 Nov 2026) and NVIDIA H200 (1-4 Dec 2026), lent 30 minutes at a time;",
        "torch 2.11 + CUDA 13, bf16 autocast, TF32 matmuls. How the sweeps were run and what they taught: docs/reproduction.md.",
        "",
        "Protocol (docs/protocol.md): `full` = MAD's sweep, 66 settings x lr {1e-4, 5e-4, 1e-3} x weight decay",
        "{0, 0.1}, 200 epochs, stop above 0.999 test accuracy, score = macro accuracy at the lowest-perplexity",
        "epoch, best (lr, wd) per setting, mean over a task's settings; constant learning rate. `baseline` =",
        "MAD's baseline setting of each task, lr 5e-4, wd 0, 3 seeds (mean +- sample std).",
        "",
        "A cell is filled only where trainings finished; `done/planned` says how much of the protocol that is.",
        "",
    ]
    for profile, models in results.items():
        lines += [f"## `{profile}`", "", "| model | task | ours | seed row | difference | done/planned |",
                  "|---|---|---|---|---|---|"]
        for model, tasks in models.items():
            for task in [t.value for t in TASK_ORDER]:
                if task not in tasks:
                    planned = PROFILES[profile].num_trainings((next(t for t in TASK_ORDER if t.value == task),), RUNS[profile])
                    lines.append(f"| {model} | {task} | not run yet | {SEED_ROWS[model][task]:.4f} | | 0/{planned} |")
                    continue
                c = tasks[task]
                ours = f"{c['mean']:.4f}" + (f" +- {c['std']:.4f}" if RUNS[profile] > 1 else "")
                flag = "" if c["complete"] else " (partial, can end in {:.2f}-{:.2f})".format(*c["final_range"])
                lines.append(f"| {model} | {task} | {ours}{flag} | {c['seed_row']:.4f} | {c['difference']:+.4f} | "
                             f"{c['trainings_done']}/{c['trainings_planned']} |")
        lines.append("")
        if profile == "full":
            lines += target_lines(target_checks(models))
            lines += ["The means above taken apart, one row per MAD setting (`baselines_settings.svg`, written with",
                      "this file): which settings each model has learned and where the sweep still has to run.", "",
                      "![full, best (lr, wd) per setting](baselines_settings.svg)", ""]
    lines += quick_lines(quick)
    lines += patience_lines(patience)
    lines += variant_lines(results, cosine, "Learning-rate schedule",
                           "`full` tasks measured under both schedules (constant is `full`'s default):",
                           "constant", "cosine")
    lines += variant_lines(results, normal_init, "Initialisation",
                           "`full` tasks measured with every Linear N(0, 0.02) (`--init normal`, mad-lab before Dec "
                           "2024) beside the released init (`mad-lab`, `full`'s default):", "mad-lab", "normal")
    lines += variant_lines(results, run_init, "One initialisation per training",
                           "`full` tasks measured with each training drawing its own initial weights (`--init-seed run`, "
                           "as mad-lab's unseeded runs do) beside one init per setting shared by its six (lr, wd) runs "
                           "(`setting`, `full`'s default):", "per setting", "per run")
    return "\n".join(lines) + "\n"


def setting_name(label: str) -> str:
    """`selective_copy[num_tokens_to_copy=96]` -> `num_tokens_to_copy=96`."""
    return label.split("[", 1)[1].rstrip("]")


def settings_chart(full: dict) -> str:
    """`full`'s best score per setting for both models: the table's means taken apart (grey: not run yet)."""
    rows = {task.value: [s.change_label for s in PROFILES["full"].settings[task]] for task in TASK_ORDER}
    values: dict = {}
    marks: dict = {}
    for model, tasks in full.items():
        for task, cell in tasks.items():
            for s in cell["settings"]:
                name = setting_name(s["setting"])
                values.setdefault(model, {}).setdefault(task, {})[name] = s["score"]
                if s["trainings_done"] < s["trainings_planned"]:
                    marks.setdefault(model, {}).setdefault(task, {})[name] = f"({s['trainings_done']}/{s['trainings_planned']})"
    return score_grid(rows, list(full), values, "full: best (lr, wd) per MAD setting", marks=marks,
                      note="(n/6): only n of the setting's 6 (lr, wd) trainings are done so far; grey: not run yet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", default=None)
    parser.add_argument("--import", dest="imports", nargs="*", default=[str(ROOT / "results" / "cache" / "gpu_results.jsonl.gz")])
    args = parser.parse_args()
    cache = ResultCache(args.cache or Path(tempfile.mkdtemp()) / "cache.sqlite")
    for path in args.imports:
        cache.import_file(path)
    results = collect(cache)
    measured = lambda found: {p: {m: t for m, t in models.items() if t} for p, models in found.items()}  # noqa: E731
    cosine = measured(collect(cache, lr_schedule="cosine"))
    normal_init = measured(collect(cache, init="normal"))
    run_init = measured(collect(cache, init_seed="run"))
    quick = read_off_full(cache, PROFILES["quick"])
    patience = {p: read_off_full(cache, with_patience(p)) for p in PATIENCES}
    report = {**results, "targets": target_checks(results["full"]), "quick_vs_full": quick,
              "patience_vs_full": {str(p): found for p, found in patience.items()},
              "cosine_schedule": cosine, "normal_init": normal_init, "run_init": run_init}
    (ROOT / "results" / "baselines.json").write_text(json.dumps(report, indent=2))
    (ROOT / "results" / "baselines_settings.svg").write_text(settings_chart(results["full"]))
    text = markdown(results, cosine, normal_init, run_init, quick, patience)
    (ROOT / "results" / "baselines.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
