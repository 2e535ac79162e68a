"""How new embedding rows are initialised: a registry of pure functions.

Each method maps the OLD rows and, per new token, the ids of the pieces the BASE tokenizer splits
it into, to the new rows. Methods never touch old rows; `koemb.model.expand` writes what they
return into the resized matrix. Add a method with `@register_init("name")`.

- `mean` (FVT, the seed's): the mean of the base rows of the token's pieces. The new row starts
  where the model already "thinks" the token's text is, so the expanded model begins close to
  the base model on Korean text.
- `mean_norm`: `mean`'s direction at the mean NORM of the pieces' rows. Averaging k vectors that
  point different ways shrinks the result (e5-small: new rows 1.16 vs old rows 1.59), so a token of
  many pieces starts quieter than any word the model has seen; this keeps the direction and undoes
  the shrinkage.
- `first`: the row of the first piece (a cheaper, cruder anchor; useful as an ablation).
- `random`: Gaussian with the old rows' per-dimension mean and std; the no-prior baseline.

Optional noise (`add_relative_noise`) has its std RELATIVE to the old rows' scale, so one setting
means the same for a model whose rows have std 0.02 and one whose rows have std 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from koemb.errors import UserError


@dataclass(frozen=True)
class InitInputs:
    """What an init method may look at."""

    old: Tensor
    """(V_base, D) the base rows (float32 copy; never modified)."""
    pieces: Sequence[Sequence[int]]
    """For each new token, the base ids of its pieces (non-empty, all < V_base)."""
    generator: torch.Generator
    """Seeded generator for methods that draw random numbers."""


InitMethod = Callable[[InitInputs], Tensor]
INIT_METHODS: dict[str, InitMethod] = {}


def register_init(name: str) -> Callable[[InitMethod], InitMethod]:
    def deco(fn: InitMethod) -> InitMethod:
        INIT_METHODS[name] = fn
        return fn

    return deco


def get_init(name: str) -> InitMethod:
    try:
        return INIT_METHODS[name]
    except KeyError:
        raise UserError(f"unknown init method {name!r}; known: {', '.join(sorted(INIT_METHODS))}") from None


def _flat(pieces: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """(ids (P,), owner (P,)): all pieces concatenated, and which new token each belongs to."""
    ids = torch.tensor([i for p in pieces for i in p], dtype=torch.long)
    owner = torch.repeat_interleave(torch.arange(len(pieces)), torch.tensor([len(p) for p in pieces]))
    return ids, owner


@register_init("mean")
def init_mean(inp: InitInputs) -> Tensor:
    """FVT: row = mean of the base rows of the token's base pieces. Returns (N, D)."""
    ids, owner = _flat(inp.pieces)
    sums = torch.zeros(len(inp.pieces), inp.old.shape[1], dtype=inp.old.dtype)
    sums.index_add_(0, owner, inp.old[ids])  # (N, D)
    counts = torch.tensor([len(p) for p in inp.pieces], dtype=inp.old.dtype).unsqueeze(1)  # (N, 1)
    return sums / counts


@register_init("mean_norm")
def init_mean_norm(inp: InitInputs) -> Tensor:
    """`mean`, rescaled per token to the mean L2 norm of its pieces' rows. Returns (N, D)."""
    ids, owner = _flat(inp.pieces)
    rows = init_mean(inp)  # (N, D)
    norms = torch.zeros(len(inp.pieces), dtype=inp.old.dtype)
    norms.index_add_(0, owner, inp.old[ids].norm(dim=1))  # (N,) sum of the pieces' norms
    counts = torch.tensor([len(p) for p in inp.pieces], dtype=inp.old.dtype)
    target = norms / counts  # (N,) mean piece norm
    # A one-piece token's mean is that piece's row: the scale is exactly 1 there.
    return rows * (target / rows.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)


@register_init("first")
def init_first(inp: InitInputs) -> Tensor:
    """Row of the token's first base piece. Returns (N, D)."""
    return inp.old[torch.tensor([p[0] for p in inp.pieces], dtype=torch.long)].clone()


@register_init("random")
def init_random(inp: InitInputs) -> Tensor:
    """Gaussian matching the old rows' per-dimension mean and std; ignores the pieces. Returns (N, D)."""
    mu = inp.old.mean(dim=0)  # (D,)
    sd = inp.old.std(dim=0)  # (D,)
    z = torch.randn(len(inp.pieces), inp.old.shape[1], generator=inp.generator, dtype=inp.old.dtype)
    return mu + z * sd


def row_scale(old: Tensor) -> float:
    """The old rows' element std around their mean row: what "relative" noise is relative to."""
    return float((old - old.mean(dim=0)).pow(2).mean().sqrt())


def add_relative_noise(rows: Tensor, old: Tensor, rel_std: float, generator: torch.Generator) -> tuple[Tensor, float]:
    """rows + N(0, (rel_std * row_scale(old))^2); returns (rows, absolute std used)."""
    if rel_std < 0:
        raise UserError(f"--noise-std must be >= 0 (got {rel_std})")
    if rel_std == 0:
        return rows, 0.0
    std = rel_std * row_scale(old)
    return rows + std * torch.randn(rows.shape, generator=generator, dtype=rows.dtype), std
