"""StrategyQA's term descriptions as extra question -> passage pairs, for the e5 study (session 36, docs/results.md).

Each StrategyQA row reads `용어: <term>, 설명: <description>, 질문: <question>, 답변: <yes/no>` with facts as output.
Training uses (question -> facts). This writes (term + description -> facts) for the SAME rows, so the pairs add
distinct queries over the facts training already reads, and never touch the hold-out or validation split: the rows
are those whose group appears in the given training pairs file.

    python benchmarks/strategyqa_term_pairs.py --pairs outputs/me5-study-data-valqa/e5/pairs/strategyqa.jsonl \
        --data ../shared/data/ko --out outputs/me5-study-data-valqa/e5/pairs/strategyqa_terms.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from koemb.data.eval_sets import read_strategyqa

# `설명:` up to the `질문` label: the description is free text and may contain commas.
_DESCRIPTION = re.compile(r"설명\s*:\s*(.*?)\s*,?\s*질문\s*:", re.S)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", required=True, type=Path, help="the study's e5 strategyqa.jsonl (its groups pick the rows)")
    ap.add_argument("--data", required=True, type=Path, help="../shared/data/ko")
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    with a.pairs.open(encoding="utf-8") as f:
        groups = {json.loads(line)["group"] for line in f if line.strip()}
    path = a.data / "sionic_strategyqa_ko" / "task169_strategyqa_sentence_generation_ko.json"
    inputs = {row["id"]: row.get("input", "") for row in json.loads(path.read_text(encoding="utf-8"))["Instances"]}
    rows = skipped = 0
    with a.out.open("w", encoding="utf-8") as out:
        for it in read_strategyqa(path):
            group = f"strategyqa:{it.id}"
            m = _DESCRIPTION.search(inputs[it.id])
            if group not in groups or not it.term or m is None or not m.group(1).strip():
                skipped += group in groups
                continue
            query = f"query: {it.term}: {m.group(1).strip()}"
            out.write(json.dumps({"query": query, "positive": f"passage: {it.facts}", "group": group,
                                  "source": "strategyqa_terms"}, ensure_ascii=False) + "\n")
            rows += 1
    print(f"{a.out}: {rows} pairs ({skipped} training rows without a term or description)")


if __name__ == "__main__":
    main()
