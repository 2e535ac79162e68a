"""Small, exact checks of the pieces the expansion is built on."""

from __future__ import annotations

from collections import Counter

import pytest
from tokenizers import Tokenizer

from koemb.vocab.bpe_extend import extend_bpe, hangul_fragment
from koemb.vocab.canonical import bl_to_bytes, bytes_to_bl, canonical, raw_form

GA = "가".encode()  # EA B0 80


@pytest.mark.parametrize(
    "data, ok",
    [
        ("가".encode(), True),
        (" 한국".encode(), True),
        (GA[:2], True),  # EA B0 can only start U+AC00..U+AFFF: Hangul
        (GA[1:] + "나".encode(), True),  # a cut syllable's tail, then a syllable
        (GA[1:], False),  # continuation bytes alone could be any script
        (b"\xea", False),  # EA also starts Yi and other non-Hangul characters
        (b"\xea\x80", False),  # U+A000..: Yi syllables
        (b"\xeb", True),  # EB starts only Hangul syllables
        ("a가".encode(), False),
        ("가a".encode(), False),
        ("中".encode(), False),
        ("ㄱ".encode(), False),  # compatibility jamo are not syllables
        (b" ", False),
        ("  가".encode(), False),  # only one word-start space
    ],
)
def test_hangul_fragment(data, ok):
    assert hangul_fragment(data) is ok


def test_canonical_forms():
    assert canonical("ĠíķľêµŃ", "byte_level") == " 한국"
    assert canonical(bytes_to_bl(GA[:2]), "byte_level") is None  # incomplete UTF-8
    assert canonical("\u2581한국", "metaspace") == " 한국"
    assert canonical("##국", "wordpiece") == "국" and canonical("한", "wordpiece") == " 한"
    for fam in ("byte_level", "metaspace", "wordpiece"):
        assert canonical(raw_form(" 한국어", fam), fam) == " 한국어"
    assert bl_to_bytes(bytes_to_bl(bytes(range(256)))) == bytes(range(256))


def test_extend_bpe_learns_most_frequent_pair_first(qwen_dir):
    tok = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    pre = tok.pre_tokenizer
    words = Counter()
    for text, n in [(" 가나다라", 50), (" 가나다마", 30), (" 바사", 5), (" hello", 1000)]:
        for w, _ in pre.pre_tokenize_str(text):
            words[w] += n
    ext = extend_bpe(tok, words, max_new_rows=100, min_frequency=2)
    texts = [bl_to_bytes(t).decode("utf-8", "replace") for t in ext.new_tokens]
    assert "hello" not in "".join(texts)  # never merges outside Hangul
    assert ext.usage  # the trained segmentation uses new tokens
    # The first merge is the most frequent allowed pair (shared by both 가나다 words: 80 occurrences).
    first = bl_to_bytes(ext.new_tokens[0]).decode("utf-8", "replace")
    assert first.strip() and first in " 가나다라"
