"""Metrics as pure functions of scores and labels, computed the way MTEB computes them.

All values are fractions (NDCG@10 of 0.7655, not 76.55), as MTEB stores them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytrec_eval
from scipy.stats import pearsonr, spearmanr

RETRIEVAL_METRICS = ("ndcg@10", "map@10", "recall@10", "precision@10", "mrr@10")


def mrr_at_k(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], k: int) -> list[float]:
    """Reciprocal rank of the first relevant document within the top k, per query in `run` and `qrels`.

    Ties are broken by document id, descending, like pytrec_eval (and MTEB since #5092).
    """
    out = []
    for qid, scores in run.items():
        if qid not in qrels:
            continue
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        ranked = sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)[:k]
        out.append(next((1.0 / (r + 1) for r, (doc, _) in enumerate(ranked) if doc in relevant), 0.0))
    return out


def retrieval_metrics(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], k: int = 10
) -> dict[str, float]:
    """NDCG, MAP, recall, precision (pytrec_eval) and MRR at `k`, averaged over the evaluated queries.

    Args:
        qrels: query id -> {doc id: relevance}; relevance > 0 is relevant.
        run: query id -> {doc id: score} (the retrieved documents; at least the top k).
    """
    measures = {f"ndcg_cut.{k}", f"map_cut.{k}", f"recall.{k}", f"P.{k}"}
    per_query = pytrec_eval.RelevanceEvaluator({q: dict(d) for q, d in qrels.items()}, measures).evaluate(
        {q: dict(d) for q, d in run.items()}
    )
    if not per_query:
        return {name: 0.0 for name in RETRIEVAL_METRICS}
    n = len(per_query)

    def mean(key: str) -> float:
        return sum(v[key] for v in per_query.values()) / n

    mrr = mrr_at_k(qrels, run, k)
    return {
        f"ndcg@{k}": mean(f"ndcg_cut_{k}"),
        f"map@{k}": mean(f"map_cut_{k}"),
        f"recall@{k}": mean(f"recall_{k}"),
        f"precision@{k}": mean(f"P_{k}"),
        f"mrr@{k}": sum(mrr) / len(mrr) if mrr else 0.0,
    }


def correlation_metrics(predicted: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Spearman and Pearson correlation of predicted similarities with gold scores."""
    p = np.asarray(predicted, dtype=np.float64)
    g = np.asarray(gold, dtype=np.float64)
    if len(p) != len(g) or len(p) < 2:
        raise ValueError(f"need two equal-length sequences of at least 2 values, got {len(p)} and {len(g)}")
    return {"spearman": float(spearmanr(p, g).statistic), "pearson": float(pearsonr(p, g).statistic)}


def separation_metrics(cosines: Sequence[float], similar: Sequence[bool], domains: Sequence[str]) -> dict[str, float]:
    """Mean cosine of similar pairs, of different pairs, their difference; the same per domain.

    Keys: `similar_mean`, `different_mean`, `separation`, and `separation[<domain>]` per domain.
    """
    c = np.asarray(cosines, dtype=np.float64)
    s = np.asarray(similar, dtype=bool)
    d = np.asarray(domains)

    def sep(mask: np.ndarray) -> tuple[float, float, float]:
        sim = float(c[mask & s].mean()) if (mask & s).any() else float("nan")
        diff = float(c[mask & ~s].mean()) if (mask & ~s).any() else float("nan")
        return sim, diff, sim - diff

    sim, diff, total = sep(np.ones_like(s))
    out = {"similar_mean": sim, "different_mean": diff, "separation": total}
    for dom in dict.fromkeys(d.tolist()):
        out[f"separation[{dom}]"] = sep(d == dom)[2]
    return out
