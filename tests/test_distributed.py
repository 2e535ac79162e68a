"""Two real CPU processes (torchrun, gloo, Accelerator(cpu=True)) against one process on the global batch.

The gathered InfoNCE loss (averaged over processes) and the DDP-averaged gradients must equal the
loss and gradients of one process that sees the whole global batch: that is what a differentiable
all_gather plus DDP averaging has to give (local queries against DETACHED remote documents would
miss the cross terms, and this test would fail).

This file is also the worker: torchrun runs it with `--worker OUT`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

W, B, D_SEQ = 2, 4, 12  # processes, local batch, tokens per text


def _model():
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return Qwen3Model(cfg)


def _global_batch():
    g = torch.Generator().manual_seed(1)
    ids = {r: torch.randint(1, 500, (W * B, D_SEQ), generator=g) for r in ("query", "positive", "negative")}
    # Rank 0's doc 1 and rank 1's doc 1 are the same text: a cross-process false negative to mask.
    ids["positive"][B + 1] = ids["positive"][1]
    mask = torch.ones(W * B, D_SEQ, dtype=torch.long)
    mask[:, :3] = 0  # left padding
    keys = {r: ids[r].sum(1) * 1000 + ids[r][:, 5] for r in ids}  # equal texts -> equal keys
    return ids, mask, keys


def _loss(model, ids, mask, keys, rows):
    from koemb.model.pooling import pool
    from koemb.train.losses import gathered_infonce

    def emb(r):
        out = model(input_ids=ids[r][rows], attention_mask=mask[rows]).last_hidden_state
        return pool(out, mask[rows], "lasttoken")

    return gathered_infonce(emb("query"), emb("positive"), negatives=emb("negative"), temperature=0.1,
                            d_keys=keys["positive"][rows], neg_keys=keys["negative"][rows])


def worker(out: str, model_dir: str | None) -> None:
    import torch.distributed as dist
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    assert acc.num_processes == W and dist.get_backend() == "gloo"
    model = acc.prepare(_model())
    ids, mask, keys = _global_batch()
    rank = acc.process_index
    loss = _loss(model, ids, mask, keys, slice(rank * B, (rank + 1) * B))
    acc.backward(loss)
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= W
    grads = {n: p.grad.clone() for n, p in acc.unwrap_model(model).named_parameters()}
    if model_dir:  # the real loop under DDP, two steps of new_rows: must run and agree across ranks
        from test_train import FIRST_NEW, stage, write_data, write_scored
        from transformers import AutoModel, AutoTokenizer

        from koemb.train.encode import read_spec
        from koemb.train.loop import Runtime, train_stage

        root = Path(out).parent
        (root / f"data{rank}").mkdir(exist_ok=True)
        pairs, _ = write_data(root / f"data{rank}")
        tok = AutoTokenizer.from_pretrained(model_dir)

        def rows_equal_across_ranks(cfg, ckpt: str) -> torch.Tensor:
            m = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
            rt = Runtime(checkpoint_dir=root / ckpt, progress=False)
            trained = train_stage(m, tok, cfg, stage_index=0, spec=read_spec(model_dir, 48), first_new_id=FIRST_NEW, runtime=rt, accelerator=acc)
            rows = trained.get_input_embeddings().weight[FIRST_NEW:].detach().clone()
            other = rows.clone()
            dist.broadcast(other, src=0)
            return torch.tensor(float(torch.equal(rows, other)))

        grads["__loop_rows_equal_across_ranks"] = rows_equal_across_ranks(stage([pairs], steps=2, batch_size=3), "ckpt")
        # Scored (cosent) and unscored (infonce, with hard negatives) sources: at some step one rank ranks a
        # scored batch while the other contrasts pairs with negatives; they must agree on roles and collectives.
        mixed = stage([pairs, write_scored(root / f"data{rank}")], steps=4, batch_size=3, objective={"infonce": {}, "cosent": {}})
        grads["__mixed_rows_equal_across_ranks"] = rows_equal_across_ranks(mixed, "ckpt-mixed")
        # GradCache under DDP (no_sync on all chunks but the last) gives the same averaged gradients.
        from koemb.train.data import collate, read_examples
        from koemb.train.loop import _micro_step

        batch = collate(read_examples(pairs)[rank * 4 : rank * 4 + 4], "", 0, rank)
        by_chunk = []
        for chunk in (None, 2):
            net = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
            ddp = acc.prepare(net)
            _micro_step(ddp, batch, tok, read_spec(model_dir, 48), stage([pairs], train="full", grad_cache_chunk=chunk), None, acc, 1.0, sync=True)
            by_chunk.append({n: p.grad.clone() for n, p in net.named_parameters()})
            acc.free_memory()
        diff = max(((by_chunk[0][n] - by_chunk[1][n]).abs().max() / by_chunk[0][n].abs().max().clamp(min=1e-12)).item() for n in by_chunk[0])
        grads["__gradcache_ddp_rel_diff"] = torch.tensor(diff)
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": grads}, out)
    acc.wait_for_everyone()


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path, qwen_dir):
    from test_train import tiny_expanded

    model_dir = tiny_expanded(tmp_path / "m", qwen_dir)
    out = tmp_path / "dist.pt"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [str(torchrun), "--nproc_per_node", str(W), "--standalone", __file__, "--worker", str(out), str(model_dir)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    got = torch.load(out, weights_only=False)

    model = _model()
    ids, mask, keys = _global_batch()
    loss = _loss(model, ids, mask, keys, slice(0, W * B))
    loss.backward()
    assert abs(got["loss"].item() - loss.item()) < 1e-5
    assert got["grads"].pop("__loop_rows_equal_across_ranks").item() == 1.0
    assert got["grads"].pop("__mixed_rows_equal_across_ranks").item() == 1.0
    # The mixed run above did put a scored batch beside an unscored one at some step (the stage seed, 42).
    from koemb.train.data import plan_batches

    plan = plan_batches([48, 12], [1.0, 1.0], 3, 4 * W, 42)
    assert any(plan[2 * s][0] != plan[2 * s + 1][0] for s in range(4))
    assert got["grads"].pop("__gradcache_ddp_rel_diff").item() < 1e-4
    ref = {n: p.grad for n, p in model.named_parameters()}
    assert got["grads"].keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(got["grads"][n], ref[n], rtol=1e-4, atol=1e-6, msg=n)


if __name__ == "__main__":
    if sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
