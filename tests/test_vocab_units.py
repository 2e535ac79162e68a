"""Small, exact checks of the pieces the expansion is built on."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
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


@pytest.fixture(scope="module")
def small_bytelevel(qwen_dir):
    """A small byte-level BPE with Qwen's own text pipeline, trained on a little English and Korean."""
    import json as _json

    from tokenizers import models, trainers

    qwen = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer, tok.decoder = qwen.normalizer, qwen.pre_tokenizer, qwen.decoder
    from tokenizers import pre_tokenizers

    text = ["the quick brown fox jumps over the lazy dog", "def f(x): return x * 2", "안녕하세요 반갑습니다 한국어 문장", "가나다라마바사"] * 50
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return _json.loads(tok.to_str())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("가각간한국어의를을는다 "))), max_size=80),
                min_size=1, max_size=12))
def test_extension_on_random_unicode_keeps_round_trip(small_bytelevel, texts):
    """Random Unicode as the expansion corpus: no crash, text round-trips, text without Hangul keeps its ids."""
    import json as _json
    import re
    import unicodedata

    from koemb.vocab.bpe_extend import hangul_word_counts

    base = Tokenizer.from_str(_json.dumps(small_bytelevel))
    texts = [unicodedata.normalize("NFC", t) for t in texts]
    counts = hangul_word_counts(base, texts)
    ext = extend_bpe(base, counts, max_new_rows=40, min_frequency=1)
    data = _json.loads(_json.dumps(small_bytelevel))
    next_id = base.get_vocab_size()
    for t in ext.new_tokens:
        data["model"]["vocab"][t] = next_id
        next_id += 1
    data["model"]["merges"].extend([list(m) for m in ext.merges])
    new = Tokenizer.from_str(_json.dumps(data))
    for t in texts:
        assert new.decode(new.encode(t).ids) == t
        if not re.search("[\uac00-\ud7a3]", t):
            assert new.encode(t).ids == base.encode(t).ids
