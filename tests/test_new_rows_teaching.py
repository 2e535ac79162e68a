"""Teaching new rows: word-level distillation (words from character offsets, the same for a tokenizer
and its expansion; word vectors; the loss; a stage that uses it: tiny Qwen3 student with added Korean
words, the same tiny model on the BASE tokenizer as teacher) and `cover_new_tokens` (data that holds
every new token, not only the frequent ones)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from koemb.resources import KO_SAMPLE
from koemb.train.encode import EncodeSpec, embed_words, read_spec, tokenize, word_states
from koemb.train.loop import Teacher
from koemb.train.losses import word_distill
from tests.test_train import NEW_WORDS, run_stage, stage, tiny_expanded, write_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _texts(n: int = 12) -> list[str]:
    lines = [l.strip() for l in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if len(l.strip()) > 40]
    return [f"query: {l[:90]}" for l in lines[:n]]


def test_word_index_covers_each_word_for_a_tokenizer_and_its_expansion(qwen_dir):
    base = AutoTokenizer.from_pretrained(str(qwen_dir))
    expanded = AutoTokenizer.from_pretrained(str(qwen_dir))
    expanded.add_tokens(NEW_WORDS)  # added tokens split words before the pre-tokenizer: word ids would differ
    texts = _texts() + ["a  b\tc", "우리는 병원에 간다"]
    spec = EncodeSpec("mean", "right", 512)
    for tok in (base, expanded):
        enc = tok(texts, padding=True, return_offsets_mapping=True)
        ids = tokenize(tok, texts, spec, words=True)["word_ids"]
        for b, text in enumerate(texts):
            words = text.split()
            assert int(ids[b].max()) + 1 == len(words)
            for w, word in enumerate(words):
                spans = [enc["offset_mapping"][b][t] for t in range(ids.shape[1]) if ids[b, t] == w]
                # The word's tokens cover exactly the word (a leading-space token may start on the space).
                assert text[min(s for s, _ in spans) : max(e for _, e in spans)].strip() == word
    # ... although the two tokenise the text differently.
    assert not torch.equal(tokenize(expanded, texts, spec)["input_ids"], tokenize(base, texts, spec)["input_ids"])


def test_word_states_and_word_distill_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])  # (1, 4, 2)
    word_ids = torch.tensor([[-1, 0, 0, 1]])  # a special token, word 0 in two tokens, word 1
    vecs, n = word_states(hidden, word_ids, torch.ones(1, 4), max_length=8)
    assert torch.allclose(vecs, torch.tensor([[[1.5, 1.0], [9.0, 9.0]]])) and n.tolist() == [2]
    # A row that fills max_length may end inside a word: its last word does not count.
    assert word_states(hidden, word_ids, torch.ones(1, 4), max_length=4)[1].tolist() == [1]

    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (1, 3, 2)
    t = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2)
    # Words both sides have: min(3 complete, 2) = 2 -> mean of (1 - 1) and (1 - cos 45°).
    expected = (0.0 + (1 - 2**-0.5)) / 2
    assert word_distill(s, torch.tensor([3]), t, torch.tensor([2])).item() == pytest.approx(expected, abs=1e-6)
    # Counts limit the comparison: only word 0 -> 0.
    assert word_distill(s, torch.tensor([1]), t, torch.tensor([2])).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="word_distill"):
        word_distill(s, torch.tensor([1]), torch.zeros(2, 2, 2), torch.tensor([1, 1]))

    # One slice per hidden layer (B, K, W, D): the mean over layers of each layer's word term.
    s2 = torch.stack([s, torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])], dim=1)  # (1, 2, 3, 2)
    t2 = torch.stack([t, t], dim=1)  # (1, 2, 2, 2)
    layer2 = (1.0 + (1 - 2**-0.5)) / 2  # word 0: orthogonal; word 1: 45°
    got = word_distill(s2, torch.tensor([3]), t2, torch.tensor([2])).item()
    assert got == pytest.approx((expected + layer2) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="word_distill"):
        word_distill(s2, torch.tensor([3]), t2[:, :1], torch.tensor([2]))  # a different number of layers


def test_embed_words_reads_the_requested_hidden_layers(tmp_path, qwen_dir):
    from koemb.errors import UserError

    tiny = tiny_expanded(tmp_path / "tiny", qwen_dir)
    model = AutoModel.from_pretrained(str(tiny), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny))
    spec = read_spec(tiny, 48)
    enc = tokenize(tok, _texts(4), spec, words=True)
    with torch.no_grad():
        pooled, last, n = embed_words(model, enc, spec)
        pooled2, deep, n2 = embed_words(model, enc, spec, (0, -1))
        inputs = model.get_input_embeddings()(enc["input_ids"])  # hidden state 0: the rows themselves
    assert last.ndim == 3 and deep.shape == (last.shape[0], 2, *last.shape[1:])
    assert torch.allclose(deep[:, 1], last, atol=1e-5) and torch.allclose(pooled2, pooled, atol=1e-5) and torch.equal(n, n2)
    by_hand, _ = word_states(inputs, enc["word_ids"], enc["attention_mask"], spec.max_length)
    assert torch.allclose(deep[:, 0], by_hand, atol=1e-6)
    assert not torch.allclose(deep[:, 0], deep[:, 1], atol=1e-3)
    with pytest.raises(UserError, match=r"word_layers: \[99\] out of range"):
        embed_words(model, enc, spec, (99,))


@pytest.mark.parametrize("layers", [[-1], [1, -1]])
def test_a_word_level_stage_trains_the_new_rows_towards_the_teacher(tmp_path, qwen_dir, layers):
    tiny = tiny_expanded(tmp_path / "tiny", qwen_dir)
    pairs, _ = write_data(tmp_path)
    spec = read_spec(tiny, 48)
    base_tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    teacher = Teacher(AutoModel.from_pretrained(str(tiny), dtype=torch.float32).eval().requires_grad_(False), base_tok, spec)
    student_tok = AutoTokenizer.from_pretrained(str(tiny))
    texts = [l for l in _texts(16) if any(w in l for w in NEW_WORDS)]
    assert texts, "the Korean sample has the added words"

    def word_loss(model) -> float:
        with torch.no_grad():
            _, tw, tn = teacher.embed_words(texts, torch.device("cpu"), tuple(layers))
            _, sw, sn = embed_words(model, tokenize(student_tok, texts, spec, words=True), spec, tuple(layers))
        return word_distill(sw, sn, tw, tn).item()

    before = word_loss(AutoModel.from_pretrained(str(tiny), dtype=torch.float32))
    cfg = stage([pairs], steps=12, lr=3e-2, objective={"distill": {"words": 1.0, "word_layers": layers}})
    model, _ = run_stage(tiny, cfg, tmp_path / "ckpt", teacher=teacher)
    after = word_loss(model)
    assert after < before
    records = [json.loads(l) for l in (tmp_path / "logs" / "train.jsonl").read_text().splitlines()]
    assert all("loss_distill" in r for r in records if "step" in r)

    with pytest.raises(ValueError, match="objective.distill.words needs the direct path"):
        stage([pairs], grad_cache_chunk=2, objective={"distill": {"words": 1.0}})
    with pytest.raises(ValueError, match="word_layers"):
        stage([pairs], objective={"distill": {"words": 1.0, "word_layers": []}})


def test_cover_new_tokens_keeps_the_examples_that_bring_under_seen_new_tokens(tmp_path, qwen_dir):
    from collections import Counter

    from koemb.errors import UserError
    from koemb.train.data import Example, cover_new_tokens
    from koemb.train.loop import load_sources

    tiny = tiny_expanded(tmp_path / "tiny", qwen_dir)
    tok = AutoTokenizer.from_pretrained(str(tiny))
    first_new = len(AutoTokenizer.from_pretrained(str(qwen_dir)))
    lines = [l.strip() for l in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if l.strip()]
    examples = [Example(text=l) for l in lines] + [Example(query="영어 only: hello", positive="world")]

    def new_counts(exs):
        c = Counter()
        for e in exs:
            texts = [e.text] if e.text is not None else [e.query, e.positive]
            for row in tok(texts, truncation=True, max_length=64)["input_ids"]:
                c.update(t for t in row if t >= first_new)
        return c

    everywhere = new_counts(examples)
    assert len(everywhere) >= 4, "the sample holds several of the added words"
    kept, stats = cover_new_tokens(examples, tok, first_new, 2, 64)
    got = new_counts(kept)
    assert all(got[t] >= min(2, n) for t, n in everywhere.items())  # each new token as often as asked (or as it exists)
    assert 0 < len(kept) < sum(1 for e in examples if new_counts([e]))  # ... from fewer examples than hold one
    assert all(new_counts([e]) for e in kept)  # an example without a new token is never kept
    assert stats == {"examples": len(examples), "kept": len(kept), "new_tokens_present": len(everywhere),
                     "covered": sum(1 for n in got.values() if n >= 2)}

    data = tmp_path / "text.jsonl"
    data.write_text("\n".join(json.dumps({"text": l}, ensure_ascii=False) for l in lines) + "\n", encoding="utf-8")
    cfg = stage([data], objective={"distill": {}})
    cfg.data[0].cover_new_tokens = 2
    assert len(load_sources(cfg, tok, first_new, 64)[0].examples) == len(cover_new_tokens(examples[:-1], tok, first_new, 2, 64)[0])
    with pytest.raises(UserError, match=r"text\.jsonl: cover_new_tokens needs an expanded model"):
        load_sources(cfg)


def test_cover_new_tokens_is_refused_on_the_tokenizer_corpus():
    from koemb.config import validate_model
    from koemb.errors import UserError
    from koemb.train.pipeline import TokenizerConfig

    with pytest.raises(UserError, match=r"corpus\.0\.cover_new_tokens: only a stage's data"):
        validate_model(TokenizerConfig, {"donor": "d", "corpus": [{"path": "a.jsonl", "cover_new_tokens": 2}]}, "cfg.yaml")
