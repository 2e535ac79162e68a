"""Security: no pickle and no model code unless asked, config values are data, config paths are config-relative."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from koemb.cli import main
from koemb.train.pipeline import load_pipeline

TINY = Path(__file__).parent / "data" / "tiny_pipeline.yaml"


class _Payload:
    """Unpickling this creates a file: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from koemb.model.tiny import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "m", max_seq_length=64)


def pickle_model(tmp_path: Path, tiny_model: Path) -> tuple[Path, Path]:
    """The tiny model's config and tokenizer with its weights as a booby-trapped pytorch_model.bin."""
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PICKLE_WAS_LOADED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return folder, marker


def run_err(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, " ".join(err[err.find("error:"):].split())


def cfg_file(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(changes)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


@pytest.mark.parametrize("field", ["base_model", "expanded_model"])
def test_pickle_weights_refused_before_anything_is_read(capsys, tmp_path, tiny_model, field):
    folder, marker = pickle_model(tmp_path, tiny_model)
    changes = {"base_model": str(folder)} if field == "base_model" else {"expanded_model": str(folder), "tokenizer": None}
    out = tmp_path / "o"
    code, err = run_err(capsys, "run", "--config", cfg_file(tmp_path, **changes), "--out", out)
    assert code == 2 and f"{field}: " in err and "weights only as pickle (pytorch_model.bin)" in err
    assert "koemb loads safetensors only" in err and "allow_pickle: true" in err
    assert not marker.exists() and not out.exists()


def test_pickle_model_refused_by_evaluate(capsys, tmp_path, tiny_model):
    folder, marker = pickle_model(tmp_path, tiny_model)
    suite = tmp_path / "s.yaml"
    suite.write_text("tasks: [{name: separation, type: separation, limit: 4}]\n")
    code, err = run_err(capsys, "evaluate", "--model", folder, "--suite", suite, "--out", tmp_path / "ev", "--no-cache")
    assert code == 2 and "weights only as pickle (pytorch_model.bin)" in err and "koemb loads safetensors only" in err
    assert not marker.exists()


def test_model_code_needs_trust_remote_code(capsys, tmp_path, tiny_model):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_evil.py").write_text("open('EVIL_CODE_RAN', 'w')\n")
    out = tmp_path / "o"
    code, err = run_err(capsys, "run", "--config", cfg_file(tmp_path, base_model=str(folder)), "--out", out)
    assert code == 2 and "needs its own Python code" in err and "trust_remote_code is off" in err
    assert "trust_remote_code: true" in err and not out.exists()
    # Asked for explicitly, the check lets it through (validate stops before loading anything).
    p = cfg_file(tmp_path, base_model=str(folder), trust_remote_code=True)
    assert main(["validate", "--config", str(p)]) == 0


def test_config_values_are_never_code(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "CODE_RAN"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    p = cfg_file(tmp_path)
    cfg = load_pipeline(p, [f"stages.0.query_prompt={payload}", "runtime.log_every=1"])
    assert cfg.stages[0].query_prompt == payload and not marker.exists()  # a string, kept as a string
    code, err = run_err(capsys, "validate", "--config", p, "--set", f"stages.0.name=!!python/object/apply:os.system ['touch {marker}']")
    assert code == 2 and "not valid YAML" in err and not marker.exists()


def test_paths_resolve_against_the_config_folder(tmp_path, monkeypatch, capsys):
    proj = tmp_path / "proj"
    (proj / "data").mkdir(parents=True)
    (proj / "data" / "pairs.jsonl").write_text('{"query": "가", "positive": "나"}\n', encoding="utf-8")
    (proj / "suite.yaml").write_text("tasks: [{name: separation, type: separation, limit: 4}]\n")
    cfg = yaml.safe_load(TINY.read_text())
    cfg["stages"][1]["data"] = [{"path": "data/pairs.jsonl"}]
    cfg["evaluation"]["suite"] = "suite.yaml"
    cfg["tokenizer"]["donor"] = "Org/some-donor"  # a hub id stays a hub id
    cfg["tokenizer"].pop("train_donor_vocab_size")
    (proj / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "more.jsonl").write_text('{"text": "다"}\n', encoding="utf-8")
    monkeypatch.chdir(elsewhere)

    loaded = load_pipeline(Path("..") / "proj" / "c.yaml")
    assert loaded.stages[1].data[0].path == str(proj / "data" / "pairs.jsonl")
    assert loaded.evaluation.suite == str(proj / "suite.yaml")
    assert loaded.tokenizer.donor == "Org/some-donor" and loaded.stages[0].data[0].path == "builtin:ko-sample"
    # --set values come from the command line: relative to the working directory.
    over = load_pipeline(proj / "c.yaml", ["stages.0.data.0.path=more.jsonl"])
    assert over.stages[0].data[0].path == str(elsewhere / "more.jsonl")
    assert main(["validate", "--config", str(Path("..") / "proj" / "c.yaml")]) == 0, capsys.readouterr().err
    # An inline suite's files too.
    cfg["evaluation"]["suite"] = {"tasks": [{"name": "s", "type": "sts", "path": "data/sts.jsonl"}]}
    (proj / "c.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    assert load_pipeline(proj / "c.yaml").evaluation.suite["tasks"][0]["path"] == str(proj / "data" / "sts.jsonl")
