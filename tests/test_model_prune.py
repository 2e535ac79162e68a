"""`koemb model prune`: keep the first N new tokens of a trained expanded model.

On real tokenizers: a tiny Qwen3 with the REAL Qwen3-Embedding BPE (bpe-continue merges), and the REAL
multilingual-e5-small (Unigram, 35 spare rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from koemb.errors import UserError
from koemb.model.expand import expand_model
from koemb.model.prune import choose_kept, count_new_token_uses, prune_model
from koemb.model.tiny import build_tiny_qwen3
from koemb.resources import KO_SAMPLE
from koemb.vocab.donor import train_donor
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from koemb.vocab.io import load_tokenizer
from test_encoder import me5_small_dir

QWEN_BASE = 151669


def ko_docs(n: int = 300) -> list[str]:
    return [line for line in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()][:n]


@pytest.fixture(scope="module")
def qwen_expanded(tmp_path_factory, qwen_dir) -> Path:
    root = tmp_path_factory.mktemp("prune")
    tiny = build_tiny_qwen3(root / "tiny", qwen_dir)
    tok = root / "tok"
    expand_tokenizer(qwen_dir, tok, docs=ko_docs(), settings=ExpansionSettings(method="bpe-continue", max_new_tokens=60))
    return expand_model(tiny, tok, root / "expanded", init="random", seed=3)


def _ids(folder: Path, docs: list[str]) -> list[list[int]]:
    tok = AutoTokenizer.from_pretrained(str(folder))
    return [tok(d, add_special_tokens=False)["input_ids"] for d in docs]


def test_bpe_prune_keeps_a_consistent_prefix_and_its_rows(qwen_expanded, qwen_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    keep = 25
    cut = QWEN_BASE + keep
    out = prune_model(qwen_expanded, tmp_path / "pruned", keep)
    info = json.loads((out / "expansion.json").read_text(encoding="utf-8"))
    assert info["added"] == keep and [t["id"] for t in info["tokens"]] == list(range(QWEN_BASE, cut))
    assert info["pruned"]["from"] == 60 and info["pruned"]["removed"]["merges"] >= 60 - keep

    # The BPE stays consistent: every kept merge builds a kept token, and no id >= cut is emitted.
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        assert a + b in vocab and a in vocab and b in vocab
    docs = ko_docs(300)
    base, full, pruned = _ids(qwen_dir, docs), _ids(qwen_expanded, docs), _ids(out, docs)
    assert max(max(p) for p in pruned if p) < cut
    assert any(i >= QWEN_BASE for p in pruned for i in p)  # the kept tokens are still used
    n_base, n_full, n_pruned = (sum(map(len, x)) for x in (base, full, pruned))
    assert n_full < n_pruned < n_base
    # A text the full tokenizer wrote with kept ids only is tokenised the same after pruning.
    same = [k for k, f in enumerate(full) if all(i < cut for i in f)]
    assert same and all(pruned[k] == full[k] for k in same)

    # Kept rows bit-identical; the matrix keeps the base model's rows when the cut is below them.
    before, after = (load_file(str(f / "model.safetensors"))["embed_tokens.weight"] for f in (qwen_expanded, out))
    rows_before = info["rows"]["before"]
    assert after.shape[0] == max(cut, rows_before)
    assert torch.equal(after, before[: after.shape[0]])

    # Loads as a sentence-transformers model and embeds a text that kept its ids exactly as before.
    st_full = SentenceTransformer(str(qwen_expanded), device="cpu")
    st_pruned = SentenceTransformer(str(out), device="cpu")
    text = docs[same[0]]
    assert torch.allclose(st_pruned.encode([text], convert_to_tensor=True), st_full.encode([text], convert_to_tensor=True), atol=1e-5)


def test_unigram_prune_equals_a_smaller_expansion_and_keeps_spare_rows(tmp_path):
    base_dir = me5_small_dir()
    docs = ko_docs(300)
    base = load_tokenizer(base_dir)
    train_donor(base, docs, 2000, tmp_path / "donor")

    def expansion(n: int) -> Path:
        tok = tmp_path / f"tok{n}"
        expand_tokenizer(base, tok, donor=str(tmp_path / "donor"), docs=docs,
                         settings=ExpansionSettings(method="unigram", max_new_tokens=n))
        return tok

    model = expand_model(base_dir, expansion(50), tmp_path / "e5x", init="mean")
    out = prune_model(model, tmp_path / "e5p", 10)
    # The same pieces, scores and order as expanding with 10 new tokens in the first place.
    small = json.loads((expansion(10) / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    got = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert [p for p, _ in got] == [p for p, _ in small]
    assert [s for _, s in got] == pytest.approx([s for _, s in small], abs=1e-9)  # scores pass through a JSON round trip
    emb = "embeddings.word_embeddings.weight"
    before, after = (load_file(str(f / "model.safetensors"))[emb] for f in (model, out))
    assert after.shape[0] == 250037  # cut 250012 < the base's 250,037 rows: the spare rows stay
    assert torch.equal(after, before[:250037])
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == \
        json.loads((model / "sentence_bert_config.json").read_text())["max_seq_length"]


def test_prune_errors_name_the_problem(qwen_expanded, tmp_path, capsys):
    from koemb.cli import main

    with pytest.raises(UserError, match="--keep must be between 1 and 59"):
        prune_model(qwen_expanded, tmp_path / "a", 60)
    with pytest.raises(UserError, match="no expansion.json"):
        prune_model(tmp_path, tmp_path / "b", 5)
    assert not (tmp_path / "a").exists()
    out = tmp_path / "cli"
    assert main(["model", "prune", "--model", str(qwen_expanded), "--keep", "5", "--out", str(out)]) == 0
    assert "kept 5 of 60 new tokens" in capsys.readouterr().out
    # An existing output without --overwrite: a message naming the flag, exit 2, the folder untouched.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert main(["model", "prune", "--model", str(qwen_expanded), "--keep", "7", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(ko_docs(50)), encoding="utf-8")
    assert main(["model", "prune", "--model", str(qwen_expanded), "--keep", "5", "--out", str(tmp_path / "c"), "--corpus", str(docs)]) == 2
    assert "--corpus counts token uses: it needs --rank-by usage, balanced or fidelity" in capsys.readouterr().err
    assert main(["model", "prune", "--model", str(qwen_expanded), "--keep", "5", "--out", str(tmp_path / "d"), "--rank-by", "often"]) == 2
    assert "rank_by must be one of balanced, fidelity, order, usage; got 'often'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    ok = ["model", "prune", "--model", str(qwen_expanded), "--keep", "5", "--out", str(tmp_path / "e"), "--rank-by", "usage"]
    assert main([*ok, "--corpus", str(docs)]) == 0
    assert "kept 5 of 60 new tokens (usage)" in capsys.readouterr().out


def test_choose_kept_closes_bpe_merges_and_skips_what_does_not_fit():
    # 12 = 11 + base 3, 11 = 10 + base 4: keeping 12 needs 11 and 10 too.
    parts = {12: (11, 3), 11: (10, 4)}
    assert choose_kept([12, 11, 10, 13], 2, 10, parts) == [10, 11]  # 12 needs three ids: skipped
    assert choose_kept([12, 13, 11, 10], 3, 10, parts) == [10, 11, 12]
    assert choose_kept([13, 10, 12], 2, 10, {}) == [10, 13]  # Unigram/WordPiece: no parts


def test_prune_tokenizer_json_renumbers_and_refuses_what_it_cannot():
    from koemb.model.prune import prune_tokenizer_json

    uni = {"model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0], ["b", -2.0], ["c", -3.0]]},
           "added_tokens": [{"id": 4, "content": "<x>"}]}
    removed = prune_tokenizer_json(uni, 2, [3])  # keep 'c' only: it becomes id 2; the added token <x> goes
    assert uni["model"]["vocab"] == [["<unk>", 0.0], ["a", -1.0], ["c", -3.0]] and uni["added_tokens"] == []
    assert removed == {"model_vocab": 1, "merges": 0, "added_tokens": 1}
    wp = {"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "x": 1, "y": 2, "z": 3}}, "added_tokens": [{"id": 3, "content": "z"}]}
    prune_tokenizer_json(wp, 2, [3])
    assert wp["model"]["vocab"] == {"[UNK]": 0, "x": 1, "z": 2} and wp["added_tokens"] == [{"id": 2, "content": "z"}]
    bad = {"model": {"type": "Unigram", "vocab": [["<unk>", 0.0], ["a", -1.0]]}, "added_tokens": [{"id": 2, "content": "<x>"}]}
    with pytest.raises(UserError, match="new token id 2 is not a Unigram piece"):
        prune_tokenizer_json(bad, 1, [2])


def e5_expanded(tmp_path: Path, n: int) -> Path:
    """The real e5-small with `n` new Unigram tokens from a donor trained on the Korean sample, `mean` init."""
    base_dir = me5_small_dir()
    docs = ko_docs(300)
    train_donor(load_tokenizer(base_dir), docs, 2000, tmp_path / "donor")
    tok = tmp_path / "tok"
    expand_tokenizer(load_tokenizer(base_dir), tok, donor=str(tmp_path / "donor"), docs=docs,
                     settings=ExpansionSettings(method="unigram", max_new_tokens=n))
    return expand_model(base_dir, tok, tmp_path / "e5x", init="mean")


def test_usage_prune_keeps_the_most_used_tokens_with_their_rows(tmp_path):
    model = e5_expanded(tmp_path, 50)
    exp = json.loads((model / "expansion.json").read_text(encoding="utf-8"))
    first = exp["first_new_id"]
    texts = [line for line in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    full = AutoTokenizer.from_pretrained(str(model))
    counts = count_new_token_uses(full, texts, first)
    order = [t["id"] for t in exp["tokens"]]
    want = sorted(sorted(order, key=lambda i: (-counts[i], order.index(i)))[:10])
    assert want != order[:10]  # on this text the most used are not the first ten: the ranking matters

    out = prune_model(model, tmp_path / "e5u", 10, rank_by="usage", sources={"ko_sample": texts})
    info = json.loads((out / "expansion.json").read_text(encoding="utf-8"))
    by_id = {t["id"]: t["text"] for t in exp["tokens"]}
    assert [t["text"] for t in info["tokens"]] == [by_id[i] for i in want]
    assert [t["id"] for t in info["tokens"]] == list(range(first, first + 10))
    assert [t["uses"] for t in info["tokens"]] == [counts[i] for i in want]
    assert info["pruned"]["rank_by"] == "usage" and info["pruned"]["corpus"] == ["ko_sample"]

    # Each kept token's row moved with it, bit for bit; the base rows and the spare rows stay.
    emb = "embeddings.word_embeddings.weight"
    before, after = (load_file(str(f / "model.safetensors"))[emb] for f in (model, out))
    assert after.shape[0] == 250037 and torch.equal(after[:first], before[:first])
    for k, old in enumerate(want):
        assert torch.equal(after[first + k], before[old])
    assert torch.equal(after[first + 10 :], before[first + 10 : 250037])  # rows past the cut as they were

    # A text the full tokenizer wrote with kept tokens only reads the same pieces, and embeds the same.
    from sentence_transformers import SentenceTransformer

    pruned = AutoTokenizer.from_pretrained(str(out))
    full_ids = full(texts, add_special_tokens=False)["input_ids"]
    same = [k for k, ids in enumerate(full_ids) if any(i >= first for i in ids) and all(i < first or i in want for i in ids)]
    assert same
    for k in same[:20]:
        assert pruned.tokenize(texts[k]) == full.tokenize(texts[k])
    a, b = (SentenceTransformer(str(f), device="cpu").encode([texts[same[0]]], convert_to_tensor=True) for f in (model, out))
    assert torch.allclose(a, b, atol=1e-5)


def test_bpe_usage_prune_keeps_every_merge_part(qwen_expanded, qwen_dir, tmp_path):
    docs = ko_docs(300)
    out = prune_model(qwen_expanded, tmp_path / "u", 25, rank_by="usage", sources={"docs": docs})
    info = json.loads((out / "expansion.json").read_text(encoding="utf-8"))
    cut = QWEN_BASE + 25
    assert [t["id"] for t in info["tokens"]] == list(range(QWEN_BASE, cut))
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    assert max(vocab.values()) == cut - 1 and len([v for v in vocab.values() if v >= QWEN_BASE]) == 25
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        assert a + b in vocab and a in vocab and b in vocab
    ids = _ids(out, docs)
    assert max(max(p) for p in ids if p) < cut
    # The kept merges still shorten the text (for BPE the most used are close to merge order: a merge's
    # parts come with it; on this sample 23,197 tokens vs 23,185 for the first 25).
    assert sum(map(len, ids)) < sum(map(len, _ids(qwen_dir, docs)))


def test_usage_and_balanced_rankings_weigh_sources_differently():
    from collections import Counter

    from koemb.model.prune import RANKINGS

    exp = {"tokens": [{"id": 10, "corpus_count": 1}, {"id": 11, "corpus_count": 7}, {"id": 12, "corpus_count": 3}]}
    per_source = {"chat": Counter({10: 100, 11: 50}), "wiki": Counter({12: 5})}
    assert RANKINGS["usage"](exp, per_source) == [10, 11, 12]
    assert RANKINGS["balanced"](exp, per_source) == [12, 10, 11]  # wiki's one token is all of wiki's uses
    assert RANKINGS["usage"](exp, None) == [11, 12, 10]  # expansion.json's own counts
    assert RANKINGS["order"](exp, per_source) == [10, 11, 12]
    with pytest.raises(UserError, match="rank by balanced needs a corpus"):
        RANKINGS["balanced"]({"tokens": [{"id": 10}]}, None)


def test_fidelity_ranking_orders_by_pieces_saved_per_damage():
    from collections import Counter

    from koemb.model.prune import RANKINGS

    exp = {"tokens": [{"id": 10, "base_ids": [1, 2, 3]}, {"id": 11, "base_ids": [4, 5]},
                      {"id": 12, "base_ids": [6, 7]}, {"id": 13, "base_ids": [8, 9]}, {"id": 14, "base_ids": [1, 4]}]}
    per_source = {"a": Counter({10: 50, 11: 2, 12: 5, 14: 1})}
    # 10 saves 2 pieces at 0.01 (200 per unit), 11 saves 1 at 0.001 (1000), 14 saves 1 at 0.1 (10);
    # 12 and 13 were never measured: after every measured token, by use.
    damage = {10: 0.01, 11: 0.001, 14: 0.1}
    assert RANKINGS["fidelity"](exp, per_source, damage) == [11, 10, 14, 12, 13]
    with pytest.raises(UserError, match="rank by fidelity needs each new token's measured damage"):
        RANKINGS["fidelity"](exp, per_source)


def test_context_sampler_and_spell_out(qwen_dir):
    from koemb.model.fidelity import ContextSampler, spell_out, special_frame

    s = ContextSampler(first=100, per_token=2, width=4)
    s.add([1, 100, 2, 100, 100, 3, 101])  # chunks [1, 100, 2, 100] and [100, 3, 101]
    s.add([100, 5])  # 100 has its two occurrences already
    assert s.chunks == [([1, 100, 2, 100], [1, 3]), ([100, 3, 101], [2])]
    assert s.taken == {100: 2, 101: 1}
    pieces = {100: [7, 8], 101: [9, 9, 9]}
    assert spell_out([1, 100, 2, 101], pieces) == [1, 7, 8, 2, 9, 9, 9]
    assert spell_out([1, 100, 2, 101], pieces, keep=1) == [1, 100, 2, 9, 9, 9]
    # Where each real tokenizer puts its special tokens around a text.
    assert special_frame(AutoTokenizer.from_pretrained(str(me5_small_dir()))) == ([0], [2])
    assert special_frame(AutoTokenizer.from_pretrained(str(qwen_dir))) == ([], [151643])


def test_fidelity_prune_drops_the_token_whose_row_is_wrong(tmp_path):
    """On the real e5-small: one new token's row replaced by another word's row moves every chunk it is in far
    from the chunk's base pieces; fidelity ranks it last and prunes it, where usage keeps it (the most used)."""
    from safetensors.torch import save_file

    from koemb.model.fidelity import ContextSampler, new_token_damage

    model = e5_expanded(tmp_path, 30)
    exp = json.loads((model / "expansion.json").read_text(encoding="utf-8"))
    first = exp["first_new_id"]
    texts = ko_docs(300)
    counts = count_new_token_uses(AutoTokenizer.from_pretrained(str(model)), texts, first)
    worst = counts.most_common(1)[0][0]

    # Sabotage: the most used new token gets the row of an English word (no Korean piece means that).
    base_tok = AutoTokenizer.from_pretrained(str(me5_small_dir()))
    word = base_tok.convert_tokens_to_ids("▁computer")
    emb = "embeddings.word_embeddings.weight"
    weights = load_file(str(model / "model.safetensors"))
    weights[emb][worst] = weights[emb][word].clone()
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})

    sampler = ContextSampler(first)
    count_new_token_uses(AutoTokenizer.from_pretrained(str(model)), texts, first, sampler=sampler)
    assert all(0 < n <= 3 for n in sampler.taken.values()) and sampler.taken[worst] == 3
    pieces = {t["id"]: t["base_ids"] for t in exp["tokens"]}
    damage = new_token_damage(model, sampler, pieces)
    others = sorted(v for k, v in damage.items() if k != worst)
    assert damage[worst] > 3 * others[len(others) // 2]  # far above the median of the mean-initialised rows
    assert all(0 <= v < 1 for v in damage.values())

    keep = len(exp["tokens"]) - 1
    by_fidelity = json.loads((prune_model(model, tmp_path / "f", keep, rank_by="fidelity", sources={"ko": texts})
                              / "expansion.json").read_text(encoding="utf-8"))
    by_usage = json.loads((prune_model(model, tmp_path / "u", keep, rank_by="usage", sources={"ko": texts})
                           / "expansion.json").read_text(encoding="utf-8"))
    text_of = {t["id"]: t["text"] for t in exp["tokens"]}
    assert text_of[worst] not in [t["text"] for t in by_fidelity["tokens"]]
    assert text_of[worst] in [t["text"] for t in by_usage["tokens"]]
    assert by_fidelity["pruned"]["rank_by"] == "fidelity"
    assert all("damage" in t for t in by_fidelity["tokens"] if t["uses"] > 0)
    with pytest.raises(UserError, match="rank by fidelity needs a corpus"):
        prune_model(model, tmp_path / "g", keep, rank_by="fidelity")
