"""What a new token costs the reading, by how often training showed it (session 39).

The same weights are read two ways, as in benchmarks/reading_gap.py: with the expanded tokenizer (the model as
shipped) and with the base tokenizer (the new rows unused). Each text's reading gap is 1 - cos between the two
pooled embeddings. The gap is then fitted by least squares on the text's share of tokens that are new, split into
buckets by how many times the token occurs in the training text (--train): the coefficient of a bucket is the
gap one unit of share costs, so buckets can be compared per occurrence. Run on the untrained expanded model and
on a trained one: if training helps the tokens it shows most, the cost falls with use after training and is flat
before it.

Also prints the gap's mean and what is left of it after the best affine map from the expanded reading to the base
one, fitted on --fit-texts (a systematic distortion would be removed by it; noise is not).

usage: python benchmarks/reading_cost.py --model outputs/me5-small-ko/final --base /tmp/koemb-models/me5-small \
           --texts ../shared/data/ko/korquad_v1_dev/KorQuAD_v1.0_dev.json --prefix 'passage: ' --limit 500 \
           --train outputs/me5-study-data/e5/texts.jsonl 'outputs/me5-study-data/e5/pairs/*.jsonl'
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import Counter
from pathlib import Path

import numpy as np

TEXT_FIELDS = ("query", "positive", "text")


def read_texts(path: Path, field: str | None, limit: int | None, min_chars: int = 0, seed: int | None = None) -> list[str]:
    """Distinct texts of at least `min_chars` characters, in file order or shuffled by `seed`, at most `limit`: a
    KorQuAD-style .json (data -> paragraphs -> context) or a .jsonl (`field`, else the first of query / positive /
    text)."""
    out: list[str] = []
    if path.suffix == ".json":
        doc = json.loads(path.read_text(encoding="utf-8"))
        items = [p["context"] for a in doc["data"] for p in a["paragraphs"]]
    else:
        items = []
        if "#" in path.name:  # FILE.jsonl#field
            path, field = path.with_name(path.name.split("#")[0]), path.name.split("#", 1)[1]
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                keys = [field] if field else [k for k in TEXT_FIELDS if isinstance(row.get(k), str)][:1]
                if not keys or not isinstance(row.get(keys[0]), str):
                    raise SystemExit(f"{path}:{n}: no text field {field or TEXT_FIELDS}")
                items.append(row[keys[0]])
    if seed is not None:
        items = [items[i] for i in np.random.default_rng(seed).permutation(len(items))]
    seen: set[str] = set()
    for t in items:
        if len(t) < min_chars:
            continue
        if t not in seen:
            seen.add(t)
            out.append(t)
        if limit and len(out) >= limit:
            break
    return out


def count_uses(tok, first_new: int, files: list[str], max_chars: int = 2000) -> Counter:
    """How many times the expanded tokenizer emits each new id on every text field of the training files."""
    uses: Counter = Counter()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                for k in TEXT_FIELDS:
                    if isinstance(row.get(k), str):
                        uses.update(i for i in tok(row[k][:max_chars], add_special_tokens=False).input_ids if i >= first_new)
    return uses


def bucket_shares(ids: list[list[int]], first_new: int, uses: Counter, edges: list[int]) -> np.ndarray:
    """(texts, buckets): each text's share of tokens that are new ids used in [edges[b], edges[b+1]) times."""
    x = np.zeros((len(ids), len(edges) - 1))
    for r, seq in enumerate(ids):
        for i in seq:
            if i >= first_new:
                b = np.searchsorted(edges, uses[i], side="right") - 1
                x[r, min(max(b, 0), len(edges) - 2)] += 1
        x[r] /= max(len(seq), 1)
    return x


def cost_per_share(x: np.ndarray, gap: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares gap ~ x @ coef + intercept. Returns (coef per bucket, intercept)."""
    a = np.c_[x, np.ones(len(x))]
    sol, *_ = np.linalg.lstsq(a, gap, rcond=None)
    return sol[:-1], float(sol[-1])


def affine_residual(fit_e: np.ndarray, fit_b: np.ndarray, e: np.ndarray, b: np.ndarray, ridge: float = 0.1) -> float:
    """Mean 1 - cos between b and A e + c, with (A, c) the ridge fit of fit_b on fit_e (unnormalised pooled states)."""
    xf = np.c_[fit_e, np.ones(len(fit_e))]
    w = np.linalg.solve(xf.T @ xf + ridge * np.eye(xf.shape[1]), xf.T @ fit_b)
    return float(np.mean(gap_of(np.c_[e, np.ones(len(e))] @ w, b)))


def gap_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return 1.0 - (a * b).sum(1)


def with_prefix(prefix: str, text: str) -> str:
    """e5's prompt, unless the text carries one already (the study's pair files do)."""
    return text if text.startswith(("query: ", "passage: ")) else prefix + text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an expanded sentence-transformers folder")
    ap.add_argument("--base", required=True, help="the base model (its tokenizer is the second reading)")
    ap.add_argument("--texts", required=True, type=Path, nargs="+",
                    help="KorQuAD-style .json or .jsonl files (FILE.jsonl#field picks the field): the gap of each; "
                         "the buckets are fitted on the first")
    ap.add_argument("--field", default=None, help="the .jsonl field to read (default: query / positive / text)")
    ap.add_argument("--prefix", default="", help="prepended to every text that has no e5 prompt yet (e5: 'passage: ')")
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--min-chars", type=int, default=0, help="skip texts shorter than this")
    ap.add_argument("--shuffle", type=int, default=None, metavar="SEED", help="draw the texts at random (default: file order)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--train", nargs="+", required=True, help="training .jsonl files (globs allowed) to count uses on")
    ap.add_argument("--fit-texts", type=int, default=0,
                    help="also fit an affine map expanded -> base reading on this many training texts (0: skip)")
    ap.add_argument("--edges", default="0,10,30,100,300,1000,1000000000")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(args.threads)
    exp = AutoTokenizer.from_pretrained(args.model)
    base = AutoTokenizer.from_pretrained(args.base)
    first_new = len(base)
    model = AutoModel.from_pretrained(args.model).eval()

    def pooled(tok, texts: list[str]) -> tuple[np.ndarray, list[list[int]]]:
        embs, ids = [], []
        for i in range(0, len(texts), 16):
            b = tok(texts[i:i + 16], padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")
            with torch.no_grad():
                h = model(**b).last_hidden_state  # (batch, tokens, hidden)
            m = b["attention_mask"].unsqueeze(-1).float()
            embs.append(((h * m).sum(1) / m.sum(1)).numpy())
            ids += [[t for t, k in zip(row, mask) if k] for row, mask in zip(b["input_ids"].tolist(), b["attention_mask"].tolist())]
        return np.concatenate(embs), ids

    def saving_of(texts: list[str]) -> float:
        """Token saving of the expanded tokenizer on the whole texts (the readings above are cut at --max-length)."""
        n_exp = sum(len(ids) for ids in exp(texts, add_special_tokens=False)["input_ids"])
        n_base = sum(len(ids) for ids in base(texts, add_special_tokens=False)["input_ids"])
        return 1 - n_exp / n_base

    files = sorted({f for pat in args.train for f in glob.glob(pat)})
    if not files:
        raise SystemExit(f"--train: no file matches {args.train}")
    uses = count_uses(exp, first_new, files)
    for extra in args.texts[1:]:
        other = [with_prefix(args.prefix, t) for t in read_texts(extra, args.field, args.limit, args.min_chars, args.shuffle)]
        oe, _ = pooled(exp, other)
        ob, _ = pooled(base, other)
        saving = saving_of(other)
        print(f"{extra}: {len(other)} texts, reading gap {gap_of(oe, ob).mean():.4f}, tokens -{100 * saving:.1f}%, "
              f"gap per point of saving {gap_of(oe, ob).mean() / (100 * saving):.2e}")
    texts = [with_prefix(args.prefix, t) for t in read_texts(args.texts[0], args.field, args.limit, args.min_chars, args.shuffle)]
    e, ids = pooled(exp, texts)
    b, _ = pooled(base, texts)
    gap = gap_of(e, b)
    saving = saving_of(texts)
    edges = [int(x) for x in args.edges.split(",")]
    x = bucket_shares(ids, first_new, uses, edges)
    coef, icpt = cost_per_share(x, gap)
    print(f"model {args.model}: {len(texts)} texts of {args.texts[0]}, uses counted on {len(files)} files "
          f"({sum(uses.values())} uses of {len(uses)} new ids)")
    print(f"reading gap (1 - cos, expanded vs base reading): mean {gap.mean():.4f}, median {np.median(gap):.4f}; "
          f"tokens -{100 * saving:.1f}%, gap per point of saving {gap.mean() / (100 * saving):.2e}")
    print("| uses in training | share of the texts' tokens | gap per unit share |")
    print("|---|---|---|")
    for j in range(len(edges) - 1):
        print(f"| {edges[j]}-{edges[j + 1]} | {100 * x[:, j].mean():.2f}% | {coef[j]:.4f} |")
    print(f"intercept {icpt:.4f}")
    if args.fit_texts:
        fit = []
        for f in files:
            fit += read_texts(Path(f), None, None)
        rng = np.random.default_rng(0)
        fit = [fit[i] for i in rng.permutation(len(fit))[:args.fit_texts]]
        fe, _ = pooled(exp, fit)
        fb, _ = pooled(base, fit)
        print(f"after an affine map fitted on {len(fit)} training texts: fit texts {gap_of(fe, fb).mean():.4f} -> "
              f"{affine_residual(fe, fb, fe, fb):.4f}; these texts {gap.mean():.4f} -> {affine_residual(fe, fb, e, b):.4f}")


if __name__ == "__main__":
    main()
