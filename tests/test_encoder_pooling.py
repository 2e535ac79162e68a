"""Pooling and presets: hand-made tensors and the real model folders' files."""

from __future__ import annotations

import json

import pytest
import torch

from koemb.errors import UserError
from koemb.model.pooling import pool
from koemb.model.presets import PRESETS, detect_preset, get_preset, resolve_preset


def _pad(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(r.shape[0] for r in rows)
    D = rows[0].shape[1]
    h = torch.full((len(rows), T, D), 99.0)  # padding states are garbage on purpose
    m = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        n = r.shape[0]
        sl = slice(T - n, T) if side == "left" else slice(0, n)
        h[i, sl] = r
        m[i, sl] = 1
    return h, m


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_modes_ignore_padding_on_either_side(side):
    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(n, 4, generator=g) for n in (1, 3, 5)]
    h, m = _pad(rows, side)
    torch.testing.assert_close(pool(h, m, "lasttoken"), torch.stack([r[-1] for r in rows]))
    torch.testing.assert_close(pool(h, m, "cls"), torch.stack([r[0] for r in rows]))
    torch.testing.assert_close(pool(h, m, "mean"), torch.stack([r.mean(0) for r in rows]))


def test_pool_is_differentiable_and_zero_on_padding():
    h, m = _pad([torch.randn(2, 3), torch.randn(4, 3)], "left")
    h.requires_grad_(True)
    pool(h, m, "mean").sum().backward()
    assert h.grad is not None
    assert torch.all(h.grad[m == 0] == 0) and torch.all(h.grad[m == 1] != 0)


def test_pool_rejects_unknown_mode_and_bad_shapes():
    with pytest.raises(ValueError, match="max"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2), "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="B, T"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 3), "mean")


def test_qwen3_prompts_follow_the_model_card():
    p = get_preset("qwen3-embedding")
    assert p.pooling == "lasttoken" and p.padding_side == "left" and p.normalize
    assert p.format_query("서울은?") == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:서울은?"
    )
    assert p.format_query("q", task="Find it") == "Instruct: Find it\nQuery:q"
    assert p.format_document("문서") == "문서"
    assert p.format_symmetric("문장") == "Instruct: Retrieve semantically similar text.\nQuery:문장"


def test_e5_prompts_ignore_instructions():
    p = get_preset("e5")
    assert p.pooling == "mean" and not p.uses_instruction
    assert p.format_query("q", task="ignored") == "query: q"
    assert p.format_symmetric("s", task="ignored") == "query: s"
    assert p.format_document("d") == "passage: d"


def test_detect_from_real_qwen_folder(qwen_dir):
    assert detect_preset(qwen_dir).name == "qwen3-embedding"
    assert detect_preset("Qwen/Qwen3-Embedding-0.6B").name == "qwen3-embedding"
    assert detect_preset("intfloat/multilingual-e5-small").name == "e5"


def test_detect_e5_and_generic_st_folder(tmp_path, qwen_dir):
    e5 = tmp_path / "e5"
    (e5 / "1_Pooling").mkdir(parents=True)
    (e5 / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (e5 / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (e5 / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "query: ", "document": "passage: "}}))
    (e5 / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    p = detect_preset(e5)
    assert p.name == "e5" and p.max_length == 256

    (e5 / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "Q: "}}))
    (e5 / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    p = detect_preset(e5)
    assert (p.name, p.pooling, p.padding_side, p.normalize, p.query_prompt) == ("sentence-transformers", "cls", "right", False, "Q: ")

    (e5 / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(UserError, match="pooling_mode_max_tokens"):
        detect_preset(e5)


def test_unknown_preset_and_bad_override_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="known presets"):
        get_preset("nope")
    with pytest.raises(UserError, match="max_length"):
        resolve_preset("x", name="e5", overrides={"max_length": 0})
    with pytest.raises(UserError, match="--preset"):
        detect_preset(tmp_path)
    assert resolve_preset("x", name="e5", overrides={"max_length": 128}).max_length == 128
    assert set(PRESETS) >= {"qwen3-embedding", "e5"}
