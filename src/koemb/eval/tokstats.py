"""Tokenizer statistics on a task's texts: how finely the tokenizer cuts Korean, and what it truncates.

- `tokens_per_char`: tokens (without special tokens or prompts) per character of raw text;
- `tokens_per_hangul`: the same tokens per Hangul syllable (U+AC00..U+D7A3) of the text;
- `truncated_share`: share of the texts as encoded (prompt + special tokens) longer than max_length;
- `new_token_share` (expanded models): share of tokens with an id >= `first_new_id`, i.e. how much
  of the text the added vocabulary actually covers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

HANGUL = re.compile("[\uac00-\ud7a3]")


def tokenizer_stats(
    tokenizer: Any, raw_texts: Sequence[str], prompted: Sequence[str], max_length: int, first_new_id: int | None = None
) -> dict[str, float]:
    raw = tokenizer(list(raw_texts), add_special_tokens=False)["input_ids"]
    full = tokenizer(list(prompted), add_special_tokens=True)["input_ids"]
    n_tokens = sum(len(r) for r in raw)
    n_chars = sum(len(t) for t in raw_texts)
    n_hangul = sum(len(HANGUL.findall(t)) for t in raw_texts)
    out = {
        "tokens_per_char": n_tokens / n_chars if n_chars else float("nan"),
        "tokens_per_hangul": n_tokens / n_hangul if n_hangul else float("nan"),
        "truncated_share": sum(len(f) > max_length for f in full) / len(full) if full else 0.0,
    }
    if first_new_id is not None:
        out["new_token_share"] = sum(i >= first_new_id for r in raw for i in r) / n_tokens if n_tokens else 0.0
    return out
