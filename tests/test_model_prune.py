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
from koemb.model.prune import prune_model
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
