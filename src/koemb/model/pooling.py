"""Pooling: token states (B, T, D) -> one vector per text (B, D).

`pool` is a pure, differentiable function of its inputs, shared by the encoder (inference) and the
training loop, so that a model is trained exactly the way it is evaluated. It reads the attention
mask instead of assuming a padding side: the same call is right for LEFT padding (Qwen3-Embedding's
recipe, where the last position is the `<|endoftext|>` the tokenizer appends) and RIGHT padding
(where the last real token sits somewhere inside the row).

Normalisation is NOT done here: whether a model L2-normalises is a property of its preset
(`Preset.normalize`), applied by the caller after pooling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor

PoolingMode = Literal["lasttoken", "mean", "cls"]
POOLING_MODES: tuple[str, ...] = get_args(PoolingMode)


def _last_token(last_hidden: Tensor, mask: Tensor) -> Tensor:
    # Index of the LAST position whose mask is 1: (arange * mask) is largest there, for either padding.
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).unsqueeze(0) * mask  # (B, T)
    idx = positions.argmax(dim=1)  # (B,)
    return last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), idx]  # (B, D)


def _first_token(last_hidden: Tensor, mask: Tensor) -> Tensor:
    # FIRST position whose mask is 1 (argmax returns the first maximum): position 0 with right
    # padding, the first real token ([CLS]/<s>) with left padding.
    idx = mask.argmax(dim=1)  # (B,)
    return last_hidden[torch.arange(last_hidden.shape[0], device=last_hidden.device), idx]  # (B, D)


def _mean(last_hidden: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(last_hidden.dtype)  # (B, T, 1)
    summed = (last_hidden * m).sum(dim=1)  # (B, D)
    # clamp: an all-padding row (never produced by a tokenizer, but possible by hand) gives 0, not NaN.
    counts = m.sum(dim=1).clamp(min=1.0)  # (B, 1)
    return summed / counts


POOLERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "lasttoken": _last_token,
    "mean": _mean,
    "cls": _first_token,
}


def pool(last_hidden: Tensor, attention_mask: Tensor, mode: PoolingMode) -> Tensor:
    """Pool token states into one vector per row.

    Args:
        last_hidden: (B, T, D) the model's last hidden state.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; left or right padding.
        mode: "lasttoken" (last real token, e.g. Qwen3-Embedding's appended `<|endoftext|>`),
            "mean" (average of real tokens, e.g. e5), or "cls" (first real token).

    Returns:
        (B, D) pooled vectors, not normalised. Differentiable w.r.t. `last_hidden`.
    """
    if mode not in POOLERS:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLERS)}")
    if last_hidden.dim() != 3 or attention_mask.shape != last_hidden.shape[:2]:
        raise ValueError(
            f"pool: expected last_hidden (B, T, D) and attention_mask (B, T), got {tuple(last_hidden.shape)} "
            f"and {tuple(attention_mask.shape)}"
        )
    return POOLERS[mode](last_hidden, attention_mask.long())
