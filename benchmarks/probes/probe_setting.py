"""Train one job of one MAD setting for a few epochs and print its per-epoch history: a cheap probe of why a
mixer fails a setting (compare variants' first epochs on the CPU before spending GPU time on full runs).

    python benchmarks/probes/probe_setting.py --mixer gated_delta_net --setting "selective_copy[vocab_size=128]" \
        --lr 1e-3 --epochs 3 [--init-seed run] [--threads 1] [--json out.json]
    python benchmarks/probes/probe_setting.py --mixer delta_net --setting "memorize[vocab_size=512]" --lr 1e-3 \
        --epochs 100 --patience 20 --build-vocab 1024     # the initial weights a pre-December group gave it

The reference trainer (`train_single`) runs it, with the `full` profile's training settings except
`--epochs`; on the CPU it is float32, and its first epochs follow the GPU's bf16 runs closely
(docs/reproduction.md).

`--build-vocab N` draws the initial weights as the batched trainer did before 1 December 2026 for a member of a
group whose largest vocabulary was N: the model is built at N rows and keeps its first rows (the rows beyond a
member's vocabulary were masked, so they never mattered; but their draws shifted every draw after them). The
committed GPU trainings of 23-24 November come from such draws; this reproduces one on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.config import get_profile  # noqa: E402
from mixerlab.evaluate.plan import select_settings  # noqa: E402
from mixerlab.mixers import resolve_mixer  # noqa: E402
from mixerlab.tasks import parse_task  # noqa: E402
from mixerlab.model import build_model  # noqa: E402
from mixerlab.train import single  # noqa: E402
from mixerlab.train.job import TrainJob  # noqa: E402
from mixerlab.train.result import best_epoch  # noqa: E402
from mixerlab.train.single import train_single  # noqa: E402


def drawn_at(build_vocab: int):
    """`init_model` as it was before 1 December 2026: built at `build_vocab` rows, cut to the job's own."""
    def init_model(job: TrainJob, train, mixer_factory, vocab_size: int | None = None) -> nn.Module:
        setting = job.setting
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job.init_seed if train.init_seed == "setting" else job.run_init_seed)
            model = build_model(setting.task.backbone, build_vocab, setting.input_len, train.d_model, mixer_factory,
                                train.init)
        own = setting.vocab_size
        with torch.no_grad():
            model.embed = nn.Embedding.from_pretrained(model.embed.weight[:own].clone(), freeze=False)
            head = nn.Linear(model.head.in_features, own, bias=model.head.bias is not None)
            head.weight.copy_(model.head.weight[:own])
            if head.bias is not None:
                head.bias.copy_(model.head.bias[:own])
        model.head, model.vocab_size = head, own
        return model
    return init_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixer", default="gated_delta_net", help="builtin name or a .py file")
    parser.add_argument("--setting", required=True, help="a `full` setting label, e.g. selective_copy[vocab_size=128]")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--wd", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--init-seed", choices=("setting", "run"), default="setting")
    parser.add_argument("--patience", type=int, default=None, help="stop once test perplexity stalls this many epochs")
    parser.add_argument("--build-vocab", type=int, default=None,
                        help="draw the init as a pre-December group whose largest vocabulary was this did")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (two probes side by side: 1 each)")
    parser.add_argument("--json", type=Path, default=None, help="also write the history here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    full = get_profile("full")
    task = parse_task(args.setting.split("[", 1)[0])
    try:
        (label,) = select_settings(full, (task,), [args.setting])
    except ValueError as err:
        parser.error(str(err))
    setting = next(s for s in full.settings[task] if s.label == label)
    if args.build_vocab is not None and args.build_vocab < setting.vocab_size:
        parser.error(f"--build-vocab {args.build_vocab} is below {label}'s vocabulary ({setting.vocab_size}): "
                     f"give at least {setting.vocab_size}")
    spec = resolve_mixer(args.mixer)
    train = full.train.model_copy(update={"max_epochs": args.epochs, "init_seed": args.init_seed,
                                          "patience": args.patience})
    if args.build_vocab:
        single.init_model = drawn_at(args.build_vocab)
    job = TrainJob(setting=setting, lr=args.lr, weight_decay=args.wd)
    factory = spec.factory()  # loads the mixer's class once
    params = sum(p.numel() for p in factory(train.d_model).parameters())
    print(f"{spec.name} ({params:,} mixer parameters) on {label}, lr {args.lr:g}, wd {args.wd:g}, "
          f"init per {args.init_seed}" + (f" drawn at vocabulary {args.build_vocab}" if args.build_vocab else "")
          + f", {args.epochs} epochs on {args.device}", flush=True)
    start = time.perf_counter()
    result = train_single(job, train, factory, device=args.device)
    print("epoch  train_loss  test_loss  test_acc")
    for e in result.history:
        print(f"{e.epoch:5d}  {e.train_loss:10.3f}  {e.test_loss:9.3f}  {e.test_acc:8.3f}")
    best = best_epoch(result.history)
    print(f"score {result.score:.4f} (test accuracy at epoch {best.epoch}, the best test perplexity of "
          f"{len(result.history)} epochs); {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"mixer": spec.name, "setting": label, "lr": args.lr, "wd": args.wd,
                                         "init_seed": args.init_seed,
                                         "build_vocab": args.build_vocab, "score": result.score,
                                         "history": [e.model_dump() for e in result.history]}, indent=2))


if __name__ == "__main__":
    main()
