from typing import Literal

import pytest

from koemb.config import StrictModel, apply_overrides, load_yaml_model
from koemb.errors import UserError


class Inner(StrictModel):
    lr: float = 1e-4
    kind: Literal["a", "b"] = "a"


class Outer(StrictModel):
    name: str
    inner: Inner = Inner()
    stages: list[Inner] = []


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ninner:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as e:
        load_yaml_model(Outer, p)
    msg = str(e.value)
    assert "inner.lrr" in msg and "did you mean 'lr'" in msg and str(p) in msg


def test_wrong_type_names_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\ninner: {lr: fast}\n")
    with pytest.raises(UserError, match=r"inner\.lr"):
        load_yaml_model(Outer, p)


def test_overrides_reach_nested_and_list_items(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nstages:\n  - {lr: 0.1}\n  - {lr: 0.2}\n")
    cfg = load_yaml_model(Outer, p, ["stages.1.lr=3e-4", "inner.kind=b"])
    assert cfg.stages[1].lr == pytest.approx(3e-4) and cfg.inner.kind == "b"
    with pytest.raises(UserError, match="not a valid index"):
        apply_overrides({"stages": []}, ["stages.3.lr=1"])


def test_yaml_is_never_executed(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml_model(Outer, p)
