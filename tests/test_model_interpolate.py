"""`koemb model interpolate` (WiSE-FT): anchor + alpha * (trained - anchor), weight by weight.

On real models: a tiny Qwen3 with the REAL Qwen3-Embedding BPE, and the REAL multilingual-e5-small, whose 35
spare rows become new tokens' rows (they must not be mixed with the base's untrained spare rows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_encoder import me5_small_dir
from test_model_prune import ko_docs

from koemb.errors import UserError
from koemb.model.expand import expand_model
from koemb.model.interpolate import interpolate_models, interpolate_state
from koemb.model.tiny import build_tiny_qwen3
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer

QWEN_BASE = 151669
EMB = "embed_tokens.weight"


def test_interpolate_state_mixes_weights_and_only_the_shared_rows():
    anchor = {"w": torch.zeros(2, 3), EMB: torch.zeros(4, 2), "ids": torch.arange(3)}
    trained = {"w": torch.ones(2, 3), EMB: torch.full((6, 2), 2.0), "ids": torch.arange(3), "extra": torch.ones(1)}
    out, kept = interpolate_state(anchor, trained, 0.25, embedding_key=EMB, shared_rows=3)
    assert torch.allclose(out["w"], torch.full((2, 3), 0.25))
    assert torch.allclose(out[EMB][:3], torch.full((3, 2), 0.5))  # 0 + 0.25 * (2 - 0)
    assert torch.equal(out[EMB][3:], trained[EMB][3:])  # row 3 exists in the anchor but is not a shared id
    assert torch.equal(out["ids"], trained["ids"]) and kept == ["extra"]
    assert torch.equal(trained["w"], torch.ones(2, 3))  # inputs untouched
    for a in (0.0, 1.0):
        ends, _ = interpolate_state(anchor, trained, a, embedding_key=EMB, shared_rows=3)
        assert torch.equal(ends["w"], (anchor if a == 0 else trained)["w"])
    with pytest.raises(UserError, match=r"w: anchor \(2, 3\) vs model \(3, 3\)"):
        interpolate_state(anchor, {**trained, "w": torch.ones(3, 3)}, 0.5, embedding_key=EMB, shared_rows=3)


@pytest.fixture(scope="module")
def qwen_pair(tmp_path_factory, qwen_dir) -> tuple[Path, Path]:
    """(tiny base, expanded copy whose every weight moved: a stand-in for a trained stage)."""
    root = tmp_path_factory.mktemp("interp")
    tiny = build_tiny_qwen3(root / "tiny", qwen_dir)
    tok = root / "tok"
    expand_tokenizer(qwen_dir, tok, docs=ko_docs(), settings=ExpansionSettings(method="bpe-continue", max_new_tokens=40))
    trained = expand_model(tiny, tok, root / "trained", init="random", seed=3)
    w = load_file(str(trained / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    moved = {k: (v + 0.05 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v for k, v in w.items()}
    save_file(moved, str(trained / "model.safetensors"), metadata={"format": "pt"})
    return tiny, trained


def test_qwen3_midpoint_and_the_ends_encode_like_their_models(qwen_pair, tmp_path):
    from sentence_transformers import SentenceTransformer

    tiny, trained = qwen_pair
    out = interpolate_models(tiny, trained, tmp_path / "mid", 0.5)
    a, t, m = (load_file(str(f / "model.safetensors")) for f in (tiny, trained, out))
    for k in t:
        if k == EMB:
            continue
        assert torch.allclose(m[k], (a[k] + t[k]) / 2, atol=1e-6), k
    rows = a[EMB].shape[0]  # the tiny base's tokenizer has QWEN_BASE ids; its matrix may be padded
    assert torch.allclose(m[EMB][:QWEN_BASE], (a[EMB][:QWEN_BASE] + t[EMB][:QWEN_BASE]) / 2, atol=1e-6)
    assert torch.equal(m[EMB][QWEN_BASE:], t[EMB][QWEN_BASE:]) and m[EMB].shape == t[EMB].shape and rows <= t[EMB].shape[0]
    info = json.loads((out / "expansion.json").read_text(encoding="utf-8"))
    assert info["interpolated"] == {"anchor": str(tiny), "alpha": 0.5, "shared_ids": QWEN_BASE}

    # alpha 0 on text the base tokenizer also writes (no new ids): the base model's embeddings; alpha 1: the trained.
    en = ["The cat sat on the mat.", "Embeddings map text to vectors."]
    zero, one = interpolate_models(tiny, trained, tmp_path / "zero", 0.0), interpolate_models(tiny, trained, tmp_path / "one", 1.0)
    enc = {name: SentenceTransformer(str(f), device="cpu").encode(en, convert_to_tensor=True) for name, f in
           (("base", tiny), ("trained", trained), ("zero", zero), ("one", one), ("mid", out))}
    assert torch.allclose(enc["zero"], enc["base"], atol=1e-5)
    assert torch.allclose(enc["one"], enc["trained"], atol=1e-5)
    assert not torch.allclose(enc["mid"], enc["base"], atol=1e-3) and not torch.allclose(enc["mid"], enc["trained"], atol=1e-3)


def test_e5_spare_rows_reused_by_new_tokens_stay_as_trained(tmp_path):
    from koemb.vocab.donor import train_donor
    from koemb.vocab.io import load_tokenizer

    base_dir = me5_small_dir()
    docs = ko_docs(300)
    train_donor(load_tokenizer(base_dir), docs, 2000, tmp_path / "donor")
    tok = tmp_path / "tok"
    expand_tokenizer(base_dir, tok, donor=str(tmp_path / "donor"), docs=docs,
                     settings=ExpansionSettings(method="unigram", max_new_tokens=10))
    model = expand_model(base_dir, tok, tmp_path / "e5x", init="mean")
    out = interpolate_models(base_dir, model, tmp_path / "e5i", 0.5)
    emb = "embeddings.word_embeddings.weight"
    a, t, m = (load_file(str(f / "model.safetensors"))[emb] for f in (base_dir, model, out))
    assert a.shape[0] == t.shape[0] == m.shape[0] == 250037  # the 10 new tokens reuse spare rows
    assert torch.equal(m[250002:], t[250002:])  # the new tokens' rows, not mixed with the base's untrained spare rows
    assert torch.allclose(m[:250002], t[:250002])  # expansion keeps the old rows: the midpoint is the same rows


def test_interpolate_errors_name_the_problem(qwen_pair, qwen_dir, tmp_path, capsys):
    from koemb.cli import main

    tiny, trained = qwen_pair
    with pytest.raises(UserError, match=r"--alpha must be between 0 \(the anchor\) and 1"):
        interpolate_models(tiny, trained, tmp_path / "a", 1.5)
    assert not (tmp_path / "a").exists()
    # Another expansion of the same base: its new ids name other tokens.
    tok = tmp_path / "tok"
    expand_tokenizer(qwen_dir, tok, docs=ko_docs(600)[300:], settings=ExpansionSettings(method="bpe-continue", max_new_tokens=40))
    other = expand_model(tiny, tok, tmp_path / "other", init="random", seed=3)
    with pytest.raises(UserError, match=r"its tokenizer differs from .* at \d+ of the 151709 shared ids \(first: id 1516"):
        interpolate_models(other, trained, tmp_path / "b", 0.5)
    out = tmp_path / "cli"
    assert main(["model", "interpolate", "--model", str(trained), "--anchor", str(tiny), "--alpha", "0.3", "--out", str(out)]) == 0
    assert "at alpha 0.3" in capsys.readouterr().out
    assert main(["model", "interpolate", "--model", str(trained), "--anchor", str(tiny), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_pickle_only_anchor_needs_allow_pickle(qwen_pair, tmp_path):
    import shutil

    tiny, trained = qwen_pair
    pick = tmp_path / "pickled-base"
    shutil.copytree(tiny, pick)
    torch.save(load_file(str(pick / "model.safetensors")), pick / "pytorch_model.bin")
    (pick / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"weights only as pickle \(pytorch_model\.bin\).*--allow-pickle"):
        interpolate_models(pick, trained, tmp_path / "refused", 0.5)
    out = interpolate_models(pick, trained, tmp_path / "allowed", 0.5, allow_pickle=True)
    ref = interpolate_models(tiny, trained, tmp_path / "ref", 0.5)
    got, want = load_file(str(out / "model.safetensors")), load_file(str(ref / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


@pytest.mark.parametrize("rank_by", ["usage", "balanced"])
def test_a_model_pruned_by_use_mixes_its_moved_rows_with_the_same_tokens_of_an_earlier_stage(qwen_pair, qwen_dir, tmp_path, rank_by):
    from koemb.model.prune import prune_model

    tiny, trained = qwen_pair
    # The earlier stage: the same expansion before the weights moved (all 40 new tokens, other rows).
    earlier = expand_model(tiny, trained.parent / "tok", tmp_path / "earlier", init="random", seed=3)
    pruned = prune_model(trained, tmp_path / "pruned", 15, rank_by=rank_by, sources={"a": ko_docs(450)[300:], "b": ko_docs(600)[450:]})
    info = json.loads((pruned / "expansion.json").read_text(encoding="utf-8"))
    moved_ids = [t["id"] for t in info["tokens"]]
    exp_t = json.loads((trained / "expansion.json").read_text(encoding="utf-8"))
    id_in = {t["text"]: t["id"] for t in exp_t["tokens"]}  # the same ids in `earlier` and `trained`
    assert [id_in[t["text"]] for t in info["tokens"]] != moved_ids  # the ranking by use renumbered them

    out = interpolate_models(earlier, pruned, tmp_path / "mid", 0.5)
    e, p, m = (load_file(str(f / "model.safetensors"))[EMB] for f in (earlier, pruned, out))
    for t in info["tokens"]:
        assert torch.allclose(m[t["id"]], (e[id_in[t["text"]]] + p[t["id"]]) / 2, atol=1e-6), t["text"]
    assert torch.allclose(m[:QWEN_BASE], (e[:QWEN_BASE] + p[:QWEN_BASE]) / 2, atol=1e-6)
    got = json.loads((out / "expansion.json").read_text(encoding="utf-8"))["interpolated"]
    assert got["shared_ids"] < QWEN_BASE + 15 and got["shared_ids"] + got["matched_new_tokens"] == QWEN_BASE + 15
    # An anchor from another expansion lacks some of the kept tokens: named, nothing written.
    tok = tmp_path / "tok"
    expand_tokenizer(qwen_dir, tok, docs=ko_docs(900)[600:], settings=ExpansionSettings(method="bpe-continue", max_new_tokens=40))
    other = expand_model(tiny, tok, tmp_path / "other", init="random", seed=3)
    with pytest.raises(UserError, match=r"lacks \d+ of the new tokens .* kept"):
        interpolate_models(other, pruned, tmp_path / "refused", 0.5)
    assert not (tmp_path / "refused").exists()
