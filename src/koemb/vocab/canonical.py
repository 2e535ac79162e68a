"""One canonical text form for tokens of any tokenizer family.

Raw vocab strings are not comparable across families (`ĠíķľêµŃ` in byte-level BPE, `▁한국` in
SentencePiece, `한국` / `##국` in WordPiece). The canonical form is the token's text with a word
start written as a leading space: byte-level bytes decoded as UTF-8 (`None` when the token is an
incomplete UTF-8 sequence, e.g. 2 of a Hangul syllable's 3 bytes), `▁` -> space, WordPiece `##x`
-> `x` and a word-initial `x` -> ` x`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from tokenizers import Tokenizer

Family = Literal["byte_level", "metaspace", "wordpiece", "plain"]

HANGUL_SYLLABLES = "\uac00-\ud7a3"


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level alphabet: printable stand-in character -> byte value."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@lru_cache(maxsize=1)
def byte_encoder() -> dict[int, str]:
    return {b: c for c, b in byte_decoder().items()}


def bl_to_bytes(token: str) -> bytes:
    """Byte-level vocab string -> raw bytes (KeyError if a character is outside the alphabet)."""
    dec = byte_decoder()
    return bytes(dec[c] for c in token)


def bytes_to_bl(data: bytes) -> str:
    enc = byte_encoder()
    return "".join(enc[b] for b in data)


def family_of(tok_json: dict) -> Family:
    """Which canonicalisation applies, read from a tokenizer.json mapping."""
    text = json.dumps({k: tok_json.get(k) for k in ("pre_tokenizer", "decoder")})
    model_type = tok_json.get("model", {}).get("type")
    if '"ByteLevel"' in text:
        return "byte_level"
    if '"Metaspace"' in text or model_type == "Unigram":
        return "metaspace"
    if model_type == "WordPiece":
        return "wordpiece"
    return "plain"


def canonical(token: str, family: Family, wordpiece_prefix: str = "##") -> str | None:
    """Canonical text of one vocab string, or None when it is not complete UTF-8 text."""
    if family == "byte_level":
        try:
            return bl_to_bytes(token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            return None
    if family == "metaspace":
        return token.replace("\u2581", " ")
    if family == "wordpiece":
        return token[len(wordpiece_prefix):] if token.startswith(wordpiece_prefix) else " " + token
    return token


def raw_form(text: str, family: Family, wordpiece_prefix: str = "##") -> str:
    """Inverse of `canonical` for complete text: canonical text -> this family's vocab string."""
    if family == "byte_level":
        return bytes_to_bl(text.encode("utf-8"))
    if family == "metaspace":
        return text.replace(" ", "\u2581")
    if family == "wordpiece":
        return text[1:] if text.startswith(" ") else wordpiece_prefix + text
    return text


@dataclass
class CanonicalVocab:
    """A tokenizer's vocabulary in canonical form (special/added tokens excluded)."""

    family: Family
    by_text: dict[str, int]  # canonical text -> id (first id wins if two raw forms collide)
    incomplete: int  # tokens that are not complete UTF-8 (byte-level only)
    size: int  # all ids, added/special included

    @classmethod
    def of(cls, tok: Tokenizer) -> "CanonicalVocab":
        data = json.loads(tok.to_str())
        fam = family_of(data)
        prefix = data.get("model", {}).get("continuing_subword_prefix") or "##"
        special = {a["content"] for a in data.get("added_tokens", [])}
        by_text: dict[str, int] = {}
        incomplete = 0
        for raw, idx in sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1]):
            if raw in special:
                continue
            text = canonical(raw, fam, prefix)
            if text is None:
                incomplete += 1
                continue
            by_text.setdefault(text, idx)
        return cls(fam, by_text, incomplete, tok.get_vocab_size(with_added_tokens=True))


def char_class_regex(chars: str) -> re.Pattern[str]:
    """`^ ?[chars]+$`: a token made only of the given character class, with an optional word-start space."""
    return re.compile(f"^ ?[{chars}]+$")


def count_chars(text: str, chars: str = HANGUL_SYLLABLES) -> int:
    return len(re.findall(f"[{chars}]", text))
