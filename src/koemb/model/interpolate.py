"""Weight-space interpolation of a trained model towards an anchor (`koemb model interpolate`).

theta = anchor + alpha * (trained - anchor), weight by weight (WiSE-FT, Wortsman et al. 2022). Fine-tuning
moves a pretrained network towards its training data; the straight line back to where it started keeps much
of the gain on that data and recovers what was lost elsewhere, because the two ends sit in one basin of the
loss (they share the pretrained start). alpha = 1 is the trained model, 0 the anchor; 0.5 is the usual
default, chosen before looking at any evaluation.

Vocabulary: the anchor is the base model (fewer tokens), the expanded model the stages started from (the base
network and rows plus the new rows at their init, so the new rows move back along the line too), or an earlier
stage (possibly more new tokens, before a prune). Rows are interpolated for the ids both tokenizers share, which
must be the same tokens (after a prune ranked by use, which renumbers the new tokens, a new token is matched by
its text instead, and the anchor must have them all). Every other row is the trained model's (an embedding row exists only on one
side, or the anchor's row past its own tokenizer is a spare row that was never trained: e5-small's 35).
Everything else must match in shape.
The output keeps the trained model's tokenizer, pooling, prompts and expansion.json.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from koemb.errors import UserError
from koemb.model.expand import load_base_model, read_expansion
from koemb.model.files import saved_max_seq_length, transformer_dir

log = logging.getLogger(__name__)


def interpolate_state(
    anchor: dict[str, torch.Tensor],
    trained: dict[str, torch.Tensor],
    alpha: float,
    *,
    embedding_key: str,
    shared_rows: int,
    moved_rows: list[tuple[int, int]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """anchor + alpha * (trained - anchor) for every weight of `trained`; pure (inputs are not changed).

    embedding_key: the input embedding's name; its first `shared_rows` rows are interpolated, and so is
    each (trained row, anchor row) of `moved_rows` (one token at two ids); the rest are the trained model's.
    Weights the anchor lacks are kept from `trained` and returned by name.
    Raises UserError for any other shape mismatch.
    """
    out: dict[str, torch.Tensor] = {}
    kept: list[str] = []
    for name, t in trained.items():
        a = anchor.get(name)
        if a is None:
            out[name] = t.clone()
            kept.append(name)
            continue
        if name == embedding_key:
            # (rows, hidden): the shared ids only; new rows (or rows the anchor never trained) stay as trained.
            if a.shape[1:] != t.shape[1:] or a.shape[0] < shared_rows or t.shape[0] < shared_rows:
                raise UserError(f"{name}: anchor {tuple(a.shape)} and model {tuple(t.shape)} do not share {shared_rows} rows")
            mixed = t.clone()
            mixed[:shared_rows] = _lerp(a[:shared_rows], t[:shared_rows], alpha)
            if moved_rows:
                ti, ai = (torch.tensor(c, dtype=torch.long) for c in zip(*moved_rows))
                if int(ti.max()) >= t.shape[0] or int(ai.max()) >= a.shape[0]:
                    raise UserError(f"{name}: a matched token's row is past anchor {tuple(a.shape)} or model {tuple(t.shape)}")
                mixed[ti] = _lerp(a[ai], t[ti], alpha)
            out[name] = mixed
        elif a.shape != t.shape:
            raise UserError(f"{name}: anchor {tuple(a.shape)} vs model {tuple(t.shape)}: not the same architecture")
        elif not t.is_floating_point():
            out[name] = t.clone()  # e.g. position id buffers: not weights
        else:
            out[name] = _lerp(a, t, alpha)
    return out, kept


def _lerp(a: torch.Tensor, t: torch.Tensor, alpha: float) -> torch.Tensor:
    # In float32 so that a bf16 model is not rounded twice; stored back in the trained model's dtype.
    return (a.float() + alpha * (t.float() - a.float())).to(t.dtype)


def _vocab_by_id(tokenizer) -> list[str | None]:
    ids: list[str | None] = [None] * len(tokenizer)
    for tok, i in tokenizer.get_vocab().items():
        if 0 <= i < len(ids):
            ids[i] = tok
    return ids


def shared_token_rows(
    anchor_tok, model_tok, *, anchor: str, model: str, renumbered_from: int | None = None
) -> tuple[int, list[tuple[int, int]]]:
    """(n, moved): the model and the anchor name the same tokens at ids 0..n-1, and `moved` pairs each later
    model id with the anchor id of the same token.

    renumbered_from: the model's first new id when a prune ranked by use renumbered its new tokens (expansion.json
    `pruned.rank_by` other than `order`): from there on a token is matched by its text, and every one of them must be
    among the anchor's (an earlier stage of the same run has them all). Any other difference is an error:
    the anchor is not this model's base or earlier stage."""
    a, m = _vocab_by_id(anchor_tok), _vocab_by_id(model_tok)
    n = min(len(a), len(m))
    diff = [i for i in range(n) if a[i] != m[i]]
    limit = n if renumbered_from is None else min(renumbered_from, n)
    bad = [i for i in diff if i < limit]
    if bad:
        i = bad[0]
        raise UserError(
            f"{model}: its tokenizer differs from {anchor}'s at {len(bad)} of the {limit} shared ids "
            f"(first: id {i} is {m[i]!r} vs {a[i]!r}); interpolate a model with its own base or an earlier stage"
        )
    if not diff:
        return n, []
    shared = diff[0]
    where = {tok: j for j, tok in enumerate(a) if tok is not None}
    missing = [m[i] for i in range(shared, len(m)) if m[i] not in where]
    if missing:
        raise UserError(
            f"{anchor}: lacks {len(missing)} of the new tokens {model} kept (first: {missing[0]!r}); the anchor of a "
            "model pruned by use must be its base or an earlier stage of the same run"
        )
    return shared, [(i, where[m[i]]) for i in range(shared, len(m))]


def interpolate_models(
    anchor: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    alpha: float,
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    field: str = "--alpha",
) -> Path:
    """Write anchor + alpha * (model - anchor) as a sentence-transformers folder at `out` (see the module doc).

    anchor: the base model (folder or hub id), the run's expanded model (its new rows move back towards their
        init too) or an earlier stage's folder; model: a trained folder.
    field: how the error message names alpha (a CLI flag or a config field).
    allow_pickle: let the anchor load from .bin/.pt weights (a run whose base model has only those); the
        trained folder is koemb's own, always safetensors.
    """
    from transformers import AutoTokenizer

    from koemb.model.presets import resolve_preset
    from koemb.model.save import check_out_dir, save_sentence_transformer

    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"{field} must be between 0 (the anchor) and 1 (the trained model); got {alpha}")
    check_out_dir(out, overwrite)
    src = Path(model)
    if not src.is_dir():
        raise UserError(f"{src}: expected the trained model's folder")
    anchor_where = transformer_dir(Path(anchor)) if Path(anchor).is_dir() else str(anchor)
    tok_m = AutoTokenizer.from_pretrained(str(transformer_dir(src)), trust_remote_code=trust_remote_code)
    tok_a = AutoTokenizer.from_pretrained(str(anchor_where), trust_remote_code=trust_remote_code)
    exp = read_expansion(src)
    renumbered = exp is not None and (exp.get("pruned") or {}).get("rank_by", "order") != "order"
    shared, moved = shared_token_rows(
        tok_a, tok_m, anchor=str(anchor), model=str(src), renumbered_from=int(exp["first_new_id"]) if renumbered else None
    )

    net, _ = load_base_model(src, trust_remote_code=trust_remote_code)
    anc, _ = load_base_model(anchor, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if type(net) is not type(anc):
        raise UserError(f"{anchor} is a {type(anc).__name__}, {src} a {type(net).__name__}: not the same architecture")
    emb = net.get_input_embeddings().weight
    emb_key = next(n for n, p in net.named_parameters() if p is emb)
    mixed, kept = interpolate_state(anc.state_dict(), net.state_dict(), alpha, embedding_key=emb_key, shared_rows=shared, moved_rows=moved)
    if kept:
        log.warning("%s lacks %d weights of %s (kept as trained): %s", anchor, len(kept), src, ", ".join(kept[:5]))
    net.load_state_dict(mixed)
    del anc

    if exp is not None:
        exp = {**exp, "interpolated": {"anchor": str(anchor), "alpha": alpha, "shared_ids": shared,
                                       **({"matched_new_tokens": len(moved)} if moved else {})}}
    max_len = saved_max_seq_length(src)
    recipe = {"step": "koemb model interpolate", "model": str(src), "anchor": str(anchor), "alpha": alpha}
    log.info("interpolated %s towards %s at alpha %.3g (%d shared ids, %d new tokens matched by text)", src, anchor, alpha, shared, len(moved))
    return save_sentence_transformer(
        net, tok_m, out, resolve_preset(src, None), max_seq_length=max_len, expansion=exp, recipe=recipe,
        title=f"{src.name}, interpolated towards {Path(str(anchor)).name} (alpha {alpha:g})", overwrite=overwrite,
    )
