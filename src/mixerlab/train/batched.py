"""The fast trainer: many trainings of one shape stepped together as one batched model.

A sweep is hundreds of small trainings; one at a time, a GPU waits on kernel launches. Here the members of a
group (same backbone and sequence length; any task setting, learning rate, weight decay and seed) keep
their parameters stacked in one flat `[members, params]` tensor. One step gathers every member's own
batch, runs the model once under `torch.vmap` over the member dimension (ordinary autograd flows through
it), and applies AdamW to the flat tensor with per-member learning rates and weight decays. On CUDA the
step is captured once in a CUDA graph and replayed. Members keep their own epochs (data sizes differ),
are evaluated at their own epoch ends, stop on their own (MAD's 0.999 rule, or a patience), and leave the
group when enough have finished, so the group shrinks instead of carrying dead weight.

Vocabulary sizes may differ: each member is built at its own vocabulary (the same initial weights as
alone) and padded with zero rows to the group's largest, and its logits beyond its own vocabulary are
masked to -inf, which is exactly training the smaller model (those rows get no gradient and never win an
argmax). A mixer that cannot run under vmap (in-place writes into unbatched
tensors, `.item()`, data-dependent Python control flow) is trained one member at a time on the same code
path without vmap (`vectorize=False`).

`mixerlab.train.single` is the reference this must match; tests/test_train.py holds them together.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.func import functional_call, stack_module_state

from mixerlab.config import TrainConfig
from mixerlab.model import LanguageModel, MixerFactory
from mixerlab.ops.depthwise import use_library_depthwise_convs, use_shifted_depthwise_convs
from mixerlab.ops.tril_solve import fast_triangular_solves, kernel_available
from mixerlab.tasks import IGNORE_INDEX, generate

from .checkpoint import CheckpointStore, group_id
from .common import init_model, make_result, token_losses
from .interrupts import SaveRequests, should_stop
from .job import TrainJob
from .result import EpochRecord, TrainResult, select_epochs
from .scoring import LOCAL_SCORING, LocalScorer, Scorer, Scoring, TestSet, TestSource, forward_rows
from .schedule import batches_per_epoch, epoch_order, lr_for_epoch
from .timing import NoClock, PartClock

log = logging.getLogger(__name__)

EVAL_TOKENS = 2_000_000  # tokens per evaluation forward (members x examples x length)
EVAL_LOGITS = 400_000_000  # logits elements per evaluation forward

# Several groups may train at once in one process, each in its own thread and CUDA stream (evaluate/runner.py,
# EvalOptions.concurrent_groups). What is not safe to overlap with another thread's work on the device is done
# under this lock: torch.compile's tracing, the eager steps before a CUDA graph capture, the capture itself, and
# releasing a graph's memory pool. Replays, evaluations and host syncs overlap freely.
DEVICE_SETUP_LOCK = threading.RLock()

ResultCallback = Callable[[TrainResult], None]
StepCallback = Callable[[int], None]  # called with the number of member-steps just done


@dataclass
class _Member:
    index: int  # position in the caller's job list
    job: TrainJob
    key: str
    train_offset: int
    test_offset: int
    n_train: int
    steps_per_epoch: int
    history: list[EpochRecord] = field(default_factory=list)
    done: bool = False


def _dataset_rows(jobs: list[TrainJob], device: torch.device, test_source: TestSource):
    """Concatenate each distinct (setting, seed) dataset once; return the training tensors, the test sets
    (inputs, scored positions, and targets only if every source gave them) and per-job row offsets."""
    offsets: dict[tuple, tuple[int, int]] = {}
    train_x, train_y, tests = [], [], []
    n_train = n_test = 0
    for job in jobs:
        ident = (job.setting, job.seed)
        if ident in offsets:
            continue
        tr, te = generate(job.setting, "train", job.seed), test_source(job)
        offsets[ident] = (n_train, n_test)
        train_x.append(tr.inputs), train_y.append(tr.targets), tests.append(te)
        n_train += len(tr)
        n_test += len(te)
    cat = lambda parts: torch.cat(parts).to(device)  # noqa: E731
    targets = cat([t.targets for t in tests]) if all(t.targets is not None for t in tests) else None
    test = TestSet(cat([t.inputs for t in tests]), cat([t.scored for t in tests]), targets)
    return cat(train_x), cat(train_y), test, offsets


def compile_static(fn: Callable, mode: str | None = None) -> Callable:
    """torch.compile with static shapes and room in dynamo's cache for every group shape of a sweep; `mode` is
    torch.compile's (None: its default, which benchmarks/speed/step_anatomy.py found as fast as max-autotune here)."""
    from torch import _dynamo

    _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 256)
    _dynamo.config.accumulated_cache_size_limit = max(_dynamo.config.accumulated_cache_size_limit, 1024)
    return torch.compile(fn, dynamic=False, mode=mode)


class BatchedTrainer:
    """Train `jobs` (same backbone, input length and test-set size) together; see the module docstring."""

    def __init__(
        self,
        jobs: list[TrainJob],
        keys: list[str],
        train: TrainConfig,
        mixer_factory: MixerFactory,
        device: str | torch.device = "cpu",
        vectorize: bool = True,
        cuda_graph: bool | None = None,
        sync_every: int = 20,
        shrink_below: float = 0.75,
        compile_step: bool = False,
        compile_mode: str | None = None,
        compile_after_tokens: int | None = None,
        vocab_size: int | None = None,
        checkpoints: CheckpointStore | None = None,
        fast_solves: bool | None = None,
        scoring: Scoring = LOCAL_SCORING,
        clock: PartClock | None = None,
    ) -> None:
        if not jobs:
            raise ValueError("no jobs to train")
        self.clock = clock or NoClock()
        self.clock.switch("setup")
        shapes = {(j.setting.task.backbone, j.setting.input_len, j.setting.num_test) for j in jobs}
        if len(shapes) != 1:
            raise ValueError(f"a group needs one backbone, input length and test size; got {sorted(shapes)}")
        if not vectorize and len(jobs) != 1:
            raise ValueError("vectorize=False trains exactly one job")
        self.jobs, self.train, self.device = jobs, train, torch.device(device)
        self.vectorize = vectorize
        self.cuda_graph = (self.device.type == "cuda") if cuda_graph is None else cuda_graph
        self.sync_every, self.shrink_below = sync_every, shrink_below
        # torch.compile fuses the many small elementwise kernels of the step (CUDA only; compiling costs about
        # half a minute per shape, so it pays on long groups only: compile_after_tokens). Shapes are static:
        # dynamo's automatic dynamic shapes, triggered when a later group of another length reused the cached
        # code, made the sequence length symbolic, which vmap'd linear layers cannot trace. Every group shape
        # (a group that shrinks is a new one) compiles once, if it trains long enough eagerly.
        self.compiled_logits = None
        self.compile_wanted = compile_step and self.device.type == "cuda"
        self.compile_mode = compile_mode
        # a ski-rental rule (TrainConfig.compile_after_tokens): a compile costs 35-50 s on an H200 (step_anatomy.md),
        # about what the eager CUDA-graph step trains in 150M tokens (fuzzy recall T=128 x24: 109.6 ms eager, 3.6M
        # tokens/s; eval_speed.md); a group that ends sooner never pays one, a longer one at most twice the optimum
        self.compile_after_tokens = train.compile_after_tokens if compile_after_tokens is None else compile_after_tokens
        self.autocast = train.autocast_dtype(self.device.type)
        # unit-lower-triangular solves (the chunkwise WY step) on the Triton kernel: ops/tril_solve.py
        self.fast_solves = kernel_available(self.device) if fast_solves is None else fast_solves
        if self.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for float32 matmuls, as mad-lab sets
        self.vocab = vocab_size or max(j.setting.vocab_size for j in jobs)
        self.checkpoints = checkpoints
        self.ident = group_id(keys)
        self.elapsed_before = 0.0  # seconds trained by earlier runs of a resumed group
        self.x_train, self.y_train, test, offsets = _dataset_rows(jobs, self.device, scoring.test_source)
        self.x_test = test.inputs
        self.num_test = len(test) // len({(j.setting, j.seed) for j in jobs})  # one shape: every test set alike
        self.members: list[_Member] = []
        for i, (job, key) in enumerate(zip(jobs, keys)):
            tr_off, te_off = offsets[(job.setting, job.seed)]
            n = job.setting.num_train
            self.members.append(_Member(i, job, key, tr_off, te_off, n, batches_per_epoch(n, train.batch_size)))
        # who turns test logits into metrics: here, from the targets; or the trusted side of the sandbox
        test_offsets = [m.test_offset for m in self.members]
        self.scorer: Scorer = scoring.remote([TestSet(test.inputs[m.test_offset : m.test_offset + self.num_test],
                                                      test.scored[m.test_offset : m.test_offset + self.num_test],
                                                      vocab_size=m.job.setting.vocab_size)
                                              for m in self.members]) if scoring.remote else \
            LocalScorer(test.targets, test_offsets, self.num_test, self.vocab, train.eval_batch_size)
        models = [init_model(j, train, mixer_factory, vocab_size=self.vocab) for j in jobs]
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.shapes = [tuple(params[n].shape[1:]) for n in self.names]
        self.sizes = [max(1, int(torch.Size(s).numel())) for s in self.shapes]
        flat = torch.cat([params[n].reshape(len(jobs), -1) for n in self.names], 1)
        self.steps_done = 0
        self.member_steps = 0
        self._state_from(list(range(len(jobs))), flat, torch.zeros_like(flat), torch.zeros_like(flat),
                         dict(buffers), torch.zeros(len(jobs)))

    # --- stacked state --------------------------------------------------------------------------

    def _state_from(self, active: list[int], flat: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                    buffers: dict[str, torch.Tensor], loss_sum: torch.Tensor) -> None:
        """(Re)build every per-member tensor for the members `active` (indices into self.members)."""
        dev = self.device
        if getattr(self, "graph", None) is not None:  # release the old graph's memory pool first
            with DEVICE_SETUP_LOCK:
                self.graph = None
                self.flat.grad = None
                torch.cuda.synchronize(dev)
                torch.cuda.empty_cache()
        self.active = active
        members = [self.members[i] for i in active]
        self.flat = flat.detach().to(dev).clone().requires_grad_(True)
        self.exp_avg, self.exp_avg_sq = exp_avg.to(dev).clone(), exp_avg_sq.to(dev).clone()
        self.buffers = {k: v.to(dev).clone() for k, v in buffers.items()}
        as_col = lambda values, dtype: torch.tensor(values, dtype=dtype, device=dev)[:, None]  # noqa: E731
        self.lr_now = as_col([lr_for_epoch(self.train, m.job.lr, self.steps_epoch(m)) for m in members], torch.float32)
        self.weight_decay = as_col([m.job.weight_decay for m in members], torch.float32)
        self.train_offset = torch.tensor([m.train_offset for m in members], device=dev)
        self.n_train = torch.tensor([m.n_train for m in members], device=dev)
        self.steps_per_epoch = torch.tensor([m.steps_per_epoch for m in members], device=dev)
        self.test_offset = torch.tensor([m.test_offset for m in members], device=dev)
        mask = torch.zeros(len(members), self.vocab, device=dev)
        for row, m in enumerate(members):
            mask[row, m.job.setting.vocab_size :] = float("-inf")
        self.vocab_mask = mask
        max_n = max(m.n_train for m in members)
        self.order = torch.zeros(len(members), max_n, dtype=torch.long, device=dev)
        for row, m in enumerate(members):
            epoch = self.steps_epoch(m)
            self.order[row, : m.n_train] = epoch_order(m.job.shuffle_seed, epoch, m.n_train).to(dev)
        self.step_counter = torch.full((), self.steps_done, dtype=torch.long, device=dev)
        self.loss_sum = loss_sum.to(dev).clone()
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps_since_build = 0
        self.tokens_since_build = 0  # training tokens of this shape (members x batch x length per step)
        self._use_compiled(False)  # a new shape trains eagerly until it has earned a compile
        self._maybe_compile()

    def _use_compiled(self, compiled: bool) -> None:
        """Switch the step between eager and torch.compile'd (at a sync point: the graph is captured again)."""
        if compiled == (self.compiled_logits is not None):
            return
        self.graph, self.eager_steps_since_build = None, 0  # captured again on the next steps
        self.flat.grad = None
        if compiled:
            self.compiled_logits = compile_static(self._logits, self.compile_mode)
            use_shifted_depthwise_convs(self.base)  # same math; pays only when compiled (fused), slower eagerly
        else:
            self.compiled_logits = None
            use_library_depthwise_convs(self.base)

    def _maybe_compile(self) -> None:
        if self.compile_wanted and self.compiled_logits is None and self.active \
                and self.tokens_since_build >= self.compile_after_tokens:
            if self.tokens_since_build:
                log.info("compiling the step of %d members after %.0fM eager tokens", len(self.active),
                         self.tokens_since_build / 1e6)
            self._use_compiled(True)

    def steps_epoch(self, member: _Member) -> int:
        """The epoch a member is in (or about to start) after `steps_done` steps."""
        return self.steps_done // member.steps_per_epoch

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split(self.sizes, 1)
        return {n: p.reshape(flat.shape[0], *s) for n, p, s in zip(self.names, parts, self.shapes)}

    def _logits(self, flat: torch.Tensor, buffers: dict[str, torch.Tensor], x: torch.Tensor, mask: torch.Tensor,
                features: bool = False) -> torch.Tensor:
        """Logits [M, B, T, V] of every member on its own batch x [M, B, T]; with `features`, the language model
        head's inputs [M, B, T, D] instead."""
        params = self._views(flat)

        def one(p, b, tokens, vocab_mask):
            if features:
                return functional_call(self.base, (p, b), (tokens,), {"features": True})
            return functional_call(self.base, (p, b), (tokens,)).float() + vocab_mask

        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None,
                            cache_enabled=False):
            if self.vectorize:
                return torch.vmap(one, randomness="different")(params, buffers, x, mask[:, None, None, :])
            first = {k: v[0] for k, v in params.items()}
            return one(first, {k: v[0] for k, v in buffers.items()}, x[0], mask[0])[None]

    def _training_logits(self, x: torch.Tensor) -> torch.Tensor:
        with fast_triangular_solves(self.fast_solves):  # outside the compiled function: it traces the routed call
            if self.compiled_logits is not None:
                try:
                    return self.compiled_logits(self.flat, self.buffers, x, self.vocab_mask)
                except Exception as err:  # a mixer the compiler cannot handle still trains, eagerly
                    log.warning("torch.compile failed for this group (%s: %s); training eagerly",
                                type(err).__name__, err)
                    self._use_compiled(False)
                    self.compile_wanted = False
            return self._logits(self.flat, self.buffers, x, self.vocab_mask)

    # --- one optimisation step (graph-capturable: no host syncs, static shapes) --------------------

    def _step(self) -> None:
        batch = self.train.batch_size
        within = self.step_counter % self.steps_per_epoch  # batch index inside each member's epoch
        slots = within[:, None] * batch + torch.arange(batch, device=self.device)
        valid = slots < self.n_train[:, None]
        rows = self.order.gather(1, slots.clamp(max=self.order.shape[1] - 1)) + self.train_offset[:, None]
        x = self.x_train[rows]
        y = self.y_train[rows].masked_fill(~valid[..., None], IGNORE_INDEX)

        logits = self._training_logits(x)
        losses = token_losses(logits, y).flatten(1)
        counts = (y != IGNORE_INDEX).flatten(1).sum(1).clamp(min=1)
        member_loss = losses.sum(1) / counts
        member_loss.sum().backward()  # members are independent: each gets the gradient of its own mean loss

        with torch.no_grad():
            beta1, beta2 = self.train.betas
            grad = self.flat.grad
            step = (self.step_counter + 1).float()
            self.flat.mul_(1 - self.lr_now * self.weight_decay)
            self.exp_avg.lerp_(grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr_now / (1 - beta1**step)
            denom = (self.exp_avg_sq.sqrt() / (1 - beta2**step).sqrt()).add_(self.train.eps)
            self.flat.sub_(step_size * self.exp_avg / denom)
            self.loss_sum += member_loss.detach()
            self.step_counter += 1

    def _run_step(self) -> None:
        # compiling, the eager steps before a capture and the capture itself are warm-up; replays are steps
        warm = self.graph is None and (self.cuda_graph or self.compiled_logits is not None)
        self.clock.switch("warm-up" if warm else "steps")
        if self.graph is not None:
            self.graph.replay()
            return
        with DEVICE_SETUP_LOCK if warm and self.device.type == "cuda" else nullcontext():
            if self.cuda_graph and self.eager_steps_since_build >= 2:
                self._capture()
                if self.graph is not None:
                    self.graph.replay()
                    return
            self.flat.grad = None
            if self.cuda_graph:  # warm-up before a capture must run on a side stream
                side = self._capture_stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    self._step()
                torch.cuda.current_stream().wait_stream(side)
            else:
                self._step()
            self.eager_steps_since_build += 1

    def _capture_stream(self) -> torch.cuda.Stream:
        """This trainer's own side stream (warm-up and capture), never torch's shared default capture stream:
        groups training at once in other threads capture on streams of their own."""
        self._side_stream = getattr(self, "_side_stream", None) or torch.cuda.Stream(self.device)
        return self._side_stream

    def _capture(self) -> None:
        try:
            self.flat.grad = None
            graph = torch.cuda.CUDAGraph()
            # thread_local: another thread's group may allocate or sync while this one captures
            with torch.cuda.graph(graph, stream=self._capture_stream(), capture_error_mode="thread_local"):
                self._step()
            self.graph = graph
        except Exception as err:  # a mixer that syncs with the host cannot be captured; stay eager
            log.warning("CUDA graph capture failed (%s); training this group eagerly", err)
            self.cuda_graph = False
            self.graph = None
            torch.cuda.synchronize()

    # --- checkpoints: state of the unfinished members, at a sync point ------------------------------

    def state(self, elapsed: float) -> dict:
        """Everything needed to continue the unfinished members exactly (call with no epoch metrics pending)."""
        rows = [row for row, i in enumerate(self.active) if not self.members[i].done]
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        members = [self.members[self.active[row]] for row in rows]
        cpu = lambda t: t.detach()[idx].cpu()  # noqa: E731
        return {
            "keys": [m.key for m in members],
            "histories": [[r.model_dump() for r in m.history] for m in members],
            "vocab": self.vocab,
            "vectorize": self.vectorize,
            "steps_done": self.steps_done,
            "member_steps": self.member_steps,
            "elapsed": elapsed,
            "flat": cpu(self.flat),
            "exp_avg": cpu(self.exp_avg),
            "exp_avg_sq": cpu(self.exp_avg_sq),
            "buffers": {k: cpu(v) for k, v in self.buffers.items()},
            "loss_sum": cpu(self.loss_sum),
        }

    def restore(self, state: dict, ident: str | None = None) -> None:
        """Continue from `state` (this trainer's jobs must be among its members; others are left out)."""
        position = {key: row for row, key in enumerate(state["keys"])}
        missing = [m.key for m in self.members if m.key not in position]
        if missing or state["vocab"] != self.vocab or state["flat"].shape[1] != self.flat.shape[1]:
            raise ValueError(f"checkpoint does not fit this group (missing members {missing[:3]}, vocab "
                             f"{state['vocab']} vs {self.vocab})")
        rows = torch.tensor([position[m.key] for m in self.members], dtype=torch.long)
        for m in self.members:
            m.history = [EpochRecord(**r) for r in state["histories"][position[m.key]]]
        self.steps_done, self.member_steps = state["steps_done"], state["member_steps"]
        self.elapsed_before = state["elapsed"]
        self.ident = ident or self.ident
        self._state_from(list(range(len(self.members))), state["flat"][rows], state["exp_avg"][rows],
                         state["exp_avg_sq"][rows], {k: v[rows] for k, v in state["buffers"].items()},
                         state["loss_sum"][rows])

    # --- evaluation ------------------------------------------------------------------------------

    @torch.no_grad()
    def _evaluate(self, rows: list[int]) -> torch.Tensor:
        """MAD's epoch metrics of the group rows `rows`: [len(rows), 4] = (nll, macro, token, ppl), from the
        scorer (the test targets may live in another process). The model runs in eval mode."""
        idx = torch.tensor(rows, device=self.device)
        flat = self.flat.detach()[idx]
        buffers = {k: v[idx] for k, v in self.buffers.items()}
        mask = self.vocab_mask[idx]
        offsets = self.test_offset[idx]
        members = [self.members[self.active[row]] for row in rows]
        self.scorer.begin([m.key for m in members], [self.steps_done // m.steps_per_epoch - 1 for m in members],
                          [m.index for m in members])
        # forward calls within blocks of `forward_rows` rows, never across: the trusted scorer serves each causality
        # probe in another block than its example (evaluate/audit.py), so no call holds both; inside a block, as
        # many rows per call as a budget of tokens and of logits allows
        # where the vocabulary is wider than the model, a remote scorer takes the head and its inputs instead of
        # the logits (evaluate/remote_scoring.py): up to 64x fewer bytes to ship in a memorize group
        features = isinstance(self.base, LanguageModel) and self.scorer.ships_features(self.base.head.in_features)
        if features:
            head = self._views(flat)
            self.scorer.head(head["head.weight"], head.get("head.bias"), self.autocast or torch.float32)
        length = self.x_test.shape[1]
        block = forward_rows(self.num_test, length, self.train.eval_batch_size)
        per_row = len(rows) * length
        width = self.base.head.in_features if features else self.vocab  # values per position out of a call
        call = max(1, min(block, EVAL_TOKENS // per_row, EVAL_LOGITS // (per_row * width)))
        self.base.eval()
        try:
            for start, stop in forward_calls(self.num_test, block, call):
                test_rows = offsets[:, None] + torch.arange(start, stop, device=self.device)
                self.clock.switch("test forward")
                with fast_triangular_solves(self.fast_solves):
                    logits = self._logits(flat, buffers, self.x_test[test_rows], mask, features)
                self.clock.switch("ship logits")
                self.scorer.add(start, stop, logits)
                del logits
        finally:
            self.base.train()
        self.clock.switch("scores")
        return self.scorer.end()

    # --- the loop --------------------------------------------------------------------------------

    def run(self, on_result: ResultCallback | None = None, on_steps: StepCallback | None = None,
            deadline: float | None = None, halt: threading.Event | None = None) -> list[TrainResult]:
        """Train to the end; with `deadline` (time.monotonic()), on a stop signal (train/interrupts.py), or once
        `halt` is set (a group beside this one failed), stop at the first sync after it and return only the
        trainings that finished. Unfinished ones are never
        half-recorded: with a checkpoint store they are saved there (also every `checkpoints.every` seconds,
        against kills, and on SIGUSR1) to be resumed, else dropped."""
        start_time = time.perf_counter() - self.elapsed_before
        last_save = time.monotonic()
        save_requests = SaveRequests()
        results: dict[int, TrainResult] = {}
        pending: list[tuple[int, int, torch.Tensor]] = []  # (member index, epoch, metrics on device)
        max_steps = max(m.steps_per_epoch for m in self.members) * self.train.max_epochs
        since_sync = 0
        while self.active:
            self._run_step()
            self.steps_done += 1
            since_sync += 1
            self.member_steps += len(self.active)
            self.tokens_since_build += len(self.active) * self.train.batch_size * self.x_train.shape[1]
            if on_steps:
                on_steps(len(self.active))
            due = [row for row, i in enumerate(self.active)
                   if not self.members[i].done and self.steps_done % self.members[i].steps_per_epoch == 0]
            finishing = False
            if due:
                metrics = self._evaluate(due)
                losses = self.loss_sum[due] / self.steps_per_epoch[due]
                self.loss_sum[due] = 0
                for j, row in enumerate(due):
                    member = self.members[self.active[row]]
                    epoch = self.steps_done // member.steps_per_epoch - 1
                    pending.append((member.index, epoch, torch.cat([losses[j : j + 1], metrics[j]])))
                    finishing |= epoch + 1 >= self.train.max_epochs
                    if epoch + 1 < self.train.max_epochs:  # next epoch: new order and learning rate
                        self.order[row, : member.n_train] = epoch_order(member.job.shuffle_seed, epoch + 1, member.n_train).to(self.device)
                        self.lr_now[row] = lr_for_epoch(self.train, member.job.lr, epoch + 1)
            if pending and (finishing or since_sync >= self.sync_every or self.steps_done >= max_steps):
                since_sync = 0
                self.clock.switch("host sync")
                self._absorb(pending, results, on_result, start_time)
                pending = []
                self.clock.switch("rebuild")
                self._maybe_shrink()
                self._maybe_compile()
                # stop: the time limit or a signal (SIGTERM, Ctrl-C); save: a stop, SIGUSR1 or the save interval
                stop = should_stop(deadline) or (halt is not None and halt.is_set())
                if self.checkpoints and self.active and (stop or time.monotonic() - last_save > self.checkpoints.every
                                                         or save_requests.take()):
                    self.checkpoints.save(self.ident, self.state(time.perf_counter() - start_time))
                    last_save = time.monotonic()
                if stop:
                    break
        if self.checkpoints and not self.active:
            self.checkpoints.remove(self.ident)
        self.clock.switch(None)
        return [results[i] for i in range(len(self.members)) if i in results]

    def _absorb(self, pending, results, on_result, start_time) -> None:
        """Move device-side epoch metrics to the host, finish members that stopped or ran out of epochs."""
        values = torch.stack([v for _, _, v in pending]).cpu().tolist()
        for (index, epoch, _), (train_loss, nll, macro, token, ppl) in zip(pending, values):
            member = self.members[index]
            if member.done or epoch != len(member.history):
                continue  # already finished (trained on a little past its stop before we looked)
            member.history.append(EpochRecord(epoch=epoch, train_loss=train_loss, test_loss=nll, test_acc=macro,
                                              test_token_acc=token, test_ppl=ppl))
            if epoch + 1 >= self.train.max_epochs or select_epochs(member.history, self.train.stop_accuracy,
                                                                   self.train.patience)[1]:
                member.done = True
                steps = len(member.history) * member.steps_per_epoch
                # the member's share of the group's time so far (it trained `steps` of `member_steps`)
                seconds = (time.perf_counter() - start_time) * steps / max(1, self.member_steps)
                trainer = "batched" if self.vectorize else "sequential"
                result = make_result(member.job, member.key, member.history, self.train, steps, seconds, trainer,
                                     str(self.device))
                results[index] = result
                if on_result:
                    on_result(result)

    def _maybe_shrink(self) -> None:
        keep = [row for row, i in enumerate(self.active) if not self.members[i].done]
        if len(keep) == len(self.active):
            return
        if not keep:
            self.active = []
            return
        if keep and len(keep) > self.shrink_below * len(self.active):
            with torch.no_grad():  # finished members stay in the group for now: freeze them
                for row, i in enumerate(self.active):
                    if self.members[i].done:
                        self.lr_now[row] = 0.0
            return
        idx = torch.tensor(keep, device=self.device, dtype=torch.long)
        buffers = {k: v[idx] for k, v in self.buffers.items()}
        self._state_from([self.active[row] for row in keep], self.flat.detach()[idx], self.exp_avg[idx],
                         self.exp_avg_sq[idx], buffers, self.loss_sum[idx])


def forward_calls(rows: int, block: int, call: int) -> list[tuple[int, int]]:
    """(start, stop) of each forward call over `rows` test rows: at most `call` rows, never across a block."""
    return [(start, min(rows, begin + block, start + call))
            for begin in range(0, rows, block) for start in range(begin, min(rows, begin + block), call)]


def train_group(
    jobs: list[TrainJob],
    keys: list[str],
    train: TrainConfig,
    mixer_factory: MixerFactory,
    device: str = "cpu",
    vectorize: bool | None = None,
    on_result: ResultCallback | None = None,
    on_steps: StepCallback | None = None,
    deadline: float | None = None,
    compile_step: bool = False,
    checkpoints: CheckpointStore | None = None,
    resume: tuple[str, dict] | None = None,
    fast_solves: bool | None = None,
    scoring: Scoring = LOCAL_SCORING,
    clock: PartClock | None = None,
    halt: threading.Event | None = None,
) -> list[TrainResult]:
    """Train jobs batched; if the mixer does not run under vmap, train them one by one on the same path.
    `resume` = (checkpoint id, state) continues a group a checkpoint saved; `jobs` are its unfinished members.
    `fast_solves`: unit-lower-triangular solves on mixerlab's kernel (None: where it runs, i.e. CUDA)."""
    if resume is not None:
        ident, state = resume
        trainer = BatchedTrainer(jobs, keys, train, mixer_factory, device, vectorize=state["vectorize"],
                                 compile_step=compile_step, vocab_size=state["vocab"], checkpoints=checkpoints,
                                 fast_solves=fast_solves, scoring=scoring, clock=clock)
        trainer.restore(state, ident)
        return trainer.run(on_result, on_steps, deadline, halt)
    if vectorize is None:
        vectorize = len(jobs) > 1 and supports_vmap(jobs[0], train, mixer_factory)
    if vectorize:
        trainer = BatchedTrainer(jobs, keys, train, mixer_factory, device, compile_step=compile_step,
                                 checkpoints=checkpoints, fast_solves=fast_solves, scoring=scoring, clock=clock)
        return trainer.run(on_result, on_steps, deadline, halt)
    results = []
    for job, key in zip(jobs, keys):
        if should_stop(deadline) or (halt is not None and halt.is_set()):
            break
        trainer = BatchedTrainer([job], [key], train, mixer_factory, device, vectorize=False, compile_step=compile_step,
                                 checkpoints=checkpoints, fast_solves=fast_solves, scoring=scoring, clock=clock)
        results += trainer.run(on_result, on_steps, deadline, halt)
    return results


def supports_vmap(job: TrainJob, train: TrainConfig, mixer_factory: MixerFactory) -> bool:
    """Whether the model runs forward and backward under torch.vmap (checked on a tiny CPU batch)."""
    models = [init_model(job, train, mixer_factory) for _ in range(2)]
    base = copy.deepcopy(models[0]).to("meta")
    params, buffers = stack_module_state(models)
    tokens = torch.zeros(2, 2, job.setting.input_len, dtype=torch.long)
    try:
        out = torch.vmap(lambda p, b, t: functional_call(base, (p, b), (t,)), randomness="different")(params, buffers, tokens)
        out.float().square().mean().backward()
        return True
    except Exception as err:
        log.info("mixer does not run under vmap (%s: %s); training sequentially", type(err).__name__, err)
        return False


def probe_member_bytes(job: TrainJob, train: TrainConfig, mixer_factory: MixerFactory, device: str,
                       scoring: Scoring = LOCAL_SCORING) -> float:
    """Peak GPU memory of one training step per member, measured on a two-member group (x1.3 for the
    CUDA graph's pool and the evaluation forward)."""
    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    trainer = BatchedTrainer([job, job], ["probe", "probe"], train, mixer_factory, dev, cuda_graph=False, scoring=scoring)
    trainer._run_step()
    torch.cuda.synchronize(dev)
    peak = torch.cuda.max_memory_allocated(dev) - before
    del trainer
    torch.cuda.empty_cache()
    return 1.3 * peak / 2
