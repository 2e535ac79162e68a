"""Post-hoc variants of a study run's `final/`, built from its stage folders (session 24, docs/results.md).

`final/` is the last stage, pruned, then moved back towards the base (`interpolate: {anchor: base, alpha: a}`):
base + a * (last - base) on the shared rows and the network, the new rows as trained. Two questions about that
recipe need other models than koemb writes, so they are built here:

--coef c1,...,cn   one coefficient per stage instead of one alpha for the whole path:
                   base + sum_i c_i * (stage_i - stage_{i-1})  (stage_0 = the base), shared rows and network.
                   With every c_i = alpha this is `final/` (to float rounding). Which stage's change costs what:
                   e.g. the adaptation stage kept whole and the contrastive stages halved.
--new-rows-coef c1,...,cn   the same for the new tokens' rows, from their init (the run's expanded model):
                   init + sum_i c_i * (stage_i - stage_{i-1}). Default: what the config's `interpolate:` does,
                   as trained (every c_i = 1) with `anchor: base`, the --coef with `anchor: expanded`.
                   Session 35: is stage 3's change to the rows (made beside the LoRA'd network) to be scaled
                   like the network's?
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
           [--new-rows-coef 1,1,0.7,0.7,0.7 [--expanded RUN/expanded]] \
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


def path_mix(start: torch.Tensor, path: list[torch.Tensor], coef: list[float]) -> torch.Tensor:
    """start + sum_i coef[i] * (path[i] - path[i-1]) (path[-1] = start), summed in float64; pure."""
    acc, prev = start.to(torch.float64, copy=True), start  # a copy: `start` is the caller's
    for c, step in zip(coef, path):
        acc += c * (step - prev).double()
        prev = step
    return acc.to(path[-1].dtype)


def mixed_state(base: dict[str, torch.Tensor], stages: list[dict[str, torch.Tensor]], coef: list[float],
                emb_key: str, shared: int, new_rows: tuple[torch.Tensor, list[float]] | None = None,
                ) -> dict[str, torch.Tensor]:
    """base + sum_i coef[i] * (stages[i] - stages[i-1]) for every weight (stage -1 = base); pure.

    The embedding (rows: base [>= shared], stages [shared + new]): rows < `shared` are mixed like any weight,
    the new rows are the last stage's (as `interpolate:` keeps them), or with `new_rows = (init [new, hidden],
    coefficients)` their own path from their init. Sums in float64 so that equal coefficients reproduce the
    one-alpha interpolation to float rounding."""
    out: dict[str, torch.Tensor] = {}
    for key, last in stages[-1].items():
        if key != emb_key:
            out[key] = path_mix(base[key], [st[key] for st in stages], coef).contiguous()
            continue
        mixed = path_mix(base[key][:shared], [st[key][:shared] for st in stages], coef)
        if new_rows is None:
            new = last[shared:]
        else:
            init, new_coef = new_rows
            new = path_mix(init, [st[key][shared:] for st in stages], new_coef)
        out[key] = torch.cat([mixed, new]).contiguous()
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
    ap.add_argument("--new-rows-coef", default=None,
                    help="one per stage for the new rows, from their init (default: as the config's interpolate: does)")
    ap.add_argument("--expanded", type=Path, default=None,
                    help="the new rows' init (default: the config's expanded_model, else RUN/expanded)")
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
    if cfg.interpolate.anchor not in ("base", "expanded"):
        raise SystemExit(f"{args.config}: interpolate.anchor {cfg.interpolate.anchor!r}: this script mixes from the base "
                         "(and the new rows from the expanded model); an earlier stage as the anchor is not built here")
    new_coef = list(coef) if cfg.interpolate.anchor == "expanded" else None
    if args.new_rows_coef is not None:
        new_coef = [float(x) for x in args.new_rows_coef.split(",")]
        if len(new_coef) != len(names):
            raise SystemExit(f"--new-rows-coef: {len(names)} stages ({', '.join(names)}), {len(new_coef)} coefficients")
    last_dir = args.run / "stages" / names[-1]
    exp = json.loads((last_dir / "expansion.json").read_text(encoding="utf-8"))
    shared = int(exp["first_new_id"])

    base = load_file(str(transformer_dir(args.base) / "model.safetensors"))
    stages = [load_file(str(transformer_dir(args.run / "stages" / n) / "model.safetensors")) for n in names]
    emb_key = next(k for k in stages[-1] if k.endswith("word_embeddings.weight") or k.endswith("embed_tokens.weight"))
    new_rows = None
    if new_coef is not None:
        init_dir = args.expanded or (Path(cfg.expanded_model) if cfg.expanded_model else args.run / "expanded")
        init_file = transformer_dir(init_dir) / "model.safetensors"
        if not init_file.is_file():
            raise SystemExit(f"{init_file}: the new rows' init (the run's expanded model) not found; pass --expanded")
        init = load_file(str(init_file))[emb_key][shared:]
        if init.shape != stages[-1][emb_key][shared:].shape:
            raise SystemExit(f"{init_dir}: new rows {tuple(init.shape)}, the stages have "
                             f"{tuple(stages[-1][emb_key][shared:].shape)}: not this run's expanded model")
        new_rows = (init, new_coef)
    mixed = mixed_state(base, stages, coef, emb_key, shared, new_rows)
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
    rows = "as trained" if new_coef is None else dict(zip(names, new_coef))
    print(f"wrote {args.out}: coefficients {dict(zip(names, coef))}, new rows {rows}, {keep} new tokens")


if __name__ == "__main__":
    main()
