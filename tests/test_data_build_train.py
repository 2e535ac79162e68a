"""`koemb data build-train` on the real shared Korean data: traps handled, evaluation data kept out."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from koemb.data import eval_sets
from koemb.data.build_train import BuildTrainConfig, HubSource, build_train, read_hub_source
from koemb.data.pairs import Pair, read_pairs, write_pairs
from koemb.errors import UserError


@pytest.fixture(scope="module")
def built(tmp_path_factory, ko_data) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bt") / "train"
    return out, build_train(ko_data, out)


def _pairs(out: Path, name: str) -> list[Pair]:
    return read_pairs(out / "pairs" / f"{name}.jsonl")


def _all_texts(out: Path) -> set[str]:
    texts: set[str] = set()
    for f in (out / "pairs").glob("*.jsonl"):
        for p in read_pairs(f):
            texts.update(t for t in (p.query, p.positive, p.negative) if t)
    for f in (out / "unlabeled").glob("*.jsonl"):
        texts.update(json.loads(line)["text"] for line in f.read_text(encoding="utf-8").splitlines())
    return {" ".join(t.split()) for t in texts}


def test_evaluation_data_never_reaches_training(built, ko_data):
    out, manifest = built
    texts = _all_texts(out)
    holdout = eval_sets.strategyqa_holdout_ids()
    sqa = {it.id: it for it in eval_sets.read_strategyqa(ko_data / "sionic_strategyqa_ko/task169_strategyqa_sentence_generation_ko.json")}
    held = [sqa[i] for i in holdout if i in sqa]
    assert len(held) == 1000
    assert not {" ".join(it.question.split()) for it in held} & texts
    for split in ("dev", "test"):
        sts = eval_sets.read_korsts(ko_data / "korsts" / f"sts-{split}.tsv")
        assert not {" ".join(s.split()) for p in sts for s in (p.sentence1, p.sentence2)} & texts
    korquad = eval_sets.read_korquad_retrieval(ko_data / "korquad_v1_dev/KorQuAD_v1.0_dev.json")
    assert not {" ".join(q.split()) for q in korquad.queries.values()} & texts
    # English STS-B dev (the "no worse at English" check): STS-B train repeats some of its sentences verbatim, so
    # without the filter they would reach training as the English side of the Korean<->English pairs.
    with (ko_data.parent / "en/stsb/sts-dev.csv").open(encoding="utf-8", newline="") as fh:
        en_dev = {" ".join(s.split()) for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) for s in row[5:7]}
    assert len(en_dev) > 2500 and not en_dev & texts
    assert manifest["excluded"]["evaluation_texts"]["en/stsb/sts-dev.csv"] > 0
    assert manifest["pairs"]["stsb_ko_en"]["dropped"]["equals_evaluation_text"] > 50
    # The training side of StrategyQA is there, and is exactly the non-held-out questions that parse.
    train_q = {p.group.split(":", 1)[1] for p in _pairs(out, "strategyqa")}
    assert train_q and not train_q & holdout and len(train_q) + 1000 + 83 + manifest["pairs"]["strategyqa"]["dropped"].get("equals_evaluation_text", 0) == 4244
    assert manifest["pairs"]["strategyqa"]["dropped"]["evaluation_holdout"] == 1000


def test_question_pair_labels_are_inverted_and_both_csvs_read(built, ko_data):
    out, _ = built
    got = {(p.query, p.positive) for p in _pairs(out, "question_pair")}
    same, different = set(), set()
    for name in ("kor_pair_train.csv", "kor_Pair_test.csv"):
        with (ko_data / "question_pair" / name).open(encoding="utf-8-sig", newline="") as fh:
            for row in csv.DictReader(fh):
                pair = (row["question1"].strip(), row["question2"].strip())
                (same if row["is_duplicate"] == "0" else different).add(pair)
    assert ("2년 가량의 연애", "2년 만났어") in got  # test CSV (trailing comma), is_duplicate 0
    assert got <= same and not got & (different - same)
    assert len(got) > 4000


def test_groups_mask_same_answers_and_paraphrase_sets(built, ko_data):
    out, manifest = built
    chat = _pairs(out, "chatbot")
    by_answer: dict[str, set[str]] = {}
    for p in chat:
        by_answer.setdefault(p.positive, set()).add(p.group)
    assert all(len(g) == 1 for g in by_answer.values())
    assert len({p.group for p in chat}) == manifest["pairs"]["chatbot"]["groups"] == 7779
    lines = (ko_data / "parakqc" / "paraKQC_v1.txt").read_text(encoding="utf-8").splitlines()
    set_of = {}
    for i, line in enumerate(lines):
        set_of.setdefault(line.split("\t")[2].strip(), set()).add(i // 10)
    para = _pairs(out, "parakqc")
    assert len({p.group for p in para}) == 836
    for p in para:
        sid = int(p.group.split(":")[1])
        assert sid in set_of[p.query] and sid in set_of[p.positive]


def test_nli_negatives_are_contradictions_of_the_same_premise(built, ko_data):
    out, _ = built
    rows = json.loads((ko_data / "klue_nli/klue-nli-v1.1_dev.json").read_text(encoding="utf-8"))
    label = {(r["premise"].strip(), r["hypothesis"].strip()): r["gold_label"] for r in rows}
    pairs = _pairs(out, "klue_nli")
    assert pairs and all(p.negative for p in pairs)
    for p in pairs:
        assert label[(p.query, p.positive)] == "entailment" and label[(p.query, p.negative)] == "contradiction"


def test_korsts_threshold_and_cross_lingual_alignment(built, ko_data):
    out, _ = built
    score = {}
    with (ko_data / "korsts/sts-train.tsv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            score.setdefault((r["sentence1"].strip(), r["sentence2"].strip()), float(r["score"]))
    ko = _pairs(out, "korsts_train")
    assert ko and all(score[(p.query, p.positive)] >= 4.0 for p in ko)
    xl = {(p.query, p.positive) for p in _pairs(out, "stsb_ko_en")}
    assert ("한 남자가 큰 플루트를 연주하고 있다.", "A man is playing a large flute.") in xl
    # Quoting off: a sentence with quotes keeps them (and the row after it is not swallowed).
    assert any('"' in p.query for p in ko) or any('"' in q for q, _ in xl)


def test_manifest_counts_match_files(built):
    out, manifest = built
    for rel, info in manifest["files"].items():
        data = (out / rel).read_bytes()
        assert data.count(b"\n") == info["rows"] and hashlib.sha256(data).hexdigest() == info["sha256"]
    assert manifest["totals"]["pairs"] == sum(e["rows"] for e in manifest["pairs"].values()) > 30000
    assert manifest["unlabeled"]["petitions"]["chars"] > 1_000_000
    assert (out / "LICENSES" / "korsts" / "LICENSE").is_file()


def test_deterministic_and_overwrite(tmp_path, ko_data):
    cfg = BuildTrainConfig(pair_sources=["question_pair", "parakqc"], text_sources=["parakqc"])
    a = build_train(ko_data, tmp_path / "a", cfg)
    b = build_train(ko_data, tmp_path / "b", cfg)
    assert a["files"] == b["files"]
    with pytest.raises(UserError, match="--overwrite"):
        build_train(ko_data, tmp_path / "a", cfg)
    with pytest.raises(UserError, match="unknown source.*'nope'"):
        build_train(ko_data, tmp_path / "c", BuildTrainConfig(pair_sources=["nope"]))


def test_strategyqa_validation_split_leaves_training_only_when_asked(built, tmp_path, ko_data):
    out, manifest = built
    validation = eval_sets.strategyqa_validation_ids()
    by_default = {p.group.split(":", 1)[1] for p in _pairs(out, "strategyqa")}
    assert len(by_default & validation) == 500  # off by default: the profile's training data is unchanged
    cfg = BuildTrainConfig(pair_sources=["strategyqa"], text_sources=["unesco"], strategyqa_validation=True)
    m = build_train(ko_data, tmp_path / "v", cfg)
    kept = {p.group.split(":", 1)[1] for p in _pairs(tmp_path / "v", "strategyqa")}
    assert not kept & validation and kept == by_default - validation
    assert m["pairs"]["strategyqa"]["dropped"]["validation_split"] == 500
    assert m["excluded"]["evaluation_texts"]["strategyqa_validation"] > 500  # questions and facts
    assert "strategyqa_validation" in m["excluded"] and "strategyqa_validation" not in manifest["excluded"]


def test_missing_holdout_file_is_a_clear_error(tmp_path, ko_data, monkeypatch):
    monkeypatch.setattr(eval_sets, "HOLDOUT_FILE", tmp_path / "absent_ids.txt")
    with pytest.raises(UserError, match="hold-out ids.*missing"):
        build_train(ko_data, tmp_path / "o", BuildTrainConfig(pair_sources=["strategyqa"], text_sources=[]))


def test_missing_validation_file_is_a_clear_error_only_when_asked_for(tmp_path, ko_data, monkeypatch):
    monkeypatch.setattr(eval_sets, "VALIDATION_FILE", tmp_path / "absent_ids.txt")
    build_train(ko_data, tmp_path / "off", BuildTrainConfig(pair_sources=["strategyqa"], text_sources=["unesco"]))
    with pytest.raises(UserError, match=r"validation ids are missing.*strategyqa_validation: false"):
        build_train(ko_data, tmp_path / "on", BuildTrainConfig(pair_sources=["strategyqa"], text_sources=["unesco"],
                                                               strategyqa_validation=True))
    assert not (tmp_path / "on").exists()


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = HubSource(name="web", repo="HAERAE-HUB/some-set", files=["train.jsonl"], kind="text")
    with pytest.raises(UserError, match="offline"):
        list(read_hub_source(src))


def test_pairs_reader_names_file_line_and_field(tmp_path):
    path = tmp_path / "p.jsonl"
    write_pairs(path, [Pair("q", "p", "n", "g1", "s")])
    assert read_pairs(path) == [Pair("q", "p", "n", "g1", "s")]
    path.write_text('{"query": "q", "positive": "p"}\n{"query": "q"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"p\.jsonl:2: field 'positive'"):
        read_pairs(path)
    path.write_text('{"query": "q", "positive": "p", "answer": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r":1: unknown field\(s\) \['answer'\]"):
        read_pairs(path)


def test_cli_build_train(tmp_path, ko_data, capsys):
    from koemb.cli import main

    cfg = tmp_path / "bt.yaml"
    cfg.write_text("pair_sources: [chatbot]\ntext_sources: [nsmc]\nkorsts_min_score: 4.5\n", encoding="utf-8")
    assert main(["data", "build-train", "--data", str(ko_data), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["pairs"]) == {"chatbot"} and manifest["config"]["korsts_min_score"] == 4.5
    cfg.write_text("pair_source: [chatbot]\n", encoding="utf-8")
    assert main(["data", "build-train", "--data", str(ko_data), "--out", str(tmp_path / "p"), "--config", str(cfg)]) == 2
    assert "pair_sources" in capsys.readouterr().err


def test_hub_rows_map_through_columns(tmp_path):
    from koemb.data.build_train import _read_table, hub_items

    path = tmp_path / "rows.jsonl"
    path.write_text('{"question": "서울은?", "answer": "수도", "hard": ["부산", "x"], "cid": 3}\n'
                    '{"question": "부산은?", "answer": "항구"}\n', encoding="utf-8")
    rows = _read_table(path, "test")
    src = HubSource(name="h", repo="o/d", files=["rows.jsonl"], kind="pairs",
                    columns={"query": "question", "positive": "answer", "negative": "hard", "group": "cid"})
    assert list(hub_items(src, rows)) == [Pair("서울은?", "수도", "부산", "3", "h"), Pair("부산은?", "항구", None, None, "h")]
    with pytest.raises(UserError, match="row 0 has no column 'text'"):
        list(hub_items(HubSource(name="t", repo="o/d", files=["x"], kind="text"), rows))
    with pytest.raises(UserError, match=r"unknown field\(s\) \['body'\]"):
        list(hub_items(HubSource(name="t", repo="o/d", files=["x"], kind="text", columns={"body": "a"}), rows))


def test_hub_rows_filtered_by_min_values(tmp_path):
    """The seed's K2-Feedback stage keeps only responses scored >= 5."""
    from koemb.data.build_train import _read_table, hub_items

    path = tmp_path / "rows.jsonl"
    path.write_text('{"instruction": "a", "response": "r1", "score": 5}\n{"instruction": "b", "response": "r2", "score": 3}\n'
                    '{"instruction": "c", "response": "r3", "score": "5.0"}\n', encoding="utf-8")
    rows = _read_table(path, "test")
    src = HubSource(name="k2", repo="o/d", files=["rows.jsonl"], kind="pairs",
                    columns={"query": "instruction", "positive": "response"}, min_values={"score": 5})
    assert [p.query for p in hub_items(src, rows)] == ["a", "c"]
    bad = HubSource(name="k2", repo="o/d", files=["x"], kind="pairs", columns={"query": "instruction", "positive": "response"},
                    min_values={"rating": 5})
    with pytest.raises(UserError, match="min_values: row 0 has no column 'rating'"):
        list(hub_items(bad, rows))


def test_korsts_scored_keeps_every_score_and_the_reader_checks_it(built, ko_data, tmp_path):
    out, _ = built
    scored = _pairs(out, "korsts_scored")
    assert len(scored) > 5000 and all(p.score is not None and 0.0 <= p.score <= 5.0 for p in scored)
    assert min(p.score for p in scored) < 1.0 and max(p.score for p in scored) == 5.0  # the whole scale
    path = tmp_path / "s.jsonl"
    write_pairs(path, [Pair("q", "p", score=2.5)])
    assert read_pairs(path) == [Pair("q", "p", score=2.5)]
    path.write_text('{"query": "q", "positive": "p", "score": "high"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"s\.jsonl:1: field 'score' must be a number"):
        read_pairs(path)
