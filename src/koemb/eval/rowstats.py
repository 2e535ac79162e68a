"""Embedding-row statistics of an expanded model: are the new rows on the scale of the old ones?

An expanded model's folder has `expansion.json` with `first_new_id`: rows with ids >= it are new.
Reported: L2 norms of old and new rows (mean, std) and the mean cosine between each new row and
its nearest old row (a new row that is a copy of an old one scores 1; a random one near 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from koemb.errors import UserError


def first_new_id(model_dir: str | Path) -> int | None:
    """`first_new_id` from the folder's `expansion.json`, or None for a model that was not expanded."""
    path = Path(model_dir) / "expansion.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["first_new_id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: expected a JSON object with an integer 'first_new_id'") from None
    if not isinstance(value, int) or value < 1:
        raise UserError(f"{path}: first_new_id must be a positive integer, got {value!r}")
    return value


def embedding_row_stats(weight: Tensor, first_new: int, end: int | None = None, chunk: int = 256) -> dict[str, float]:
    """Norm statistics of old rows (< first_new) and new rows (first_new <= id < end), and new->nearest-old cosine.

    Args:
        weight: (V, D) input embedding matrix.
        end: one past the last new token id (the tokenizer's length); rows beyond it are spare rows
            that no token uses (a model may have more rows than its tokenizer has tokens). Default V.
    """
    w = weight.detach().float()
    end = w.shape[0] if end is None else min(end, w.shape[0])
    if not 0 < first_new < end:
        raise ValueError(f"first_new_id {first_new} leaves no new rows below {end} (of {w.shape[0]} embedding rows)")
    old, new = w[:first_new], w[first_new:end]  # (O, D), (M, D)
    old_n, new_n = old.norm(dim=1), new.norm(dim=1)
    old_unit = F.normalize(old, dim=1)
    nearest = []
    for s in range(0, new.shape[0], chunk):
        # (c, O) cosines; chunked so that 150k old rows never meet all new rows at once.
        nearest.append((F.normalize(new[s : s + chunk], dim=1) @ old_unit.T).max(dim=1).values)
    return {
        "new_rows": float(new.shape[0]),
        "old_norm_mean": old_n.mean().item(),
        "old_norm_std": old_n.std().item(),
        "new_norm_mean": new_n.mean().item(),
        "new_norm_std": new_n.std().item() if new.shape[0] > 1 else 0.0,
        "new_nearest_old_cos_mean": torch.cat(nearest).mean().item(),
    }
