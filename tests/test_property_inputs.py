"""Property tests on hostile text: invalid UTF-8 (encoded surrogates, overlong forms, stray continuation
bytes), control characters, combining marks and huge lines, into the corpus readers and the BPE expansion."""

from __future__ import annotations

import gzip
import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from koemb.data.corpus import ReadStats, iter_documents
from koemb.vocab.bpe_extend import extend_bpe, hangul_word_counts

# Byte sequences that are NOT valid UTF-8 and that naive decoders mishandle.
BAD_BYTES = [b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xc0\xaf", b"\xe0\x80\xaf", b"\x80", b"\xbf\xbf", b"\xf8\x88\x80\x80\x80", b"\xff", b"\xea\xb0"]
HOSTILE = st.one_of(
    st.characters(codec="utf-8", exclude_characters="\n\r"),
    st.characters(categories=["Cc", "Cf", "Mn", "Me", "Zs"], exclude_characters="\n\r"),  # controls, format, combining, spaces
    st.sampled_from([chr(c) for c in range(0x1100, 0x1113)] + [chr(c) for c in range(0x1161, 0x1176)]),  # conjoining jamo
    st.sampled_from(list("가각간한국어의를을는다 ")),
)
LINE = st.one_of(
    st.text(alphabet=HOSTILE, max_size=200).map(lambda t: ("ok", t)),
    st.tuples(st.text(alphabet=HOSTILE, max_size=20), st.sampled_from(BAD_BYTES), st.text(alphabet=HOSTILE, max_size=20)).map(lambda x: ("bad", x)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(LINE, max_size=25), st.sampled_from(["c.txt", "c.txt.gz", "c.jsonl"]))
def test_invalid_utf8_lines_are_skipped_counted_and_valid_ones_read_back(tmp_path_factory, lines, name):
    path = tmp_path_factory.mktemp("p") / name
    raw = b""
    want, bad_lines = [], []
    for i, (kind, v) in enumerate(lines, start=1):
        if kind == "ok":
            raw += (json.dumps({"text": v}) if name.endswith(".jsonl") else v).encode("utf-8") + b"\n"
            if v.strip():
                want.append(v)
        else:
            a, b, c = v
            body = a.encode("utf-8") + b + c.encode("utf-8")
            raw += (b'{"text": "' + body + b'"}' if name.endswith(".jsonl") else body) + b"\n"
            bad_lines.append(f"{path}:{i}")
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    stats = ReadStats()
    got = list(iter_documents([path], stats))
    assert got == want
    assert stats.skipped_bad_utf8 == len(bad_lines) and stats.first_bad == bad_lines[: len(stats.first_bad)]


@pytest.fixture(scope="module")
def base_bpe(qwen_dir) -> Tokenizer:
    """A small byte-level BPE with Qwen's own normaliser and pre-tokeniser (fast to extend)."""
    from tokenizers import models, pre_tokenizers, trainers

    qwen = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer, tok.decoder = qwen.normalizer, qwen.pre_tokenizer, qwen.decoder
    text = ["the quick brown fox", "def f(x): return x", "안녕하세요 반갑습니다 한국어 문장", "가나다라마바사"] * 50
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def extended(base: Tokenizer, texts: list[str]) -> Tokenizer:
    ext = extend_bpe(base, hangul_word_counts(base, texts), max_new_rows=40, min_frequency=1)
    data = json.loads(base.to_str())
    for t in ext.new_tokens:
        data["model"]["vocab"][t] = len(data["model"]["vocab"])
    data["model"]["merges"].extend([list(m) for m in ext.merges])
    return Tokenizer.from_str(json.dumps(data))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=HOSTILE, max_size=60), min_size=1, max_size=10))
def test_expansion_on_controls_combining_marks_and_jamo_round_trips(base_bpe, texts):
    texts = [unicodedata.normalize("NFC", t) for t in texts]  # what the readers hand on: Qwen normalises to NFC
    new = extended(base_bpe, texts)
    for t in texts:
        assert new.decode(new.encode(t).ids) == t


def test_expansion_on_a_huge_line(base_bpe):
    huge = ("한국어 문장을 길게 " * 40_000) + "\x00\u200b\u0301끝"  # ~400k characters on one line
    new = extended(base_bpe, [huge, "반갑습니다 한국어"])
    ids = new.encode(huge).ids
    assert new.decode(ids) == huge and len(ids) < len(base_bpe.encode(huge).ids)
