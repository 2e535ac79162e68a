"""A stage stopped after a checkpoint and resumed reaches the same final weights as one uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from test_train import run_stage, stage, tiny_expanded, write_data

from koemb.train.checkpoint import list_checkpoints, load_checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resume_reaches_the_same_final_weights(tmp_path, qwen_dir):
    folder = tiny_expanded(tmp_path / "m", qwen_dir)
    pairs, text = write_data(tmp_path)
    # LoRA dropout draws from the RNG and the text source cuts spans: both must resume exactly.
    cfg = stage([pairs, text], train={"kind": "lora", "r": 4, "alpha": 8, "dropout": 0.2}, steps=5, lr=1e-2, grad_accumulation=2, warmup_ratio=0.2)

    straight, _ = run_stage(folder, cfg, tmp_path / "a" / "checkpoints")

    crashed, _ = run_stage(folder, cfg, tmp_path / "b" / "checkpoints", stop_after=3, checkpoint_every=2)
    assert crashed is None
    ckpts = list_checkpoints(tmp_path / "b" / "checkpoints")
    assert [p.name for p in ckpts] == ["s00-s-step0000002"]
    state = load_checkpoint(ckpts[-1])
    assert state["step"] == 2 and state["data_position"] == 4
    resumed, _ = run_stage(folder, cfg, tmp_path / "b" / "checkpoints", resume=True, checkpoint_every=2)

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Keep the last 2, and no temporary files are left behind.
    names = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert names == ["s00-s-step0000004", "s00-s-step0000005"]


def test_resume_without_checkpoint_differs_when_training_is_cut(tmp_path, qwen_dir):
    # The check above can fail: a run that trained fewer steps ends elsewhere.
    folder = tiny_expanded(tmp_path / "m", qwen_dir)
    pairs, _ = write_data(tmp_path)
    full, _ = run_stage(folder, stage([pairs], steps=3), tmp_path / "a" / "checkpoints")
    short, _ = run_stage(folder, stage([pairs], steps=2), tmp_path / "b" / "checkpoints")
    assert not torch.equal(full.state_dict()["embed_tokens.weight"], short.state_dict()["embed_tokens.weight"])
