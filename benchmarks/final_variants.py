"""Post-hoc variants of a study run's `final/`, built from its stage folders (session 24, docs/results.md).

`final/` is the last stage, pruned, then moved back towards the base (`interpolate: {anchor: base, alpha: a}`):
base + a * (last - base) on the shared rows and the network, the new rows as trained. Two questions about that
recipe need other models than koemb writes, so they are built here:

--coef c1,...,cn   one coefficient per stage instead of one alpha for the whole path:
                   base + sum_i c_i * (stage_i - stage_{i-1})  (stage_0 = the base), shared rows and network.
                   With every c_i = alpha this is `final/` (to float rounding). Which stage's change costs what:
                   e.g. the adaptation stage kept whole and the contrastive stages halved.
--drop-particles   the prune leaves out new tokens that are a word plus a Korean particle (josa): the token's
                   text (word-start mark or not) = the text of a base piece that starts a word (e.g. '▁정부')
                   + one of PARTICLES ('▁정부의'). N other tokens stay, ranked as the config's prune ranks
                   them; `--keep-particles M` keeps the M best-ranked word+particle tokens as well (N + M). The donor-level filter
                   (`tokenizer.settings.filters.split_particles`, koemb.vocab.diff.particle_split) counts a
                   word of 2+ syllables known to the base OR to the candidates; `--particle-rule split` uses
                   that rule instead.

The output is a final/-like sentence-transformers folder: mixed, pruned (the config's `prune:`; N =
`keep_new_tokens`, or `--keep N`), and nothing else (the interpolation is the mix). Evaluate it with `koemb evaluate`.

usage: python benchmarks/final_variants.py --run outputs/me5-small-ko --config configs/me5-small-ko.yaml \
           --base /tmp/koemb-models/me5-small --out /tmp/variant [--coef 0.7,0.7,1.0,0.5,0.5] \
           [--drop-particles [--keep-particles 1000] [--particle-rule base|split]] \
           [--suite configs/suites/me5-study.yaml]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from koemb.model.files import transformer_dir
from koemb.model.prune import Ranking, prune_model, rank_new_tokens
from koemb.model.prune_curve import prune_curve, suite_text_sets
from koemb.train.pipeline import load_pipeline, training_sources
from koemb.vocab.diff import particle_split

# The josa (Korean particles) a word+particle token may end in; any of them counts. Not koemb.vocab.diff's
# KOREAN_PARTICLES (the donor filter's 22): this is the list session 24 measured with (it adds copula and compound
# endings such as '이다', '에서의' and lacks '까지', '부터', '처럼', '보다', '에도'); `--particle-rule split` uses that one.
PARTICLES = ("에서의", "으로서", "에서", "에게", "으로", "로서", "에는", "과의", "와의", "이다", "이며",
             "의", "이", "가", "을", "를", "은", "는", "에", "로", "와", "과", "도", "만")


def mixed_state(base: dict[str, torch.Tensor], stages: list[dict[str, torch.Tensor]], coef: list[float],
                emb_key: str, shared: int) -> dict[str, torch.Tensor]:
    """base + sum_i coef[i] * (stages[i] - stages[i-1]) for every weight (stage -1 = base); pure.

    The embedding (rows: base [>= shared], stages [shared + new]): rows < `shared` are mixed like any weight,
    the new rows are the last stage's (as `interpolate:` keeps them). Sums in float64 so that equal
    coefficients reproduce the one-alpha interpolation to float rounding."""
    out: dict[str, torch.Tensor] = {}
    for key, last in stages[-1].items():
        rows = slice(0, shared) if key == emb_key else slice(None)
        acc = base[key][rows].double()
        prev = base[key][rows]
        for c, st in zip(coef, stages):
            acc += c * (st[key][rows] - prev).double()
            prev = st[key][rows]
        mixed = acc.to(last.dtype)
        out[key] = torch.cat([mixed, last[shared:]]).contiguous() if key == emb_key else mixed.contiguous()
    return out


def is_particle_token(token: str, base_words: set[str]) -> bool:
    """'▁정부의' (or '정부의') when '▁정부' is a base piece; the word may be one syllable ('▁물의'), so a noun
    that only looks like one ('▁사과' = '▁사' + '과') counts too: 'split' is the stricter rule."""
    word = token.lstrip("\u2581")
    return any(word.endswith(p) and len(word) > len(p) and "\u2581" + word[: -len(p)] in base_words for p in PARTICLES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="the run folder (stages/<name>/ for every stage)")
    ap.add_argument("--config", type=Path, required=True, help="the run's pipeline YAML (stages, prune, interpolate)")
    ap.add_argument("--base", type=Path, required=True, help="the base model's folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--coef", default=None, help="one per stage, comma-separated (default: the config's alpha for each)")
    ap.add_argument("--keep", type=int, default=None, help="new tokens kept (default: the config's prune.keep_new_tokens)")
    ap.add_argument("--drop-particles", action="store_true")
    ap.add_argument("--keep-particles", type=int, default=0)
    ap.add_argument("--particle-rule", choices=["base", "split"], default="base")
    ap.add_argument("--suite", type=Path, default=None,
                    help="also print how much shorter the written tokenizer makes the suite's Korean tasks (as `koemb model prune-curve`)")
    args = ap.parse_args()

    cfg = load_pipeline(args.config)
    if cfg.prune is None or cfg.prune.keep_new_tokens is None or cfg.interpolate is None:
        raise SystemExit(f"{args.config}: expected `prune: {{keep_new_tokens: N}}` and `interpolate:` (the study's profile)")
    names = [s.name for s in cfg.stages]
    if args.coef is None:
        coef = [float(cfg.interpolate.candidates[0])] * len(names)
    else:
        coef = [float(x) for x in args.coef.split(",")]
        if len(coef) != len(names):
            raise SystemExit(f"--coef: {len(names)} stages ({', '.join(names)}), {len(coef)} coefficients")
    last_dir = args.run / "stages" / names[-1]
    exp = json.loads((last_dir / "expansion.json").read_text(encoding="utf-8"))
    shared = int(exp["first_new_id"])

    base = load_file(str(transformer_dir(args.base) / "model.safetensors"))
    stages = [load_file(str(transformer_dir(args.run / "stages" / n) / "model.safetensors")) for n in names]
    emb_key = next(k for k in stages[-1] if k.endswith("word_embeddings.weight") or k.endswith("embed_tokens.weight"))
    mixed = mixed_state(base, stages, coef, emb_key, shared)
    del base, stages

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.name}-") as tmp:
        full = Path(tmp) / "mixed"
        shutil.copytree(last_dir, full)
        save_file(mixed, str(transformer_dir(full) / "model.safetensors"), metadata={"format": "pt"})
        sources = training_sources(cfg)
        ranking = rank_new_tokens(full, exp, cfg.prune.rank_by, sources)
        keep = args.keep if args.keep is not None else cfg.prune.keep_new_tokens
        if args.drop_particles:
            tok = AutoTokenizer.from_pretrained(str(transformer_dir(full)))
            base_tok = AutoTokenizer.from_pretrained(str(transformer_dir(args.base)))
            if args.particle_rule == "base":
                base_words = set(base_tok.get_vocab())
                flag = [is_particle_token(t, base_words) for t in tok.convert_ids_to_tokens(ranking.ranked)]
            else:  # the donor filter's rule, on canonical texts (word start = a leading space)
                canon = [t.replace("\u2581", " ") for t in tok.convert_ids_to_tokens(ranking.ranked)]
                words = {t.replace("\u2581", " ") for t in base_tok.get_vocab()} | set(canon)
                flag = [particle_split(t, words) is not None for t in canon]
            plain = [i for i, f in zip(ranking.ranked, flag) if not f]
            part = [i for i, f in zip(ranking.ranked, flag) if f]
            print(f"word+particle tokens ({args.particle_rule} rule): {len(part)} of {len(flag)}, "
                  f"{sum(flag[:keep])} of the {keep} the prune keeps")
            order = plain[:keep] + part[: args.keep_particles] + plain[keep:] + part[args.keep_particles :]
            ranking = Ranking(ranked=order, per_source=ranking.per_source, counts=ranking.counts)
            keep += args.keep_particles
        if args.suite is not None:
            curve = prune_curve(full, [keep], suite_text_sets(args.suite), ranked=ranking.ranked)
            red = curve.points[0].reduction
            print("fewer tokens than the base: " + ", ".join(f"{n} {100 * r:.2f}%" for n, r in red.items()))
        prune_model(full, args.out, keep, rank_by=cfg.prune.rank_by, sources=sources, ranking=ranking, overwrite=True)
    print(f"wrote {args.out}: coefficients {dict(zip(names, coef))}, {keep} new tokens")


if __name__ == "__main__":
    main()
