"""Where an expanded model loses to its own network read with the base tokenizer, query by query (session 24).

The same weights are read two ways: with the expanded tokenizer (the model as shipped) and with the base
tokenizer (the new rows unused; a copy of the folder with the base's tokenizer files). On one retrieval task of
a suite, each query's positive is ranked by both readings (and by the base model), and by the two mixed
readings (queries one way, documents the other): is the loss on the query side, the document side, or both?
Then a least-squares fit of each query's change in reciprocal rank (expanded - base reading) on the share of its
tokens that are new, split into word+particle tokens (benchmarks/final_variants.py's rule: a base word-start
piece + a Korean particle) and the other new tokens: which kind of new token costs the ranking, per occurrence.

usage: python benchmarks/reading_gap.py --model outputs/me5-small-ko/final --base /tmp/koemb-models/me5-small \
           --suite configs/suites/me5-study-val.yaml --task unesco-inverse-cloze
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from final_variants import is_particle_token

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model")


def ranks(q: np.ndarray, d: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """0-based rank of each query's positive among all documents by cosine (normalised inputs): how many score higher."""
    s = q @ d.T  # (queries, documents)
    return (s > s[np.arange(len(pos)), pos][:, None]).sum(1)


def mrr(r: np.ndarray) -> float:
    return float(np.mean(1.0 / (r + 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="the expanded model (sentence-transformers folder)")
    ap.add_argument("--base", type=Path, required=True, help="the base model's folder (its tokenizer reads --model too)")
    ap.add_argument("--suite", type=Path, required=True)
    ap.add_argument("--task", required=True, help="a retrieval task of the suite with one positive per query")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from koemb.eval.suite import load_suite
    from koemb.eval.tasks import read_task_data

    suite = load_suite(args.suite)
    spec = next((t for t in suite.tasks if t.name == args.task), None)
    if spec is None or spec.type != "retrieval":
        raise SystemExit(f"--task {args.task!r}: not a retrieval task of {args.suite}")
    data = read_task_data(spec.type, spec.reader, suite.resolve_path(spec), spec.split)
    qids, dids = list(data.queries), list(data.corpus)
    index = {d: i for i, d in enumerate(dids)}
    pos = np.array([index[next(iter(data.qrels[q]))] for q in qids])
    queries = [data.queries[q] for q in qids]
    docs = [" ".join(x for x in data.corpus[d] if x) for d in dids]

    with tempfile.TemporaryDirectory() as tmp:
        base_reading = Path(tmp) / "base-reading"
        shutil.copytree(args.model, base_reading)
        for f in TOKENIZER_FILES:
            (base_reading / f).unlink(missing_ok=True)
            if (args.base / f).is_file():
                shutil.copy(args.base / f, base_reading / f)
        enc = {}
        for name, path in (("expanded", args.model), ("base reading", base_reading), ("base model", args.base)):
            m = SentenceTransformer(str(path), device="cpu")
            m.max_seq_length = suite.max_length
            kw = dict(batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
            enc[name] = (m.encode(queries, prompt_name="query", **kw), m.encode(docs, prompt_name="document", **kw))
            del m

    r = {name: ranks(q, d, pos) for name, (q, d) in enc.items()}
    r["queries expanded, documents base reading"] = ranks(enc["expanded"][0], enc["base reading"][1], pos)
    r["queries base reading, documents expanded"] = ranks(enc["base reading"][0], enc["expanded"][1], pos)
    print(f"{args.task}: {len(qids)} queries, {len(dids)} documents")
    for name, rk in r.items():
        print(f"  MRR {mrr(rk):.4f}  R@1 {np.mean(rk == 0):.4f}  {name}")
    e, b = r["expanded"], r["base reading"]
    print(f"  expanded vs base reading: {(e > b).sum()} queries worse, {(e < b).sum()} better, {(e == b).sum()} the same")

    tok = AutoTokenizer.from_pretrained(str(args.model))
    base_tok = AutoTokenizer.from_pretrained(str(args.base))
    first_new, base_words = len(base_tok), set(base_tok.get_vocab())
    new = tok.convert_ids_to_tokens(list(range(first_new, len(tok))))
    particle = np.array([is_particle_token(t, base_words) for t in new])
    shares = []
    for q in queries:
        ids = np.array(tok(q, add_special_tokens=False)["input_ids"])
        is_new = ids >= first_new
        p = np.zeros(len(ids), dtype=bool)
        p[is_new] = particle[ids[is_new] - first_new]
        shares.append([p.mean(), (is_new & ~p).mean()])
    x = np.array(shares)
    delta = 1.0 / (e + 1) - 1.0 / (b + 1)  # (queries,) change in reciprocal rank
    coef, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], delta, rcond=None)
    print(f"  new tokens kept: {len(new)}, word+particle: {int(particle.sum())}")
    print(f"  mean share of a query's tokens: word+particle {x[:, 0].mean():.4f}, other new {x[:, 1].mean():.4f}")
    print(f"  change in reciprocal rank ~ {coef[0]:+.3f} x word+particle share {coef[1]:+.3f} x other new share {coef[2]:+.4f}")


if __name__ == "__main__":
    main()
