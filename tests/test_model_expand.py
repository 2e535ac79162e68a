"""`koemb model expand` on a tiny Qwen3 with the REAL Qwen3-Embedding tokenizer and a real expanded BPE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from koemb.errors import UserError
from koemb.model.expand import expand_embeddings, expand_model
from koemb.model.init_methods import INIT_METHODS, row_scale
from koemb.model.tiny import build_tiny_qwen3
from koemb.vocab.canonical import bl_to_bytes
from koemb.vocab.io import load_tokenizer, save_tokenizer, with_specials_in_vocab

KO_WORDS = [" 한국어", " 대한민국", " 서울특별시", " 안녕하세요", " 감사합니다"]


def _canonical(raw: str) -> str | None:
    try:
        return bl_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def build_expanded_tokenizer(qwen_dir: Path, out: Path, words: list[str] = KO_WORDS) -> Path:
    """Append BPE merges that turn each word's base segmentation into one token (left to right).

    A stand-in for `koemb vocab expand`: the same kind of tokenizer (vocab + merges appended, the
    26 added tokens pinned at their ids) with an `expansion.json` in the documented format.
    """
    base = load_tokenizer(qwen_dir)
    tj = with_specials_in_vocab(base.json)
    vocab, merges = tj["model"]["vocab"], tj["model"]["merges"]
    first = len(base)
    tokens = []
    for word in words:
        pieces = [base.backend.id_to_token(i) for i in base.backend.encode(word, add_special_tokens=False).ids]
        assert len(pieces) >= 2, word
        left = pieces[0]
        for nxt in pieces[1:]:
            merged = left + nxt
            if merged not in vocab:
                vocab[merged] = first + len(tokens)
                merges.append([left, nxt])
                tokens.append({"id": vocab[merged], "text": _canonical(merged), "kind": "intermediate"})
            left = merged
        tokens[-1]["kind"] = "target"
    save_tokenizer(base, tj, out)
    (out / "expansion.json").write_text(json.dumps({
        "base_vocab_size": first, "donor_vocab_size": 0, "candidates": len(words), "added": len(tokens),
        "method": "test-merges", "first_new_id": first, "tokens": tokens,
    }, ensure_ascii=False), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, qwen_dir) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("m") / "tiny", qwen_dir)


@pytest.fixture(scope="module")
def expanded_tok(tmp_path_factory, qwen_dir) -> Path:
    return build_expanded_tokenizer(qwen_dir, tmp_path_factory.mktemp("t") / "tok")


@pytest.fixture(scope="module")
def expanded(tmp_path_factory, tiny, expanded_tok) -> Path:
    return expand_model(tiny, expanded_tok, tmp_path_factory.mktemp("x") / "expanded", init="mean")


def _emb(folder: Path) -> torch.Tensor:
    return load_file(str(folder / "model.safetensors"))["embed_tokens.weight"]


def test_old_rows_bit_identical_and_new_rows_are_piece_means(tiny, expanded, expanded_tok, qwen_dir):
    from tokenizers import Tokenizer

    before, after = _emb(tiny), _emb(expanded)
    info = json.loads((expanded / "expansion.json").read_text(encoding="utf-8"))
    n_new = info["added"]
    assert after.shape == (151669 + n_new, before.shape[1])
    assert torch.equal(after[:151669], before)
    base = Tokenizer.from_file(str(qwen_dir / "tokenizer.json"))
    for t in info["tokens"]:
        # The brief's definition: the BASE tokenizer on the canonical text, without special tokens / EOS.
        if t["text"] is not None:
            ids = base.encode(t["text"], add_special_tokens=False).ids
            assert ids == t["base_ids"], t
        expect = before[t["base_ids"]].float().mean(0)
        assert torch.allclose(after[t["id"]].float(), expect, atol=1e-6), t["id"]
    assert info["rows"]["before"] == 151669 and info["rows"]["after"] == 151669 + n_new
    assert info["init"]["method"] == "mean" and info["base_vocab_size"] == 151669


def test_output_loads_with_sentence_transformers_and_auto_classes(expanded, expanded_tok):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    st = SentenceTransformer(str(expanded), device="cpu")
    assert st.tokenizer.padding_side == "left"
    emb = st.encode(["한국어 문장입니다.", "hello"], prompt_name="query", convert_to_tensor=True)
    assert emb.shape == (2, 64) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    tok = AutoTokenizer.from_pretrained(str(expanded))
    ref = AutoTokenizer.from_pretrained(str(expanded_tok))
    text = "대한민국의 수도는 서울특별시이고 한국어를 씁니다."
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    ids = tok(text)["input_ids"]
    assert ids[-1] == 151643 and max(ids) >= 151669  # EOS still appended; new tokens used
    model = AutoModel.from_pretrained(str(expanded))
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    card = (expanded / "README.md").read_text(encoding="utf-8")
    assert "mean" in card and "lasttoken" in card


@pytest.mark.parametrize("method", sorted(INIT_METHODS))
def test_every_init_method_keeps_old_rows_and_ties(method, qwen_dir):
    # In memory on a tied CausalLM: the head must stay tied, old rows bit-identical.
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
    m = Qwen3ForCausalLM(cfg)
    old = m.get_input_embeddings().weight.detach().clone()
    pieces = [[1, 2], [3], [4, 5, 6]]
    rep = expand_embeddings(m, 300, 303, pieces, init=method, noise_std=0.1, seed=1)
    w = m.get_input_embeddings().weight
    assert w.shape == (303, 32) and torch.equal(w[:300], old)
    assert m.get_output_embeddings().weight.data_ptr() == w.data_ptr()
    assert rep.output_head == "tied" and rep.noise_std_abs == pytest.approx(0.1 * row_scale(old))
    assert torch.isfinite(w[300:]).all() and not torch.equal(w[300], w[301])


def test_untied_head_resized_and_initialised():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
    m = Qwen3ForCausalLM(cfg)
    old_in, old_out = m.get_input_embeddings().weight.detach().clone(), m.get_output_embeddings().weight.detach().clone()
    rep = expand_embeddings(m, 300, 302, [[7, 8], [9]], init="mean")
    w_in, w_out = m.get_input_embeddings().weight, m.get_output_embeddings().weight
    assert rep.output_head.startswith("untied") and w_out.shape == (302, 32)
    assert torch.equal(w_in[:300], old_in) and torch.equal(w_out[:300], old_out)
    assert torch.allclose(w_out[300], old_out[[7, 8]].mean(0)) and torch.allclose(w_in[301], old_in[9])


def test_spare_rows_are_used_first():
    # e5-small style: 310 rows for a 300-token base; 4 new tokens take spare rows 300..303.
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(vocab_size=310, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    m = Qwen3Model(cfg)
    old = m.get_input_embeddings().weight.detach().clone()
    rep = expand_embeddings(m, 300, 304, [[1], [2], [3], [4]], init="first")
    w = m.get_input_embeddings().weight
    assert (rep.rows_before, rep.rows_after, rep.spare_rows_overwritten) == (310, 310, 4)
    assert torch.equal(w[:300], old[:300]) and torch.equal(w[304:], old[304:])
    assert torch.equal(w[300], old[1])
    rep = expand_embeddings(m, 300, 320, [[1]] * 20, init="first")
    assert (rep.rows_after, rep.spare_rows_overwritten) == (320, 10)


def test_errors_name_what_is_wrong(tiny, expanded_tok, tmp_path, qwen_dir):
    with pytest.raises(UserError, match="unknown init method 'nope'"):
        expand_model(tiny, expanded_tok, tmp_path / "a", init="nope")
    # A tokenizer expanded from another base (here: its base_vocab_size lies).
    other = tmp_path / "other"
    other.mkdir()
    for f in expanded_tok.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    info = json.loads((other / "expansion.json").read_text(encoding="utf-8"))
    info["base_vocab_size"] = 250002
    (other / "expansion.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(UserError, match="250002.*151669"):
        expand_model(tiny, other, tmp_path / "b")
    # Pickle weights are refused with a message naming safetensors.
    pick = tmp_path / "pickled"
    pick.mkdir()
    (pick / "config.json").write_bytes((tiny / "config.json").read_bytes())
    torch.save({"x": torch.zeros(1)}, pick / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        expand_model(pick, expanded_tok, tmp_path / "c")


def test_model_with_fewer_rows_than_its_tokenizer_is_an_error(tmp_path, qwen_dir, expanded_tok):
    from transformers import Qwen3Config, Qwen3Model

    small = Qwen3Config(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    folder = tmp_path / "small"
    Qwen3Model(small).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((qwen_dir / name).read_bytes())
    with pytest.raises(UserError, match="151669 tokens but the model has only 1000 embedding rows"):
        expand_model(folder, expanded_tok, tmp_path / "out")


def test_cli_expand_and_its_errors(tiny, expanded_tok, tmp_path, capsys):
    from koemb.cli import main

    out = tmp_path / "cli"
    assert main(["model", "expand", "--model", str(tiny), "--tokenizer", str(expanded_tok), "--out", str(out),
                 "--init", "random", "--noise-std", "0.5"]) == 0
    info = json.loads((out / "expansion.json").read_text(encoding="utf-8"))
    assert info["init"] == {"method": "random", "noise_std": 0.5, "noise_std_abs": pytest.approx(info["init"]["noise_std_abs"]), "seed": 0}
    assert torch.equal(_emb(out)[:151669], _emb(tiny))
    # Existing output without --overwrite: a message, exit 2, no traceback.
    assert main(["model", "expand", "--model", str(tiny), "--tokenizer", str(expanded_tok), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
