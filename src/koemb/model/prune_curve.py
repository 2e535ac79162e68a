"""How many new tokens to keep: the token saving as a function of N (`koemb model prune-curve`).

`prune: {keep_new_tokens: N}` trades the token saving for quality (rare rows read worse than the base's
pieces), so N is best chosen on compression alone, before any quality is measured: the smallest N that still
makes the user's text a target share shorter. This module answers that without writing a model: for each N it
prunes the tokenizer.json in memory exactly as `prune_model` would (same ranking, same `choose_kept`), counts
the tokens of every text set, and compares them with the same tokenizer with no new token kept, which is the
base's segmentation (new pieces only ever add options to the base's model; `prune_tokenizer_json` with nothing
kept restores the base's vocabulary, merges and ids). Tokens are counted without special tokens or prompts,
as `koemb evaluate`'s tokenizer statistics count them.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koemb.errors import UserError
from koemb.model.expand import read_expansion
from koemb.model.files import transformer_dir
from koemb.model.prune import bpe_parts, choose_kept, prune_tokenizer_json, rank_new_tokens


@dataclass
class CurvePoint:
    keep: int
    tokens: dict[str, int]  # set -> tokens with `keep` new tokens
    reduction: dict[str, float]  # set -> 1 - tokens / base tokens (0.16 = 16% fewer tokens than the base)


@dataclass
class PruneCurve:
    model: str
    rank_by: str
    new_tokens: int
    base_tokens: dict[str, int]  # set -> tokens with the base's segmentation
    texts: dict[str, int]  # set -> number of texts
    points: list[CurvePoint] = field(default_factory=list)

    def smallest_keep(self, target: float) -> int | None:
        """The smallest measured N whose saving is at least `target` (a fraction) on EVERY set; None if none is."""
        for p in sorted(self.points, key=lambda p: p.keep):
            if p.reduction and min(p.reduction.values()) >= target:
                return p.keep
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "rank_by": self.rank_by, "new_tokens": self.new_tokens,
            "sets": {n: {"texts": self.texts[n], "base_tokens": self.base_tokens[n]} for n in self.base_tokens},
            "points": [{"keep": p.keep, "tokens": p.tokens, "reduction": {n: round(r, 6) for n, r in p.reduction.items()}} for p in self.points],
        }


def raw_tokenizer(tok_json: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` of a tokenizer.json dict that counts every token: a saved file can carry the
    model's truncation and padding (a sentence-transformers folder)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(tok_json))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _count_tokens(tok_json: dict[str, Any], sets: Mapping[str, Sequence[str]]) -> dict[str, int]:
    tok = raw_tokenizer(tok_json)
    return {name: sum(len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)) for name, texts in sets.items()}


def expansion_of(folder: Path) -> dict[str, Any]:
    """The expansion.json of a folder koemb expanded (a tokenizer or a model folder, or its Transformer sub-folder)."""
    exp = read_expansion(folder)
    if exp is None:
        exp = read_expansion(Path(transformer_dir(folder)))
    if exp is None:
        raise UserError(f"{folder}: no expansion.json; prune-curve works on a folder koemb expanded")
    return exp


def step_keeps(n_new: int, step: int) -> list[int]:
    """step, 2 x step, ... below n_new, then n_new (every new token)."""
    return [*range(step, n_new, step), n_new]


def prune_curve(
    model: str | os.PathLike,
    keeps: Iterable[int],
    text_sets: Mapping[str, Sequence[str]],
    *,
    rank_by: str = "usage",
    sources: Mapping[str, Iterable[str]] | None = None,
    damage: Mapping[int, float] | None = None,
    ranked: Sequence[int] | None = None,
    trust_remote_code: bool = False,
) -> PruneCurve:
    """Tokens of each text set with the N best-ranked new tokens kept, for each N of `keeps`.

    model: a folder with expansion.json (a tokenizer folder from `koemb vocab expand` for `order`/`usage`/
        `balanced`; a model folder for `fidelity`, which runs the model).
    text_sets: set name -> texts to count tokens on (e.g. held-out Korean text of the kind the model will read).
    rank_by, sources, damage: as in `prune_model`, so a point of the curve is the tokenizer `koemb model prune`
        writes with the same arguments.
    """
    src = Path(model)
    exp = expansion_of(src)
    n_new = len(exp["tokens"])
    keeps = sorted(set(int(k) for k in keeps))
    if not keeps:
        raise UserError("--keep: give at least one number of new tokens to measure")
    bad = [k for k in keeps if not 0 <= k <= n_new]
    if bad:
        raise UserError(f"--keep must be between 0 and {n_new} (the folder has {n_new} new tokens); got {bad[0]}")
    empty = [n for n, t in text_sets.items() if not any(s.strip() for s in t)]
    if not text_sets or empty:
        raise UserError(f"no text to count tokens on{f' in {empty[0]}' if empty else ''} (give --text or --suite)")
    tok_path = Path(transformer_dir(src)) / "tokenizer.json"
    if not tok_path.is_file():
        raise UserError(f"{tok_path.parent}: no tokenizer.json (prune-curve prunes the fast tokenizer's file)")
    tok_json = json.loads(tok_path.read_text(encoding="utf-8"))
    first = int(exp["first_new_id"])
    if ranked is None:
        ranked = rank_new_tokens(src, exp, rank_by, sources, damage=damage, trust_remote_code=trust_remote_code).ranked
    parts = bpe_parts(tok_json)

    def counts_with(kept: list[int]) -> dict[str, int]:
        j = copy.deepcopy(tok_json)
        prune_tokenizer_json(j, first, kept)
        return _count_tokens(j, text_sets)

    base = counts_with([])
    curve = PruneCurve(str(src), rank_by, n_new, base, {n: len(t) for n, t in text_sets.items()})
    for k in keeps:
        kept = choose_kept(list(ranked), k, first, parts) if k < n_new else list(range(first, first + n_new))
        n = counts_with(kept)
        red = {name: (1.0 - n[name] / base[name]) if base[name] else 0.0 for name in n}
        curve.points.append(CurvePoint(k, n, red))
    return curve


def suite_text_sets(suite: str | os.PathLike, tasks: Sequence[str] = ()) -> dict[str, list[str]]:
    """Task name -> its raw texts (no prompts) for the tasks of an evaluation suite YAML: those named in `tasks`,
    or, when none are named, every task whose text is mostly Hangul (what a Korean token saving is measured on)."""
    from koemb.eval.suite import load_suite
    from koemb.eval.tasks import TASK_TYPES, read_task_data

    s = load_suite(suite)
    unknown = [t for t in tasks if t not in {x.name for x in s.tasks}]
    if unknown:
        raise UserError(f"--task {unknown[0]!r}: not a task of {suite} (tasks: {', '.join(x.name for x in s.tasks)})")
    sets: dict[str, list[str]] = {}
    for spec in s.tasks:
        if tasks and spec.name not in tasks:
            continue
        texts = TASK_TYPES[spec.type].raw_texts(read_task_data(spec.type, spec.reader, s.resolve_path(spec), spec.split))
        if tasks or hangul_share(texts) >= 0.5:
            sets[spec.name] = texts
    return sets


def hangul_share(texts: Iterable[str]) -> float:
    """Share of the letters in `texts` that are Hangul syllables (0 for text without letters)."""
    letters = hangul = 0
    for t in texts:
        for ch in t:
            if ch.isalpha():
                letters += 1
                hangul += "\uac00" <= ch <= "\ud7a3"
    return hangul / letters if letters else 0.0


def write_curve_plot(curve: PruneCurve, path: str | os.PathLike, target: float | None = None) -> Path:
    """A PNG of the saving (%) against the number of kept new tokens, one line per text set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = [p.keep for p in curve.points]
    for name in curve.base_tokens:
        ax.plot(xs, [100 * p.reduction[name] for p in curve.points], marker="o", label=name)
    if target is not None:
        ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label=f"target {100 * target:g}%")
    ax.set_xlabel(f"new tokens kept (of {curve.new_tokens:,}, ranked by {curve.rank_by})")
    ax.set_ylabel("fewer tokens than the base (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
