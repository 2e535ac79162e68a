"""Retrieval: BEIR folders, exact dense search in chunks, a per-model corpus-embedding cache.

A BEIR folder holds `corpus.jsonl` (`_id`, `title`, `text`), `queries.jsonl` (`_id`, `text`) and
`qrels/<split>.tsv` (header `query-id corpus-id score`). Documents are `title + " " + text`
(stripped; the text alone without a title), as MTEB joins them; queries get the preset's query
prompt with the task's instruction, documents the document prompt.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from koemb.data.eval_sets import RetrievalData
from koemb.errors import UserError
from koemb.eval.metrics import retrieval_metrics
from koemb.model.encoder import Encoder
from koemb.data.jsonl import iter_jsonl
from koemb.resources import cache_dir

log = logging.getLogger(__name__)


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    missing_file = f"{path}: not found (a BEIR folder needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv)"
    rows = []
    for line_no, row in iter_jsonl(path, missing_file):
        missing = [k for k in required if k not in row]
        if missing:
            raise UserError(f"{path}:{line_no}: missing field(s) {missing}; expected {list(required)}")
        rows.append(row)
    return rows


def read_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """Read a BEIR folder; queries without relevance judgements are dropped (as BEIR and MTEB do)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: BEIR folder not found")
    corpus = {str(r["_id"]): (str(r.get("title") or ""), str(r["text"])) for r in _read_jsonl(folder / "corpus.jsonl", ("_id", "text"))}
    queries = {str(r["_id"]): str(r["text"]) for r in _read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise UserError(f"{qrels_path}: not found (qrels for split {split!r})")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise UserError(f"{qrels_path}:1: expected the header 'query-id<TAB>corpus-id<TAB>score', got {header}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                qid, did, score = row[0], row[1], int(float(row[2]))
            except (IndexError, ValueError):
                raise UserError(f"{qrels_path}:{line_no}: expected query-id, corpus-id and a numeric score") from None
            if did not in corpus:
                raise UserError(f"{qrels_path}:{line_no}: corpus-id {did!r} is not in corpus.jsonl")
            qrels.setdefault(qid, {})[did] = score
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise UserError(f"{qrels_path}: query-id(s) {unknown[:3]} not in queries.jsonl")
    kept = {q: t for q, t in queries.items() if q in qrels}
    return RetrievalData(corpus, kept, qrels, source=str(folder))


def document_text(title: str, text: str) -> str:
    """MTEB's join of a BEIR document: `title + " " + text`, stripped, or the text when there is no title."""
    return (title + " " + text).strip() if title else text


def exact_search(queries: Tensor, docs: Tensor, k: int, doc_chunk: int = 50_000, query_chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Exact top-k by cosine similarity, never holding more than query_chunk x doc_chunk scores.

    Args:
        queries: (Q, D). docs: (N, D). Normalised here, so any embeddings give cosine.
    Returns:
        scores (Q, k') and doc indices (Q, k'), best first, with k' = min(k, N).
    """
    q = F.normalize(queries.float(), dim=-1)
    d = F.normalize(docs.float(), dim=-1)
    k = min(k, d.shape[0])
    all_scores, all_idx = [], []
    for qs in range(0, q.shape[0], query_chunk):
        qc = q[qs : qs + query_chunk]  # (q, D)
        best_s = torch.full((qc.shape[0], 0), float("-inf"))
        best_i = torch.zeros((qc.shape[0], 0), dtype=torch.long)
        for ds in range(0, d.shape[0], doc_chunk):
            sims = qc @ d[ds : ds + doc_chunk].T  # (q, c)
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
            # Merge this chunk's best with the running best; only 2k candidates per row at a time.
            cand_s = torch.cat([best_s, s], dim=1)
            cand_i = torch.cat([best_i, i + ds], dim=1)
            top = cand_s.topk(min(k, cand_s.shape[1]), dim=1)
            best_s, best_i = top.values, cand_i.gather(1, top.indices)
        all_scores.append(best_s)
        all_idx.append(best_i)
    return torch.cat(all_scores), torch.cat(all_idx)


def _cache_path(encoder: Encoder, texts: list[str]) -> Path | None:
    if not encoder.fingerprint:
        return None
    h = hashlib.sha256()
    h.update(encoder.fingerprint.encode())
    h.update(encoder.preset.model_dump_json().encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return cache_dir() / "corpus-embeddings" / f"{h.hexdigest()[:32]}.safetensors"


def corpus_embeddings(encoder: Encoder, texts: list[str], use_cache: bool = True) -> tuple[Tensor, bool]:
    """(N, D) embeddings of already-prompted documents, from the cache when this model (by its
    files' fingerprint), preset and text list were encoded before. Returns (embeddings, from_cache)."""
    from safetensors.torch import load_file, save_file

    path = _cache_path(encoder, texts) if use_cache else None
    if path is not None and path.is_file():
        return load_file(str(path))["embeddings"], True
    emb = encoder.encode(texts, desc=f"corpus {encoder.name}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"embeddings": emb.contiguous()}, str(tmp))
        tmp.replace(path)
    return emb, False


def retrieval_texts(encoder: Encoder, data: RetrievalData, instruction: str | None) -> tuple[list[str], list[str], list[str], list[str]]:
    """(query ids, prompted queries, doc ids, prompted documents) in a fixed order."""
    qids = list(data.queries)
    dids = list(data.corpus)
    queries = [encoder.preset.format_query(data.queries[q], instruction) for q in qids]
    docs = [encoder.preset.format_document(document_text(*data.corpus[d])) for d in dids]
    return qids, queries, dids, docs


def search(encoder: Encoder, data: RetrievalData, instruction: str | None = None, top_k: int = 100, use_cache: bool = True) -> dict[str, dict[str, float]]:
    """The run: query id -> {doc id: cosine} for the top_k documents of each query."""
    qids, queries, dids, docs = retrieval_texts(encoder, data, instruction)
    if not qids:
        raise UserError(f"{data.source}: no query has a relevance judgement")
    doc_emb, cached = corpus_embeddings(encoder, docs, use_cache)
    if cached:
        log.info("%s: %d corpus embeddings from the cache", encoder.name, len(docs))
    q_emb = encoder.encode(queries, desc=f"queries {encoder.name}")
    scores, idx = exact_search(q_emb, doc_emb, top_k)
    return {
        qid: {dids[j]: float(s) for s, j in zip(scores[r].tolist(), idx[r].tolist(), strict=True)} for r, qid in enumerate(qids)
    }


def evaluate_retrieval(encoder: Encoder, data: RetrievalData, instruction: str | None = None, top_k: int = 100, use_cache: bool = True) -> dict[str, float]:
    """NDCG@10, MAP@10, Recall@10, Precision@10 and MRR@10 of exact dense search over `data`."""
    run = search(encoder, data, instruction, top_k, use_cache)
    return retrieval_metrics(data.qrels, run, k=10)
