"""Texts -> pooled embeddings, with gradients, the way the saved model will embed them.

Pooling and padding come from the model's preset (`koemb.model.presets`), and pooling itself is
`koemb.model.pooling.pool`, the function the encoder uses at evaluation: a model trains with the
pooling it is evaluated with (Qwen3-Embedding: the LAST position, which with LEFT padding is the
`<|endoftext|>` its tokenizer appends).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from koemb.model.pooling import PoolingMode, pool
from koemb.model.presets import Preset, detect_preset


@dataclass(frozen=True)
class EncodeSpec:
    pooling: PoolingMode
    padding_side: Literal["left", "right"]
    max_length: int

    @classmethod
    def from_preset(cls, preset: Preset, max_length: int | None = None) -> EncodeSpec:
        return cls(preset.pooling, preset.padding_side, min(max_length or preset.max_length, preset.max_length))


def read_spec(folder: str | Path, max_length: int | None = None) -> EncodeSpec:
    """The spec of a model folder, from its detected preset."""
    return EncodeSpec.from_preset(detect_preset(folder), max_length)


def tokenize(tokenizer: Any, texts: list[str], spec: EncodeSpec) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = spec.padding_side
    enc = tokenizer(texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def embed(model: nn.Module, enc: dict[str, torch.Tensor], spec: EncodeSpec) -> torch.Tensor:
    """(B, D) pooled, not normalised (the losses normalise)."""
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return pool(out.last_hidden_state, enc["attention_mask"], spec.pooling)
