"""Tokenizer statistics on text: how many tokens Korean takes, side by side across tokenizers."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass

from koemb.vocab.canonical import HANGUL_SYLLABLES, CanonicalVocab
from koemb.vocab.io import LoadedTokenizer

_HANGUL = re.compile(f"[{HANGUL_SYLLABLES}]")
_HANGUL_ONLY = re.compile(f"^ ?[{HANGUL_SYLLABLES}]+$")


@dataclass
class TextStats:
    documents: int
    tokens: int
    characters: int
    hangul_syllables: int
    words: int
    tokens_per_char: float
    tokens_per_hangul: float  # all tokens of the text / its Hangul syllables
    tokens_per_word: float
    encode_seconds: float


def text_stats(tok: LoadedTokenizer, docs: list[str]) -> TextStats:
    """Counts without special tokens (an appended EOS is not part of the text's cost)."""
    t0 = time.perf_counter()
    encs = tok.backend.encode_batch(docs, add_special_tokens=False)
    seconds = time.perf_counter() - t0
    n_tok = sum(len(e.ids) for e in encs)
    chars = sum(len(d) for d in docs)
    hangul = sum(len(_HANGUL.findall(d)) for d in docs)
    words = sum(len(d.split()) for d in docs)
    return TextStats(
        documents=len(docs),
        tokens=n_tok,
        characters=chars,
        hangul_syllables=hangul,
        words=words,
        tokens_per_char=n_tok / max(chars, 1),
        tokens_per_hangul=n_tok / max(hangul, 1),
        tokens_per_word=n_tok / max(words, 1),
        encode_seconds=seconds,
    )


def vocab_stats(tok: LoadedTokenizer, reference: CanonicalVocab | None = None) -> dict:
    cv = CanonicalVocab.of(tok.backend)
    row = {
        "vocab_size": len(tok),
        "complete_utf8_tokens": len(cv.by_text),
        "incomplete_utf8_tokens": cv.incomplete,
        "hangul_tokens": sum(1 for t in cv.by_text if _HANGUL.search(t)),
        "hangul_only_tokens": sum(1 for t in cv.by_text if _HANGUL_ONLY.match(t)),
    }
    if reference is not None:
        row["overlap_with_first"] = len(set(cv.by_text) & set(reference.by_text))
    return row


def analyze(tokenizers: list[LoadedTokenizer], docs: list[str]) -> list[dict]:
    """One row per tokenizer: vocabulary facts and cost on `docs`."""
    ref = CanonicalVocab.of(tokenizers[0].backend) if tokenizers else None
    rows = []
    for tok in tokenizers:
        row = {"tokenizer": tok.spec, **vocab_stats(tok, ref), **asdict(text_stats(tok, docs))}
        rows.append(row)
    return rows
