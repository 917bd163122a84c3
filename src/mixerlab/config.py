"""All configuration in one typed place: how one training runs (`TrainConfig`), what a sweep covers
(`Profile`), and the named profiles `smoke`, `tiny`, `quick`, `baseline` and `full` (docs/protocol.md explains them).
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mixerlab.tasks import Task, TaskSetting, baseline_setting, sweep_settings
from mixerlab.tasks.settings import TASK_ORDER

# Bump when anything that changes a training's result changes (data, model, optimiser, metric, stopping).
PROTOCOL_VERSION = 1

# The ranges of the numbers a user gives (command line, config), declared once: the CLI checks its options
# against the models that use these, so a value out of range is one line naming the option and the range.
Seeds = Annotated[int, Field(ge=1, le=100, description="seeds per training")]
Seconds = Annotated[float, Field(gt=0, le=90 * 24 * 3600, description="seconds")]
Patience = Annotated[int, Field(ge=1, le=999, description="epochs without a better test perplexity")]
GroupTokens = Annotated[int, Field(ge=1024, le=1 << 32, description="tokens per batched step")]
GroupMembers = Annotated[int, Field(ge=1, le=4096, description="trainings per batched group")]
SandboxWorkers = Annotated[int, Field(ge=1, le=8)]  # sandboxed workers sharing one device
ConcurrentGroups = Annotated[int, Field(ge=1, le=64)]  # training groups at once in one process (threads, streams)
SequenceLength = Annotated[int, Field(ge=1, le=1 << 20, description="tokens")]
Iterations = Annotated[int, Field(ge=0, le=100_000, description="candidates in a run")]
Workers = Annotated[int, Field(ge=1, le=512, description="evaluations at once (also capped by the CPUs and GPUs)")]


def sqlite_url(path: str | os.PathLike) -> str:
    """The URL of a SQLite file, built by the URL library: `?`, `#` and `%` in a path are escaped, never read as
    the URL's query, fragment or an escape (a run folder named `q?x` once opened `q/`'s database)."""
    from pathlib import Path

    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string(hide_password=False)


def read_only_sqlite(path: str | os.PathLike, follow_writers: bool = False):
    """A sqlite3 connection to an existing file that never writes a byte: mode=ro, and `immutable` when no writer has
    the file open in WAL mode (no -wal file beside it) or the folder cannot be written (a read-only medium), so SQLite
    creates no -wal/-shm files either. `follow_writers` (the dashboard of a live run): keep following a file that
    may start being written later, where its folder is writable. The path is quoted into SQLite's URI form."""
    import sqlite3
    from pathlib import Path
    from urllib.parse import quote

    path = Path(path).resolve()
    wal = path.with_name(path.name + "-wal")
    immutable = not os.access(path.parent, os.W_OK) or (not wal.exists() and not follow_writers)
    return sqlite3.connect(f"file:{quote(str(path))}?mode=ro" + ("&immutable=1" if immutable else ""), uri=True,
                           check_same_thread=False, timeout=30)


def is_sqlite_file(path: str | os.PathLike) -> bool:
    """Whether the file starts with SQLite's header. Never call it on a database this process has open: closing
    the descriptor would drop the process's POSIX locks on it."""
    with open(path, "rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a cpuset, `taskset`, a test
    worker's share), which `os.cpu_count()` ignores; sizing threads by the whole machine oversubscribes."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks (macOS, Windows)
        return max(1, os.cpu_count() or 1)


class TrainConfig(BaseModel):
    """One MAD training, as mad-lab's released code runs it (defaults), on our trainer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    d_model: int = Field(default=128, ge=8)
    batch_size: int = Field(default=128, ge=1)
    max_epochs: int = Field(default=200, ge=1)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="constant",
        description="mad-lab's code intends cosine decay to min_lr but never applies it: constant is what it runs",
    )
    min_lr: float = Field(default=1e-6, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    stop_accuracy: float = Field(default=0.999, description="stop once test accuracy exceeds this (MAD: 0.999)")
    patience: int | None = Field(
        default=None, ge=1,
        description="also stop once test perplexity has not improved for this many epochs (None: MAD, every epoch "
        "runs); the score is still the best-perplexity epoch's, so it changes only if a later epoch would have won",
    )
    precision: Literal["auto", "bf16", "fp32"] = Field(default="auto", description="auto: bf16 on CUDA, fp32 on CPU")
    eval_batch_size: int = Field(default=128, ge=1, description="test batch size; MAD averages metrics per batch")
    compile_after_tokens: int = Field(
        default=150_000_000, ge=0,
        description="with --compile (CUDA), a group shape compiles once it has trained this many tokens eagerly (0: at "
        "once): a compile costs 35-50 s on an H200, what the eager step trains in ~150M tokens, so groups that stop "
        "within a few epochs never pay one (a ski-rental rule); not part of a result's identity",
    )
    init: Literal["mad-lab", "normal", "fla-xavier"] = Field(
        default="mad-lab",
        description="mad-lab: as released (language model keeps PyTorch's Linear init, biases zeroed); normal: every "
        "Linear N(0, 0.02), as mad-lab did before Dec 2024; fla-xavier: mad-lab, then every Linear inside the "
        "mixers xavier-uniform with gain 2^-2.5 and zero bias, as fla's layers initialised themselves before 2025",
    )

    init_seed: Literal["setting", "run"] = Field(
        default="setting",
        description="setting: the six (lr, wd) runs of a setting start from the same weights (a paired comparison); "
        "run: each training draws its own, as mad-lab's unseeded init does (MAD's best-of-six then also picks "
        "the luckiest init)",
    )

    def autocast_dtype(self, device_type: str):
        import torch

        return torch.bfloat16 if self.numerics(device_type) == "bf16" else None

    def numerics(self, device: str) -> Literal["bf16", "fp32"]:
        """How trainings on `device` (cpu, cuda, cuda:N) compute: part of every cache key and noise lookup."""
        cuda = device.startswith("cuda")
        return "bf16" if self.precision == "bf16" or (self.precision == "auto" and cuda) else "fp32"


def train_choices(field: str) -> tuple[str, ...]:
    """The values a Literal-typed TrainConfig field allows ("init", "init_seed", ...): the one list that the
    CLI and the model builder check against."""
    return get_args(TrainConfig.model_fields[field].annotation)


class Profile(BaseModel):
    """A named evaluation protocol: which task settings, which (lr, weight decay) grid, which training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    train: TrainConfig
    settings: dict[Task, tuple[TaskSetting, ...]]
    lrs: tuple[float, ...]
    weight_decays: tuple[float, ...]
    preferred_device: Literal["cpu", "cuda"] = "cuda"

    @model_validator(mode="after")
    def _one_label_per_setting(self) -> "Profile":
        # a setting's label is its identity in scores and the cache's reports: two alike would be merged
        for task, settings in self.settings.items():
            labels = [s.label for s in settings]
            if len(set(labels)) != len(labels):
                repeated = sorted({label for label in labels if labels.count(label) > 1})
                raise ValueError(f"profile {self.name!r}: {task.value} settings share the label(s) {repeated}; give "
                                 "each setting that differs from the baseline its own `change`")
        return self

    def num_trainings(self, tasks: tuple[Task, ...] | None = None, seeds: int = 1) -> int:
        tasks = tasks or tuple(self.settings)
        return sum(len(self.settings[t]) for t in tasks) * len(self.lrs) * len(self.weight_decays) * seeds


def _tiny_settings() -> dict[Task, tuple[TaskSetting, ...]]:
    # Small enough for six trainings on 2 CPU cores in about a minute, big enough to show learning.
    small = {
        Task.compress: dict(vocab_size=8, seq_len=8, num_train=1024, num_test=256),
        Task.context_recall: dict(vocab_size=16, seq_len=32, num_train=1024, num_test=256),
        Task.fuzzy_recall: dict(vocab_size=10, seq_len=32, num_train=2048, num_test=256, k_motif_size=2, v_motif_size=2),
        Task.memorize: dict(vocab_size=64, seq_len=16, num_train=128, num_test=128),
        Task.noisy_recall: dict(vocab_size=24, seq_len=32, num_train=1024, num_test=256, noise_vocab_size=8, frac_noise=0.2),
        Task.selective_copy: dict(vocab_size=8, seq_len=32, num_train=1024, num_test=256, num_tokens_to_copy=4),
    }
    return {task: (TaskSetting(task=task, **small[task]),) for task in TASK_ORDER}


def _quick_settings() -> dict[Task, tuple[TaskSetting, ...]]:
    # The full sweep without its most expensive corner (sequences of 512 and 1024 tokens).
    return {task: tuple(s for s in sweep_settings(task) if s.seq_len <= 256) for task in TASK_ORDER}


_TINY = Profile(
    name="tiny",
    description="CPU smoke profile: one shrunken setting per task, width 64, a few epochs; for tests and the first run",
    train=TrainConfig(d_model=64, batch_size=64, max_epochs=8, eval_batch_size=128),
    settings=_tiny_settings(),
    lrs=(3e-3,),
    weight_decays=(0.0,),
    preferred_device="cpu",
)


def _smoke(tiny: Profile) -> Profile:
    """tiny on at most 256 training and 128 test examples for 2 epochs: every path runs, nothing is learnt to
    speak of (plumbing tests, a first look at a new machine)."""
    settings = {task: tuple(TaskSetting(**{**s.model_dump(), "num_train": min(s.num_train, 256),
                                           "num_test": min(s.num_test, 128)}) for s in group)
                for task, group in tiny.settings.items()}
    return tiny.model_copy(update={
        "name": "smoke", "settings": settings, "train": tiny.train.model_copy(update={"max_epochs": 2}),
        "description": "plumbing check, not a measurement: tiny's settings on 256 examples for 2 epochs; seconds on a CPU"})


PROFILES: dict[str, Profile] = {
    "tiny": _TINY,
    "smoke": _smoke(_TINY),
    "baseline": Profile(
        name="baseline",
        description="MAD's baseline setting of each task, lr 5e-4, weight decay 0: six trainings",
        train=TrainConfig(),
        settings={task: (baseline_setting(task),) for task in TASK_ORDER},
        lrs=(5e-4,),
        weight_decays=(0.0,),
    ),
    # patience 20: read off the committed `full` trainings, it keeps `quick` within 0.05 of `full` on all twelve
    # baseline tasks (largest gap 0.0482, 0.0481 without it) for 69% of the training tokens (patience 15: 0.054);
    # benchmarks/results/baselines.md, "`quick` against `full`"
    "quick": Profile(
        name="quick",
        description="GPU proxy of `full`: its settings up to 256 tokens, lr {5e-4, 1e-3}, weight decay 0, 100 epochs, "
                    "a training stops 20 epochs after its best test perplexity",
        train=TrainConfig(max_epochs=100, patience=20),
        settings=_quick_settings(),
        lrs=(5e-4, 1e-3),
        weight_decays=(0.0,),
    ),
    "full": Profile(
        name="full",
        description="MAD's benchmark sweep (the seeds' protocol): 66 settings x lr {1e-4, 5e-4, 1e-3} x wd {0, 0.1}",
        train=TrainConfig(),
        settings={task: tuple(sweep_settings(task)) for task in TASK_ORDER},
        lrs=(1e-4, 5e-4, 1e-3),
        weight_decays=(0.0, 0.1),
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}: use one of {', '.join(PROFILES)}")
    return PROFILES[name]


class LLMSettings(BaseModel):
    """How the llm proposer talks to an OpenAI-compatible endpoint (`mixerlab discover --proposer llm`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    require_key: bool = False  # hosted APIs need a key; local servers usually do not
    timeout_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    format_retries: int = Field(default=2, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)
    max_tokens: int = Field(default=4096, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    use_json_schema: bool = True
    # "code": the model writes the whole file; "choices": it picks options of the design space (propose/space.py)
    # by schema-constrained JSON and mixerlab renders the file, so even a small local model yields valid code
    format: Literal["code", "choices"] = "code"
    cards: int = Field(default=4, ge=0)  # knowledge cards retrieved for the parent's weaknesses and put in the prompt
    max_calls_per_minute: float | None = Field(default=None, gt=0)  # the endpoint's rate limit: calls are spaced
    price_prompt_per_1k: float = Field(default=0.0, ge=0)
    price_completion_per_1k: float = Field(default=0.0, ge=0)


class LoopConfig(BaseModel):
    """One discovery run (`mixerlab discover`)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    db_url: str | None = None  # default: sqlite:///<run_dir>/mixerlab.db
    proposer: Literal["catalog", "search", "llm"] = "catalog"
    search_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="random seed of the search proposer")
    profile: str = "tiny"
    seeds: Seeds = 1
    patience: Patience | None = Field(default=None, description="TrainConfig.patience for every evaluation of the run")
    iterations: Iterations | None = 3
    budget_minutes: float | None = Field(default=None, gt=0, le=90 * 24 * 60)
    workers: Workers = 1
    proposal_threads: int = Field(default=1, ge=1, description="proposals made concurrently (LLM latency hiding)")
    proposals_ahead: int | None = Field(
        default=None, ge=0,
        description="candidates proposed beyond those being evaluated; a proposal made ahead cannot learn from the "
                    "evaluations still running. None: 0 for catalog (it proposes in milliseconds), 1 for llm")
    device: str = "cpu"
    promote_to: str = Field(default="auto", description="profile to re-run improvements on; auto: full on CUDA, none on CPU")
    max_repairs: int = Field(default=3, ge=0)
    language: Literal["en", "zh"] = "en"
    ucb_c: float = Field(default=0.5, ge=0)
    # wall-clock seconds for checks 2-7 of one candidate: about 6 s alone on a 2-core machine, but over 120 s
    # beside the run's own trainings on a slow one (a first check failed so in CI); an endless loop costs this
    check_timeout_s: float = 300.0
    check_memory_gb: float = 8.0

    def label(self, profile: str) -> str:
        """A profile as this run records it on its rows: a patience run's scores are not the profile's own."""
        return f"{profile}+patience{self.patience}" if self.patience else profile

    @property
    def profile_label(self) -> str:
        return self.label(self.profile)

    @property
    def lookahead(self) -> int:
        if self.proposals_ahead is not None:
            return self.proposals_ahead
        return 1 if self.proposer == "llm" else 0
    eval_timeout_s: float | None = None  # default by profile
    compile: bool | None = Field(default=None, description="torch.compile each training step on CUDA; None: where it "
                                 "pays (every profile but tiny, whose groups train for seconds)")
    cache_path: str | None = None  # default: <run_dir>/cache.sqlite
    llm: LLMSettings = Field(default_factory=LLMSettings)

    @property
    def database_url(self) -> str:
        from pathlib import Path

        return self.db_url or sqlite_url(Path(self.run_dir) / "mixerlab.db")

    def promotion_profile(self) -> str | None:
        if self.promote_to == "auto":
            return "full" if self.device.startswith("cuda") and self.profile != "full" else None
        return None if self.promote_to in ("none", self.profile) else self.promote_to

    def compiles(self, profile: str) -> bool:
        if not self.device.startswith("cuda"):
            return False
        return self.compile if self.compile is not None else profile not in ("tiny", "smoke")

    def evaluation_timeout(self, profile: str) -> float:
        if self.eval_timeout_s:
            return self.eval_timeout_s
        return {"smoke": 600.0, "tiny": 1800.0, "baseline": 6 * 3600.0, "quick": 12 * 3600.0}.get(profile, 48 * 3600.0)
