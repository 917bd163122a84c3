"""Retrieval quality of the knowledge base on the team's labelled set (mixerlab/knowledge/labelled_queries.yaml).

    python benchmarks/research/retrieval.py   -> benchmarks/results/retrieval.{json,md}

Top-k recall (the share of a query's relevant cards among the first k, averaged over queries) for the lexical
backend (BM25, the default) and, where `mixerlab[knowledge]` is installed, MiniLM sentence embeddings.
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
from mixerlab.knowledge.evaluation import labelled_queries, recall_at  # noqa: E402

KS = (1, 3, 5, 8)


def main() -> None:
    backends = ["lexical"] + (["embedding"] if embedding_available() else [])
    result = {"date": str(date.today()), "cards": len(load_cards()), "queries": len(labelled_queries()), "backends": {}}
    for backend in backends:
        start = time.perf_counter()
        retriever = Retriever(backend=backend)
        scores, rows = {}, []
        for k in KS:
            scores[k], rows = recall_at(retriever, k)
        result["backends"][backend] = {"recall": {str(k): round(v, 3) for k, v in scores.items()},
                                       "seconds": round(time.perf_counter() - start, 1), "per_query_at_5": recall_at(retriever, 5)[1]}
    (ROOT / "results" / "retrieval.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Knowledge retrieval: top-k recall on the labelled set",
             "",
             f"{result['cards']} cards, {result['queries']} labelled queries (weak tasks + code, or a need in words), "
             f"{result['date']}, `python benchmarks/research/retrieval.py` on a CPU.",
             "",
             "| backend | " + " | ".join(f"recall@{k}" for k in KS) + " | seconds |",
             "| --- | " + " | ".join("---" for _ in KS) + " | --- |"]
    for backend, data in result["backends"].items():
        lines.append(f"| {backend} | " + " | ".join(f"{data['recall'][str(k)]:.3f}" for k in KS) + f" | {data['seconds']} |")
    lines += ["", "Per query, recall@5 (lexical):", "", "| query | recall@5 | retrieved |", "| --- | --- | --- |"]
    for row in result["backends"]["lexical"]["per_query_at_5"]:
        lines.append(f"| {row['query']} | {row['recall']:.2f} | {', '.join(row['retrieved'])} |")
    lines += ["", "The labelled set was written by the team that wrote the cards and the query builder, so these "
              "figures are optimistic for other phrasings; the lexical backend is the default because it ranked "
              "this set better than the embeddings did."]
    (ROOT / "results" / "retrieval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(backends)]))


if __name__ == "__main__":
    main()
