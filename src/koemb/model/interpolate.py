"""Weight-space interpolation of a trained model towards an anchor (`koemb model interpolate`).

theta = anchor + alpha * (trained - anchor), weight by weight (WiSE-FT, Wortsman et al. 2022). Fine-tuning
moves a pretrained network towards its training data; the straight line back to where it started keeps much
of the gain on that data and recovers what was lost elsewhere, because the two ends sit in one basin of the
loss (they share the pretrained start). alpha = 1 is the trained model, 0 the anchor; 0.5 is the usual
default, chosen before looking at any evaluation.

Vocabulary: the anchor is the base model (fewer tokens) or an earlier stage (possibly more new tokens, before
a prune). Rows are interpolated for the ids both tokenizers share, which must be the same tokens; every
other row is the trained model's (an embedding row exists only on one side, or the anchor's row past its
own tokenizer is a spare row that was never trained: e5-small's 35). Everything else must match in shape.
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
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """anchor + alpha * (trained - anchor) for every weight of `trained`; pure (inputs are not changed).

    embedding_key: the input embedding's name; its first `shared_rows` rows are interpolated, the rest
    are the trained model's. Weights the anchor lacks are kept from `trained` and returned by name.
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


def shared_token_count(anchor_tok, model_tok, *, anchor: str, model: str) -> int:
    """How many leading ids the two tokenizers share; an error if any of them names a different token."""
    a, m = _vocab_by_id(anchor_tok), _vocab_by_id(model_tok)
    n = min(len(a), len(m))
    diff = [i for i in range(n) if a[i] != m[i]]
    if diff:
        i = diff[0]
        raise UserError(
            f"{model}: its tokenizer differs from {anchor}'s at {len(diff)} of the {n} shared ids "
            f"(first: id {i} is {m[i]!r} vs {a[i]!r}); interpolate a model with its own base or an earlier stage"
        )
    return n


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

    anchor: the base model (folder or hub id) or an earlier stage's folder; model: a trained folder.
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
    shared = shared_token_count(tok_a, tok_m, anchor=str(anchor), model=str(src))

    net, _ = load_base_model(src, trust_remote_code=trust_remote_code)
    anc, _ = load_base_model(anchor, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if type(net) is not type(anc):
        raise UserError(f"{anchor} is a {type(anc).__name__}, {src} a {type(net).__name__}: not the same architecture")
    emb = net.get_input_embeddings().weight
    emb_key = next(n for n, p in net.named_parameters() if p is emb)
    mixed, kept = interpolate_state(anc.state_dict(), net.state_dict(), alpha, embedding_key=emb_key, shared_rows=shared)
    if kept:
        log.warning("%s lacks %d weights of %s (kept as trained): %s", anchor, len(kept), src, ", ".join(kept[:5]))
    net.load_state_dict(mixed)
    del anc

    exp = read_expansion(src)
    if exp is not None:
        exp = {**exp, "interpolated": {"anchor": str(anchor), "alpha": alpha, "shared_ids": shared}}
    max_len = saved_max_seq_length(src)
    recipe = {"step": "koemb model interpolate", "model": str(src), "anchor": str(anchor), "alpha": alpha}
    log.info("interpolated %s towards %s at alpha %.3g (%d shared ids)", src, anchor, alpha, shared)
    return save_sentence_transformer(
        net, tok_m, out, resolve_preset(src, None), max_seq_length=max_len, expansion=exp, recipe=recipe,
        title=f"{src.name}, interpolated towards {Path(str(anchor)).name} (alpha {alpha:g})", overwrite=overwrite,
    )
