"""Where a retrieval task loses to the base reading: queries, passages, or the words they share (session 40).

The same weights are read two ways, as in benchmarks/reading_gap.py and benchmarks/reading_cost.py: with the
expanded tokenizer (the model as shipped) and with the base tokenizer (its new rows unused). Here the two readings
are crossed on one retrieval task of an evaluation suite:

1. NDCG@10 for the four combinations of (queries read expanded | base) x (documents read expanded | base), and the
   reading gap (mean 1 - cos between the two readings) of the queries and of the documents. If the loss sat on one
   side, reading that side with the base tokenizer would recover most of it.
2. Per-query NDCG@10 of the two plain readings (expanded/expanded against base/base), grouped by how many new tokens
   the query holds and by how many distinct new-token ids it shares with its relevant documents. If the loss came
   from the lexical match between question and passage going through new rows, it would sit in the "shared 2+"
   group.

The base reading is made by `koemb.train.pipeline.refit_teacher` (the model's own files with the base tokenizer's)
in a temporary folder. The expanded reading's document embeddings go through the evaluation's corpus cache, so a
model already evaluated on the task reuses them. Reads the task's labels: a diagnosis, not a place to choose anything.

usage: python benchmarks/mixed_reading.py --model outputs/me5-small-ko/final --base /tmp/koemb-models/me5-small \
           [--suite configs/suites/me5-study.yaml] [--task korquad-dev] [--task ko-strategyqa-holdout]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def group_of(count: int, top: int) -> str:
    """'0', '1', ..., 'top+' (counts at or above `top` pooled)."""
    return f"{top}+" if count >= top else str(count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="an expanded sentence-transformers folder")
    ap.add_argument("--base", required=True, help="the base model (its tokenizer makes the second reading)")
    ap.add_argument("--suite", default=str(HERE.parent / "configs/suites/me5-study.yaml"))
    ap.add_argument("--task", action="append", help="retrieval task(s) of the suite (default: every retrieval task)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import pytrec_eval
    import torch
    import torch.nn.functional as F

    from koemb.eval.retrieval import corpus_embeddings, exact_search, retrieval_texts
    from koemb.eval.suite import load_suite
    from koemb.eval.tasks import read_task_data
    from koemb.model.encoder import Encoder
    from koemb.train.pipeline import refit_teacher

    torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    tasks = [t for t in suite.tasks if t.type == "retrieval" and (not args.task or t.name in args.task)]
    if not tasks:
        raise SystemExit(f"{args.suite}: no retrieval task named {args.task}")
    over = {"max_length": suite.max_length} if suite.max_length else None
    with tempfile.TemporaryDirectory() as tmp:
        reading = refit_teacher(args.model, args.base, Path(tmp) / "base-reading")
        encs = {"expanded": Encoder.load(args.model, overrides=over, show_progress=False),
                "base": Encoder.load(reading, overrides=over, show_progress=False)}
        first_new = len(encs["base"].tokenizer)
        tok = encs["expanded"].tokenizer
        for task in tasks:
            data = read_task_data(task.type, task.reader, suite.resolve_path(task), split=task.split)
            qids, queries, dids, docs = retrieval_texts(encs["expanded"], data, task.instruction)
            q = {k: e.encode(queries) for k, e in encs.items()}  # reading -> (queries, D)
            # reading -> (documents, D); the temporary base reading is never cached (its path changes every run)
            d = {k: corpus_embeddings(e, docs, use_cache=k == "expanded")[0] for k, e in encs.items()}
            per: dict[tuple[str, str], dict[str, float]] = {}
            for qk in q:
                for dk in d:
                    s, i = exact_search(q[qk], d[dk], 100)
                    run = {qid: {dids[j]: float(v) for v, j in zip(s[r].tolist(), i[r].tolist())} for r, qid in enumerate(qids)}
                    ev = pytrec_eval.RelevanceEvaluator({k: dict(v) for k, v in data.qrels.items()}, {"ndcg_cut.10"}).evaluate(run)
                    per[qk, dk] = {k: v["ndcg_cut_10"] for k, v in ev.items()}
            print(f"\n{task.name}: {len(qids)} queries, {len(dids)} documents; NDCG@10 x100")
            print("| queries read | documents read | NDCG@10 |")
            print("|---|---|---|")
            for (qk, dk), scores in per.items():
                print(f"| {qk} | {dk} | {100 * np.mean(list(scores.values())):.2f} |")
            for name, x in (("queries", q), ("documents", d)):
                cos = (F.normalize(x["expanded"].float(), dim=-1) * F.normalize(x["base"].float(), dim=-1)).sum(-1)
                print(f"reading gap of the {name}: {float((1 - cos).mean()):.4f}")

            # Per query: new ids in the query, and new ids shared with its relevant documents (expanded tokenizer).
            qnew = [{i for i in ids if i >= first_new} for ids in tok(queries, add_special_tokens=False).input_ids]
            dnew = {k: {i for i in ids if i >= first_new} for k, ids in zip(dids, tok(docs, add_special_tokens=False).input_ids)}
            groups: dict[str, list[str]] = {}
            for r, qid in enumerate(qids):
                gold = [k for k, rel in data.qrels.get(qid, {}).items() if rel > 0 and k in dnew]
                shared = len(qnew[r] & set().union(*(dnew[k] for k in gold))) if gold else 0
                groups.setdefault(f"new ids in the query: {group_of(len(qnew[r]), 3)}", []).append(qid)
                groups.setdefault(f"new ids shared with its passage: {group_of(shared, 2)}", []).append(qid)
            exp, base = per["expanded", "expanded"], per["base", "base"]
            print("| queries | n | expanded reading | base reading | difference |")
            print("|---|---|---|---|---|")
            for g in sorted(groups):
                ids = [k for k in groups[g] if k in exp and k in base]
                a, b = 100 * np.mean([exp[k] for k in ids]), 100 * np.mean([base[k] for k in ids])
                print(f"| {g} | {len(ids)} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")


if __name__ == "__main__":
    main()
