"""Files the multilingual-e5-small study (configs/me5-small-ko*.yaml) reads, from `koemb data build-train`'s output.

    python benchmarks/me5_study_data.py --train outputs/me5-study-data/train \
        --stsb ../shared/data/en/stsb --out outputs/me5-study-data

Writes
    OUT/e5/pairs/<source>.jsonl   the pairs with e5's prompts written into the text: `query: ` on both sides of
                                  symmetric pairs (paraphrase, NLI, STS, Korean<->English), `query: ` / `passage: `
                                  on question -> answer pairs. A stage has one `query_prompt` and no document
                                  prompt, but e5 was trained (and is evaluated) with `passage: ` on documents.
    OUT/e5/texts.jsonl            unlabeled text as {query: "query: t", positive: "passage: t"}: for a
                                  distillation-only stage (the teacher sees both forms e5 is used with).
    OUT/e5/passages.jsonl         passage-shaped pairs (inverse cloze task) from the long unlabeled Korean text
                                  (petitions, book reviews, the UNESCO report, fairy tales): consecutive sentences
                                  packed into 250-800-character passages, one sentence taken out as the `query: `,
                                  the rest the `passage: `. The pair sets have few passages (KorQuAD's are
                                  ~500-700 characters); these teach reading one.
    OUT/e5/pairs-ict/ict.jsonl    inverse-cloze pairs cut within ONE text each (a passage never joins two petitions),
                                  150-350 characters (within stage 4's 128 tokens), from the long sources EXCEPT the
                                  UNESCO report, whose inverse cloze is the validation suite's passage task; with a
                                  `group` per text. Session 26 measured them in stage 4 (docs/results.md).
    OUT/e5/chunks.jsonl           EVERY unlabeled text (the donor's whole corpus, not texts.jsonl's sample), cut into
                                  sentence-packed chunks of at most 200 characters (within a new-row stage's 128
                                  tokens), shuffled, as {query, positive} like texts.jsonl: the pool a stage's
                                  `cover_new_tokens` picks from so that the rare new tokens get trained too.
    OUT/eval/stsb-en-dev.jsonl    the English STS-B dev set as {sentence1, sentence2, score}, for the
                                  "no worse at English" check (STS-B's csv has no header row).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

LONG_SOURCES = ("petitions", "book_reviews", "unesco", "fairytales")
# A sentence ends at . ? ! (also after Korean's final 다/요) followed by a space; text without such
# marks stays one piece and the packer cuts it at the passage bound.
_SENTENCE = re.compile(r"(?<=[.?!])\s+")
SYMMETRIC = {"korsts_train", "korsts_scored", "klue_nli", "kornli_xnli", "parakqc", "question_pair", "stsb_ko_en"}
Q, P = "query: ", "passage: "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="koemb data build-train output folder")
    ap.add_argument("--stsb", required=True, help="English STS-B folder (sts-dev.csv)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--texts", type=int, default=30000, help="unlabeled texts to keep (seeded sample)")
    ap.add_argument("--passages", type=int, default=8000, help="inverse-cloze pairs to keep (seeded sample)")
    args = ap.parse_args()
    train, out = Path(args.train), Path(args.out)
    (out / "e5" / "pairs").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(parents=True, exist_ok=True)

    for f in sorted((train / "pairs").glob("*.jsonl")):
        doc = Q if f.stem in SYMMETRIC else P
        n = 0
        with f.open(encoding="utf-8") as src, (out / "e5" / "pairs" / f.name).open("w", encoding="utf-8") as dst:
            for line in src:
                r = json.loads(line)
                r["query"] = Q + r["query"]
                r["positive"] = doc + r["positive"]
                if r.get("negative"):
                    r["negative"] = doc + r["negative"]
                dst.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        print(f"pairs {f.stem:16s} {n:6d}  documents get {doc!r}")

    texts: list[str] = []
    for f in sorted((train / "unlabeled").glob("*.jsonl")):
        with f.open(encoding="utf-8") as src:
            texts.extend(json.loads(line)["text"] for line in src)
    texts_all = list(texts)
    random.Random(0).shuffle(texts)
    texts = texts[: args.texts]
    with (out / "e5" / "texts.jsonl").open("w", encoding="utf-8") as dst:
        for t in texts:
            dst.write(json.dumps({"query": Q + t, "positive": P + t}, ensure_ascii=False) + "\n")
    print(f"texts {len(texts)}")

    with (out / "e5" / "chunks.jsonl").open("w", encoding="utf-8") as dst:
        pieces = chunks(texts_all, 200)
        for c in pieces:
            dst.write(json.dumps({"query": Q + c, "positive": P + c}, ensure_ascii=False) + "\n")
    print(f"chunks {len(pieces)}")

    pairs = ict_pairs(train / "unlabeled", args.passages)
    with (out / "e5" / "passages.jsonl").open("w", encoding="utf-8") as dst:
        for q, p in pairs:
            dst.write(json.dumps({"query": Q + q, "positive": P + p, "source": "ict"}, ensure_ascii=False) + "\n")
    print(f"passages {len(pairs)}")

    (out / "e5" / "pairs-ict").mkdir(parents=True, exist_ok=True)
    per_text = ict_pairs_per_text(train / "unlabeled", args.passages)
    with (out / "e5" / "pairs-ict" / "ict.jsonl").open("w", encoding="utf-8") as dst:
        for r in per_text:
            dst.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"pairs-ict {len(per_text)}")

    n = 0
    with (Path(args.stsb) / "sts-dev.csv").open(encoding="utf-8") as src, (out / "eval" / "stsb-en-dev.jsonl").open("w", encoding="utf-8") as dst:
        for row in csv.reader(src, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            dst.write(json.dumps({"sentence1": row[5], "sentence2": row[6], "score": float(row[4])}) + "\n")
            n += 1
    print(f"stsb-en-dev {n}")


def chunks(texts: list[str], hi: int) -> list[str]:
    """Each text cut into runs of whole sentences of at most `hi` characters (a longer sentence is cut at
    `hi`); the result shuffled (seed 2). Deterministic."""
    out: list[str] = []
    for text in texts:
        cur = ""
        for sent in _SENTENCE.split(text.strip()):
            while len(sent) > hi:
                if cur:
                    out.append(cur)
                    cur = ""
                out.append(sent[:hi])
                sent = sent[hi:].strip()
            if not sent:
                continue
            if cur and len(cur) + 1 + len(sent) > hi:
                out.append(cur)
                cur = ""
            cur = f"{cur} {sent}" if cur else sent
        if cur:
            out.append(cur)
    random.Random(2).shuffle(out)
    return out


def _texts(unlabeled: Path, name: str) -> Iterator[str]:
    """The texts of unlabeled/<name>.jsonl in file order; none when the source was not built."""
    f = unlabeled / f"{name}.jsonl"
    if f.is_file():
        with f.open(encoding="utf-8") as src:
            for line in src:
                yield json.loads(line)["text"]


def _cloze(sents: list[str], lo: int, hi: int, rng: random.Random) -> list[tuple[str, str]]:
    """Consecutive sentences packed into passages of lo-hi characters (a longer sentence is skipped); from each of
    >= 3 sentences, one of 15-200 characters (drawn by `rng`) taken out: (it, the passage without it)."""
    out: list[tuple[str, str]] = []
    cur: list[str] = []
    for sent in sents + [""]:  # "" flushes the last passage
        if cur and (not sent or sum(map(len, cur)) + len(sent) > hi):
            if sum(map(len, cur)) >= lo and len(cur) >= 3:
                ok = [i for i, c in enumerate(cur) if 15 <= len(c) <= 200]
                if ok:
                    k = rng.choice(ok)
                    out.append((cur[k], " ".join(cur[:k] + cur[k + 1 :])))
            cur = []
        if sent and len(sent) <= hi:
            cur.append(sent)
    return out


def ict_pairs(unlabeled: Path, limit: int, lo: int = 250, hi: int = 800) -> list[tuple[str, str]]:
    """(sentence, its passage without it) for passages of lo-hi characters packed from LONG_SOURCES.

    The bounds count the sentences' characters (the spaces that join them are not counted).

    A source's lines are read in order as one stream (the UNESCO report and the fairy tales are one
    paragraph per line), so a passage may join consecutive lines; a petition or review longer than `hi`
    gives several passages. Deterministic: seeded choice of the taken-out sentence and of the sample.
    """
    rng = random.Random(1)
    out: list[tuple[str, str]] = []
    for name in LONG_SOURCES:
        sents = [s for text in _texts(unlabeled, name) for s in _SENTENCE.split(text.strip()) if s]
        out.extend(_cloze(sents, lo, hi, rng))
    rng.shuffle(out)
    return out[:limit]


def ict_pairs_per_text(unlabeled: Path, limit: int, sources: tuple[str, ...] = ("petitions", "book_reviews", "fairytales"),
                       lo: int = 150, hi: int = 350) -> list[dict[str, str]]:
    """Inverse-cloze pairs as {query, positive, group, source} rows, prompts written in: each text (one line of
    a source) packed on its own into passages of lo-hi characters (the sentences' characters, as in `ict_pairs`)
    of at least 3 sentences, one sentence of 15-200 characters taken out as the query. `group` = the text, so two
    passages of one petition are never each other's in-batch negative. The default sources leave out the UNESCO
    report: the validation suite's inverse cloze reads it. Deterministic (seed 7), shuffled, the first `limit`."""
    rng = random.Random(7)
    out: list[dict[str, str]] = []
    for name in sources:
        for i, text in enumerate(_texts(unlabeled, name)):
            sents = [s for s in _SENTENCE.split(text.strip()) if s]
            out.extend({"query": Q + q, "positive": P + p, "group": f"{name}:{i}", "source": f"ict_{name}"}
                       for q, p in _cloze(sents, lo, hi, rng))
    rng.shuffle(out)
    return out[:limit]


if __name__ == "__main__":
    main()
