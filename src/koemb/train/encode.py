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

from koemb.errors import UserError
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


def tokenize(tokenizer: Any, texts: list[str], spec: EncodeSpec, *, words: bool = False) -> dict[str, torch.Tensor]:
    """Padded ids and mask; with `words`, also `word_ids` (B, T), see `word_index`."""
    tokenizer.padding_side = spec.padding_side
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt",
        return_offsets_mapping=words, return_special_tokens_mask=words,
    )
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if words:
        out["word_ids"] = word_index(texts, enc["offset_mapping"], enc["special_tokens_mask"] | (1 - enc["attention_mask"]))
    return out


def word_index(texts: list[str], offsets: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """(B, T) index of the whitespace-separated word of `texts[b]` each token belongs to; -1 for special
    tokens, padding and tokens of whitespace only.

    From character offsets, not the tokenizer's own word ids: those follow its pre-tokenizer (and added
    tokens split words), so two tokenizers could number the same text's words differently. A token
    belongs to the word of its LAST character (a leading-space token's offsets may start on the space).

    offsets: (B, T, 2) character spans (`return_offsets_mapping`); special: (B, T) 1 where not a text token.
    """
    out = torch.full(special.shape, -1, dtype=torch.long)
    for b, text in enumerate(texts):
        char_word, w, inside = [], -1, False
        for ch in text:
            if ch.isspace():
                inside = False
                char_word.append(-1)
            else:
                w += 0 if inside else 1
                inside = True
                char_word.append(w)
        for t, (start, end) in enumerate(offsets[b].tolist()):
            if not special[b, t] and end > start and end <= len(char_word):
                out[b, t] = char_word[end - 1]
    return out


def embed(model: nn.Module, enc: dict[str, torch.Tensor], spec: EncodeSpec) -> torch.Tensor:
    """(B, D) pooled, not normalised (the losses normalise)."""
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    return pool(out.last_hidden_state, enc["attention_mask"], spec.pooling)


def word_states(hidden: torch.Tensor, word_ids: torch.Tensor, attention_mask: torch.Tensor, max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states -> one vector per whitespace word: the mean of the states of the word's tokens.

    The words are the same for two tokenizers that share a normaliser and pre-tokenizer (a tokenizer
    and its expansion): their vectors can be compared word by word even though the tokens differ.

    Args:
        hidden: (B, T, D) last hidden states.
        word_ids: (B, T) word index per token, -1 for special tokens and padding.
        attention_mask: (B, T), to tell a row cut at `max_length` (its last word may be incomplete).
        max_length: the tokenizer's truncation length.

    Returns:
        (B, W, D) word vectors (zeros past a row's words) and (B,) the number of COMPLETE words per row.
    """
    n_words = (word_ids.max(dim=1).values + 1).clamp(min=0)  # (B,)
    # A row that fills max_length was (or may have been) truncated: its last word may be cut.
    n_complete = torch.where(attention_mask.sum(dim=1) >= max_length, (n_words - 1).clamp(min=0), n_words)
    W = max(int(n_words.max()), 1)
    assign = (word_ids.unsqueeze(1) == torch.arange(W, device=word_ids.device).view(1, W, 1)).to(hidden.dtype)  # (B, W, T)
    vecs = assign @ hidden / assign.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (B, W, D)
    return vecs, n_complete


def embed_words(
    model: nn.Module, enc: dict[str, torch.Tensor], spec: EncodeSpec, layers: tuple[int, ...] = (-1,)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward: (B, D) pooled (as `embed`), word vectors and (B,) complete words (`word_states`).

    layers: hidden-state indices (0 = the embedding output, -1 = the last layer). With the default the word
    vectors are (B, W, D); otherwise (B, K, W, D), one slice per layer in the given order.
    """
    deep = tuple(layers) != (-1,)
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=deep)
    hidden = out.last_hidden_state
    pooled = pool(hidden, enc["attention_mask"], spec.pooling)
    if not deep:
        vecs, n = word_states(hidden, enc["word_ids"], enc["attention_mask"], spec.max_length)
        return pooled, vecs, n
    states = out.hidden_states  # (L + 1) x (B, T, D)
    bad = [l for l in layers if not -len(states) <= l < len(states)]
    if bad:
        raise UserError(f"objective.distill.word_layers: {bad} out of range; this model has hidden states 0..{len(states) - 1} (or -1..-{len(states)})")
    per_layer = [word_states(states[l], enc["word_ids"], enc["attention_mask"], spec.max_length) for l in layers]
    return pooled, torch.stack([v for v, _ in per_layer], dim=1), per_layer[0][1]
