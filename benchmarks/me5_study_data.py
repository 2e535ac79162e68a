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
    OUT/eval/stsb-en-dev.jsonl    the English STS-B dev set as {sentence1, sentence2, score}, for the
                                  "no worse at English" check (STS-B's csv has no header row).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path

SYMMETRIC = {"korsts_train", "klue_nli", "kornli_xnli", "parakqc", "question_pair", "stsb_ko_en"}
Q, P = "query: ", "passage: "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True, help="koemb data build-train output folder")
    ap.add_argument("--stsb", required=True, help="English STS-B folder (sts-dev.csv)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--texts", type=int, default=30000, help="unlabeled texts to keep (seeded sample)")
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
    random.Random(0).shuffle(texts)
    texts = texts[: args.texts]
    with (out / "e5" / "texts.jsonl").open("w", encoding="utf-8") as dst:
        for t in texts:
            dst.write(json.dumps({"query": Q + t, "positive": P + t}, ensure_ascii=False) + "\n")
    print(f"texts {len(texts)}")

    n = 0
    with (Path(args.stsb) / "sts-dev.csv").open(encoding="utf-8") as src, (out / "eval" / "stsb-en-dev.jsonl").open("w", encoding="utf-8") as dst:
        for row in csv.reader(src, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            dst.write(json.dumps({"sentence1": row[5], "sentence2": row[6], "score": float(row[4])}) + "\n")
            n += 1
    print(f"stsb-en-dev {n}")


if __name__ == "__main__":
    main()
