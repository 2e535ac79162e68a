"""Keep only the first N new tokens of an expanded model (`koemb model prune`).

Why: a new token's row is only as good as the training it got. Rows of tokens that are rare in the
training data stay near their init, and the study measured that they cost quality: the trained e5-small
model read KorQuAD 0.45 NDCG@10 better when its 6,000 rarest new tokens were switched off (docs/results.md).
Pruning trades a little of the token saving back for that quality without retraining.

Which tokens go: the expansion appends new tokens in its candidate order (most frequent on the corpus
first; BPE merges in merge order), so the kept set is a prefix of the new ids: ids
`first_new_id .. first_new_id + keep - 1`. Everything at or above `cut = first_new_id + keep` is removed
from the tokenizer (Unigram pieces, WordPiece entries, BPE vocab entries and the merges that build them,
added tokens), and the embedding matrix shrinks to `max(cut, rows the base model had)` rows, so a base
model's spare rows stay (e5-small: 250,037 rows for 250,002 tokens). Every kept row is bit-identical.
A prefix keeps BPE consistent: a merge's result gets a later id than its parts, so no kept token is built
from a removed one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from koemb.errors import UserError
from koemb.model.expand import load_base_model, read_expansion
from koemb.model.files import saved_max_seq_length, transformer_dir

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _merge_parts(merge: Any) -> tuple[str, str]:
    # tokenizers writes merges as "a b" (older files) or ["a", "b"] (0.20+).
    if isinstance(merge, str):
        a, _, b = merge.partition(" ")
        return a, b
    return merge[0], merge[1]


def prune_tokenizer_json(tok: dict[str, Any], cut: int) -> dict[str, int]:
    """Remove every id >= `cut` from a tokenizer.json dict in place; return what was removed, by kind."""
    model = tok["model"]
    kind = model.get("type")
    removed = {"model_vocab": 0, "merges": 0, "added_tokens": 0}
    if kind == "Unigram":
        vocab = model["vocab"]  # list of [piece, score]; the id is the position
        removed["model_vocab"] = max(len(vocab) - cut, 0)
        model["vocab"] = vocab[:cut]
        if model.get("unk_id") is not None and model["unk_id"] >= cut:
            raise UserError(f"the Unigram unk_id {model['unk_id']} is among the removed ids (>= {cut})")
    elif kind in ("BPE", "WordPiece", "WordLevel"):
        vocab = model["vocab"]  # piece -> id
        kept = {p: i for p, i in vocab.items() if i < cut}
        removed["model_vocab"] = len(vocab) - len(kept)
        model["vocab"] = kept
        if kind == "BPE":
            merges = model.get("merges") or []
            keep = [m for m in merges if "".join(_merge_parts(m)) in kept]
            removed["merges"] = len(merges) - len(keep)
            model["merges"] = keep
    else:
        raise UserError(f"cannot prune a {kind} tokenizer (Unigram, BPE, WordPiece and WordLevel are supported)")
    added = tok.get("added_tokens") or []
    tok["added_tokens"] = [a for a in added if a["id"] < cut]
    removed["added_tokens"] = len(added) - len(tok["added_tokens"])
    return removed


def prune_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    keep: int,
    *,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    field: str = "--keep",
) -> Path:
    """Write a copy of the expanded sentence-transformers folder `model` with only its first `keep` new tokens.

    model: a folder written by koemb (`koemb model expand`, a stage, `final/`), with expansion.json.
    field: how the error message names `keep` (a CLI flag or a config field).
    Returns the output folder; its expansion.json lists the kept tokens and records the pruning.
    """
    from transformers import AutoTokenizer

    from koemb.model.presets import resolve_preset
    from koemb.model.save import check_out_dir, save_sentence_transformer

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
    cut = int(exp["first_new_id"]) + keep
    removed = prune_tokenizer_json(tok_json, cut)

    with tempfile.TemporaryDirectory(prefix="koemb-prune-") as tmp:
        tmp_dir = Path(tmp)
        for name in TOKENIZER_FILES:
            if (tdir / name).is_file():
                shutil.copy2(tdir / name, tmp_dir / name)
        (tmp_dir / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        cfg_path = tmp_dir / "tokenizer_config.json"
        if cfg_path.is_file():
            # added_tokens_decoder names added tokens by id: drop the removed ones too.
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            dec = cfg.get("added_tokens_decoder") or {}
            cfg["added_tokens_decoder"] = {k: v for k, v in dec.items() if int(k) < cut}
            cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
        tokenizer = AutoTokenizer.from_pretrained(str(tmp_dir), trust_remote_code=trust_remote_code)
    if len(tokenizer) != cut:
        raise UserError(f"{tok_path}: after pruning the tokenizer has {len(tokenizer)} ids, expected {cut}")

    net, _ = load_base_model(src, trust_remote_code=trust_remote_code)
    rows_now = int(net.get_input_embeddings().weight.shape[0])
    rows_before = int((exp.get("rows") or {}).get("before", cut))
    rows = max(cut, rows_before)
    if rows < rows_now:
        # Truncation copies the first `rows` rows (and a tied or untied output head alike).
        net.resize_token_embeddings(rows, mean_resizing=False)

    exp_out = dict(exp)
    exp_out["tokens"] = exp["tokens"][:keep]
    exp_out["added"] = keep
    exp_out["vocab_size"] = cut
    exp_out["pruned"] = {"from": n_new, "kept": keep, "removed": removed, "rows": {"before": rows_now, "after": rows}}
    if isinstance(exp_out.get("rows"), dict):
        exp_out["rows"] = {**exp_out["rows"], "after": rows, "expanded_tokenizer": cut}
    max_len = saved_max_seq_length(src)
    recipe = {"step": "koemb model prune", "model": str(src), "new_tokens": f"{keep} of {n_new}", "rows": rows}
    log.info("kept %d of %d new tokens: ids < %d, rows %d -> %d", keep, n_new, cut, rows_now, rows)
    return save_sentence_transformer(
        net, tokenizer, out, resolve_preset(src, None), max_seq_length=max_len, expansion=exp_out, recipe=recipe,
        title=f"{src.name}, {keep} of {n_new} new tokens", overwrite=overwrite,
    )
