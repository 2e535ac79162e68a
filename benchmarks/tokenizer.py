"""Tokenizer expansion benchmark: Korean token cost, rows used, non-Korean invariance, speed.

Trains a donor on the shared Korean text minus one held-out source (book reviews by default),
expands the base with each method, and measures on the held-out source, side by side in one run:
tokens per Hangul syllable, tokens per character, share of added rows used at least once on
held-out text, non-Korean lines whose ids changed (Python stdlib sources + CJK test texts), and
encode throughput relative to the base.

usage: python benchmarks/tokenizer.py [--base DIR] [--data ../shared/data/ko] [--max-new-tokens 40000]
"""

from __future__ import annotations

import argparse
import csv
import json
import sysconfig
import tempfile
import time
from pathlib import Path

from koemb.data.ko_sources import unlabeled_texts
from koemb.vocab.donor import train_donor
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from koemb.vocab.io import load_tokenizer
from koemb.vocab.stats import text_stats

HERE = Path(__file__).resolve().parent


def non_korean_lines(limit_bytes: int = 8_000_000) -> list[str]:
    """English and code (the stdlib's sources), Chinese and Japanese (CPython's CJK test texts)."""
    std = Path(sysconfig.get_paths()["stdlib"])
    lines: list[str] = []
    size = 0
    files = sorted(std.glob("*.py")) + sorted((std / "pydoc_data").glob("*.py")) + sorted((std / "test" / "cjkencodings").glob("*-utf8.txt"))
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.strip() and not any("\uac00" <= ch <= "\ud7a3" for ch in line):
                lines.append(line)
                size += len(line)
        if size > limit_bytes:
            break
    return lines


def korsts_news(data: Path) -> list[str]:
    """News sentences of KorSTS dev+test: human-translated news, never in the training corpus."""
    out: list[str] = []
    for name in ("sts-dev.tsv", "sts-test.tsv"):
        with (Path(data) / "korsts" / name).open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                if row["genre"].endswith("news"):
                    out += [row["sentence1"], row["sentence2"]]
    return sorted(set(out))


def relative_speed(toks: dict, docs: list[str], rounds: int = 5) -> dict[str, float]:
    """Encode speed of each tokenizer relative to the first, timed in interleaved rounds (best of)."""
    best = {name: float("inf") for name in toks}
    for _ in range(rounds):
        for name, tok in toks.items():
            t0 = time.perf_counter()
            tok.backend.encode_batch(docs, add_special_tokens=False)
            best[name] = min(best[name], time.perf_counter() - t0)
    first = next(iter(best.values()))
    return {name: first / secs for name, secs in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default=str(HERE.parent.parent / "shared" / "qwen3-embedding-0.6b"))
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "ko"))
    ap.add_argument("--held-out", default="book_reviews")
    ap.add_argument("--donor-vocab", type=int, default=50_000)
    ap.add_argument("--max-new-tokens", type=int, default=40_000)
    ap.add_argument("--methods", default="bpe-continue,bpe-donor,added-tokens")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()

    train_docs = unlabeled_texts(args.data, exclude=(args.held_out,))
    held = unlabeled_texts(args.data, [args.held_out])
    other = non_korean_lines()
    base = load_tokenizer(args.base)
    print(f"train: {len(train_docs)} docs, {sum(map(len, train_docs)):,} chars; held-out ({args.held_out}): "
          f"{len(held)} docs, {sum(map(len, held)):,} chars; non-Korean: {len(other):,} lines, {sum(map(len, other)):,} chars")
    news = korsts_news(Path(args.data))
    base_other = [e.ids for e in base.backend.encode_batch(other, add_special_tokens=False)]
    b = text_stats(base, held)
    rows = [{"method": "base", "added": 0, "tokens_per_hangul": b.tokens_per_hangul, "tokens_per_char": b.tokens_per_char,
             "news_tokens_per_hangul": text_stats(base, news).tokens_per_hangul,
             "used_train": None, "used_heldout": None, "non_korean_changed": 0, "seconds": 0.0}]
    toks = {"base": base}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train_donor(base, train_docs, args.donor_vocab, Path(tmp) / "donor")
        print(f"donor: {args.donor_vocab} tokens in {time.perf_counter() - t0:.1f} s")
        donor = load_tokenizer(Path(tmp) / "donor" / "tokenizer.json")
        for m in args.methods.split(","):
            t0 = time.perf_counter()
            res = expand_tokenizer(base, Path(tmp) / m, donor=donor, docs=train_docs,
                                   settings=ExpansionSettings(method=m, max_new_tokens=args.max_new_tokens), overwrite=True)
            secs = time.perf_counter() - t0
            new = toks[m] = load_tokenizer(res.out_dir)
            s = text_stats(new, held)
            first = res.info["first_new_id"]
            held_ids = {i for e in new.backend.encode_batch(held, add_special_tokens=False) for i in e.ids if i >= first}
            changed = sum(1 for e, ids in zip(new.backend.encode_batch(other, add_special_tokens=False), base_other) if e.ids != ids)
            rows.append({"method": m, "added": res.info["added"], "tokens_per_hangul": s.tokens_per_hangul,
                         "tokens_per_char": s.tokens_per_char,
                         "news_tokens_per_hangul": text_stats(new, news).tokens_per_hangul, "used_train": res.info["used_on_corpus"],
                         "used_heldout": len(held_ids) / res.info["added"], "non_korean_changed": changed,
                         "seconds": secs})
        speed = relative_speed(toks, held)
        for r in rows:
            r["encode_rel"] = speed[r["method"]]
    print()
    print(f"held-out: {args.held_out} (a source left out of the training text) and KorSTS dev+test news ({len(news)} sentences)")
    print("| method | added rows | tokens/Hangul syllable | tokens/char | tokens/Hangul, news | rows used (train) | rows used (held-out) | non-Korean lines changed | encode speed vs base | build s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"| {r['method']} | {r['added']:,} | {r['tokens_per_hangul']:.3f} | {r['tokens_per_char']:.3f} | {r['news_tokens_per_hangul']:.3f} | {fmt(r['used_train'], '.2%')} | "
              f"{fmt(r['used_heldout'], '.2%')} | {r['non_korean_changed']} / {len(other):,} | {r['encode_rel']:.2f}x | {r['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
