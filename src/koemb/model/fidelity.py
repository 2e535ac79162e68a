"""How far each new token moves a trained model's embedding from the pieces it replaced (`rank_by: fidelity`).

Why: a trained expanded model reads a text worse through its new tokens than through the base pieces. On
the e5 study the same final weights score 0.9 points higher with the base tokenizer (docs/results.md,
session 17), and fitting the rows further does not close that gap. Which new tokens carry that cost is
measurable one token at a time, so a prune can drop the tokens that cost the most per token they save.

The measurement, on short chunks of training text (`ContextSampler`): the chunk read with EVERY new token
spelt out as its base pieces (`base_ids`, what `koemb model expand` initialised it from; the plain reading),
against the same chunk with ONE occurrence of a new token kept as that token. The token's damage is the mean
`1 - cos` between the two pooled embeddings over its sampled occurrences: the model's own plain reading is
the reference, so the number says how much this single substitution changes what the model sees.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass
class ContextSampler:
    """Collect up to `per_token` occurrences of each new id (>= `first`) in chunks of `width` ids.

    Texts are cut into consecutive chunks (not windows around each occurrence), so one plain reading
    serves every occurrence that chunk holds. Occurrences are taken in corpus order.
    """

    first: int
    per_token: int = 3
    width: int = 16
    taken: Counter[int] = field(default_factory=Counter)
    chunks: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (ids, positions to test)

    def add(self, ids: Sequence[int]) -> None:
        for s in range(0, len(ids), self.width):
            chunk = list(ids[s : s + self.width])
            pos = []
            for p, i in enumerate(chunk):
                if i >= self.first and self.taken[i] < self.per_token:
                    self.taken[i] += 1
                    pos.append(p)
            if pos:
                self.chunks.append((chunk, pos))


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (XLM-R: [<s>], [</s>]; Qwen3: [], [<|endoftext|>])."""
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(inner) + 1):
        if full[k : k + len(inner)] == inner:
            return list(full[:k]), list(full[k + len(inner) :])
    raise ValueError("cannot find the text's ids inside its encoding with special tokens")


def spell_out(chunk: Sequence[int], pieces: Mapping[int, Sequence[int]], keep: int | None = None) -> list[int]:
    """`chunk` with every new id (a key of `pieces`) replaced by its base pieces, except position `keep`."""
    out: list[int] = []
    for p, i in enumerate(chunk):
        if p != keep and i in pieces:
            out.extend(pieces[i])
        else:
            out.append(i)
    return out


@torch.no_grad()
def _embed_all(model: torch.nn.Module, seqs: list[list[int]], pad_id: int, left: bool, preset: Any, batch_size: int) -> torch.Tensor:
    """(N, D) pooled, normalised embeddings of id sequences, in their order; batches of similar length."""
    from koemb.model.encoder import embed_tokens

    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda k: len(seqs[k]))
    out: list[torch.Tensor | None] = [None] * len(seqs)
    batches: Any = range(0, len(order), batch_size)
    if len(batches) > 20:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="fidelity: new-token damage", unit="batch", leave=False)
    for b in batches:
        idx = order[b : b + batch_size]
        width = max(len(seqs[k]) for k in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, k in enumerate(idx):
            s = seqs[k]
            sl = slice(width - len(s), width) if left else slice(0, len(s))
            ids[r, sl] = torch.tensor(s, dtype=torch.long)
            mask[r, sl] = 1
        emb = embed_tokens(model, ids.to(device), mask.to(device), preset).float().cpu()  # (B, D)
        for r, k in enumerate(idx):
            out[k] = emb[r]
    return torch.stack(out)  # type: ignore[arg-type]


def new_token_damage(
    model_dir: str | Path,
    sampler: ContextSampler,
    pieces: Mapping[int, Sequence[int]],
    *,
    batch_size: int = 256,  # short sequences: big batches keep a CPU busy (e5-small, 2 cores: 37 vs 27 readings/s at 64)
    trust_remote_code: bool = False,
) -> dict[int, float]:
    """Mean `1 - cos` (plain reading vs one occurrence kept new) per new id over the sampler's chunks.

    pieces: new id -> its base ids. Ids never sampled are absent from the result.
    """
    from transformers import AutoTokenizer

    from koemb.model.encoder import default_device, default_dtype
    from koemb.model.expand import load_base_model
    from koemb.model.files import transformer_dir
    from koemb.model.presets import detect_preset

    preset = detect_preset(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir(Path(model_dir))), trust_remote_code=trust_remote_code)
    lead, trail = special_frame(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (trail or lead or [0])[-1]
    net, _ = load_base_model(model_dir, trust_remote_code=trust_remote_code)
    device = default_device()
    net.to(device=device, dtype=default_dtype(device)).eval()

    # Per chunk: its plain reading, then one reading per tested occurrence (the order the loop below reads).
    seqs: list[list[int]] = []
    for chunk, pos in sampler.chunks:
        seqs.append(lead + spell_out(chunk, pieces) + trail)
        seqs.extend(lead + spell_out(chunk, pieces, keep=p) + trail for p in pos)
    log.info("fidelity: %d chunks, %d occurrences of %d new tokens (%d readings)",
             len(sampler.chunks), len(seqs) - len(sampler.chunks), len(sampler.taken), len(seqs))
    emb = _embed_all(net, seqs, pad_id, preset.padding_side == "left", preset, batch_size)  # (N, D)

    total: dict[int, float] = {}
    count: Counter[int] = Counter()
    k = 0
    for chunk, pos in sampler.chunks:
        plain = emb[k]
        k += 1
        for p in pos:
            d = 1.0 - float(F.cosine_similarity(emb[k], plain, dim=0))
            k += 1
            total[chunk[p]] = total.get(chunk[p], 0.0) + d
            count[chunk[p]] += 1
    return {i: total[i] / count[i] for i in total}
