"""`koemb model prune-curve`: the token saving for N kept new tokens, without writing a model.

Every point is checked against what it stands for: the base tokenizer's real counts (N = 0 must be the base)
and the tokenizer `koemb model prune` writes with the same ranking, on the REAL Qwen3-Embedding BPE and the
REAL multilingual-e5-small Unigram."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from koemb.cli import main
from koemb.errors import UserError
from koemb.model.expand import expand_model
from koemb.model.prune import prune_model
from koemb.model.prune_curve import CurvePoint, PruneCurve, hangul_share, prune_curve
from koemb.model.tiny import build_tiny_qwen3
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from test_encoder import me5_small_dir
from test_model_prune import e5_expanded, ko_docs


@pytest.fixture(scope="module")
def e5_model(tmp_path_factory) -> Path:
    return e5_expanded(tmp_path_factory.mktemp("curve"), 50)


def n_tokens(tokenizer_json: Path, texts: list[str]) -> int:
    tok = Tokenizer.from_file(str(tokenizer_json))
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def test_bpe_curve_points_are_the_base_and_the_pruned_tokenizers(qwen_dir, tmp_path):
    docs = ko_docs(300)
    sets = {"first": docs[:150], "second": docs[150:]}
    tok = tmp_path / "tok"
    expand_tokenizer(qwen_dir, tok, docs=docs, settings=ExpansionSettings(method="bpe-continue", max_new_tokens=60))
    model = expand_model(build_tiny_qwen3(tmp_path / "tiny", qwen_dir), tok, tmp_path / "expanded", init="random", seed=3)
    curve = prune_curve(tok, [60, 0, 25], sets, rank_by="usage", sources={"docs": docs})

    assert [p.keep for p in curve.points] == [0, 25, 60] and curve.new_tokens == 60
    base = {n: n_tokens(qwen_dir / "tokenizer.json", t) for n, t in sets.items()}
    assert curve.base_tokens == base and curve.points[0].tokens == base
    assert curve.points[0].reduction == {"first": 0.0, "second": 0.0}
    assert curve.points[2].tokens == {n: n_tokens(tok / "tokenizer.json", t) for n, t in sets.items()}
    # N = 25 is exactly the tokenizer `koemb model prune --rank-by usage` writes (merge parts included).
    pruned = prune_model(model, tmp_path / "p25", 25, rank_by="usage", sources={"docs": docs})
    assert curve.points[1].tokens == {n: n_tokens(pruned / "tokenizer.json", t) for n, t in sets.items()}
    for p in curve.points[1:]:
        assert all(0 < r < 1 for r in p.reduction.values())
        assert p.reduction["first"] == pytest.approx(1 - p.tokens["first"] / base["first"])


def test_unigram_curve_matches_prune_and_the_cli_writes_table_json_and_plot(e5_model, tmp_path, capsys):
    model = e5_model
    docs = ko_docs(300)
    text_file = tmp_path / "held_out.txt"
    text_file.write_text("\n".join(docs[200:]) + "\n", encoding="utf-8")
    corpus = tmp_path / "train.txt"
    corpus.write_text("\n".join(docs[:200]) + "\n", encoding="utf-8")

    curve = prune_curve(model, [10, 50], {"held_out": docs[200:]}, rank_by="usage", sources={"train": docs[:200]})
    assert curve.base_tokens["held_out"] == n_tokens(me5_small_dir() / "tokenizer.json", docs[200:])
    pruned = prune_model(model, tmp_path / "p10", 10, rank_by="usage", sources={"train": docs[:200]})
    assert curve.points[0].tokens["held_out"] == n_tokens(pruned / "tokenizer.json", docs[200:])
    assert 0 < curve.points[0].reduction["held_out"] < curve.points[1].reduction["held_out"]

    out, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    capsys.readouterr()
    code = main(["model", "prune-curve", "--model", str(model), "--text", str(text_file), "--corpus", str(corpus),
                 "--step", "25", "--target", "1", "--out", str(out), "--plot", str(plot)])
    assert code == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [p["keep"] for p in doc["points"]] == [25, 50] and doc["rank_by"] == "usage"
    assert doc["sets"]["held_out"]["base_tokens"] == curve.base_tokens["held_out"]
    assert doc["points"][1]["tokens"]["held_out"] == curve.points[1].tokens["held_out"]
    expected = 25 if doc["points"][0]["reduction"]["held_out"] >= 0.01 else 50
    assert doc["target"] == {"reduction": 0.01, "smallest_keep": expected}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "held_out" in printed and f"every set: {expected:,}" in printed


def test_prune_curve_refuses_bad_arguments(e5_model, tmp_path, capsys):
    model = e5_model
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(ko_docs(20)) + "\n", encoding="utf-8")
    suite = tmp_path / "s.yaml"
    suite.write_text("tasks:\n  - {name: sep, type: separation}\n", encoding="utf-8")
    cases = [
        (["--keep", "5", "--step", "5", "--text", str(texts)], "either --keep"),
        (["--keep", "5,x", "--text", str(texts)], "expected numbers separated by commas"),
        (["--keep", "51", "--text", str(texts)], "between 0 and 50"),
        (["--keep", "5"], "no text to count tokens on"),
        (["--keep", "5", "--text", str(texts), "--target", "150"], "percentage between 0 and 100"),
        (["--keep", "5", "--task", "sep"], "give --suite too"),
        (["--keep", "5", "--suite", str(suite), "--task", "korsts"], "'korsts': not a task of"),
        (["--keep", "5", "--text", str(texts), "--rank-by", "often"], "rank_by must be one of"),
        (["--keep", "5", "--text", str(texts), "--rank-by", "order", "--corpus", str(texts)], "need --rank-by usage"),
        (["--keep", "5", "--text", str(texts), "--corpus", str(texts), "--config", str(suite)], "not both"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(["model", "prune-curve", "--model", str(model), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    with pytest.raises(UserError, match="no expansion.json"):
        prune_curve(me5_small_dir(), [1], {"a": ["가나"]})


def test_suite_texts_default_to_the_korean_tasks(e5_model, tmp_path):
    model = e5_model
    en = tmp_path / "en.jsonl"
    en.write_text("".join(json.dumps({"sentence1": f"A man plays guitar {i}.", "sentence2": "A man is playing.", "score": 3.0}) + "\n"
                          for i in range(5)), encoding="utf-8")
    suite = tmp_path / "s.yaml"
    suite.write_text(f"tasks:\n  - {{name: sep, type: separation}}\n  - {{name: en, type: sts, path: {en}}}\n", encoding="utf-8")
    out = tmp_path / "c.json"
    assert main(["model", "prune-curve", "--model", str(model), "--suite", str(suite), "--keep", "10", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text(encoding="utf-8"))["sets"]) == ["sep"]  # English left out
    assert main(["model", "prune-curve", "--model", str(model), "--suite", str(suite), "--task", "en", "--keep", "10", "--out", str(out)]) == 0
    assert list(json.loads(out.read_text(encoding="utf-8"))["sets"]) == ["en"]  # ... unless asked for


def test_smallest_keep_needs_every_set_and_hangul_share():
    pts = [CurvePoint(3, {}, {"a": 0.2, "b": 0.1}), CurvePoint(1, {}, {"a": 0.1, "b": 0.05}), CurvePoint(5, {}, {"a": 0.3, "b": 0.16})]
    curve = PruneCurve("m", "usage", 5, {"a": 1, "b": 1}, {"a": 1, "b": 1}, pts)
    assert curve.smallest_keep(0.1) == 3 and curve.smallest_keep(0.15) == 5 and curve.smallest_keep(0.05) == 1
    assert curve.smallest_keep(0.2) is None
    assert hangul_share(["한국어 text"]) == pytest.approx(3 / 7) and hangul_share(["123 !"]) == 0.0
