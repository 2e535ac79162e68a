"""Training throughput per stage kind, measured side by side in one run.

Each stage kind koemb trains (`new_rows`, `all_rows`, `lora`, `full`; the setups of
`koemb.train.setups`) gets its own copy of the same model and its own AdamW; the copies take
optimizer steps in turn (A B C D A B C D ...), so machine load hits them alike. One more variant,
`lora` on SHUFFLED batches, measures what length-grouped batches buy (the loop groups by length).
Every step is one InfoNCE step on real Korean text tokenised by the model's real tokenizer: the
batch's first half are queries, the second half their positives.

Printed per variant: real (non-padding) tokens per second, padding share, step time, and ratios
against `full`. On CUDA also the model FLOP utilisation (bf16 autocast, SDPA attention):

    FLOPs per real token = (4 + 2 * trains_weights) * N  +  12 * L * d_attn * T
    N: transformer parameters without the embedding (forward 2N, input gradients 2N, weight
       gradients 2N only when the stage trains the transformer's weights: `full`; a LoRA adapter's
       own FLOPs are ignored); T: the sequence's real length; L layers; d_attn = heads * head_dim.
    MFU = FLOPs per second / peak dense bf16 FLOPs of the device (--peak-tflops, or a table).

Models:
    default   a Qwen3-Embedding-0.6B shape (hidden 1024, 16 heads, 8 kv heads, head_dim 128) with the
              real Qwen3 vocabulary plus --new-rows rows and the real tokenizer; random weights;
              --layers transformer layers (28 = the real depth; default 28 on CUDA, 2 on the CPU).
    --model   any koemb-expanded sentence-transformers folder (e.g. outputs/me5-small-ko/expanded):
              its weights, its expanded tokenizer, its expansion.json for the new rows.

    .venv/bin/python benchmarks/train_throughput.py                          # CPU, Qwen3 shape, 2 layers
    .venv/bin/python benchmarks/train_throughput.py --model outputs/me5-small-ko-quick/expanded
    .venv/bin/python benchmarks/train_throughput.py --device cuda --steps 10  # 28 layers, bf16, MFU
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from koemb.resources import KO_SAMPLE, qwen3_embedding_tokenizer_dir
from koemb.train.encode import EncodeSpec, embed, read_spec, tokenize
from koemb.train.losses import infonce
from koemb.train.setups import SETUPS

PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10G": 125.0, "L4": 121.0}
"""Dense bf16 tensor-core peaks (vendor data sheets, no sparsity), matched by substring of the device name."""

LORA = {"kind": "lora", "r": 16, "alpha": 32}


@dataclass
class Variant:
    name: str
    kind: str
    grouped: bool
    module: nn.Module
    opt: torch.optim.Optimizer
    batches: list[list[str]]
    times: list[float]
    real_tokens: list[int]
    padded_tokens: list[int]
    flops: list[float]


def qwen3_shape(layers: int, new_rows: int, attn: str) -> tuple[nn.Module, object, EncodeSpec, int]:
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    tok = AutoTokenizer.from_pretrained(str(qwen3_embedding_tokenizer_dir()))
    first_new = len(tok)
    cfg = Qwen3Config(
        vocab_size=first_new + new_rows, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        tie_word_embeddings=True, pad_token_id=151643, eos_token_id=151643, attn_implementation=attn,
    )
    torch.manual_seed(0)
    model = Qwen3Model(cfg)
    # Left padding + last-token pooling, as the qwen3-embedding preset trains.
    return model, tok, EncodeSpec("lasttoken", "left", 512), first_new


def from_folder(folder: Path, attn: str) -> tuple[nn.Module, object, EncodeSpec, int]:
    from transformers import AutoModel, AutoTokenizer

    from koemb.model.expand import read_expansion
    from koemb.model.files import transformer_dir

    tdir = transformer_dir(folder)
    expansion = read_expansion(Path(tdir))  # checked: valid JSON with first_new_id, or a UserError naming the file
    if expansion is None:
        raise SystemExit(f"{folder}: no expansion.json; pass a folder written by `koemb model expand`")
    first_new = int(expansion["first_new_id"])
    model = AutoModel.from_pretrained(str(tdir), attn_implementation=attn, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(tdir))
    return model, tok, read_spec(folder), first_new


def korean_texts(path: Path | None) -> list[str]:
    if path is None:
        return [t for t in KO_SAMPLE.read_text(encoding="utf-8").splitlines() if t.strip()]
    from koemb.data.jsonl import iter_jsonl  # file:line on a malformed line

    texts = []
    for line_no, obj in iter_jsonl(path):
        if not isinstance(obj.get("text"), str):
            raise SystemExit(f"{path}:{line_no}: expected a `text` string field")
        texts.append(obj["text"])
    return texts


def make_batches(texts: list[str], tok, spec: EncodeSpec, size: int, n: int, grouped: bool, seed: int) -> list[list[str]]:
    """n batches of `size` texts: length-grouped (texts sorted by token length, consecutive runs) or shuffled."""
    rng = random.Random(seed)
    pool = texts[:]
    rng.shuffle(pool)
    pool = pool[: size * n * 4]
    if grouped:
        lengths = [len(ids) for ids in tok(pool, truncation=True, max_length=spec.max_length)["input_ids"]]
        pool = [t for _, t in sorted(zip(lengths, pool), key=lambda x: x[0])]
    chunks = [pool[i : i + size] for i in range(0, len(pool) - size + 1, size)]
    rng.shuffle(chunks)  # grouped batches in random order, as the loop draws them
    if len(chunks) < n:
        raise SystemExit(f"only {len(chunks)} batches of {size} texts in the text file; need {n}")
    return chunks[:n]


def transformer_params(model: nn.Module) -> int:
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb and p.dim() > 1)


def step_flops(cfg, n_params: int, lengths: torch.Tensor, trains_weights: bool) -> float:
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    per_token = (4 + 2 * trains_weights) * n_params
    attn = 12 * cfg.num_hidden_layers * d_attn * (lengths.float() ** 2).sum().item()  # sum over sequences of T * T
    return per_token * lengths.sum().item() + attn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="an expanded sentence-transformers folder (default: the Qwen3 shape)")
    ap.add_argument("--layers", type=int, help="Qwen3 shape: transformer layers (default 28 on CUDA, 2 on the CPU)")
    ap.add_argument("--new-rows", type=int, default=68_000, help="Qwen3 shape: rows appended to the 151,669 (default: the seed's ~68K)")
    ap.add_argument("--texts", type=Path, help="JSON lines with a `text` field (default: koemb's built-in Korean sample)")
    ap.add_argument("--batch", type=int, default=16, help="texts per step (half queries, half positives)")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant, after one warm-up step")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU (default: from a table)")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, flash_attention_2)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)

    if args.model:
        base, tok, spec, first_new = from_folder(args.model, args.attn)
        what = f"{args.model} ({base.config.model_type})"
    else:
        layers = args.layers or (28 if cuda else 2)
        base, tok, spec, first_new = qwen3_shape(layers, args.new_rows, args.attn)
        what = f"Qwen3-Embedding-0.6B shape, {layers} layers, random weights"
    spec = EncodeSpec(spec.pooling, spec.padding_side, min(spec.max_length, args.max_length))
    n_params = transformer_params(base)
    rows = base.get_input_embeddings().num_embeddings
    texts = korean_texts(args.texts)

    variants: list[Variant] = []
    plan = [("new_rows", "new_rows", True), ("all_rows", "all_rows", True), ("lora", LORA, True), ("full", "full", True),
            ("lora-shuffled", LORA, False)]
    for name, train, grouped in plan:
        model = copy.deepcopy(base).to(dev).train()
        setup = SETUPS[train if isinstance(train, str) else train["kind"]].model_validate(
            train if isinstance(train, dict) else {"kind": train})
        if setup.kind == "lora":
            setup = setup.model_copy(update={"target_modules": sorted(
                {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
                & {"q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value"})})
        prepared = setup.prepare(model, first_new)
        opt = torch.optim.AdamW(list(prepared.trainable().values()), lr=1e-5, weight_decay=0.01)
        # The same texts in the same order for every variant; `grouped` only changes how they are batched.
        batches = make_batches(texts, tok, spec, args.batch, args.steps + 1, grouped, seed=0)
        variants.append(Variant(name, setup.kind, grouped, prepared.module, opt, batches, [], [], [], []))
    del base

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    for s in range(args.steps + 1):
        for v in variants:  # interleaved
            enc = {k: t.to(dev) for k, t in tokenize(tok, v.batches[s], spec).items()}
            sync()
            t0 = time.perf_counter()
            with autocast:
                h = embed(v.module, enc, spec)  # (B, D)
            q, d = h.float().chunk(2)
            infonce(q, d, torch.arange(q.shape[0], device=dev), temperature=0.05).backward()
            v.opt.step()
            v.opt.zero_grad(set_to_none=True)
            sync()
            if s > 0:  # the first step warms up kernels and allocates optimizer state
                lengths = enc["attention_mask"].sum(1).cpu()
                v.times.append(time.perf_counter() - t0)
                v.real_tokens.append(int(lengths.sum()))
                v.padded_tokens.append(enc["attention_mask"].numel())
                cfg = v.module.config if hasattr(v.module, "config") else v.module.base_model.model.config
                v.flops.append(step_flops(cfg, n_params, lengths, v.kind == "full"))

    peak = args.peak_tflops
    if cuda and peak is None:
        name = torch.cuda.get_device_name(dev)
        peak = next((p for k, p in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(f"{what}; embedding rows {first_new:,} old + {rows - first_new:,} new; transformer params {n_params / 1e6:.1f}M; "
          f"{args.batch} texts/step, max {spec.max_length} tokens; device {dev}"
          f"{' ' + torch.cuda.get_device_name(dev) + ' bf16 autocast' if cuda else ' fp32'}; attention {args.attn}; "
          f"torch threads {torch.get_num_threads()}; {args.steps} timed steps each, interleaved")
    rate = {}
    for v in variants:
        tps = sum(v.real_tokens) / sum(v.times)
        rate[v.name] = tps
        pad = 1 - sum(v.real_tokens) / sum(v.padded_tokens)
        mfu = ""
        if cuda and peak:
            mfu = f"  MFU {100 * sum(v.flops) / sum(v.times) / (peak * 1e12):5.1f}%"
        print(f"  {v.name:14s} {'grouped ' if v.grouped else 'shuffled'}  {tps:10.0f} tokens/s  step "
              f"{statistics.median(v.times) * 1000:8.1f} ms (median)  padding {100 * pad:4.1f}%{mfu}")
    if cuda and not peak:
        print("  MFU: unknown device peak; pass --peak-tflops")
    print("ratios (tokens/s): " + ", ".join(f"{k} / full {rate[k] / rate['full']:.2f}x" for k in ("new_rows", "all_rows", "lora"))
          + f"; lora grouped / shuffled {rate['lora'] / rate['lora-shuffled']:.2f}x")


if __name__ == "__main__":
    main()
