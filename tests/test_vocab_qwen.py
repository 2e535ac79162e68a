"""Tokenizer expansion invariants on the REAL Qwen3-Embedding tokenizer, with a donor trained here."""

from __future__ import annotations

import json
import re
import sysconfig
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from koemb.data.ko_sources import unlabeled_texts
from koemb.errors import UserError
from koemb.vocab.bpe_extend import complete_core
from koemb.vocab.canonical import CanonicalVocab, bl_to_bytes
from koemb.vocab.diff import DiffFilters, particle_split
from koemb.vocab.donor import train_donor
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from koemb.vocab.io import load_tokenizer

HANGUL = re.compile("[\uac00-\ud7a3]")


@pytest.fixture(scope="session")
def ko_docs(ko_data) -> list[str]:
    # ~1.6M characters: enough for thousands of merges, fast enough for CI.
    return unlabeled_texts(ko_data, ["nsmc", "chatbot", "korsts_train", "fairytales", "parakqc"])


@pytest.fixture(scope="session")
def base(qwen_dir):
    return load_tokenizer(qwen_dir)


@pytest.fixture(scope="session")
def donor_dir(base, ko_docs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("donor")
    train_donor(base, ko_docs, 12_000, out)
    return out


@pytest.fixture(scope="session")
def expanded(base, donor_dir, ko_docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("expanded") / "tok"
    res = expand_tokenizer(base, out, donor=str(donor_dir / "tokenizer.json"), docs=ko_docs,
                           settings=ExpansionSettings(max_new_tokens=3000))
    return res


@pytest.fixture(scope="session")
def hf_pair(qwen_dir, expanded):
    return AutoTokenizer.from_pretrained(str(qwen_dir)), AutoTokenizer.from_pretrained(str(expanded.out_dir))


def stdlib_text_lines(max_chars: int = 3_000_000) -> list[str]:
    """Megabytes of English prose and Python code, plus Chinese/Japanese from CPython's CJK texts."""
    std = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((std / "test" / "cjkencodings").glob("*-utf8.txt")) + sorted((std / "pydoc_data").glob("*.py")) + sorted(std.glob("*.py"))
    lines, size = [], 0
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.strip() and not HANGUL.search(line):
                lines.append(line)
                size += len(line)
        if size > max_chars:
            break
    return lines


def test_donor_is_like_base_and_deterministic(base, donor_dir, ko_docs, tmp_path):
    donor = json.loads((donor_dir / "tokenizer.json").read_text())
    assert donor["model"]["type"] == "BPE"
    assert donor["normalizer"] == base.json["normalizer"] and donor["pre_tokenizer"] == base.json["pre_tokenizer"]
    train_donor(base, ko_docs, 12_000, tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (donor_dir / "tokenizer.json").read_bytes()


def test_expansion_json_and_ids(expanded, base):
    info = json.loads((expanded.out_dir / "expansion.json").read_text())
    for key in ("base_vocab_size", "donor_vocab_size", "candidates", "added", "method", "first_new_id", "tokens"):
        assert key in info
    assert info["base_vocab_size"] == 151669 and info["first_new_id"] == 151669
    assert 2000 < info["added"] <= 3000
    ids = [t["id"] for t in info["tokens"]]
    assert ids == list(range(151669, 151669 + info["added"]))
    assert {t["kind"] for t in info["tokens"]} <= {"target", "intermediate", "learned"}
    # Every new token's text is Korean, possibly cut inside a syllable, never an empty or Latin piece.
    assert all(HANGUL.search(t["text"]) or "\\x" in t["text"] for t in info["tokens"])


def test_no_dead_rows_on_training_corpus(expanded):
    assert expanded.info["used_on_corpus"] >= 0.99


def held_out_token_ratio(base, out_dir, ko_data) -> float:
    """Tokens of the expanded tokenizer / the base's on 200 held-out book reviews."""
    held = unlabeled_texts(ko_data, ["book_reviews"])[:200]
    new = load_tokenizer(out_dir)
    n_base = sum(len(e.ids) for e in base.backend.encode_batch(held, add_special_tokens=False))
    n_new = sum(len(e.ids) for e in new.backend.encode_batch(held, add_special_tokens=False))
    return n_new / n_base


def test_korean_gets_shorter(base, expanded, ko_data):
    assert held_out_token_ratio(base, expanded.out_dir, ko_data) < 0.85


def test_targets_encode_to_their_own_id(expanded):
    new = load_tokenizer(expanded.out_dir).backend
    targets = [t for t in expanded.info["tokens"] if t["kind"] == "target"]
    assert len(targets) > 1000
    single = sum(1 for t in targets if new.encode(t["text"], add_special_tokens=False).ids == [t["id"]])
    assert single / len(targets) >= 0.95


def test_non_korean_text_keeps_base_ids(hf_pair):
    base, new = hf_pair
    lines = stdlib_text_lines()
    # Every emoji-block code point, 64 to a line, plus ZWJ sequences and flags.
    emoji = [chr(c) for c in range(0x1F300, 0x1FAFF) if unicodedata.category(chr(c)) == "So"]
    lines += [" ".join(emoji[i : i + 64]) for i in range(0, len(emoji), 64)]
    lines += ["emoji 👩‍👩‍👧‍👦 🇰🇷 ❤️‍🔥 🤖 ok", "日本語のテキストです。東京タワー", "中文文本测试，北京欢迎你",
              "ÅÄÖ café naïve façade", "\tTabs\tand  double  spaces\n\nnew lines", "Ελληνικά και русский текст"]
    assert sum(map(len, lines)) > 2_500_000
    b = base(lines, add_special_tokens=True)["input_ids"]
    n = new(lines, add_special_tokens=True)["input_ids"]
    changed = [lines[i] for i in range(len(lines)) if b[i] != n[i]]
    assert changed == []


def test_specials_eos_and_padding_as_in_base(hf_pair):
    base, new = hf_pair
    for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]:
        assert new.convert_tokens_to_ids(t) == base.convert_tokens_to_ids(t)
    assert (new.eos_token, new.pad_token, new.pad_token_id) == (base.eos_token, base.pad_token, base.pad_token_id)
    enc = new(["한국어 문장입니다", "짧다"])["input_ids"]
    assert all(ids[-1] == 151643 for ids in enc)  # EOS appended exactly once, by the post-processor
    assert all(ids.count(151643) == 1 for ids in enc)
    new.padding_side = base.padding_side = "left"
    padded = new(["한국어 문장입니다 아주 길게", "짧다"], padding=True)
    assert padded["input_ids"][1][0] == new.pad_token_id and padded["input_ids"][1][-1] == 151643
    assert padded["attention_mask"][1][0] == 0


@pytest.mark.parametrize(
    "text",
    ["안녕하세요, 세계!", "한국어와 English가 섞인 문장 123개", "  앞뒤  공백\t탭\n줄바꿈  ", "ㅋㅋㅋ ㅠㅠ 헐~~", "가나다라마바사아자차카타파하",
     "서울특별시 강남구 테헤란로 152 (역삼동)", "이모지 😀와 한글", "漢字 한자 混用"],
)
def test_round_trip_korean(hf_pair, text):
    _, new = hf_pair
    assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(list("가각간갇한국어의를을 \n\t"))), max_size=60))
def test_round_trip_random_unicode(hf_pair, text):
    _, new = hf_pair
    text = unicodedata.normalize("NFC", text)
    assert new.decode(new(text, add_special_tokens=False)["input_ids"]) == text


def test_diff_compares_canonical_text(base, donor_dir):
    from koemb.vocab.diff import vocab_diff

    donor = load_tokenizer(donor_dir / "tokenizer.json")
    res = vocab_diff(base, donor)
    base_texts = set(CanonicalVocab.of(base.backend).by_text)
    assert res.candidates and all(re.fullmatch(" ?[\uac00-\ud7a3]+", c.text) for c in res.candidates)
    assert not any(c.text in base_texts for c in res.candidates)
    # Byte-level raw strings are never candidates: they would be dead added tokens.
    assert not any("Ġ" in c.text or "ì" in c.text for c in res.candidates)
    assert res.stats["in_base"] > 1000  # most donor tokens (ASCII, common Hangul) exist in Qwen


def test_added_tokens_method_uses_real_text(base, donor_dir, ko_docs, tmp_path):
    res = expand_tokenizer(base, tmp_path / "t", donor=str(donor_dir / "tokenizer.json"), docs=ko_docs[:5000],
                           settings=ExpansionSettings(method="added-tokens", max_new_tokens=500))
    assert res.info["added"] == 500 and res.info["used_on_corpus"] > 0.9


def test_expand_is_deterministic(base, donor_dir, ko_docs, tmp_path):
    docs = ko_docs[:4000]
    for name in ("a", "b"):
        expand_tokenizer(base, tmp_path / name, donor=str(donor_dir / "tokenizer.json"), docs=docs,
                         settings=ExpansionSettings(method="bpe-donor", max_new_tokens=300))
    for f in ("tokenizer.json", "tokenizer_config.json", "expansion.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_donor_without_new_tokens_is_a_clear_error(base, qwen_dir, tmp_path):
    with pytest.raises(UserError, match="nothing to add"):
        expand_tokenizer(base, tmp_path / "x", donor=str(qwen_dir), settings=ExpansionSettings(method="added-tokens"))
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused(base, donor_dir, ko_docs, tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="--overwrite"):
        expand_tokenizer(base, tmp_path, donor=str(donor_dir / "tokenizer.json"), docs=ko_docs[:100])
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_bpe_split_particles(base, expanded, ko_docs, ko_data, tmp_path):
    """`split_particles` on byte-level BPE: merges that glue a particle onto a known word are skipped."""
    settings = ExpansionSettings(max_new_tokens=3000, filters=DiffFilters(split_particles=True))
    res = expand_tokenizer(base, tmp_path / "tok", docs=ko_docs, settings=settings)
    assert res.info["method"] == "bpe-continue" and res.info["rejected_particle_merges"] > 50

    base_texts = {complete_core(bl_to_bytes(t)) for t in base.backend.get_vocab(with_added_tokens=False)}

    def particle_merges(info) -> list[str]:
        texts = [t["text"] for t in info["tokens"]]
        known = base_texts | set(texts)
        return [t for t in texts if particle_split(t, known)]

    plain, split = particle_merges(expanded.info), particle_merges(res.info)
    assert len(plain) > 100
    # Left: merges made before their word became a token (checked at merge time): 11 of 214 here.
    assert len(split) < 0.1 * len(plain), split[:20]
    assert held_out_token_ratio(base, res.out_dir, ko_data) < 0.85
