"""Probe (session 7): can a vocabulary of morpheme-clean Korean pieces still cut tokens by 15%?

A donor candidate '▁XYZ' is "clean" in a word when the cut after XYZ falls on a morpheme boundary with only
lexical morphemes before it (no particle J*, ending E*, suffix XS*, copula VCP/VCN), per kiwipiepy's analysis
of the sentence. The candidate is kept when it is clean in at least THRESHOLD of the corpus words the donor
starts with it. Prints the kept count and the token change per Hangul syllable on KorSTS test, KorQuAD dev and
the StrategyQA hold-out, and writes the expanded tokenizer (for benchmarks/query_overlap.py).

Needs `pip install kiwipiepy` (not a koemb dependency). About 3 min for the analysis of the study corpus.

usage: python benchmarks/probes/morph_clean.py --donor outputs/me5-small-ko/donor/tokenizer.json \
           --base /tmp/koemb-models/me5-small --corpus outputs/me5-study-data/train/unlabeled --out /tmp/mtok
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from tokenizers import Tokenizer
from transformers import AutoTokenizer

import koemb.vocab.expand as expand_mod
from koemb.eval.tasks import TASK_TYPES, read_task_data
from koemb.eval.tokstats import tokenizer_stats

FUNCTIONAL = re.compile(r"^(J|E|XS|VCP|VCN)")
HANGUL_RUN = re.compile(r"[가-힣]+")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "ko"


def clean_cuts(docs: list[str]) -> tuple[Counter, dict[str, Counter]]:
    """Per word: its occurrences, and per cut position how many occurrences are clean there."""
    from kiwipiepy import Kiwi

    occ: Counter = Counter()
    clean: dict[str, Counter] = defaultdict(Counter)
    for doc, morphs in zip(docs, Kiwi(num_workers=2).tokenize(docs)):
        for m in re.finditer(r"\S+", doc):
            word, ws, we = m.group(), m.start(), m.end()
            run = HANGUL_RUN.match(word)
            if not run:
                continue
            mine = [x for x in morphs if x.start < we and x.start + x.len > ws]
            occ[word] += 1
            for c in range(1, len(run.group()) + 1):
                cut = ws + c
                before = [x for x in mine if x.start < cut]
                if not before or any(x.start + x.len > cut for x in before):
                    continue  # no morpheme before the cut, or one straddles it (contractions such as 했 = 하 + 었)
                if not any(FUNCTIONAL.match(x.tag) for x in before):
                    clean[word][c] += 1
    return occ, clean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--donor", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--corpus", required=True, help="folder of .jsonl files with a 'text' field (the donor's corpus)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=30000)
    ap.add_argument("--limit", type=int, default=None, help="analyse only the first N documents (a quick check)")
    args = ap.parse_args()

    docs = [json.loads(line)["text"] for f in sorted(Path(args.corpus).glob("*.jsonl")) for line in open(f, encoding="utf-8")]
    docs = docs[: args.limit] if args.limit else docs
    occ, clean = clean_cuts(docs)
    donor = Tokenizer.from_file(args.donor)
    total: Counter = Counter()
    clean_total: Counter = Counter()
    words = list(occ)
    for word, enc in zip(words, donor.encode_batch(words, add_special_tokens=False)):
        piece = enc.tokens[0]
        if piece.startswith("▁") and len(piece) > 1:
            total[piece] += occ[word]
            clean_total[piece] += clean.get(word, Counter())[len(piece) - 1]

    original = expand_mod.vocab_diff

    def clean_diff(*a, **k):
        diff = original(*a, **k)
        kept = [c for c in diff.candidates if c.text.startswith(" ")
                and total["▁" + c.text[1:]] and clean_total["▁" + c.text[1:]] / total["▁" + c.text[1:]] >= args.threshold]
        print(f"candidates {len(diff.candidates):,}, morpheme-clean {len(kept):,}")
        diff.candidates[:] = kept
        return diff

    expand_mod.vocab_diff = clean_diff  # the expansion itself is koemb's, on the filtered candidates
    expand_mod.expand_tokenizer(args.base, args.out, donor=args.donor, docs=docs, overwrite=True,
                                settings=expand_mod.ExpansionSettings(method="unigram", max_new_tokens=args.max_new_tokens, min_frequency=5))
    tasks = {"KorSTS test": ("sts", "korsts", SHARED / "korsts/sts-test.tsv"),
             "KorQuAD dev": ("retrieval", "korquad", SHARED / "korquad_v1_dev/KorQuAD_v1.0_dev.json"),
             "StrategyQA hold-out": ("retrieval", "strategyqa", SHARED / "sionic_strategyqa_ko/task169_strategyqa_sentence_generation_ko.json")}
    base, new = AutoTokenizer.from_pretrained(args.base), AutoTokenizer.from_pretrained(args.out)
    for name, (kind, reader, path) in tasks.items():
        texts = TASK_TYPES[kind].raw_texts(read_task_data(kind, reader, path))
        b, n = (tokenizer_stats(t, texts, texts[:1], 512)["tokens_per_hangul"] for t in (base, new))
        print(f"{name:<20} tokens per Hangul {b:.4f} -> {n:.4f} ({n / b - 1:+.1%})")


if __name__ == "__main__":
    main()
