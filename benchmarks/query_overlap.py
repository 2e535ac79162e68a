"""Query-passage token overlap: how much of a question's Korean a tokenizer lets it share with its answer passage.

Korean attaches particles to words (정부 + 의 = 정부의). A new token that swallows word + particle gives
'정부의' in the question and '정부는' in the passage two unrelated ids, where the base tokenizer had the
piece '▁정부' in both. This prints, for each tokenizer, side by side on one data set:

- `overlap`: the share of the queries' Hangul tokens that also occur in a relevant passage's tokens
  (micro-averaged over all queries; higher = more shared pieces for lexical matching);
- `tokens/Hangul`: tokens per Hangul syllable on the queries and passages, and the change vs the first.

usage: python benchmarks/query_overlap.py --tokenizer BASE --tokenizer EXPANDED [...] \
           [--korquad ../shared/data/ko/korquad_v1_dev/KorQuAD_v1.0_dev.json]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from transformers import AutoTokenizer

from koemb.data.eval_sets import read_korquad_retrieval

HANGUL = re.compile("[\uac00-\ud7a3]")
HERE = Path(__file__).resolve().parent


def overlap(tok, queries: list[str], passages: list[set[str]]) -> float:
    """Share of the queries' Hangul tokens found among their relevant passages' tokens."""
    hit = total = 0
    for q, ptoks in zip(queries, passages):
        qt = [t for t in tok.tokenize(q) if HANGUL.search(t)]
        total += len(qt)
        hit += sum(t in ptoks for t in qt)
    return hit / total if total else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", action="append", required=True, help="tokenizer folder (first = the reference)")
    ap.add_argument("--korquad", default=str(HERE.parent.parent / "shared/data/ko/korquad_v1_dev/KorQuAD_v1.0_dev.json"))
    args = ap.parse_args()
    data = read_korquad_retrieval(args.korquad)
    docs = {did: f"{title} {text}".strip() for did, (title, text) in data.corpus.items()}
    qids = [q for q in data.queries if q in data.qrels]
    queries = [data.queries[q] for q in qids]
    n_hangul = sum(len(HANGUL.findall(t)) for t in queries + list(docs.values()))
    print(f"{len(queries):,} queries, {len(docs):,} passages ({args.korquad})")
    print(f"{'tokenizer':<50} {'overlap':>8} {'tokens/Hangul':>14} {'change':>8}")
    ref = None
    for path in args.tokenizer:
        tok = AutoTokenizer.from_pretrained(path)
        dtoks = {did: tok.tokenize(t) for did, t in docs.items()}
        passages = [set().union(*(dtoks[d] for d in data.qrels[q])) for q in qids]
        n_tokens = sum(len(tok.tokenize(q)) for q in queries) + sum(map(len, dtoks.values()))
        tph = n_tokens / n_hangul
        ref = ref or tph
        print(f"{path[-50:]:<50} {overlap(tok, queries, passages):>8.1%} {tph:>14.4f} {tph / ref - 1:>+8.1%}")


if __name__ == "__main__":
    main()
