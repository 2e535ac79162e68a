"""Which new tokens a prune keeps, and what each choice saves: tokens per Hangul syllable for each ranking.

`koemb model prune` keeps N new tokens, ranked by `order` (the expansion's candidate order), `usage` (the
most emitted on the training text) or `balanced` (usage with each training file weighing the same). Quality
follows how many stay (docs/results.md, session 11); the token saving follows which. This prints, for each
ranking and N, the change in tokens per Hangul syllable against the base's segmentation on every Korean task of
an evaluation suite, side by side in one run (`koemb.model.prune_curve`; `koemb model prune-curve` is the same
measurement for one ranking, with a target). Tokenizer only (no model is loaded, nothing is written) unless
`fidelity` is asked for (below).
One more ranking lives here and not in koemb, `savings`: uses x (base pieces the token stands for - 1), the
tokens a row saves. Session 13 measured it within 0.2 points of `usage` at every N (docs/results.md).
`fidelity` runs the model once to measure each new token's damage (minutes on a CPU for an e5-small study);
`--damage FILE` keeps that measurement (read if the file exists, written if not), and `koemb`'s
`prune_model(..., damage=...)` takes it, so a prune at the N chosen here need not measure it again.

usage: python benchmarks/prune_ranking.py --model outputs/me5-small-ko/stages/stage5-cosent \
           --suite configs/suites/me5-study.yaml \
           --corpus outputs/me5-study-data/train/unlabeled/*.jsonl outputs/me5-study-data/e5/texts.jsonl \
               outputs/me5-study-data/e5/pairs/*.jsonl \
           --keep 12000 13000 14000 16000 [--rank-by usage fidelity --damage outputs/stage5-damage.json]
(the --corpus files are the study's tokenizer corpus and every stage's data: what `prune: {rank_by: ...}` counts on)
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from transformers import AutoTokenizer

from koemb.eval.suite import load_suite
from koemb.eval.tasks import TASK_TYPES, read_task_data
from koemb.model.expand import read_expansion
from koemb.model.fidelity import ContextSampler, new_token_damage
from koemb.model.files import transformer_dir
from koemb.model.prune import RANKINGS, _by_score, corpus_sources, count_new_token_uses
from koemb.model.prune_curve import hangul_share, prune_curve


def rank_savings(exp: dict, per_source: dict, damage: dict | None = None) -> list[int]:
    """New ids by the tokens they save on the corpus: uses x (len(base_ids) - 1), highest first."""
    if any("base_ids" not in t for t in exp["tokens"]):
        raise SystemExit("rank by savings needs each new token's base_ids in expansion.json (koemb model expand writes them)")
    uses: Counter[int] = sum(per_source.values(), Counter())
    saved = {int(t["id"]): uses[int(t["id"])] * max(len(t["base_ids"]) - 1, 0) for t in exp["tokens"]}
    return _by_score(exp, saved)  # ties keep the expansion's order, as koemb's rankings do


RANKS = {**RANKINGS, "savings": rank_savings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="An expanded model folder (with expansion.json), e.g. the last stage.")
    ap.add_argument("--suite", required=True, type=Path, help="An evaluation suite; its sts and retrieval tasks are measured.")
    ap.add_argument("--corpus", nargs="+", required=True, type=Path, help="Training files, one source each.")
    ap.add_argument("--keep", nargs="+", type=int, required=True)
    ap.add_argument("--rank-by", nargs="+", default=sorted(set(RANKS) - {"fidelity"}), choices=sorted(RANKS))
    ap.add_argument("--damage", type=Path, help="fidelity: a JSON file of each new id's damage (read if it exists, else measured and written).")
    args = ap.parse_args()

    exp = read_expansion(args.model)
    if exp is None:
        raise SystemExit(f"{args.model}: no expansion.json")
    first = int(exp["first_new_id"])
    full = AutoTokenizer.from_pretrained(str(transformer_dir(args.model)))
    measure = "fidelity" in args.rank_by and not (args.damage and args.damage.is_file())
    sampler = ContextSampler(first) if measure else None
    per_source = {name: count_new_token_uses(full, texts, first, sampler=sampler) for name, texts in corpus_sources(args.corpus).items()}
    damage = None
    if sampler is not None:
        damage = new_token_damage(args.model, sampler, {int(t["id"]): t["base_ids"] for t in exp["tokens"]})
        if args.damage:
            args.damage.write_text(json.dumps({str(k): v for k, v in damage.items()}), encoding="utf-8")
    elif "fidelity" in args.rank_by:
        damage = {int(k): float(v) for k, v in json.loads(args.damage.read_text(encoding="utf-8")).items()}

    suite = load_suite(args.suite)
    sets = {
        t.name: TASK_TYPES[t.type].raw_texts(read_task_data(t.type, t.reader, suite.resolve_path(t), t.split))
        for t in suite.tasks
        if t.type in ("sts", "retrieval")
    }
    sets = {k: v for k, v in sets.items() if hangul_share(v) >= 0.5}  # the Korean tasks, as `koemb model prune-curve` picks them
    # The same texts with and without the new tokens: the change in tokens is the change in tokens per syllable.
    curves = {rank: prune_curve(args.model, args.keep, sets, rank_by=rank, ranked=RANKS[rank](exp, per_source, damage)) for rank in args.rank_by}
    print(f"{len(exp['tokens'])} new tokens; {sum(sum(c.values()) for c in per_source.values())} uses in {len(per_source)} sources")
    print("| N | rank_by | " + " | ".join(sets) + " |")
    print("|---|---|" + "---|" * len(sets))
    for n in sorted(set(args.keep)):
        for rank, curve in curves.items():
            point = next(p for p in curve.points if p.keep == n)
            print(f"| {n:,} | {rank} | " + " | ".join(f"{-100 * point.reduction[k]:+.1f}%" for k in sets) + " |", flush=True)


if __name__ == "__main__":
    main()
