"""The catalog's edits: real transformations of a DeltaNet mixer's source code.

Each edit rewrites the parent's code at recognisable places (regular expressions over the template's lines,
which the edits preserve), so edits compose: a child of `tanh_on_error` can add `rope_on_qk`. Edits in the
same group replace the same mechanism and exclude each other; `incompatible` lists groups an edit cannot
follow or precede. `priors` are the expected per-task changes before any evidence (accuracy points); the
catalog replaces them with what the history measured once an edit has been tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable


class EditNotApplicable(ValueError):
    """The parent's code lacks the place this edit changes (e.g. the parent was written by hand)."""


def _sub(source: str, pattern: str, replacement: str | Callable[[re.Match], str], count: int = 0) -> str:
    new, n = re.subn(pattern, replacement, source, count=count, flags=re.M)
    if n == 0:
        raise EditNotApplicable(f"pattern not found: {pattern}")
    return new


def _insert_after(source: str, pattern: str, text: Callable[[str], str], count: int = 1) -> str:
    """Insert text(indent) after the lines matching pattern (whose first group is the indentation)."""
    return _sub(source, pattern + r"\n?", lambda m: m.group(0).rstrip("\n") + "\n" + text(m.group(1)), count)


def _ensure_import(source: str, module: str) -> str:
    if re.search(rf"^import {module}$", source, flags=re.M):
        return source
    return _sub(source, r"^import torch$", f"import {module}\nimport torch", count=1)


def _gated_chunk_function() -> str:
    from mixerlab.mixers import template_definition

    return template_definition("gated_delta_net", "gated_delta_rule_chunkwise")


OUTPUT_LINE = r"^(\s*)o = self\.o_norm\(.*\)$"
INIT_END = r"^(\s*)self\.o_proj = nn\.Linear\(.*\)$"
ERROR_LINE = r"^(\s*)u_i = (u\[:, :, i\] - w\[:, :, i\] @ state)(.*)$"
QK_NORM = r"^(\s*)q, k = F\.normalize\(q, dim=-1\), F\.normalize\(k, dim=-1\)$"
QK_ANY_NORM = r"^(\s*)(q, k = F\.normalize\(q, dim=-1\), F\.normalize\(k, dim=-1\)|k = F\.normalize\(.*\))$"


def _bounded_error(function: str) -> Callable[[str], str]:
    return lambda s: _sub(s, ERROR_LINE, lambda m: f"{m.group(1)}u_i = {function}({m.group(2)}){m.group(3)}")


def _layernorm_qk(s: str) -> str:
    return _sub(s, QK_NORM, lambda m: (
        f"{m.group(1)}q = F.normalize(F.layer_norm(q, q.shape[-1:], eps=1e-5), dim=-1)  # affine-free LayerNorm, then L2\n"
        f"{m.group(1)}k = F.normalize(F.layer_norm(k, k.shape[-1:], eps=1e-5), dim=-1)"), count=1)


ROTARY = '''

def rotate_positions(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding over the last dimension of x [B, H, T, D]; keeps norms, so L2 stays 1."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)[:, None] * freqs[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    return torch.cat([rotated, x[..., 2 * half :]], -1)
'''


def _rope(s: str) -> str:
    s = _insert_after(s, QK_ANY_NORM, lambda ind: f"{ind}q, k = rotate_positions(q), rotate_positions(k)  # RoPE\n")
    return s.rstrip("\n") + "\n" + ROTARY


def _output_gate(s: str) -> str:
    s = _insert_after(s, INIT_END, lambda ind: f"{ind}self.g_proj = nn.Linear(d_model, d_model, bias=False)  # output gate\n")
    return _insert_after(s, OUTPUT_LINE, lambda ind: f"{ind}o = o * F.silu(self.split_heads(self.g_proj(x)))\n")


def _decay(kind: str) -> Callable[[str], str]:
    def apply(s: str) -> str:
        s = _ensure_import(s, "math")
        if kind == "data":
            params = (
                "{i}self.a_proj = nn.Linear(d_model, num_heads, bias=False)  # data-dependent decay (Gated DeltaNet)\n"
                "{i}self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(1, 16).log())\n"
                "{i}dt = torch.exp(torch.rand(num_heads) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)\n"
                "{i}self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))\n"
            )
            gate = "(-self.A_log.float().exp() * F.softplus(self.a_proj(x).float() + self.dt_bias)).transpose(1, 2)"
        else:
            params = (
                "{i}retention = 1 - torch.exp2(-3.0 - torch.arange(num_heads, dtype=torch.float32))  # 0.875, 0.94, ...\n"
                "{i}self.register_buffer(\"log_decay\", retention.log(), persistent=False)  # one time scale per head\n"
            )
            gate = "self.log_decay[None, :, None].expand(x.shape[0], -1, x.shape[1])"
        s = _insert_after(s, INIT_END, lambda ind: params.format(i=ind))
        s = _sub(s, OUTPUT_LINE, lambda m: (
            f"{m.group(1)}g = {gate}\n"
            f"{m.group(1)}o = self.o_norm(gated_delta_rule_chunkwise(q, k, v, beta, g, self.chunk_size))"), count=1)
        if "def gated_delta_rule_chunkwise" not in s:
            s = s.rstrip("\n") + "\n\n\n" + _gated_chunk_function() + "\n"
        return s
    return apply


def _beta_two(s: str) -> str:
    return _sub(s, r"^(\s*)beta = torch\.sigmoid\(self\.b_proj\(x\)\)(.*)$",
                lambda m: f"{m.group(1)}beta = 2 * torch.sigmoid(self.b_proj(x)){m.group(2)}  # beta in (0, 2)", count=1)


def _state_clamp(s: str) -> str:
    return _insert_after(s, r"^(\s*)state = state\b.*$", lambda ind: (
        f"{ind}state = state / (state.norm(dim=(-2, -1), keepdim=True) / state.shape[-2] ** 0.5).clamp(min=1.0)\n"), count=0)


def _momentum(s: str) -> str:
    s = _insert_after(s, r"^(\s*)state = q\.new_zeros\(batch, heads, dk, dv\)$",
                      lambda ind: f"{ind}momentum = torch.zeros_like(state)  # running average of state updates\n")
    return _sub(s, r"^(\s*)state = state \+ (k\[:, :, i\]\.transpose\(-1, -2\) @ u_i)$", lambda m: (
        f"{m.group(1)}momentum = 0.5 * momentum + {m.group(2)}\n{m.group(1)}state = state + momentum"), count=1)


def _conv(size: int) -> Callable[[str], str]:
    return lambda s: _sub(s, r"conv_size: int = \d+", f"conv_size: int = {size}", count=1)


def _tied_qk(s: str) -> str:
    s = _sub(s, r"^\s*self\.k_proj = nn\.Linear\(.*\)\n", "", count=1)
    return _sub(s, r"^(\s*)k = self\.split_heads\(self\.k_conv\(self\.k_proj\(x\)\)\)$", lambda m: (
        f"{m.group(1)}k = self.split_heads(self.k_conv(self.q_proj(x)))  # keys share the query projection"), count=1)


@dataclass(frozen=True)
class Edit:
    name: str
    group: str
    title: dict[str, str]
    issue: dict[str, str]  # what in the parent's code the edit addresses; {line} and {lineno} are filled in
    mechanism: dict[str, str]
    anchor: str  # regex of the parent line the issue points at
    priors: dict[str, float]  # expected change per task (accuracy) before evidence
    transform: Callable[[str], str]
    incompatible: frozenset[str] = field(default_factory=frozenset)

    def apply(self, source: str) -> str:
        new = self.transform(source)
        if new == source:
            raise EditNotApplicable(f"{self.name} changed nothing")
        return new


RECALL = ("context_recall", "noisy_recall", "fuzzy_recall")

EDITS: tuple[Edit, ...] = (
    Edit("tanh_on_error", "error_bound",
         {"en": "bound the prediction error with tanh before the state update", "zh": "在状态更新前用 tanh 限制预测误差"},
         {"en": "line {lineno} `{line}` writes the raw error (S k - v) into the state: one large error overwrites many stored associations",
          "zh": "第 {lineno} 行 `{line}` 把未受限的误差 (S k - v) 直接写入状态：一次大误差会覆盖许多已存储的关联"},
         {"en": "u_i = tanh(u_i) keeps the sign of each correction, is linear for small errors and saturates for outliers, like a per-element adaptive step",
          "zh": "u_i = tanh(u_i) 保留修正方向，对小误差近似线性、对异常值饱和，相当于逐元素自适应步长"},
         ERROR_LINE, {"compress": 0.02, "fuzzy_recall": 0.02, "memorize": 0.01}, _bounded_error("torch.tanh")),
    Edit("softsign_on_error", "error_bound",
         {"en": "bound the prediction error with softsign before the state update", "zh": "在状态更新前用 softsign 限制预测误差"},
         {"en": "line {lineno} `{line}` lets a single outlier error dominate the rank-one state update",
          "zh": "第 {lineno} 行 `{line}` 允许单个异常误差主导秩一状态更新"},
         {"en": "softsign x/(1+|x|) bounds each correction like tanh but saturates polynomially, keeping more gradient for large errors",
          "zh": "softsign x/(1+|x|) 与 tanh 一样有界，但以多项式速度饱和，大误差处保留更多梯度"},
         ERROR_LINE, {"compress": 0.015, "fuzzy_recall": 0.02, "memorize": 0.01}, _bounded_error("F.softsign")),
    Edit("affine_free_layernorm_qk", "qk_norm",
         {"en": "apply an affine-free LayerNorm to q and k before the L2 norm", "zh": "在 L2 归一化前对 q、k 做无仿射 LayerNorm"},
         {"en": "line {lineno} `{line}` L2-normalises raw projections: their per-feature mean and variance drift, so key similarities and update sizes drift too",
          "zh": "第 {lineno} 行 `{line}` 直接对原始投影做 L2 归一化：特征均值和方差漂移，导致键相似度和更新幅度随之漂移"},
         {"en": "centring and scaling each head vector first makes directions comparable across positions; no parameters are added",
          "zh": "先对每个头向量做中心化和缩放，使方向在不同位置间可比，且不增加参数"},
         QK_NORM, {"memorize": 0.02, "compress": 0.01, "fuzzy_recall": 0.01}, _layernorm_qk),
    Edit("rope_on_qk", "position",
         {"en": "add a rotary position embedding to q and k", "zh": "对 q、k 施加旋转位置编码 (RoPE)"},
         {"en": "line {lineno} `{line}` gives q and k no positional signal: the state cannot tell recent keys from old ones",
          "zh": "第 {lineno} 行 `{line}` 使 q、k 不含位置信息：状态无法区分近期与早期的键"},
         {"en": "RoPE rotates each q/k pair by a position-dependent angle (norm-preserving, so the delta rule stays stable) and adds order information to key matching",
          "zh": "RoPE 按位置相关角度旋转 q/k（保持范数，delta 规则仍稳定），为键匹配加入顺序信息"},
         QK_ANY_NORM, {"selective_copy": 0.01, "fuzzy_recall": 0.02, "compress": 0.01}, _rope),
    Edit("output_gate", "output_gate",
         {"en": "add a SiLU output gate on the normalised output", "zh": "在归一化输出上加 SiLU 输出门"},
         {"en": "line {lineno} `{line}` passes every retrieved value through unconditionally: the layer cannot suppress a bad retrieval",
          "zh": "第 {lineno} 行 `{line}` 无条件输出所有检索值：该层无法抑制错误检索"},
         {"en": "o * SiLU(W_g x), as Gated DeltaNet's output, lets the current token decide how much of the retrieval to use",
          "zh": "o * SiLU(W_g x)（同 Gated DeltaNet 的输出门）让当前 token 决定使用多少检索结果"},
         OUTPUT_LINE, {"fuzzy_recall": 0.03, "noisy_recall": 0.0, "memorize": 0.01}, _output_gate),
    Edit("data_dependent_decay", "decay",
         {"en": "add a data-dependent decay of the state (Gated DeltaNet's gate)", "zh": "为状态加入数据相关衰减（Gated DeltaNet 门控）"},
         {"en": "line {lineno} `{line}` keeps every association forever: stale keys interfere with new ones",
          "zh": "第 {lineno} 行 `{line}` 永久保留所有关联：过时的键干扰新的键"},
         {"en": "S_t = a_t S_(t-1) (I - b k k^T) + b v k^T with a_t = exp(-exp(A) softplus(W_a x + dt)) lets the layer forget selectively",
          "zh": "S_t = a_t S_(t-1)(I - b k k^T) + b v k^T，a_t = exp(-exp(A) softplus(W_a x + dt))，让该层有选择地遗忘"},
         OUTPUT_LINE, {"fuzzy_recall": 0.05, "memorize": 0.01, "compress": -0.03}, _decay("data")),
    Edit("multi_scale_fixed_decay", "decay",
         {"en": "add a fixed decay with one time scale per head", "zh": "为每个头加入一个固定时间尺度的衰减"},
         {"en": "line {lineno} `{line}` uses a single infinite memory horizon for every head",
          "zh": "第 {lineno} 行 `{line}` 所有头共用无限长的记忆时程"},
         {"en": "per-head retention 1 - 2^-(3+h) (horizons of 8, 16, 32, 64 tokens) gives heads different memory spans at no parameter cost",
          "zh": "每头保持率 1 - 2^-(3+h)（时程 8、16、32、64 个 token），不增加参数即可获得多尺度记忆"},
         OUTPUT_LINE, {"fuzzy_recall": 0.02, "compress": -0.02}, _decay("fixed")),
    Edit("beta_up_to_two", "beta",
         {"en": "let beta range over (0, 2) (negative eigenvalues)", "zh": "让 beta 取值于 (0, 2)（允许负特征值）"},
         {"en": "line {lineno} `{line}` restricts beta to (0, 1), so the transition I - b k k^T has eigenvalues in [0, 1] only",
          "zh": "第 {lineno} 行 `{line}` 将 beta 限制在 (0, 1)，转移矩阵 I - b k k^T 的特征值只能在 [0, 1]"},
         {"en": "beta = 2 sigmoid(.) allows eigenvalues in (-1, 1] (Grazzi et al., 2024): reflections help state tracking and overwriting",
          "zh": "beta = 2 sigmoid(.) 允许特征值落在 (-1, 1]（Grazzi 等, 2024）：反射有助于状态跟踪与覆盖写入"},
         r"^(\s*)beta = torch\.sigmoid\(self\.b_proj\(x\)\).*$", {"selective_copy": 0.01, "memorize": 0.01, "fuzzy_recall": 0.01}, _beta_two),
    Edit("state_norm_clamp", "state",
         {"en": "clamp the state's norm after each chunk", "zh": "每个块后截断状态范数"},
         {"en": "line {lineno} `{line}` lets the state norm grow with sequence length",
          "zh": "第 {lineno} 行 `{line}` 使状态范数随序列长度增长"},
         {"en": "dividing S by max(1, ||S||_F / sqrt(d_k)) after each chunk bounds the state without touching small states",
          "zh": "每个块后将 S 除以 max(1, ||S||_F / sqrt(d_k))，限制状态大小而不影响较小的状态"},
         r"^(\s*)state = state\b.*$", {"compress": 0.01, "memorize": 0.01}, _state_clamp),
    Edit("momentum_on_update", "state_update",
         {"en": "add momentum to the chunk state update", "zh": "对块级状态更新加入动量"},
         {"en": "line {lineno} `{line}` applies each chunk's correction once, with no memory of past corrections",
          "zh": "第 {lineno} 行 `{line}` 每个块的修正只作用一次，不记忆过去的修正"},
         {"en": "M = 0.5 M + K^T U', S = S + M smooths the state trajectory across chunks (a heavy-ball step on the online regression)",
          "zh": "M = 0.5 M + K^T U'，S = S + M，在块之间平滑状态轨迹（在线回归上的重球步）"},
         r"^(\s*)state = state \+ k\[.*$", {"compress": 0.01, "fuzzy_recall": 0.01}, _momentum,
         incompatible=frozenset({"decay"})),
    Edit("longer_short_conv", "conv",
         {"en": "widen the short convolution kernel from 4 to 8", "zh": "将短卷积核从 4 增大到 8"},
         {"en": "line {lineno} `{line}` mixes only 4 neighbouring tokens before the recurrence",
          "zh": "第 {lineno} 行 `{line}` 在递推前只混合 4 个相邻 token"},
         {"en": "a kernel of 8 lets q, k and v see multi-token motifs (fuzzy keys span up to 3 tokens) before matching",
          "zh": "核长 8 让 q、k、v 在匹配前看到多 token 模式（模糊键最多跨 3 个 token）"},
         r"^(\s*)self, d_model.*conv_size.*$", {"fuzzy_recall": 0.03, "selective_copy": 0.0}, _conv(8)),
    Edit("shorter_short_conv", "conv",
         {"en": "narrow the short convolution kernel from 4 to 2", "zh": "将短卷积核从 4 缩小到 2"},
         {"en": "line {lineno} `{line}` blurs each token with 3 predecessors, which can mix a key with the previous value",
          "zh": "第 {lineno} 行 `{line}` 将每个 token 与前 3 个 token 混合，可能把键与前一个值混在一起"},
         {"en": "a kernel of 2 keeps keys sharp (only the previous token is mixed in)",
          "zh": "核长 2 保持键的清晰（只混入前一个 token）"},
         r"^(\s*)self, d_model.*conv_size.*$", {"context_recall": 0.0, "memorize": 0.01, "fuzzy_recall": -0.01}, _conv(2)),
    Edit("tied_qk_projection", "qk_proj",
         {"en": "share one projection between queries and keys", "zh": "让查询与键共享同一投影"},
         {"en": "line {lineno} `{line}` learns separate query and key maps, so a query can miss the key it should retrieve",
          "zh": "第 {lineno} 行 `{line}` 分别学习查询和键的映射，查询可能对不上应检索的键"},
         {"en": "k = q-projection(x) makes matching symmetric and frees 16k parameters (the conv and L2 norm still differ per use)",
          "zh": "k 使用 q 的投影，使匹配对称并节省 1.6 万参数（卷积与 L2 归一化仍分别进行）"},
         r"^(\s*)k = self\.split_heads\(self\.k_conv\(self\.k_proj\(x\)\)\)$", {"context_recall": 0.0, "memorize": -0.01, "fuzzy_recall": 0.01}, _tied_qk),
)
EDITS_BY_NAME = {edit.name: edit for edit in EDITS}


def compatible(edit: Edit, applied: list[str]) -> bool:
    groups = {EDITS_BY_NAME[name].group for name in applied if name in EDITS_BY_NAME}
    if edit.group in groups:
        return False
    if edit.incompatible & groups:
        return False
    return not any(edit.group in EDITS_BY_NAME[n].incompatible for n in applied if n in EDITS_BY_NAME)
