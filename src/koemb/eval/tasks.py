"""The task types a suite can name, as a registry: how to read each one, and how to score it.

Each `TaskType` knows its readers (by name: the standard file formats plus koemb's built-in
Korean readers), the texts it encodes (for tokenizer statistics), and its metric function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from koemb.data import eval_sets
from koemb.eval.retrieval import document_text, evaluate_retrieval, read_beir
from koemb.eval.separation import evaluate_separation, read_separation
from koemb.eval.sts import evaluate_sts, read_sts
from koemb.model.encoder import Encoder


@dataclass(frozen=True)
class TaskType:
    name: str
    readers: dict[str, Callable[..., Any]]
    """reader name -> function(path, **options) -> the task's data."""
    default_reader: str
    needs_path: bool
    main_metric: str
    run: Callable[..., dict[str, float]]
    """(encoder, data, instruction, top_k, use_cache) -> metrics."""
    raw_texts: Callable[[Any], list[str]]
    prompted: Callable[[Encoder, Any, str | None], list[str]]
    limit: Callable[[Any, int], Any]


def _retrieval_run(encoder: Encoder, data: eval_sets.RetrievalData, instruction: str | None, top_k: int, use_cache: bool) -> dict[str, float]:
    return evaluate_retrieval(encoder, data, instruction, top_k=top_k, use_cache=use_cache)


def _retrieval_raw(data: eval_sets.RetrievalData) -> list[str]:
    return list(data.queries.values()) + [document_text(*d) for d in data.corpus.values()]


def _retrieval_prompted(encoder: Encoder, data: eval_sets.RetrievalData, instruction: str | None) -> list[str]:
    p = encoder.preset
    return [p.format_query(q, instruction) for q in data.queries.values()] + [
        p.format_document(document_text(*d)) for d in data.corpus.values()
    ]


def _pairs_raw(pairs: list[Any]) -> list[str]:
    return list(dict.fromkeys(s for p in pairs for s in (p.sentence1, p.sentence2)))


def _pairs_prompted(encoder: Encoder, pairs: list[Any], instruction: str | None) -> list[str]:
    return [encoder.preset.format_symmetric(s, instruction) for s in _pairs_raw(pairs)]


TASK_TYPES: dict[str, TaskType] = {
    "retrieval": TaskType(
        name="retrieval",
        readers={
            "beir": lambda path, split="test": read_beir(path, split),
            "korquad": lambda path, split="test": eval_sets.read_korquad_retrieval(path),
            "strategyqa": lambda path, split="test": eval_sets.read_strategyqa_retrieval(path, split=split),
            "korsts": lambda path, split="test": eval_sets.read_korsts_retrieval(path),
            "inverse_cloze": lambda path, split="test": eval_sets.read_inverse_cloze(path),
        },
        default_reader="beir",
        needs_path=True,
        main_metric="ndcg@10",
        run=_retrieval_run,
        raw_texts=_retrieval_raw,
        prompted=_retrieval_prompted,
        limit=lambda data, n: data.restrict(n),
    ),
    "sts": TaskType(
        name="sts",
        readers={
            "file": lambda path, split="test": read_sts(path),
            "korsts": lambda path, split="test": eval_sets.read_korsts(path),
        },
        default_reader="file",
        needs_path=True,
        main_metric="spearman",
        run=lambda enc, pairs, instruction, top_k, use_cache: evaluate_sts(enc, pairs, instruction),
        raw_texts=_pairs_raw,
        prompted=_pairs_prompted,
        limit=lambda pairs, n: pairs[:n],
    ),
    "separation": TaskType(
        name="separation",
        readers={"jsonl": lambda path, split="test": read_separation(path)},
        default_reader="jsonl",
        needs_path=False,
        main_metric="separation",
        run=lambda enc, pairs, instruction, top_k, use_cache: evaluate_separation(enc, pairs, instruction),
        raw_texts=_pairs_raw,
        prompted=_pairs_prompted,
        limit=lambda pairs, n: pairs[:n],
    ),
}


# The `split:` values a reader understands (None: any, BEIR's qrels/<split>.tsv); a reader not listed reads one
# fixed set and takes only "test", so that `split: validation` is never silently read as the test.
READER_SPLITS: dict[str, tuple[str, ...] | None] = {"beir": None, "strategyqa": tuple(eval_sets.STRATEGYQA_SPLITS)}


def read_task_data(type_name: str, reader: str | None, path: Path | None, split: str = "test") -> Any:
    """The task's data, read by the named reader (or the type's default)."""
    tt = TASK_TYPES[type_name]
    return tt.readers[reader or tt.default_reader](path, split=split)
