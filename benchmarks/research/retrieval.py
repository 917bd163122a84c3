"""Retrieval quality of the knowledge base on queries written from outside the cards
(mixerlab/knowledge/retrieval_queries.yaml: papers' problem statements and loop experiments; no label comes from a
card's `helps` field).

    python benchmarks/research/retrieval.py   -> benchmarks/results/retrieval.{json,md}

Recall@k (the share of a query's relevant cards among the first k, averaged over queries) with a 95% bootstrap
interval over queries, for three rankers: the default (BM25 plus the bonus for measured claims on the weak
tasks), BM25 without the bonus, and the cards' `helps` fields alone; for the held-out split (never tuned on), the
tuning split and both together. MiniLM embeddings are added where `mixerlab[knowledge]` is installed.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # benchmarks/
sys.path.insert(0, str(ROOT.parent / "src"))

from mixerlab.knowledge import Retriever, embedding_available, load_cards  # noqa: E402
from mixerlab.knowledge.evaluation import RANKERS, bootstrap_interval, recall_at, retrieval_queries  # noqa: E402

KS = (1, 3, 5, 8)
SPLITS = {"held_out": "held out", "tune": "tuning", "all": "all"}


def measure(retriever: Retriever, ranker: str) -> dict:
    out = {}
    for split in SPLITS:
        queries = retrieval_queries(None if split == "all" else split)
        cell = {"queries": len(queries)}
        for k in KS:
            mean, rows = recall_at(retriever, k, ranker, queries)
            low, high = bootstrap_interval([r["recall"] for r in rows])
            cell[str(k)] = {"mean": round(mean, 3), "low": round(low, 3), "high": round(high, 3)}
            if k == 5:
                cell["by_source"] = {source: round(sum(r["recall"] for r in rows if r["source"] == source)
                                                   / max(1, sum(r["source"] == source for r in rows)), 3)
                                     for source in ("paper", "experiment")}
                cell["per_query_at_5"] = rows
        out[split] = cell
    return out


def main() -> None:
    cards = load_cards()
    result = {"date": str(date.today()), "cards": len(cards), "queries": len(retrieval_queries()),
              "claims": sum(len(c.helps) + len(c.hurts) for c in cards),
              "measured_claims": sum(len(c.measured("helps")) + len(c.measured("hurts")) for c in cards), "rankers": {}}
    runs = [("lexical", r) for r in RANKERS] + ([("embedding", "default")] if embedding_available() else [])
    for backend, ranker in runs:
        start = time.perf_counter()
        data = measure(Retriever(backend=backend), ranker)
        data["seconds"] = round(time.perf_counter() - start, 1)
        result["rankers"][f"{backend}, {ranker}"] = data
    (ROOT / "results" / "retrieval.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Knowledge retrieval on frozen queries written from outside the cards", "",
             f"{result['cards']} cards ({result['measured_claims']} of {result['claims']} ability claims rest on "
             f"evidence, the rest are `unmeasured`), {result['queries']} frozen queries "
             "(`src/mixerlab/knowledge/retrieval_queries.yaml`: 54 papers' problem statements labelled with the paper's "
             "card, 12 loop experiments labelled with the papers that set out to fix the parent's weakness; no label "
             f"comes from a `helps` field), {result['date']}, `python benchmarks/research/retrieval.py` on a CPU.",
             "", "Recall@5, mean [95% bootstrap interval over queries]:", "",
             "| ranker | held out | tuning | all | papers (all) | experiments (all) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, data in result["rankers"].items():
        cells = [f"{data[s]['5']['mean']:.3f} [{data[s]['5']['low']:.2f}, {data[s]['5']['high']:.2f}]" for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {data['all']['by_source']['paper']:.3f} | "
                     f"{data['all']['by_source']['experiment']:.3f} |")
    lines += ["", "All k, held-out split:", "", "| ranker | " + " | ".join(f"recall@{k}" for k in KS) + " |",
              "| --- | " + " | ".join("---" for _ in KS) + " |"]
    for name, data in result["rankers"].items():
        lines.append(f"| {name} | " + " | ".join(f"{data['held_out'][str(k)]['mean']:.3f}" for k in KS) + " |")
    lines += ["", "Per query, recall@5 (lexical, default):", "", "| query | split | recall@5 | retrieved |",
              "| --- | --- | --- | --- |"]
    for row in result["rankers"]["lexical, default"]["all"]["per_query_at_5"]:
        lines.append(f"| {row['id']} ({row['source']}) | {row['split']} | {row['recall']:.2f} | {', '.join(row['retrieved'])} |")
    lines += ["", "One team wrote the cards and these queries (in its own words, from the papers' stated problems), so "
              "the figures are indicative; `helps_only` can rank only the experiment queries (a paper query names no "
              "weak task, so it gets an arbitrary order)."]
    (ROOT / "results" / "retrieval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:9 + len(runs)]))


if __name__ == "__main__":
    main()
