"""Evaluation: retrieval, STS, separation, tokenizer and embedding-row statistics, report and plots.

Entry point: `koemb.eval.evaluate(model, suite, out, baselines=[...])` (what `koemb evaluate` runs).
Building blocks, each usable alone: `koemb.eval.retrieval` (`read_beir`, `exact_search`,
`evaluate_retrieval`), `koemb.eval.sts` (`read_sts`, `evaluate_sts`), `koemb.eval.separation`,
`koemb.eval.metrics` (pure metric functions), `koemb.eval.suite` (`load_suite`, `Suite`),
`koemb.eval.mteb_tasks` (official MTEB tasks through the same encoder).
"""

from __future__ import annotations

from typing import Any


def evaluate(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See `koemb.eval.run.evaluate` (imported lazily: it pulls in torch and transformers)."""
    from koemb.eval.run import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
