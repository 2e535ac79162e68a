"""Keep only N of the new tokens of an expanded model (`koemb model prune`).

Why: a new token's row is only as good as the training it got. Rows of tokens that are rare in the
training data stay near their init, and the study measured that they cost quality: the trained e5-small
model read KorQuAD 0.45 NDCG@10 better when its 6,000 rarest new tokens were switched off (docs/results.md).
Pruning trades a little of the token saving back for that quality without retraining.

Which tokens go (`rank_by`, a registry: `RANKINGS`):
- `order` (default): the first N in expansion order. The expansion appends new tokens in its candidate order
  (the donor's frequency order for Unigram, merge order for BPE), so the kept set is a prefix of the new ids.
- `usage`: the N new tokens the expanded tokenizer itself emits most often on a corpus (the training text:
  what a row gets trained on). Candidate order is the donor's view; once the new pieces compete with each
  other and with the base's, some early candidates are rarely emitted (on the e5 study '▁위배되', candidate 2,
  is never used: '▁위배되는' wins). Ranking by use keeps more of the token saving per kept row: the e5 study's
  14,000 most used reach the 15% line on every Korean set where the first 14,000 do not (docs/results.md).
  Without a corpus, `usage` reads the counts `koemb vocab expand` stored (`corpus_count`: the expansion's corpus).
- `balanced`: as `usage`, but each source (a training file) counts as a share of its own uses, so a small
  source of another kind of text (encyclopaedic pairs beside chat logs) weighs as much as a large one. On the
  e5 study it saved more tokens per kept row and scored lower at equal compression: the small source's tokens
  are rare in the rest of the training text, so their rows trained less.
- `fidelity`: by base pieces saved per unit of damage, where a token's damage is how far ONE occurrence of it
  moves the model's embedding of a short chunk of training text from the chunk spelt out in base pieces
  (`koemb.model.fidelity`; it runs the model). If each occurrence costs its damage and saves its pieces - 1,
  a text's total cost and saving are sums over its tokens, and keeping the best ratio first keeps the most
  saving for the least cost whatever N is. Needs a corpus (the occurrences are sampled from it).

The kept tokens get the ids `first_new_id .. first_new_id + keep - 1` in their old relative order (a prefix
keeps its ids), their rows move with them, and everything else at or above first_new_id is removed from the
tokenizer (Unigram pieces, WordPiece entries, BPE vocab entries and the merges that build them, added
tokens). The embedding matrix shrinks to `max(first_new_id + keep, rows the base model had)` rows, so a base
model's spare rows stay (e5-small: 250,037 rows for 250,002 tokens). Every kept row is bit-identical. For
BPE a kept token's parts are kept with it (its merge needs them), so the kept set is closed under merges.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from koemb.errors import UserError
from koemb.model.expand import load_base_model, read_expansion
from koemb.model.fidelity import ContextSampler, new_token_damage
from koemb.model.files import saved_max_seq_length, transformer_dir

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _merge_parts(merge: Any) -> tuple[str, str]:
    # tokenizers writes merges as "a b" (older files) or ["a", "b"] (0.20+).
    if isinstance(merge, str):
        a, _, b = merge.partition(" ")
        return a, b
    return merge[0], merge[1]


def _reindex(old_id: int, first: int, new_id: dict[int, int]) -> int | None:
    """The id after pruning: base ids stay, kept new ids move down, removed ones are None."""
    return old_id if old_id < first else new_id.get(old_id)


def prune_tokenizer_json(tok: dict[str, Any], first: int, kept: list[int]) -> dict[str, int]:
    """Keep only the new ids `kept` (ascending, all >= `first`) of a tokenizer.json dict, in place, renumbered
    to `first, first + 1, ...`; return what was removed, by kind."""
    new_id = {old: first + k for k, old in enumerate(kept)}
    model = tok["model"]
    kind = model.get("type")
    removed = {"model_vocab": 0, "merges": 0, "added_tokens": 0}
    if kind == "Unigram":
        vocab = model["vocab"]  # list of [piece, score]; the id is the position
        if kept and kept[-1] >= len(vocab):
            # The position is the id: a kept token past the pieces (an added token) would be renumbered wrongly.
            raise UserError(f"new token id {kept[-1]} is not a Unigram piece (the model has {len(vocab)}); cannot renumber it")
        removed["model_vocab"] = max(len(vocab) - first - len(kept), 0)
        model["vocab"] = vocab[:first] + [vocab[i] for i in kept]
        if model.get("unk_id") is not None and model["unk_id"] >= first:
            raise UserError(f"the Unigram unk_id {model['unk_id']} is a new token (>= {first}); prune keeps the base's ids only")
    elif kind in ("BPE", "WordPiece", "WordLevel"):
        vocab = model["vocab"]  # piece -> id
        out = {p: j for p, i in vocab.items() if (j := _reindex(i, first, new_id)) is not None}
        removed["model_vocab"] = len(vocab) - len(out)
        model["vocab"] = out
        if kind == "BPE":
            merges = model.get("merges") or []
            keep = [m for m in merges if "".join(_merge_parts(m)) in out]
            removed["merges"] = len(merges) - len(keep)
            model["merges"] = keep
    else:
        raise UserError(f"cannot prune a {kind} tokenizer (Unigram, BPE, WordPiece and WordLevel are supported)")
    added = tok.get("added_tokens") or []
    kept_added = []
    for a in added:
        j = _reindex(a["id"], first, new_id)
        if j is not None:
            kept_added.append({**a, "id": j})
    tok["added_tokens"] = kept_added
    removed["added_tokens"] = len(added) - len(kept_added)
    return removed


def _rank_order(exp: dict[str, Any], per_source: dict[str, Counter[int]] | None, damage: Mapping[int, float] | None = None) -> list[int]:
    return [int(t["id"]) for t in exp["tokens"]]


def _stored_counts(exp: dict[str, Any], rank_by: str) -> dict[str, Counter[int]]:
    if any("corpus_count" not in t for t in exp["tokens"]):
        raise UserError(f"rank by {rank_by} needs a corpus: this expansion.json stores no corpus_count (give --corpus)")
    return {"expansion corpus": Counter({int(t["id"]): int(t["corpus_count"]) for t in exp["tokens"]})}


def _by_score(exp: dict[str, Any], score: dict[int, float]) -> list[int]:
    ids = [int(t["id"]) for t in exp["tokens"]]
    pos = {i: k for k, i in enumerate(ids)}
    # Highest first; ties keep the expansion's order (stable, deterministic).
    return sorted(ids, key=lambda i: (-score.get(i, 0.0), pos[i]))


def _rank_usage(exp: dict[str, Any], per_source: dict[str, Counter[int]] | None, damage: Mapping[int, float] | None = None) -> list[int]:
    total: Counter[int] = Counter()
    for c in (per_source or _stored_counts(exp, "usage")).values():
        total.update(c)
    return _by_score(exp, dict(total))


def _rank_balanced(exp: dict[str, Any], per_source: dict[str, Counter[int]] | None, damage: Mapping[int, float] | None = None) -> list[int]:
    # Each source's uses as a share of its own new-token uses, summed: a small source (a few thousand
    # encyclopaedic pairs) weighs as much as a large one (chat logs), so the kept vocabulary serves every
    # kind of text the run trains on rather than the largest.
    share: dict[int, float] = {}
    for c in (per_source or _stored_counts(exp, "balanced")).values():
        n = sum(c.values())
        for i, v in c.items():
            share[i] = share.get(i, 0.0) + v / n
    return _by_score(exp, share)


# A measured damage below this counts as this (a ratio needs a floor; ~1e-6 is float32 noise on `1 - cos`).
DAMAGE_FLOOR = 1e-6


def _rank_fidelity(exp: dict[str, Any], per_source: dict[str, Counter[int]] | None, damage: Mapping[int, float] | None = None) -> list[int]:
    if damage is None:
        raise UserError("rank by fidelity needs each new token's measured damage (prune_model measures it on --corpus)")
    ratio = {
        int(t["id"]): max(len(t.get("base_ids") or ()) - 1, 0) / max(damage[int(t["id"])], DAMAGE_FLOOR)
        for t in exp["tokens"] if int(t["id"]) in damage
    }
    usage: Counter[int] = Counter()
    for c in (per_source or {}).values():
        usage.update(c)
    # Tokens never sampled (unused on the corpus) have no ratio: they follow every measured one, by use
    # (scaled into [0, 1), below the measured scores, which start at 1).
    most = max(usage.values(), default=0) + 1
    score = {int(t["id"]): usage.get(int(t["id"]), 0) / most for t in exp["tokens"]}
    score.update({i: 1.0 + r for i, r in ratio.items()})
    return _by_score(exp, score)


RANKINGS: dict[str, Callable[..., list[int]]] = {
    "order": _rank_order,
    "usage": _rank_usage,
    "balanced": _rank_balanced,
    "fidelity": _rank_fidelity,
}


@dataclass
class Ranking:
    """The new ids best first, with what the ranking measured (None where it measured nothing)."""

    ranked: list[int]
    per_source: dict[str, Counter[int]] | None = None
    counts: Counter[int] | None = None
    damage: Mapping[int, float] | None = None


def rank_new_tokens(
    src: Path,
    exp: dict[str, Any],
    rank_by: str,
    sources: Mapping[str, Iterable[str]] | None = None,
    *,
    damage: Mapping[int, float] | None = None,
    trust_remote_code: bool = False,
) -> Ranking:
    """Rank the new tokens of the expanded folder `src` (its expansion.json read as `exp`) by `rank_by`,
    counting uses on `sources` (name -> texts) and, for `fidelity` without `damage`, measuring the damage
    with the model in `src`."""
    from transformers import AutoTokenizer

    if rank_by not in RANKINGS:
        raise UserError(f"rank_by must be one of {', '.join(sorted(RANKINGS))}; got {rank_by!r}")
    first = int(exp["first_new_id"])
    per_source: dict[str, Counter[int]] | None = None
    counts: Counter[int] | None = None
    sampler: ContextSampler | None = None
    if rank_by == "fidelity" and damage is None:
        if sources is None:
            raise UserError("rank by fidelity needs a corpus to sample the new tokens' occurrences from (give --corpus)")
        if any(not t.get("base_ids") for t in exp["tokens"]):
            raise UserError(f"{src / 'expansion.json'}: rank by fidelity needs each new token's base_ids (written by koemb model expand)")
        sampler = ContextSampler(first)
    if sources is not None and rank_by != "order":
        full_tok = AutoTokenizer.from_pretrained(str(transformer_dir(src)), trust_remote_code=trust_remote_code)
        per_source = {name: count_new_token_uses(full_tok, texts, first, sampler=sampler) for name, texts in sources.items()}
        counts = Counter()
        for c in per_source.values():
            counts.update(c)
        log.info("counted %d uses of %d new tokens in %d sources", sum(counts.values()), len(counts), len(per_source))
    if sampler is not None:
        pieces = {int(t["id"]): [int(i) for i in t["base_ids"]] for t in exp["tokens"]}
        damage = new_token_damage(src, sampler, pieces, trust_remote_code=trust_remote_code)
    return Ranking(RANKINGS[rank_by](exp, per_source, damage), per_source, counts, damage)


def count_new_token_uses(
    tokenizer: Any, texts: Iterable[str], first_new_id: int, batch: int = 1024, sampler: ContextSampler | None = None,
) -> Counter[int]:
    """How often the tokenizer emits each new id (>= first_new_id) on `texts` (no truncation); with `sampler`,
    each text's ids also go to it (the occurrences `rank_by: fidelity` measures)."""
    counts: Counter[int] = Counter()
    buf: list[str] = []

    def flush() -> None:
        # verbose=False: long training texts are counted whole, not fed to a model; no length warning.
        for row in tokenizer(buf, add_special_tokens=False, verbose=False)["input_ids"]:
            counts.update(i for i in row if i >= first_new_id)
            if sampler is not None:
                sampler.add(row)
        buf.clear()

    for t in texts:
        buf.append(t)
        if len(buf) >= batch:
            flush()
    if buf:
        flush()
    return counts


def bpe_parts(tok: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """BPE: token id -> the ids of the two parts its merge joins."""
    model = tok["model"]
    if model.get("type") != "BPE":
        return {}
    vocab = model["vocab"]
    out = {}
    for m in model.get("merges") or []:
        a, b = _merge_parts(m)
        if a + b in vocab and a in vocab and b in vocab:
            out.setdefault(vocab[a + b], (vocab[a], vocab[b]))
    return out


def choose_kept(ranked: list[int], keep: int, first: int, parts: dict[int, tuple[int, int]]) -> list[int]:
    """The first `keep` ids of `ranked`, each with the new-id parts its BPE merge needs (closed under merges);
    a token whose parts would not fit is skipped. Returned ascending."""
    kept: set[int] = set()
    for tid in ranked:
        if len(kept) >= keep:
            break
        need, stack = [], [tid]
        while stack:
            i = stack.pop()
            if i < first or i in kept or i in need:
                continue
            need.append(i)
            stack.extend(parts.get(i, ()))
        if len(kept) + len(need) <= keep:
            kept.update(need)
    return sorted(kept)


def corpus_sources(paths: Iterable[str | os.PathLike]) -> dict[str, Iterable[str]]:
    """One source per training file (unlabeled .txt/.jsonl `text`, or pairs: query, positive, negatives)."""
    from koemb.train.data import read_examples, texts_of

    def texts(path: str | os.PathLike) -> Iterable[str]:
        for e in read_examples(path):
            yield from texts_of(e)

    return {str(p): texts(p) for p in paths}


def prune_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    keep: int,
    *,
    rank_by: str = "order",
    sources: Mapping[str, Iterable[str]] | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    field: str = "--keep",
    damage: Mapping[int, float] | None = None,
    ranking: Ranking | None = None,
) -> Path:
    """Write a copy of the expanded sentence-transformers folder `model` with only `keep` of its new tokens.

    model: a folder written by koemb (`koemb model expand`, a stage, `final/`), with expansion.json.
    rank_by: which tokens stay (a key of RANKINGS): `order` the first `keep`; `usage` the `keep` most emitted on
        the texts of `sources` (name -> texts; without sources, on the expansion's corpus as expansion.json
        records it); `balanced` the same with each source's uses as a share of that source's total; `fidelity`
        the best (pieces saved) / (damage) first, the damage measured with this model on occurrences in `sources`.
    field: how the error message names `keep` (a CLI flag or a config field).
    damage: for `fidelity`, each new id's damage measured already on this model (e.g. by
        benchmarks/prune_ranking.py); measured here on `sources` when None.
    ranking: the ranking `rank_new_tokens` computed already with these arguments on this folder (e.g. for the
        curve that chose `keep`); not counted or measured again.
    Returns the output folder; its expansion.json lists the kept tokens and records the pruning.
    """
    from transformers import AutoTokenizer

    from koemb.model.presets import resolve_preset
    from koemb.model.save import check_out_dir, save_sentence_transformer

    if rank_by not in RANKINGS:
        raise UserError(f"rank_by must be one of {', '.join(sorted(RANKINGS))}; got {rank_by!r}")
    src = Path(model)
    exp = read_expansion(src)
    if exp is None:
        raise UserError(f"{src}: no expansion.json; prune works on a model folder koemb expanded")
    n_new = len(exp["tokens"])
    if not 1 <= keep < n_new:
        raise UserError(f"{field} must be between 1 and {n_new - 1} (the model has {n_new} new tokens); got {keep}")
    check_out_dir(out, overwrite)

    tdir = transformer_dir(src)
    tok_path = tdir / "tokenizer.json"
    if not tok_path.is_file():
        raise UserError(f"{tdir}: no tokenizer.json (prune rewrites the fast tokenizer's file)")
    tok_json = json.loads(tok_path.read_text(encoding="utf-8"))
    first = int(exp["first_new_id"])
    r = ranking or rank_new_tokens(src, exp, rank_by, sources, damage=damage, trust_remote_code=trust_remote_code)
    per_source, counts, damage = r.per_source, r.counts, r.damage
    kept = choose_kept(r.ranked, keep, first, bpe_parts(tok_json))
    if len(kept) != keep:
        raise UserError(f"{field}: only {len(kept)} new tokens fit with the parts their merges need (asked for {keep})")
    cut = first + keep
    removed = prune_tokenizer_json(tok_json, first, kept)

    with tempfile.TemporaryDirectory(prefix="koemb-prune-") as tmp:
        tmp_dir = Path(tmp)
        for name in TOKENIZER_FILES:
            if (tdir / name).is_file():
                shutil.copy2(tdir / name, tmp_dir / name)
        (tmp_dir / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        cfg_path = tmp_dir / "tokenizer_config.json"
        if cfg_path.is_file():
            # added_tokens_decoder names added tokens by id: drop the removed ones, renumber the kept ones.
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            dec = cfg.get("added_tokens_decoder") or {}
            new_id = {old: first + k for k, old in enumerate(kept)}
            cfg["added_tokens_decoder"] = {
                str(j): v for k, v in dec.items() if (j := _reindex(int(k), first, new_id)) is not None
            }
            cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(str(tmp_dir), trust_remote_code=trust_remote_code)
    if len(tokenizer) != cut:
        raise UserError(f"{tok_path}: after pruning the tokenizer has {len(tokenizer)} ids, expected {cut}")

    net, _ = load_base_model(src, trust_remote_code=trust_remote_code)
    emb = net.get_input_embeddings()
    rows_now = int(emb.weight.shape[0])
    if kept != list(range(first, cut)):
        # Move the kept rows to their new ids (rows first..cut-1); an untied output head moves with them.
        idx = torch.tensor(kept, dtype=torch.long)
        heads = [emb.weight]
        outp = net.get_output_embeddings()
        if outp is not None and outp.weight is not emb.weight:
            heads.append(outp.weight)
        with torch.no_grad():
            for w in heads:
                w[first:cut] = w[idx].clone()
    rows_before = int((exp.get("rows") or {}).get("before", cut))
    rows = max(cut, rows_before)
    if rows < rows_now:
        # Truncation copies the first `rows` rows (and a tied or untied output head alike).
        net.resize_token_embeddings(rows, mean_resizing=False)

    by_id = {int(t["id"]): t for t in exp["tokens"]}
    tokens = []
    for k, old in enumerate(kept):
        t = {**by_id[old], "id": first + k}
        if counts is not None:
            t["uses"] = int(counts.get(old, 0))
        if damage is not None and old in damage:
            t["damage"] = round(damage[old], 6)
        tokens.append(t)
    exp_out = dict(exp)
    exp_out["tokens"] = tokens
    exp_out["added"] = keep
    exp_out["vocab_size"] = cut
    exp_out["pruned"] = {
        "from": n_new, "kept": keep, "rank_by": rank_by,
        **({"corpus": list(per_source), "corpus_uses": int(sum(counts.values()))} if per_source is not None and counts is not None else {}),
        "removed": removed, "rows": {"before": rows_now, "after": rows},
    }
    if isinstance(exp_out.get("rows"), dict):
        exp_out["rows"] = {**exp_out["rows"], "after": rows, "expanded_tokenizer": cut}
    max_len = saved_max_seq_length(src)
    recipe = {"step": "koemb model prune", "model": str(src), "new_tokens": f"{keep} of {n_new}", "rank_by": rank_by, "rows": rows}
    log.info("kept %d of %d new tokens (%s): ids < %d, rows %d -> %d", keep, n_new, rank_by, cut, rows_now, rows)
    return save_sentence_transformer(
        net, tokenizer, out, resolve_preset(src, None), max_seq_length=max_len, expansion=exp_out, recipe=recipe,
        title=f"{src.name}, {keep} of {n_new} new tokens", overwrite=overwrite,
    )
