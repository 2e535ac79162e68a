"""`koemb model expand` on the REAL multilingual-e5-small: a Unigram base with 35 spare rows, a BERT
encoder in sentence-transformers layout, mean pooling."""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from koemb.model.expand import expand_model
from test_encoder import me5_small_dir
from koemb.resources import KO_SAMPLE
from koemb.vocab.donor import train_donor
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from koemb.vocab.io import load_tokenizer

EMB = "embeddings.word_embeddings.weight"


def test_e5_small_expansion_reuses_spare_rows_and_loads(tmp_path):
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    base_dir = me5_small_dir()
    docs = [line for line in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()][:300]
    base = load_tokenizer(base_dir)
    train_donor(base, docs, 2000, tmp_path / "donor")
    tok = tmp_path / "tok"
    expand_tokenizer(base, tok, donor=str(tmp_path / "donor"), docs=docs,
                     settings=ExpansionSettings(method="unigram", max_new_tokens=50))
    out = expand_model(base_dir, tok, tmp_path / "e5x", init="mean")

    info = json.loads((out / "expansion.json").read_text(encoding="utf-8"))
    n = info["added"]
    assert info["rows"] == {**info["rows"], "before": 250037, "base_tokenizer": 250002,
                            "after": max(250037, 250002 + n), "spare_rows_overwritten": min(35, n)}
    with safe_open(str(base_dir / "model.safetensors"), "pt") as f:
        before = f.get_tensor(EMB)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        after = f.get_tensor(EMB)
        assert not any(k.startswith("pooler.") for k in f.keys())  # AutoModel's random pooler is not saved
    assert torch.equal(after[:250002], before[:250002])
    if n < 35:
        assert torch.equal(after[250002 + n :], before[250002 + n :])  # untouched spare rows
    # Unigram pieces come from the base MODEL on the piece itself: a non-word-start piece gets
    # no spurious "▁" piece, which tokenising its text with the full tokenizer would add.
    base_tok = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
    for t in info["tokens"]:
        pieces = [base_tok.id_to_token(i) for i in t["base_ids"]]
        assert "".join(pieces).replace("\u2581", " ") == t["text"], t
        assert torch.allclose(after[t["id"]], before[t["base_ids"]].mean(0), atol=1e-6)

    st = SentenceTransformer(str(out), device="cpu")
    assert st.prompts.get("query") == "query: " and st.tokenizer.padding_side == "right"
    emb = st.encode(docs[:3], prompt_name="query", convert_to_tensor=True)
    assert emb.shape == (3, 384) and torch.isfinite(emb).all()
    ids = st.tokenizer(" ".join(docs[:30]))["input_ids"]
    assert max(ids) >= 250002  # the new pieces are used
