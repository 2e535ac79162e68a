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
from koemb.resources import KO_SAMPLE
from koemb.vocab.canonical import canonical
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer

def ko_docs(n: int = 300) -> list[str]:
    return [line for line in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()][:n]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, qwen_dir) -> Path:
    return build_tiny_qwen3(tmp_path_factory.mktemp("m") / "tiny", qwen_dir)


@pytest.fixture(scope="module")
def expanded_tok(tmp_path_factory, qwen_dir) -> Path:
    # The real expansion (bpe-continue: merges appended to the BPE), small: 60 new rows.
    out = tmp_path_factory.mktemp("t") / "tok"
    expand_tokenizer(qwen_dir, out, docs=ko_docs(), settings=ExpansionSettings(method="bpe-continue", max_new_tokens=60))
    return out


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
    exp = Tokenizer.from_file(str(expanded_tok / "tokenizer.json"))
    complete = 0
    for t in info["tokens"]:
        text = canonical(exp.id_to_token(t["id"]), "byte_level")
        if text is not None:
            # FVT's definition: the BASE tokenizer on the token's text, without special tokens / EOS.
            assert base.encode(text, add_special_tokens=False).ids == t["base_ids"], t
            complete += 1
        else:  # a cut Hangul syllable: no text to tokenise; its bytes still split into base pieces
            assert "".join(base.id_to_token(i) for i in t["base_ids"]) == exp.id_to_token(t["id"])
        assert len(t["base_ids"]) >= 2 and max(t["base_ids"]) < 151669
        expect = before[t["base_ids"]].float().mean(0)
        assert torch.allclose(after[t["id"]].float(), expect, atol=1e-6), t["id"]
    assert complete > n_new // 2
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
    text = " ".join(ko_docs(30))
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


def test_mean_norm_keeps_the_mean_direction_at_the_pieces_mean_norm():
    from koemb.model.init_methods import InitInputs, init_mean, init_mean_norm

    old = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0], [-1.0, 0.0]])
    inp = InitInputs(old=old, pieces=[[0, 1], [2], [0, 3]], generator=torch.Generator().manual_seed(0))
    mean, rows = init_mean(inp), init_mean_norm(inp)
    # [3,0]+[0,1]: mean [1.5, 0.5] (norm 1.58, shrunk), pieces' mean norm 2.0.
    torch.testing.assert_close(rows.norm(dim=1), torch.tensor([2.0, 2.0, 2.0]))
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(rows, mean), torch.ones(3))
    torch.testing.assert_close(rows[1], old[2])  # one piece: its own row, unchanged
    assert rows[0].norm() > mean[0].norm() and rows[2].norm() > mean[2].norm()


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


def test_save_writes_each_presets_files_and_replaces_atomically(tiny, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from koemb.model.presets import detect_preset
    from koemb.model.save import save_sentence_transformer

    model, tok = AutoModel.from_pretrained(str(tiny)), AutoTokenizer.from_pretrained(str(tiny))
    out = save_sentence_transformer(model, tok, tmp_path / "e5like", "e5", max_seq_length=128,
                                    expansion={"added": 0, "tokens": []}, recipe={"stage": "s1", "lr": 1e-4})
    st = SentenceTransformer(str(out), device="cpu")
    assert (st.max_seq_length, st.tokenizer.padding_side) == (128, "right")
    assert st.prompts["query"] == "query: " and st.prompts["document"] == "passage: "
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert "stage: s1" in (out / "README.md").read_text(encoding="utf-8")
    assert json.loads((out / "expansion.json").read_text()) == {"added": 0, "tokens": []}
    # Replacing keeps nothing of the old folder and leaves no temporary folders behind.
    (out / "stale.txt").write_text("x")
    save_sentence_transformer(model, tok, out, "qwen3-embedding", overwrite=True)
    assert not (out / "stale.txt").exists() and not (out / "expansion.json").exists()
    assert detect_preset(out).name == "qwen3-embedding"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e5like"]


def test_older_sentence_transformers_layout_with_a_transformer_subfolder(tiny, expanded_tok, tmp_path):
    # Older ST folders keep the transformers files in `0_Transformer/`; the ST files stay at the root.
    old = tmp_path / "old_layout"
    (old / "0_Transformer").mkdir(parents=True)
    for f in tiny.iterdir():
        if f.is_file() and f.name not in ("modules.json", "config_sentence_transformers.json", "README.md"):
            (old / "0_Transformer" / f.name).write_bytes(f.read_bytes())
    (old / "1_Pooling").mkdir()
    (old / "1_Pooling" / "config.json").write_bytes((tiny / "1_Pooling" / "config.json").read_bytes())
    modules = json.loads((tiny / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (old / "modules.json").write_text(json.dumps(modules))
    out = expand_model(old, expanded_tok, tmp_path / "x", preset="qwen3-embedding")
    assert torch.equal(_emb(out)[:151669], _emb(tiny))


def test_wordpiece_pieces_keep_their_place_in_the_word():
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers import models as tm

    from koemb.model.expand import NewToken, base_pieces

    base = Tokenizer(tm.WordPiece(unk_token="[UNK]"))
    base.normalizer = normalizers.NFC()
    base.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    base.decoder = decoders.WordPiece()
    base.train_from_iterator(ko_docs(400), trainers.WordPieceTrainer(vocab_size=1500, special_tokens=["[PAD]", "[UNK]"], show_progress=False))
    tj = json.loads(base.to_str())
    n = base.get_vocab_size()
    new = [w for w in ("##습니다", "청원합니다", "##니까요") if w not in tj["model"]["vocab"]]
    for k, w in enumerate(new):
        tj["model"]["vocab"][w] = n + k
    expanded = Tokenizer.from_str(json.dumps(tj))
    tokens = [NewToken(n + k, canonical(w, "wordpiece")) for k, w in enumerate(new)]
    for w, ids in zip(new, base_pieces(tokens, base, expanded)):
        pieces = [base.id_to_token(i) for i in ids]
        assert "".join(p.removeprefix("##") for p in pieces) == w.removeprefix("##"), (w, pieces)
        assert pieces[0].startswith("##") == w.startswith("##") and all(p.startswith("##") for p in pieces[1:]), (w, pieces)
