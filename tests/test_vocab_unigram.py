"""Unigram (SentencePiece / XLM-R style) bases: pieces are appended with scores that make them win."""

from __future__ import annotations

import json
import re

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from koemb.data.ko_sources import unlabeled_texts
from koemb.vocab.canonical import CanonicalVocab
from koemb.vocab.diff import DiffFilters, particle_split
from koemb.vocab.donor import train_donor
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from koemb.vocab.io import load_tokenizer

from test_vocab_qwen import stdlib_text_lines

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


@pytest.fixture(scope="module")
def ko_docs(ko_data):
    return unlabeled_texts(ko_data, ["chatbot", "korsts_train", "parakqc"])


@pytest.fixture(scope="module")
def unigram_base(tmp_path_factory, ko_docs):
    """A small XLM-R-like tokenizer: NFKC, Metaspace, Unigram; mostly English, a little Korean."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    text = stdlib_text_lines(600_000) + ko_docs[:3000]
    tok.train_from_iterator(text, trainers.UnigramTrainer(vocab_size=5000, special_tokens=SPECIALS, unk_token="<unk>", show_progress=False))
    out = tmp_path_factory.mktemp("unigram-base")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>").save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def expanded(unigram_base, ko_docs, tmp_path_factory):
    base = load_tokenizer(unigram_base)
    donor_dir = tmp_path_factory.mktemp("unigram-donor")
    train_donor(base, ko_docs, 6000, donor_dir)
    donor = json.loads((donor_dir / "tokenizer.json").read_text())
    assert donor["model"]["type"] == "Unigram" and donor["pre_tokenizer"] == base.json["pre_tokenizer"]
    out = tmp_path_factory.mktemp("unigram-expanded") / "tok"
    return expand_tokenizer(base, out, donor=str(donor_dir / "tokenizer.json"), docs=ko_docs,
                            settings=ExpansionSettings(max_new_tokens=2000))


def test_unigram_expansion(expanded, unigram_base, ko_docs):
    info = expanded.info
    assert info["method"] == "unigram" and info["first_new_id"] == 5000 and info["added"] > 500
    base = AutoTokenizer.from_pretrained(str(unigram_base))
    new = AutoTokenizer.from_pretrained(str(expanded.out_dir))
    assert len(new) == 5000 + info["added"]
    # Targets encode to their own id (word-start pieces as words, inner pieces through the model).
    model = new.backend_tokenizer.model
    raw = [t["text"].replace(" ", "\u2581") for t in info["tokens"]]
    single = sum(1 for t, r in zip(info["tokens"], raw) if [x.id for x in model.tokenize(r)] == [t["id"]])
    assert single / len(raw) >= 0.95
    # Korean gets shorter; non-Korean is untouched; decoding matches the base's.
    sample = ko_docs[-2000:]
    assert sum(map(len, new(sample)["input_ids"])) < 0.85 * sum(map(len, base(sample)["input_ids"]))
    other = stdlib_text_lines(400_000)
    assert new(other)["input_ids"] == base(other)["input_ids"]
    norm = new.backend_tokenizer.normalizer
    compared = 0
    for text in sample[:400]:
        got = new.decode(new(text, add_special_tokens=False)["input_ids"])
        if "<unk>" in got:  # characters neither vocabulary has
            continue
        assert got == norm.normalize_str(text).strip()
        compared += 1
    assert compared > 200
    for s in SPECIALS:
        assert new.convert_tokens_to_ids(s) == base.convert_tokens_to_ids(s)
    assert expanded.info["used_on_corpus"] > 0.95
    assert all(re.fullmatch(" ?[\uac00-\ud7a3]+", t["text"]) for t in info["tokens"])


def test_wordpiece_expansion(tmp_path, ko_docs):
    """A BERT-style WordPiece base: new entries (word-initial and ##-continuation) are used."""
    from tokenizers import models as tm

    tok = Tokenizer(tm.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    text = stdlib_text_lines(300_000) + ko_docs[:2000]
    tok.train_from_iterator(text, trainers.WordPieceTrainer(vocab_size=4000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(tmp_path / "base")
    base = load_tokenizer(tmp_path / "base")
    train_donor(base, ko_docs, 6000, tmp_path / "donor")
    res = expand_tokenizer(base, tmp_path / "out", donor=str(tmp_path / "donor" / "tokenizer.json"), docs=ko_docs,
                           settings=ExpansionSettings(max_new_tokens=1500))
    assert res.info["method"] == "wordpiece" and res.info["added"] > 300
    b, n = AutoTokenizer.from_pretrained(str(tmp_path / "base")), AutoTokenizer.from_pretrained(str(res.out_dir))
    sample = ko_docs[-1500:]
    assert sum(map(len, n(sample)["input_ids"])) < 0.9 * sum(map(len, b(sample)["input_ids"]))
    other = stdlib_text_lines(200_000)
    assert n(other)["input_ids"] == b(other)["input_ids"]
    assert res.info["used_on_corpus"] > 0.9


def test_particle_split_rule():
    words = {" 정부", " 학교", " 사", " 주"}
    assert particle_split(" 정부의", words) == (" 정부", "의")
    assert particle_split(" 학교에서", words) == (" 학교", "에서")
    # A 1-syllable "word" plus a particle-looking syllable is a noun of its own (사과, 주도): kept.
    assert particle_split(" 사과", words) is None and particle_split(" 주도", words) is None
    # The word must be known, or dropping the merge would not leave it as one piece.
    assert particle_split(" 혐의로", words) is None
    assert particle_split(" 정부", words) is None


def test_split_particles_drops_word_plus_particle_merges(unigram_base, ko_docs, expanded, tmp_path):
    """With `split_particles`, no new piece is a known word + particle; such a word mostly encodes as word + particle."""
    base = load_tokenizer(unigram_base)
    donor = expanded.info["donor"]
    settings = ExpansionSettings(max_new_tokens=2000, filters=DiffFilters(split_particles=True))
    res = expand_tokenizer(base, tmp_path / "tok", donor=donor, docs=ko_docs, settings=settings)
    assert res.info["diff"]["rejected_particle"] > 20
    plain = {t["text"] for t in expanded.info["tokens"]}
    kept = {t["text"] for t in res.info["tokens"]}
    words = set(CanonicalVocab.of(base.backend).by_text) | plain
    dropped = [t for t in plain - kept if particle_split(t, words)]
    assert len(dropped) > 20
    assert not any(particle_split(t, words | kept) for t in kept)
    # A dropped merge now encodes as its word's piece + the particle's piece(s), never as one new row.
    new = AutoTokenizer.from_pretrained(str(res.out_dir))
    first = res.info["first_new_id"]
    checked = leads = 0
    for text in sorted(t for t in dropped if t.startswith(" ")):  # word-start: encoding the bare word reproduces it
        word, _ = particle_split(text, words)
        pieces = new.convert_ids_to_tokens(new(text.strip(), add_special_tokens=False)["input_ids"])
        assert len(pieces) >= 2
        if word in kept:  # the word got its own new row: it usually leads the segmentation
            checked += 1
            leads += pieces[0].replace("\u2581", " ") == word and new.convert_tokens_to_ids(pieces[0]) >= first
    # Unigram picks the best-scoring segmentation, so a few (' 있다는' -> ' 있' + '다는') split elsewhere.
    assert checked > 20 and leads >= 0.8 * checked, (leads, checked)
