"""Suites and `koemb evaluate` end to end: tiny Qwen3 (real tokenizer) and the real e5-small on real Korean data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from koemb.cli import main
from koemb.data.eval_sets import read_korsts, read_strategyqa_retrieval
from koemb.errors import UserError
from koemb.eval.retrieval import read_beir
from koemb.eval.run import evaluate
from koemb.eval.suite import load_suite
from test_encoder import build_tiny_qwen, me5_small_dir

STRATEGYQA = "sionic_strategyqa_ko/task169_strategyqa_sentence_generation_ko.json"


def write_beir(folder: Path, ko_data: Path, n: int) -> Path:
    """A BEIR folder of n StrategyQA hold-out questions and their facts (Apache-2.0/MIT data)."""
    data = read_strategyqa_retrieval(ko_data / STRATEGYQA).restrict(n)
    docs = {d for rel in data.qrels.values() for d in rel}
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i, d in enumerate(sorted(docs)):
            title, text = data.corpus[d]
            fh.write(json.dumps({"_id": d, "title": "제목" if i % 2 else title, "text": text}, ensure_ascii=False) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for q, t in data.queries.items():
            fh.write(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n")
    with (folder / "qrels" / "test.tsv").open("w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, rel in data.qrels.items():
            for d, s in rel.items():
                fh.write(f"{q}\t{d}\t{s}\n")
    return folder


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory, ko_data) -> Path:
    root = tmp_path_factory.mktemp("suite")
    write_beir(root / "data" / "beir", ko_data, 40)
    pairs = read_korsts(ko_data / "korsts" / "sts-test.tsv")[:40]
    with (root / "data" / "pairs.jsonl").open("w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps({"sentence1": p.sentence1, "sentence2": p.sentence2, "score": p.score}, ensure_ascii=False) + "\n")
    (root / "suites").mkdir()
    (root / "suites" / "s.yaml").write_text(
        "max_length: 128\nbatch_size: 16\ntasks:\n"
        "  - {name: my-retrieval, type: retrieval, path: ../data/beir, instruction: \"Given a question, retrieve the facts that answer it\"}\n"
        "  - {name: my-sts, type: sts, path: ../data/pairs.jsonl}\n"
        "  - {name: separation, type: separation, limit: 24}\n",
        encoding="utf-8",
    )
    return root


@pytest.fixture(scope="module")
def tiny_expanded(qwen_dir, tmp_path_factory) -> Path:
    # The tiny Qwen3 as if expanded: rows >= first_new_id count as "new" (here: the added special tokens).
    folder = tmp_path_factory.mktemp("expanded") / "tiny-expanded"
    shutil.copytree(build_tiny_qwen(qwen_dir), folder)
    (folder / "expansion.json").write_text(json.dumps({"first_new_id": 151643}), encoding="utf-8")
    return folder


def test_suite_paths_resolve_against_the_suite_file(suite_dir):
    suite = load_suite(suite_dir / "suites" / "s.yaml")
    assert suite.resolve_path(suite.tasks[0]) == suite_dir / "data" / "beir"
    assert suite.resolve_path(suite.tasks[2]) is None and suite.max_length == 128


@pytest.mark.parametrize(
    "body,message",
    [
        ("tasks:\n  - {name: a, type: sts, path: x.jsonl, instrction: q}\n", "did you mean 'instruction'"),
        ("tasks:\n  - {name: a, type: retrieval, path: ../data/beir, reader: csv}\n", "unknown reader 'csv' for type retrieval"),
        ("tasks:\n  - {name: a, type: retrieval}\n", "tasks.0 (a).path: a retrieval task needs a path"),
        ("tasks:\n  - {name: a, type: sts, path: nowhere.jsonl}\n", "nowhere.jsonl does not exist"),
        ("tasks:\n  - {name: a, type: clustering}\n", "tasks.0.type"),
        ("tasks:\n  - {name: a, type: separation}\n  - {name: a, type: separation}\n", "duplicate task name"),
        # a reader of one fixed set must not read `validation` as the test
        ("tasks:\n  - {name: a, type: sts, path: x.jsonl, split: validation}\n", "tasks.0 (a).split: reader 'file' reads test; got 'validation'"),
        ("tasks:\n  - {name: a, type: retrieval, reader: strategyqa, path: x.jsonl, split: valid}\n", "reader 'strategyqa' reads test, validation; got 'valid'"),
    ],
)
def test_suite_errors_name_the_field(suite_dir, body, message):
    path = suite_dir / "suites" / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_suite(path)


def test_beir_reader_errors_name_file_and_line(tmp_path, ko_data):
    folder = write_beir(tmp_path / "beir", ko_data, 3)
    assert len(read_beir(folder).queries) == 3
    with (folder / "qrels" / "test.tsv").open("a", encoding="utf-8") as fh:
        fh.write("q-x\tno-such-doc\t1\n")
    with pytest.raises(UserError, match=r"test.tsv:5: corpus-id 'no-such-doc'"):
        read_beir(folder)


def test_cli_evaluate_end_to_end_with_baseline_cache_and_row_stats(suite_dir, qwen_dir, tiny_expanded, tmp_path):
    base = build_tiny_qwen(qwen_dir)
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(tiny_expanded), "--baseline", str(base), "--baseline-label", "base",
            "--suite", str(suite_dir / "suites" / "s.yaml"), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    res = doc["results"]
    assert list(res) == ["base", "tiny-expanded"]
    assert set(res["base"]) == {"my-retrieval", "my-sts", "separation"}
    assert {"ndcg@10", "map@10", "recall@10", "precision@10", "mrr@10", "tokens_per_char", "tokens_per_hangul",
            "truncated_share", "texts_per_second"} <= set(res["base"]["my-retrieval"])
    assert {"spearman", "pearson"} <= set(res["base"]["my-sts"]) and "separation[일상대화]" in res["base"]["separation"]
    assert res["tiny-expanded"]["embedding-rows"]["new_rows"] == 26 and "embedding-rows" not in res["base"]
    assert res["tiny-expanded"]["my-retrieval"]["new_token_share"] == 0.0
    # Same weights: same numbers; and the second model's documents came from... its own cache key, so
    # they were encoded; a rerun of the baseline alone is served from the cache.
    assert res["base"]["my-retrieval"]["ndcg@10"] == pytest.approx(res["tiny-expanded"]["my-retrieval"]["ndcg@10"], abs=1e-6)
    prov = doc["provenance"]
    assert prov["models"]["base"]["preset"]["name"] == "qwen3-embedding"
    assert prov["models"]["base"]["prompts"]["my-retrieval"]["query"] == "Instruct: Given a question, retrieve the facts that answer it\nQuery:"
    assert prov["models"]["base"]["prompts"]["my-sts"]["both"] == "Instruct: Retrieve semantically similar text.\nQuery:"
    assert prov["versions"]["torch"] and prov["seed"] == 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| my-retrieval | ndcg@10 |" in report and "Δ% tiny-expanded" in report
    assert (out / "charts" / "main_metrics.png").stat().st_size > 1000
    assert (out / "charts" / "main_metrics_change.png").stat().st_size > 1000  # tiny-expanded against base
    assert "![main_metrics_change](charts/main_metrics_change.png)" in report
    assert (out / "charts" / "separation_domains.png").is_file()

    again = evaluate(None, suite_dir / "suites" / "s.yaml", tmp_path / "again", baselines=[base], device="cpu")
    r = again["results"][base.name]["my-retrieval"]
    assert r["texts_encoded"] == len(read_beir(suite_dir / "data" / "beir").queries)  # corpus from the cache
    assert r["ndcg@10"] == pytest.approx(res["base"]["my-retrieval"]["ndcg@10"], abs=1e-6)


def test_cli_reports_user_errors_without_traceback(tmp_path, capsys):
    assert main(["evaluate", "--model", "x", "--out", str(tmp_path)]) == 2
    assert "--suite" in capsys.readouterr().err


def test_real_e5_small_retrieves_korean_facts(suite_dir, tmp_path):
    doc = evaluate(me5_small_dir(), suite_dir / "suites" / "s.yaml", tmp_path / "e5", label="e5", device="cpu")
    r = doc["results"]["e5"]
    # 40 questions against their 40 fact documents: a real model ranks most answers first;
    # a broken pipeline (wrong pooling, prompts, or misaligned ids) lands near chance (~0.1).
    assert r["my-retrieval"]["ndcg@10"] > 0.7
    assert r["my-sts"]["spearman"] > 0.5
    assert r["separation"]["separation"] > 0.02
    assert doc["provenance"]["models"]["e5"]["prompts"]["my-retrieval"] == {"query": "query: ", "document": "passage: "}


def test_cli_preset_override_is_validated(suite_dir, qwen_dir, tmp_path, capsys):
    argv = ["evaluate", "--model", str(build_tiny_qwen(qwen_dir)), "--suite", str(suite_dir / "suites" / "s.yaml"),
            "--out", str(tmp_path), "--preset-set", "pooling=max"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pooling" in err and "lasttoken" in err


def test_evaluate_takes_a_loaded_encoder_and_leaves_it_unchanged(qwen_dir, tmp_path):
    from koemb.eval.suite import suite_from_dict
    from koemb.model.encoder import Encoder

    enc = Encoder.load(build_tiny_qwen(qwen_dir), device="cpu")
    suite = suite_from_dict({"max_length": 16, "tasks": [{"name": "sep", "type": "separation", "limit": 16}]})
    doc = evaluate(enc, suite, tmp_path, label="in-memory")
    assert doc["provenance"]["models"]["in-memory"]["preset"]["max_length"] == 16
    assert enc.preset.max_length == 8192 and "separation" in doc["results"]["in-memory"]["sep"]


@pytest.mark.parametrize("name", ["korean.yaml", "korean_quick.yaml"])
def test_shipped_korean_suites_load(name, ko_data):
    suite = load_suite(Path(__file__).resolve().parents[1] / "configs" / "suites" / name)
    assert [t.name for t in suite.tasks] == ["korsts-test", "korquad-dev", "ko-strategyqa-holdout", "separation"]
    assert all(suite.resolve_path(t) is None or suite.resolve_path(t).exists() for t in suite.tasks)


def test_the_question_passage_validation_suite_reads_the_validation_split(ko_data):
    from koemb.data.eval_sets import strategyqa_holdout_ids, strategyqa_validation_ids
    from koemb.eval.tasks import read_task_data

    suite = load_suite(Path(__file__).resolve().parents[1] / "configs" / "suites" / "me5-study-val-qa.yaml")
    task = next(t for t in suite.tasks if t.name == "ko-strategyqa-validation")
    data = read_task_data(task.type, task.reader, suite.resolve_path(task), task.split)
    assert set(data.queries) == strategyqa_validation_ids() and not set(data.queries) & strategyqa_holdout_ids()


def test_training_log_reader_keeps_the_last_record_of_a_resumed_step_and_skips_torn_lines(tmp_path):
    from koemb.eval.report import read_training_log, write_training_chart

    log = tmp_path / "train.jsonl"
    log.write_text(
        '{"stage": "a", "step": 1, "loss": 2.0, "loss_distill": 2.0}\n'
        '{"stage": "a", "step": 2, "loss": 9.0, "loss_distill": 9.0}\n'
        '{"stage": "a", "step": 2, "loss": 1.0, "loss_distill": 1.0}\n'  # the resumed run redid step 2
        '{"stage": "a", "event": "stage_end", "steps": 2}\n'
        '{"stage": "b", "step": 1, "loss": 0.5, "loss_infonce": 0.4, "loss_distill": 0.1}\n'
        '{"stage": "b", "step": 2, "lo',  # killed mid-write
        encoding="utf-8",
    )
    got = read_training_log(log)
    assert [s for s, _ in got["a"]] == [1, 2] and got["a"][1][1]["loss"] == 1.0
    assert [s for s, _ in got["b"]] == [1] and got["b"][0][1]["loss_infonce"] == 0.4
    assert write_training_chart(log, tmp_path / "t.png").stat().st_size > 1000
    assert write_training_chart(tmp_path / "missing.jsonl", tmp_path / "none.png") is None
