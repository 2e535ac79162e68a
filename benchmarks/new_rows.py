"""New rows as their own parameter vs a gradient hook on the full embedding matrix.

Both train only the added rows of a 151,669 + 68,000 row x 1024 embedding (Qwen3-Embedding-0.6B's
vocabulary plus the seed's ~68K Korean tokens) under a tiny Qwen3 transformer (hidden 1024, 1
layer, frozen), with AdamW and weight decay:

- own-parameter: koemb's `new_rows` setup (`koemb.train.setups.NewRows`): the old rows are a frozen
  tensor, the new rows a (68,000, 1024) parameter; AdamW keeps state for those rows only.
- hook: the whole (219,669, 1024) matrix trains and a gradient hook zeroes the old rows' gradients;
  AdamW keeps state for the whole matrix, and its weight decay still moves the old rows.

The two run side by side in one process, interleaved step by step, so machine load hits both alike.
Prints step time, optimizer-state bytes, their ratios, and how far the old rows moved.

    .venv/bin/python benchmarks/new_rows.py                 # CPU, 6 timed steps each
    .venv/bin/python benchmarks/new_rows.py --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Qwen3Config, Qwen3Model

from koemb.train.losses import infonce
from koemb.train.setups import NewRows


def build(rows: int, dim: int, seed: int) -> Qwen3Model:
    cfg = Qwen3Config(vocab_size=rows, hidden_size=dim, intermediate_size=dim, num_hidden_layers=1, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=dim // 8)
    torch.manual_seed(seed)
    return Qwen3Model(cfg)


def setup_own_parameter(model: Qwen3Model, first_new: int, lr: float, wd: float):
    prepared = NewRows().prepare(model, first_new)
    params = list(prepared.trainable().values())
    return prepared.module, torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def setup_hook(model: Qwen3Model, first_new: int, lr: float, wd: float):
    for p in model.parameters():
        p.requires_grad_(False)
    w = model.get_input_embeddings().weight
    w.requires_grad_(True)

    def zero_old(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new] = 0
        return grad

    w.register_hook(zero_old)
    return model, torch.optim.AdamW([w], lr=lr, weight_decay=wd)


def step(model, opt, ids: torch.Tensor, mask: torch.Tensor, sync) -> float:
    t0 = time.perf_counter()
    h = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]  # (2B, D) last-token pooling
    q, d = h.chunk(2)
    infonce(q, d, torch.arange(q.shape[0], device=q.device)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    return time.perf_counter() - t0


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-rows", type=int, default=151_669)
    ap.add_argument("--new-rows", type=int, default=68_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="pairs per step (2x texts)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per variant (after 1 warm-up step)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    rows, first_new = args.base_rows + args.new_rows, args.base_rows
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)

    variants = {}
    for name, fn in (("own-parameter", setup_own_parameter), ("hook", setup_hook)):
        model = build(rows, args.dim, seed=0).to(dev).train()
        old = model.get_input_embeddings().weight.detach()[:first_new].clone()
        module, opt = fn(model, first_new, lr=1e-3, wd=0.01)
        variants[name] = (model, module, opt, old)

    g = torch.Generator().manual_seed(0)
    # Half the tokens are new ids, as on Korean text after the expansion.
    ids = torch.where(torch.rand(2 * args.batch, args.seq, generator=g) < 0.5,
                      torch.randint(0, first_new, (2 * args.batch, args.seq), generator=g),
                      torch.randint(first_new, rows, (2 * args.batch, args.seq), generator=g)).to(dev)
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(args.steps + 1):
        for name, (_, module, opt, _) in variants.items():  # interleaved: A B A B ...
            t = step(module, opt, ids, mask, sync)
            if i > 0:
                times[name].append(t)

    print(f"embedding {rows:,} x {args.dim} ({first_new:,} old + {args.new_rows:,} new rows), tiny Qwen3 (1 layer, frozen), "
          f"AdamW wd 0.01, {2 * args.batch} texts x {args.seq} tokens, device {dev}, torch threads {torch.get_num_threads()}")
    res = {}
    for name, (model, _, opt, old) in variants.items():
        med = statistics.median(times[name])
        sb = state_bytes(opt)
        emb = model.get_input_embeddings()
        w = emb.base.weight if hasattr(emb, "base") else emb.weight
        moved = (w.detach()[:first_new] - old).abs().max().item()
        res[name] = (med, sb)
        print(f"  {name:14s} step {med * 1000:9.1f} ms (median of {len(times[name])}; min {min(times[name]) * 1000:.1f})  "
              f"optimizer state {sb / 2**20:9.1f} MiB   old rows moved by up to {moved:.3g}")
    (t_own, b_own), (t_hook, b_hook) = res["own-parameter"], res["hook"]
    print(f"ratios hook / own-parameter: step time {t_hook / t_own:.2f}x, optimizer state {b_hook / b_own:.2f}x")


if __name__ == "__main__":
    main()
