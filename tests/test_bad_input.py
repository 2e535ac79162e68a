"""User mistakes through the CLI: exit code 2, one paragraph naming the file/field/line and what was expected,
no traceback, and nothing that was already written is damaged (or nothing written at all).

Corpus and tokenizer mistakes are in test_vocab_bad_input.py; this file covers configs, output folders,
models, training data and evaluation inputs. README "Reliability" counts both files.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from koemb.cli import main

TINY = Path(__file__).parent / "data" / "tiny_pipeline.yaml"


def tree(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def refused(capsys):
    """refused(args, *phrases, untouched=folder): exit 2, every phrase in the one-paragraph message, folder unchanged."""

    def check(args: list[str], *phrases: str, untouched: Path | None = None) -> str:
        before = tree(untouched) if untouched else None
        existed = untouched.exists() if untouched else None
        code = main([str(a) for a in args])
        full = capsys.readouterr().err
        assert code == 2, (code, full)
        assert "Traceback" not in full and full.count("error:") == 1, full
        err = full[full.index("error:"):]  # (transformers' progress bars may come before it)
        assert "\n\n" not in err.strip(), err  # one paragraph
        flat = " ".join(err.split())
        for ph in phrases:
            assert ph in flat, (ph, flat)
        if untouched is not None:
            assert untouched.exists() == existed and tree(untouched) == before
        return flat

    return check


def tiny_cfg(**changes) -> dict:
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(changes)
    return cfg


def write_cfg(folder: Path, cfg: dict, name: str = "c.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from koemb.model.tiny import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "m", max_seq_length=64)


# ----------------------------------------------------------------------------- configs


def test_config_file_missing(refused, tmp_path):
    refused(["run", "--config", tmp_path / "nope.yaml", "--out", tmp_path / "o"], "nope.yaml: config file not found", untouched=tmp_path / "o")


def test_config_not_yaml(refused, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stages:\n  - {name: a\n")
    refused(["run", "--config", p, "--out", tmp_path / "o"], "c.yaml: not valid YAML", "line 2", untouched=tmp_path / "o")


def test_unknown_key_named_with_suggestion(refused, tmp_path):
    cfg = tiny_cfg()
    cfg["stages"][0]["batchsize"] = 8
    refused(["run", "--config", write_cfg(tmp_path, cfg), "--out", tmp_path / "o"],
            "stages.0.batchsize: unknown key 'batchsize' (did you mean 'batch_size'?)", untouched=tmp_path / "o")


def test_wrong_type(refused, tmp_path):
    cfg = tiny_cfg()
    cfg["stages"][1]["steps"] = "many"
    refused(["run", "--config", write_cfg(tmp_path, cfg), "--out", tmp_path / "o"], "c.yaml: invalid configuration",
            "stages.1.steps: Input should be a valid integer", "'many'", untouched=tmp_path / "o")


def test_negative_learning_rate(refused, tmp_path):
    refused(["run", "--config", TINY, "--out", tmp_path / "o", "--set", "stages.0.lr=-1e-3"],
            "stages.0.lr: Input should be greater than 0", "-1e-3", untouched=tmp_path / "o")


def test_lora_target_module_the_model_lacks(refused, tmp_path):
    refused(["run", "--config", TINY, "--out", tmp_path / "o", "--set", "stages.1.train.target_modules=[q_proj,qkv_proj]"],
            "stages.1.train.target_modules: ['qkv_proj'] match no linear layer", "'q_proj'", "'down_proj'", untouched=tmp_path / "o")


def test_unknown_init_method(refused, tmp_path):
    refused(["run", "--config", TINY, "--out", tmp_path / "o", "--set", "init.method=meen"],
            "init.method: Value error, unknown init method 'meen' (did you mean 'mean'?); known: mean, mean_norm, first, random", untouched=tmp_path / "o")


def test_unsafe_stage_name(refused, tmp_path):
    refused(["validate", "--config", TINY, "--set", "stages.0.name=../../etc"], "stages.0.name", "folder-safe name")


def test_bad_set_syntax(refused, tmp_path):
    refused(["run", "--config", TINY, "--out", tmp_path / "o", "--set", "stages.0.lr"], "--set 'stages.0.lr': expected KEY.PATH=VALUE",
            untouched=tmp_path / "o")


def test_missing_training_file_named_by_field(refused, tmp_path):
    cfg = tiny_cfg()
    cfg["stages"][1]["data"] = [{"path": "pairs.jsonl"}]  # relative to the config's folder, where it is not
    refused(["run", "--config", write_cfg(tmp_path / "cfg", cfg), "--out", tmp_path / "o"],
            f"stages.1.data.0.path: {tmp_path / 'cfg' / 'pairs.jsonl'} does not exist", untouched=tmp_path / "o")


def test_missing_suite_file(refused, tmp_path):
    refused(["run", "--config", TINY, "--out", tmp_path / "o", "--set", f"evaluation.suite={tmp_path / 'suite.yaml'}"],
            "suite.yaml", untouched=tmp_path / "o")


# ----------------------------------------------------------------------------- output folders


def test_output_folder_exists(refused, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("hours of work")
    refused(["run", "--config", TINY, "--out", out], "already exists and is not empty", "--overwrite", "--resume", untouched=out)


def test_resume_nothing_there(refused, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    refused(["run", "--config", TINY, "--out", out, "--resume"], "nothing to resume (no config.yaml)", untouched=out)


def test_resume_with_a_changed_config(refused, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    from koemb.config import dump_yaml_model
    from koemb.train.pipeline import load_pipeline

    dump_yaml_model(load_pipeline(TINY), out / "config.yaml")
    refused(["run", "--config", TINY, "--out", out, "--resume", "--set", "stages.0.lr=0.5"], "config.yaml: the config differs", untouched=out)


def test_resume_and_overwrite_together(refused, tmp_path):
    refused(["run", "--config", TINY, "--out", tmp_path / "o", "--resume", "--overwrite"], "--resume and --overwrite exclude each other",
            untouched=tmp_path / "o")


# ----------------------------------------------------------------------------- models


def test_tokenizer_with_more_tokens_than_rows(refused, tmp_path, tiny_model):
    import shutil

    from transformers import AutoTokenizer

    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    tok = AutoTokenizer.from_pretrained(str(m))
    tok.add_tokens(["안녕하세요", "감사합니다", "사랑해요"])
    tok.save_pretrained(str(m))
    cfg = tiny_cfg(stages=[{**tiny_cfg()["stages"][1], "train": "full"}])  # infonce only: no teacher needed
    refused(["train", "--config", write_cfg(tmp_path, cfg), "--out", tmp_path / "o", "--model", m],
            f"{m}: the tokenizer has 151672 tokens but the model has only 151669 embedding rows", untouched=m)


def test_malformed_training_jsonl_names_file_and_line(refused, tmp_path, tiny_model):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"query": "가", "positive": "나"}\n{"query": "다", "positive": "라"}\n{"query": "x"\n', encoding="utf-8")
    cfg = tiny_cfg(stages=[{**tiny_cfg()["stages"][1], "train": "full", "data": [{"path": str(data)}]}])
    refused(["train", "--config", write_cfg(tmp_path, cfg), "--out", tmp_path / "o", "--model", tiny_model], f"{data}:3: malformed JSON line")


def test_donor_with_no_new_tokens(refused, tmp_path, tiny_model):
    corpus = tmp_path / "c.txt"
    corpus.write_text("안녕하세요 반갑습니다\n" * 5, encoding="utf-8")
    refused(["vocab", "expand", "--base", tiny_model, "--donor", tiny_model, "--method", "bpe-donor", "--corpus", corpus, "--out", tmp_path / "x"],
            "has no tokens that the base", "nothing to add", untouched=tmp_path / "x")


# ----------------------------------------------------------------------------- evaluation inputs


def beir(folder: Path, qrels: str | None) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "title": "", "text": "문서 하나"}\n{"_id": "d2", "title": "", "text": "문서 둘"}\n', encoding="utf-8")
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "질문"}\n', encoding="utf-8")
    if qrels is not None:
        (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return folder


def suite(tmp_path: Path, task: dict) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump({"tasks": [task]}), encoding="utf-8")
    return p


def test_beir_folder_without_qrels(refused, tmp_path, tiny_model):
    b = beir(tmp_path / "beir", None)
    refused(["evaluate", "--model", tiny_model, "--suite", suite(tmp_path, {"name": "r", "type": "retrieval", "path": str(b)}),
             "--out", tmp_path / "ev", "--no-cache"], f"{b / 'qrels' / 'test.tsv'}: not found", untouched=tmp_path / "ev")


def test_beir_qrels_pointing_nowhere(refused, tmp_path, tiny_model):
    b = beir(tmp_path / "beir", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    refused(["evaluate", "--model", tiny_model, "--suite", suite(tmp_path, {"name": "r", "type": "retrieval", "path": str(b)}),
             "--out", tmp_path / "ev", "--no-cache"], f"{b / 'qrels' / 'test.tsv'}:3: corpus-id 'd9' is not in corpus.jsonl",
            untouched=tmp_path / "ev")


def test_sts_file_without_score_column(refused, tmp_path, tiny_model):
    sts = tmp_path / "sts.jsonl"
    sts.write_text('{"sentence1": "가", "sentence2": "나", "label": 3}\n', encoding="utf-8")
    refused(["evaluate", "--model", tiny_model, "--suite", suite(tmp_path, {"name": "s", "type": "sts", "path": str(sts)}),
             "--out", tmp_path / "ev", "--no-cache"], f"{sts}:1: missing ['score']", "expected columns ['sentence1', 'sentence2', 'score']",
             untouched=tmp_path / "ev")
