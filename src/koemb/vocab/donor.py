"""Train a donor tokenizer on Korean text that shares the base's model type and text pipeline.

The donor is only useful if its tokens are comparable with the base's: same normaliser (NFC for
Qwen), same pre-tokeniser (Qwen's split regex + byte-level), same model family. Trainers are
registered per base model type.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from koemb.errors import UserError
from koemb.files import atomic_write_text
from koemb.faults import fault
from koemb.vocab.io import LoadedTokenizer

DonorTrainer = Callable[[LoadedTokenizer, list[str], int], Tokenizer]
DONOR_TRAINERS: dict[str, DonorTrainer] = {}


def donor_trainer(model_type: str) -> Callable[[DonorTrainer], DonorTrainer]:
    def deco(fn: DonorTrainer) -> DonorTrainer:
        DONOR_TRAINERS[model_type] = fn
        return fn

    return deco


def _copy_pipeline(base: Tokenizer, new: Tokenizer) -> None:
    # Same text pipeline as the base, so donor and base see identical pre-tokens.
    data = json.loads(base.to_str())
    for key in ("normalizer", "pre_tokenizer", "decoder"):
        if data.get(key) is not None:
            setattr(new, key, _component(key, data[key]))


def _component(key: str, spec: dict):
    # tokenizers has no public per-component from_json; round-trip through a minimal tokenizer.json.
    shell = Tokenizer(models.BPE())
    full = json.loads(shell.to_str())
    full[key] = spec
    return getattr(Tokenizer.from_str(json.dumps(full)), key)


def _specials(base: Tokenizer) -> list[str]:
    data = json.loads(base.to_str())
    return [a["content"] for a in data.get("added_tokens", []) if a.get("special")]


@donor_trainer("BPE")
def _train_bpe(base: LoadedTokenizer, docs: list[str], vocab_size: int) -> Tokenizer:
    bt = base.backend
    tok = Tokenizer(models.BPE(fuse_unk=False, byte_fallback=False))
    _copy_pipeline(bt, tok)
    is_byte_level = "ByteLevel" in json.dumps(json.loads(bt.to_str()).get("pre_tokenizer"))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=_specials(bt),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if is_byte_level else [],
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    if is_byte_level and tok.decoder is None:
        tok.decoder = decoders.ByteLevel()
    return tok


@donor_trainer("Unigram")
def _train_unigram(base: LoadedTokenizer, docs: list[str], vocab_size: int) -> Tokenizer:
    bt = base.backend
    data = json.loads(bt.to_str())
    specials = _specials(bt)
    unk_id = data["model"].get("unk_id")
    unk = data["model"]["vocab"][unk_id][0] if unk_id is not None else None
    tok = Tokenizer(models.Unigram())
    _copy_pipeline(bt, tok)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=specials, unk_token=unk, max_piece_length=16
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


@donor_trainer("WordPiece")
def _train_wordpiece(base: LoadedTokenizer, docs: list[str], vocab_size: int) -> Tokenizer:
    bt = base.backend
    data = json.loads(bt.to_str())
    prefix = data["model"].get("continuing_subword_prefix", "##")
    tok = Tokenizer(models.WordPiece(unk_token=data["model"].get("unk_token", "[UNK]"), continuing_subword_prefix=prefix))
    _copy_pipeline(bt, tok)
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, show_progress=False, special_tokens=_specials(bt), continuing_subword_prefix=prefix
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    return tok


def train_donor(base: LoadedTokenizer, docs: list[str], vocab_size: int, out_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Train a donor like `base` on `docs`; write `out_dir/tokenizer.json` when given.

    Deterministic: the same inputs give a byte-identical tokenizer.json (tested), with or
    without the trainers' thread pool.
    """
    model_type = json.loads(base.backend.to_str())["model"]["type"]
    trainer = DONOR_TRAINERS.get(model_type)
    if trainer is None:
        raise UserError(f"{base.spec}: no donor trainer for a {model_type} tokenizer; supported: {', '.join(DONOR_TRAINERS)}")
    if vocab_size < 300:
        raise UserError(f"--vocab-size {vocab_size}: too small for a donor (a byte-level alphabet alone is 256); use >= 1000")
    tok = trainer(base, docs, vocab_size)
    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=True))
        fault("during_donor")  # reliability tests: a kill with the donor folder half written
        atomic_write_text(
            out / "donor.json",
            json.dumps({"like": base.spec, "model_type": model_type, "vocab_size": tok.get_vocab_size(), "documents": len(docs)}, indent=2),
        )
    return tok
