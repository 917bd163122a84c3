"""The design space: a DeltaNet-family mixer as a vector of orthogonal choices, rendered to a candidate file.

Each axis is one mechanism of the layer (the q/k feature map, position handling, the beta parameterisation,
the decay, the error transform, the state update, the output gate and norm, the short convolutions, the head
layout, ...); each option names the knowledge cards (`mixerlab.knowledge`) that motivate it. `render` writes a
self-contained candidate file (the contract of docs/candidates.md) for any vector, so search works on vectors
(mutation, crossover, distance) and the code follows. The all-defaults vector renders the DeltaNet baseline:
the same parameters, created in the same order, so it behaves exactly like `mixers/delta_net.py`.

A vector is stored with its experiment as `edits` of the form "axis=option" (non-default axes only), so a
run's database says which choices every searched candidate made.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from mixerlab.mixers import template_definition
from mixerlab.tasks import TASK_NAMES



@dataclass(frozen=True)
class Option:
    name: str
    summary: str  # what the option does, in one line (Insights and the LLM's menu)
    cards: tuple[str, ...] = ()  # knowledge cards that motivate it


@dataclass(frozen=True)
class Axis:
    name: str
    question: str  # the design question this axis answers
    options: tuple[Option, ...]

    @property
    def default(self) -> str:
        return self.options[0].name

    def option(self, name: str) -> Option:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(f"axis {self.name!r} has no option {name!r}; options: {', '.join(self.names)}")

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.options]


AXES: tuple[Axis, ...] = (
    Axis("qk_feature", "feature map on q and k before the L2 norm", (
        Option("identity", "L2-normalise the projections as they are", ("deltanet", "qk_normalisation")),
        Option("silu", "SiLU, then L2 norm (DeltaNet's best ablation)", ("silu_feature_map", "deltanet")),
        Option("relu", "ReLU, then L2 norm (non-negative features)", ("cosformer",)),
        Option("elu_plus_one", "ELU + 1, then L2 norm (positive features)", ("linear_attention",)),
        Option("layernorm", "affine-free LayerNorm, then L2 norm", ("qk_normalisation",)),
    )),
    Axis("position", "how q and k carry position", (
        Option("none", "no positional signal beyond the convolutions", ("short_convolution",)),
        Option("rope", "rotary embedding on all of q and k", ("rope",)),
        Option("rope_half", "rotary embedding on half of each head's dimensions", ("rope", "path_attention")),
        Option("data_rope", "rotation by angles the tokens set, summed over the prefix (Mamba-3's complex transition)",
               ("mamba3", "path_attention")),
    )),
    Axis("beta", "the write strength beta of the delta rule", (
        Option("sigmoid", "beta = sigmoid(W_b x) in (0, 1)", ("deltanet",)),
        Option("two_sigmoid", "beta = 2 sigmoid(W_b x) in (0, 2): negative eigenvalues", ("negative_eigenvalues", "deltaproduct")),
        Option("head_constant", "one learned beta per head, the same for every token", ("linear_attention", "mamba")),
    )),
    Axis("decay", "how the state forgets", (
        Option("none", "no decay: the state keeps everything until overwritten", ("deltanet",)),
        Option("fixed_multiscale", "fixed per-head retention 1 - 2^-(3+h)", ("retnet",)),
        Option("learned_head", "a learned constant decay per head", ("lru", "retnet")),
        Option("data_dependent", "Mamba-2 style decay from the token (Gated DeltaNet)", ("gated_deltanet", "mamba2")),
    )),
    Axis("error", "the transform of the prediction error before it is written", (
        Option("identity", "write the raw error v - S k", ("deltanet",)),
        Option("tanh", "tanh of the error (bounded, Huber-like)", ("robust_updates", "miras_attentional_bias")),
        Option("softsign", "softsign of the error (bounded, slower saturation)", ("robust_updates",)),
        Option("clip", "clip the error to [-1, 1]: the gradient of a Huber objective (Miras's Yaad)",
               ("robust_updates", "miras_attentional_bias", "ttt")),
    )),
    Axis("momentum", "whether state updates carry momentum across chunks", (
        Option("none", "each chunk's correction applied once", ("deltanet",)),
        Option("heavy_ball", "M = 0.5 M + update, S = S + M", ("momentum_updates", "titans")),
    )),
    Axis("state_bound", "whether the state's norm is bounded", (
        Option("none", "the state's norm is free", ("deltanet",)),
        Option("norm_clamp", "divide S by max(1, ||S|| / sqrt(d_k)) after each chunk", ("state_norm_bound", "ttt", "longhorn")),
    )),
    Axis("output_gate", "whether the token gates what it reads", (
        Option("none", "the retrieval passes ungated", ("deltanet",)),
        Option("silu", "o * SiLU(W_g x)", ("gated_deltanet", "gla")),
        Option("sigmoid", "o * sigmoid(W_g x)", ("gated_attention",)),
    )),
    Axis("output_norm", "the per-head norm of the read-out", (
        Option("rmsnorm", "RMSNorm per head", ("deltanet",)),
        Option("layernorm", "LayerNorm per head", ("transnormer",)),
    )),
    Axis("conv", "kernel of the causal short convolutions", (
        Option("4", "kernel 4", ("short_convolution", "deltanet")),
        Option("0", "no short convolution (SiLU on the projections instead)", ("linear_attention",)),
        Option("2", "kernel 2", ("short_convolution",)),
        Option("8", "kernel 8", ("short_convolution", "zoology")),
    )),
    Axis("conv_on", "which projections get the short convolution", (
        Option("qkv", "q, k and v", ("short_convolution",)),
        Option("qk", "q and k only; v is linear", ("short_convolution", "based")),
    )),
    Axis("heads", "number of heads at width 128", (
        Option("4", "4 heads of 32 dims", ("deltanet",)),
        Option("2", "2 heads of 64 dims (larger state per head)", ("hgrn2",)),
        Option("8", "8 heads of 16 dims (more independent memories)", ("multi_head",)),
    )),
    Axis("qk_tying", "whether queries and keys share a projection", (
        Option("separate", "separate q and k projections", ("deltanet",)),
        Option("tied", "keys share the query projection", ("shared_qk",)),
    )),
    Axis("skip", "a direct path from the values to the output", (
        Option("none", "the output is the state's read-out only", ("deltanet",)),
        Option("value_skip", "o + D v with a learned per-head D (Mamba's D term)", ("value_skip", "mamba")),
    )),
    Axis("read_correction", "whether the query is corrected before it reads the state", (
        Option("none", "read with the query as it is", ("deltanet",)),
        Option("comba", "q - D sigmoid(d) k before the L2 norm (Comba's output feedback)", ("comba",)),
    )),
)
AXES_BY_NAME = {axis.name: axis for axis in AXES}
DEFAULTS: dict[str, str] = {axis.name: axis.default for axis in AXES}

Choices = dict[str, str]


def option_count() -> int:
    return sum(len(axis.options) for axis in AXES)


def canonical(choices: Choices) -> Choices:
    """Fill defaults and fold choices that render the same code (no convolution: `conv_on` means nothing)."""
    unknown = set(choices) - set(AXES_BY_NAME)
    if unknown:
        raise KeyError(f"unknown design axes {sorted(unknown)}; axes: {', '.join(AXES_BY_NAME)}")
    full = {**DEFAULTS, **choices}
    for axis, option in full.items():
        AXES_BY_NAME[axis].option(option)
    if full["conv"] == "0":
        full["conv_on"] = DEFAULTS["conv_on"]
    return full


def to_edits(choices: Choices) -> list[str]:
    full = canonical(choices)
    return [f"{axis}={option}" for axis, option in full.items() if option != DEFAULTS[axis]]


def from_edits(edits: list[str]) -> Choices | None:
    """The vector an experiment's edits describe; None if they are not design-space edits."""
    choices = {}
    for edit in edits:
        axis, sep, option = edit.partition("=")
        if not sep or axis not in AXES_BY_NAME or option not in AXES_BY_NAME[axis].names:
            return None
        choices[axis] = option
    return canonical(choices)


# the baselines as vectors (Gated DeltaNet's wider values are outside the space: its vector is the nearest)
BASELINE_CHOICES: dict[str, Choices] = {
    "delta_net_4layer": dict(DEFAULTS),
    "gated_delta_net_4layer": canonical({"decay": "data_dependent", "output_gate": "silu"}),
}


def distance(a: Choices, b: Choices) -> int:
    a, b = canonical(a), canonical(b)
    return sum(a[axis] != b[axis] for axis in AXES_BY_NAME)


def mutate(choices: Choices, rng: random.Random, weights: dict[tuple[str, str], float] | None = None,
           changes: int = 1) -> Choices:
    """Change `changes` axes; an option's chance is proportional to its weight (default 1)."""
    child = canonical(choices)
    for axis_name in rng.sample(list(AXES_BY_NAME), k=changes):
        axis = AXES_BY_NAME[axis_name]
        others = [o.name for o in axis.options if o.name != child[axis_name]]
        w = [max(1e-3, (weights or {}).get((axis_name, o), 1.0)) for o in others]
        child[axis_name] = rng.choices(others, weights=w, k=1)[0]
    return canonical(child)


def crossover(a: Choices, b: Choices, rng: random.Random) -> Choices:
    """Uniform crossover: each axis from either parent."""
    a, b = canonical(a), canonical(b)
    return canonical({axis: (a if rng.random() < 0.5 else b)[axis] for axis in AXES_BY_NAME})


def describe(choices: Choices) -> str:
    edits = to_edits(choices)
    return ", ".join(edits) if edits else "DeltaNet (all defaults)"


def snake_name(choices: Choices, limit: int = 3) -> str:
    """delta_net_4layer_<change>: the non-default options, most specific first, as snake case."""
    parts = []
    for edit in to_edits(choices)[:limit]:
        axis, option = edit.split("=")
        parts.append(f"{axis}_{option}" if option.isdigit() or option in ("none", "identity") else option)
    extra = len(to_edits(choices)) - limit
    name = "_".join(parts) + (f"_and_{extra}_more" if extra > 0 else "")
    return f"delta_net_4layer_{name or 'defaults'}"


# rendering -------------------------------------------------------------------------------------------------

FEATURES = {
    "silu": "q, k = F.silu(q), F.silu(k)",
    "relu": "q, k = F.relu(q), F.relu(k)",
    "elu_plus_one": "q, k = F.elu(q) + 1, F.elu(k) + 1",
    "layernorm": "q, k = F.layer_norm(q, q.shape[-1:], eps=1e-5), F.layer_norm(k, k.shape[-1:], eps=1e-5)",
}
ERRORS = {"tanh": "torch.tanh(u_i)", "softsign": "F.softsign(u_i)", "clip": "u_i.clamp(-1.0, 1.0)"}

DATA_ROTARY = '''

def rotate_by(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of the first 2P dims of x [B, H, T, D] by angles [B, T, P] (every head alike; norm-preserving)."""
    pairs = angles.shape[-1]
    cos, sin = angles.cos()[:, None].to(x.dtype), angles.sin()[:, None].to(x.dtype)
    x1, x2 = x[..., :pairs], x[..., pairs : 2 * pairs]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * pairs :]], -1)
'''

ROTARY = '''

def rotate_positions(x: torch.Tensor, fraction: float = 1.0, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding on the first `fraction` of the last dimension of x [B, H, T, D] (norm-preserving)."""
    half = int(x.shape[-1] * fraction) // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half :]], -1)
'''

def _chunk_function(c: Choices) -> str:
    gated = c["decay"] != "none"
    lines = [
        "def delta_rule_chunkwise(",
        "    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,"
        + (" g: torch.Tensor," if gated else "") + " chunk_size: int = 64",
        ") -> torch.Tensor:",
        '    """Chunkwise delta rule' + (" with a decay a_t = exp(g_t)" if gated else "")
        + ": q, k [B, H, T, Dk] (L2-normalised), v [B, H, T, Dv], beta"
        + (", g" if gated else "") + ' [B, H, T] -> [B, H, T, Dv]; float32, linear in T."""',
        "    out_dtype = v.dtype",
        "    with torch.autocast(device_type=q.device.type, enabled=False):",
        "        q, k, v, beta = q.float(), k.float(), v.float(), beta.float()",
    ]
    if gated:
        lines.append("        g = g.float()")
    lines += [
        "        batch, heads, length, dk = k.shape",
        "        dv = v.shape[-1]",
        "        chunk = min(chunk_size, length)",
        "        pad = (-length) % chunk",
        "        if pad:  # zero keys/values/betas at the end change nothing before them",
        "            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))",
        "            beta = F.pad(beta, (0, pad))",
    ]
    if gated:
        lines.append("            g = F.pad(g, (0, pad))")
    lines += [
        "        n = (length + pad) // chunk",
        "        q, k, v = (t.reshape(batch, heads, n, chunk, -1) for t in (q, k, v))",
        "        beta = beta.reshape(batch, heads, n, chunk, 1)",
        "        q = q * dk**-0.5",
        "",
        "        k_beta = k * beta",
        "        eye = torch.eye(chunk, device=q.device, dtype=q.dtype)",
    ]
    if gated:
        lines += [
            "        gamma = g.reshape(batch, heads, n, chunk).cumsum(-1)  # log of the decay since the chunk start",
            "        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()",
            '        decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()',
            "        a = eye + ((k_beta @ k.transpose(-1, -2)) * decay).tril(-1)",
            "        rhs = torch.cat([v * beta, k_beta * gamma.exp()[..., None]], -1)",
            "        uw = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)",
            "        u, w = uw.split([dv, dk], -1)",
            "        attn = (q @ k.transpose(-1, -2)) * decay",
            "        q_read = q * gamma.exp()[..., None]",
            "        chunk_decay = gamma[..., -1:]",
            "        k_write = k * (chunk_decay - gamma).exp()[..., None]",
        ]
    else:
        lines += [
            "        a = eye + (k_beta @ k.transpose(-1, -2)).tril(-1)",
            "        uw = torch.linalg.solve_triangular(a, torch.cat([v * beta, k_beta], -1), upper=False, unitriangular=True)",
            "        u, w = uw.split([dv, dk], -1)",
            "        attn = (q @ k.transpose(-1, -2)).tril()  # intra-chunk scores, j <= i",
            "        q_read, k_write = q, k",
        ]
    lines += ["", "        state = q.new_zeros(batch, heads, dk, dv)"]
    if c["momentum"] == "heavy_ball":
        lines.append("        momentum = torch.zeros_like(state)  # running sum of past updates, halved each chunk")
    lines += [
        "        outputs = []",
        "        for i in range(n):",
        "            u_i = u[:, :, i] - w[:, :, i] @ state  # values corrected by what the state already predicts",
    ]
    if c["error"] in ERRORS:
        lines.append(f"            u_i = {ERRORS[c['error']]}  # bounded correction")
    lines += [
        "            outputs.append(q_read[:, :, i] @ state + attn[:, :, i] @ u_i)",
        "            update = k_write[:, :, i].transpose(-1, -2) @ u_i",
    ]
    if c["momentum"] == "heavy_ball":
        lines += ["            momentum = 0.5 * momentum + update", "            update = momentum"]
    carry = "state * chunk_decay[:, :, i, :, None].exp()" if gated else "state"
    lines.append(f"            state = {carry} + update")
    if c["state_bound"] == "norm_clamp":
        lines.append("            state = state / (state.norm(dim=(-2, -1), keepdim=True) / dk**0.5).clamp(min=1.0)")
    lines += [
        "        o = torch.stack(outputs, 2).reshape(batch, heads, n * chunk, dv)[:, :, :length]",
        "    return o.to(out_dtype)",
    ]
    return "\n".join(lines) + "\n"


def _init(c: Choices) -> list[str]:
    conv = c["conv"] != "0"
    tied = c["qk_tying"] == "tied"
    lines = [
        "        self.q_proj = nn.Linear(d_model, d_model, bias=False)",
    ]
    if not tied:
        lines.append("        self.k_proj = nn.Linear(d_model, d_model, bias=False)")
    lines.append("        self.v_proj = nn.Linear(d_model, d_model, bias=False)")
    if c["beta"] != "head_constant":
        lines.append("        self.b_proj = nn.Linear(d_model, num_heads, bias=False)")
    if conv:
        lines += ["        self.q_conv = ShortConvolution(d_model, conv_size)",
                  "        self.k_conv = ShortConvolution(d_model, conv_size)"]
        if c["conv_on"] == "qkv":
            lines.append("        self.v_conv = ShortConvolution(d_model, conv_size)")
    norm = "nn.RMSNorm" if c["output_norm"] == "rmsnorm" else "nn.LayerNorm"
    lines += [f"        self.o_norm = {norm}(self.head_dim, eps=norm_eps)",
              "        self.o_proj = nn.Linear(d_model, d_model, bias=False)"]
    # parameters beyond DeltaNet's come after its own, so the defaults draw DeltaNet's initial weights
    if c["beta"] == "head_constant":
        lines.append("        self.beta_logit = nn.Parameter(torch.zeros(num_heads))  # beta = 0.5 at the start")
    if c["decay"] == "data_dependent":
        lines += [
            "        self.a_proj = nn.Linear(d_model, num_heads, bias=False)",
            "        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())",
            "        dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)",
            "        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus",
        ]
    elif c["decay"] == "fixed_multiscale":
        lines += [
            "        retention = 1 - torch.exp2(-3.0 - torch.arange(num_heads, dtype=torch.float32))  # 0.875, 0.94, ...",
            '        self.register_buffer("log_decay", retention.log(), persistent=False)',
        ]
    elif c["decay"] == "learned_head":
        lines.append("        self.decay_logit = nn.Parameter(torch.linspace(2.0, 5.0, num_heads))  # retention 0.88 .. 0.99")
    if c["output_gate"] != "none":
        lines.append("        self.g_proj = nn.Linear(d_model, d_model, bias=False)")
    if c["skip"] == "value_skip":
        lines.append("        self.d_skip = nn.Parameter(torch.ones(num_heads))")
    if c["position"] == "data_rope":  # a quarter of each head's dims: half of them rotate, in pairs
        lines.append("        self.angle_proj = nn.Linear(d_model, self.head_dim // 4, bias=False)")
    if c["read_correction"] == "comba":
        lines += ["        self.correction = nn.Parameter(torch.full((num_heads,), 0.02))  # small: fla finds 0.02 better at this scale",
                  "        self.inner_decay = nn.Parameter(torch.ones(num_heads))"]
    return lines


def _forward(c: Choices) -> list[str]:
    conv = c["conv"] != "0"
    k_source = "self.q_proj(x)" if c["qk_tying"] == "tied" else "self.k_proj(x)"

    def projected(name: str, source: str, convolved: bool) -> str:
        inner = f"self.{name}_conv({source})" if convolved else (source if name == "v" and conv else f"F.silu({source})")
        return f"        {name} = self.split_heads({inner})"

    lines = [
        "        batch, length, d_model = x.shape",
        projected("q", "self.q_proj(x)", conv),
        projected("k", k_source, conv),
        projected("v", "self.v_proj(x)", conv and c["conv_on"] == "qkv"),
    ]
    if c["qk_feature"] in FEATURES:
        lines.append(f"        {FEATURES[c['qk_feature']]}")
    if c["read_correction"] == "comba":
        lines.append("        q = q - (self.correction * torch.sigmoid(self.inner_decay))[None, :, None, None] * k")
    lines.append("        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)")
    if c["position"] == "data_rope":
        lines += ["        angles = torch.cumsum(self.angle_proj(x).float(), dim=1)  # [B, T, P]: set by the tokens so far",
                  "        q, k = rotate_by(q, angles), rotate_by(k, angles)"]
    if c["position"] == "rope":
        lines.append("        q, k = rotate_positions(q), rotate_positions(k)")
    elif c["position"] == "rope_half":
        lines.append("        q, k = rotate_positions(q, 0.5), rotate_positions(k, 0.5)")
    if c["beta"] == "sigmoid":
        lines.append("        beta = torch.sigmoid(self.b_proj(x)).transpose(1, 2)  # [B, H, T]")
    elif c["beta"] == "two_sigmoid":
        lines.append("        beta = 2 * torch.sigmoid(self.b_proj(x)).transpose(1, 2)  # [B, H, T] in (0, 2)")
    else:
        lines.append("        beta = torch.sigmoid(self.beta_logit)[None, :, None].expand(batch, -1, length)")
    args = "q, k, v, beta"
    if c["decay"] == "data_dependent":
        lines.append("        g = (-self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)).transpose(1, 2)")
    elif c["decay"] == "fixed_multiscale":
        lines.append("        g = self.log_decay[None, :, None].expand(batch, -1, length)")
    elif c["decay"] == "learned_head":
        lines.append("        g = F.logsigmoid(self.decay_logit)[None, :, None].expand(batch, -1, length)")
    if c["decay"] != "none":
        args += ", g"
    lines.append(f"        o = delta_rule_chunkwise({args}, self.chunk_size)")
    if c["skip"] == "value_skip":
        lines.append("        o = o + self.d_skip[None, :, None, None] * v")
    lines.append("        o = self.o_norm(o)")
    if c["output_gate"] == "silu":
        lines.append("        o = o * F.silu(self.split_heads(self.g_proj(x)))")
    elif c["output_gate"] == "sigmoid":
        lines.append("        o = o * torch.sigmoid(self.split_heads(self.g_proj(x)))")
    lines.append("        return self.o_proj(o.transpose(1, 2).reshape(batch, length, d_model))")
    return lines


def render(choices: Choices) -> str:
    """The candidate file for a vector: one self-contained module defining `DeltaNet`."""
    c = canonical(choices)
    needs_math = c["decay"] == "data_dependent"
    header = [
        f'"""DeltaNet-family mixer from mixerlab\'s design space: {describe(c)}.',
        "",
        "Generated by `mixerlab.propose.space.render`; the contract is docs/candidates.md.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *(["import math", ""] if needs_math else []),
        "import torch",
        "import torch.nn.functional as F",
        "from torch import nn",
        "",
        "",
    ]
    body = "\n".join(header) + _chunk_function(c)
    if c["position"] in ("rope", "rope_half"):
        body += ROTARY
    elif c["position"] == "data_rope":
        body += DATA_ROTARY
    if c["conv"] != "0":
        body += "\n\n" + template_definition("delta_net", "ShortConvolution") + "\n"
    klass = [
        "",
        "",
        "class DeltaNet(nn.Module):",
        f'    """{describe(c)}."""',
        "",
        "    def __init__(",
        f"        self, d_model: int, num_heads: int = {c['heads']}, conv_size: int = {c['conv'] if c['conv'] != '0' else 4},"
        " chunk_size: int = 64, norm_eps: float = 1e-5",
        "    ) -> None:",
        "        super().__init__()",
        "        if d_model % num_heads:",
        '            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")',
        "        self.num_heads = num_heads",
        "        self.head_dim = d_model // num_heads",
        "        self.chunk_size = chunk_size",
        *_init(c),
        "",
        "    def split_heads(self, x: torch.Tensor) -> torch.Tensor:",
        "        batch, length, _ = x.shape",
        "        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)",
        "",
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
        *_forward(c),
    ]
    return body + "\n".join(klass) + "\n"


def all_vectors() -> int:
    """How many vectors the space holds before folding equivalent ones."""
    total = 1
    for axis in AXES:
        total *= len(axis.options)
    return total


def random_vector(rng: random.Random) -> Choices:
    return canonical({axis.name: rng.choice(axis.names) for axis in AXES})


__all__ = ["AXES", "AXES_BY_NAME", "Axis", "BASELINE_CHOICES", "Choices", "DEFAULTS", "Option", "canonical",
           "crossover", "describe", "distance", "from_edits", "mutate", "option_count", "random_vector", "render",
           "snake_name", "to_edits"]
