"""Training data for the loop: sources with weights, a deterministic batch plan, and batches of texts.

A source is one file: `.txt` (one document per line), `.jsonl` with `text` (unlabeled), or `.jsonl`
with `query` and `positive` (optional `negative`: a string or a list, optional `group`: examples with
equal groups are not each other's negatives; optional `score`: a graded similarity, e.g. STS 0-5, read by
the `cosent` objective: a file has a score on every pair or on none). Unlabeled text becomes a pair of two spans of one
document: Qwen3 has no dropout, so SimCSE's same-sentence-twice would give identical views.

The plan is a pure function of (sources, batch size, seed): micro-batch i is always the same
examples, so a resumed run only needs the number of micro-batches already consumed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koemb.data.corpus import iter_documents
from koemb.data.jsonl import iter_jsonl
from koemb.errors import UserError


@dataclass
class Example:
    query: str | None = None
    positive: str | None = None
    negatives: list[str] = field(default_factory=list)
    group: str | None = None
    text: str | None = None  # unlabeled document
    score: float | None = None  # graded similarity of (query, positive), for `cosent`

    @property
    def length(self) -> int:  # characters: a cheap stand-in for tokens when grouping by length
        return len(self.text) if self.text is not None else len(self.query or "") + len(self.positive or "")


@dataclass
class Source:
    path: str
    weight: float
    examples: list[Example]


def _example_from_json(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "query" in obj or "positive" in obj:
        q, p = obj.get("query"), obj.get("positive")
        if not isinstance(q, str) or not isinstance(p, str) or not q.strip() or not p.strip():
            raise UserError(f"{where}: a pair needs non-empty string fields 'query' and 'positive'")
        neg = obj.get("negative", obj.get("negatives", []))
        negs = [neg] if isinstance(neg, str) else list(neg or [])
        if not all(isinstance(n, str) for n in negs):
            raise UserError(f"{where}: 'negative' must be a string or a list of strings")
        group = obj.get("group")
        score = obj.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise UserError(f"{where}: 'score' must be a number (a graded similarity), got {score!r}")
        return Example(
            query=q, positive=p, negatives=negs, group=None if group is None else str(group), score=None if score is None else float(score)
        )
    text = obj.get("text")
    if not isinstance(text, str):
        raise UserError(f"{where}: expected a 'text' field (unlabeled) or 'query' and 'positive' (pairs)")
    return Example(text=text)


def read_entry(entry) -> list[Example]:
    """The examples of a stage's data entry (`koemb.train.stage.DataEntry`): a file or a hub data set."""
    if entry.hub is None:
        return read_examples(entry.path, entry.limit)
    from koemb.data.build_train import read_hub_source

    hub = entry.hub.model_copy(update={"limit": entry.limit or entry.hub.limit})
    out = []
    for item in read_hub_source(hub):
        if isinstance(item, str):
            out.append(Example(text=item))
        else:
            out.append(Example(query=item.query, positive=item.positive, negatives=[item.negative] if item.negative else [], group=item.group))
    if not out:
        raise UserError(f"hub source {hub.repo}: no examples")
    return out


def cover_new_tokens(
    examples: list[Example], tokenizer: Any, first_new_id: int, per_token: int, max_length: int
) -> tuple[list[Example], dict[str, int]]:
    """The examples that bring a new token still under-represented: one pass in file order, keeping an
    example when one of its new tokens (id >= first_new_id) has been seen fewer than `per_token` times
    in the examples kept so far (tokens counted as the stage reads them: truncated at `max_length`).

    Why: a new row gets a gradient only from a batch that holds its token. Drawn by weight, a corpus gives
    its frequent tokens hundreds of updates and leaves the rare half of a 20,000-row expansion where the
    init put it (measured on the e5 study: rows seen < 5 times in the stage data moved 0.03-0.2 in norm,
    rows seen 20-1000 times 1.6-1.9; training them all did not improve that study's retrieval, see
    docs/results.md, session 5). Returns (kept examples, counts for the log).
    """
    counts: Counter[int] = Counter()
    kept: list[Example] = []
    present: set[int] = set()
    for i in range(0, len(examples), 1024):
        chunk = examples[i : i + 1024]
        texts = [t for e in chunk for t in texts_of(e)]
        ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        k = 0
        for e in chunk:
            n = len(texts_of(e))
            new = [t for row in ids[k : k + n] for t in row if t >= first_new_id]
            k += n
            present.update(new)
            if any(counts[t] < per_token for t in new):
                kept.append(e)
                counts.update(new)
    stats = {
        "examples": len(examples), "kept": len(kept), "new_tokens_present": len(present),
        "covered": sum(1 for t in present if counts[t] >= per_token),
    }
    return kept, stats


def texts_of(e: Example) -> list[str]:
    return [e.text] if e.text is not None else [e.query or "", e.positive or "", *e.negatives]


def read_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """Read one training file (see the module docstring for formats)."""
    from koemb.data.corpus import resolve_corpus_path

    p = resolve_corpus_path(path)
    if not p.is_file():
        raise UserError(f"{p}: training data file not found")
    name = p.name.lower()
    out: list[Example] = []
    if name.endswith(".txt") or name.endswith(".txt.gz"):
        for doc in iter_documents([p]):
            out.append(Example(text=doc))
            if limit and len(out) >= limit:
                break
    elif name.endswith(".jsonl"):
        for i, obj in iter_jsonl(p):
            ex = _example_from_json(obj, f"{p}:{i}")
            if ex.text is not None and not ex.text.strip():
                continue
            out.append(ex)
            if limit and len(out) >= limit:
                break
    else:
        raise UserError(f"{p}: unsupported training file; expected .txt, .txt.gz or .jsonl")
    if not out:
        raise UserError(f"{p}: no training examples in this file")
    scored = sum(e.score is not None for e in out)
    if 0 < scored < len(out):
        # One source per batch, and a batch is either ranked by its scores or contrasted: never both.
        raise UserError(f"{p}: {scored} of {len(out)} examples have a 'score'; give every pair a score or none")
    return out


def plan_batches(
    sizes: list[int], weights: list[float], batch_size: int, n_batches: int, seed: int, group_by_length: list[list[int]] | None = None
) -> list[tuple[int, list[int]]]:
    """The first `n_batches` micro-batches: (source index, example indices), deterministic in `seed`.

    Each micro-batch comes from ONE source, drawn by weight (pairs and unlabeled text need
    different collation, and one source per batch keeps in-batch negatives in one domain).
    Within a source: shuffle each epoch; with `group_by_length` (per source, example lengths), cut
    the shuffled order into windows of 32 batches and sort each window by length, so a batch pads
    little, then shuffle the batches of the window.
    """
    rng = random.Random(seed)
    queues: list[list[list[int]]] = [[] for _ in sizes]
    epochs = [0] * len(sizes)

    def refill(s: int) -> None:
        r = random.Random(f"{seed}:{s}:{epochs[s]}")
        epochs[s] += 1
        order = list(range(sizes[s]))
        r.shuffle(order)
        # A source smaller than one batch still yields full batches by repeating its examples.
        while len(order) < batch_size:
            order += order[: batch_size - len(order)]
        batches: list[list[int]] = []
        window = batch_size * 32
        for w in range(0, len(order) - batch_size + 1, window):
            chunk = order[w : w + window]
            if group_by_length is not None:
                lengths = group_by_length[s]
                chunk = sorted(chunk, key=lambda i: lengths[i])
            got = [chunk[k : k + batch_size] for k in range(0, len(chunk) - batch_size + 1, batch_size)]
            r.shuffle(got)
            batches += got
        queues[s] = batches[::-1]  # pop() from the end

    plan: list[tuple[int, list[int]]] = []
    for _ in range(n_batches):
        s = rng.choices(range(len(sizes)), weights=weights)[0]
        if not queues[s]:
            refill(s)
        plan.append((s, queues[s].pop()))
    return plan


@dataclass
class TextBatch:
    """Texts to embed, by role: `query` (B), `positive` (B), optional `negative` (B*H, H fixed per batch).

    `keys` hold the strings whose equality marks false negatives: for `positive`, the group id when
    given, else the text itself. `scores` (B): the pairs' graded similarities when the source has them.
    """

    query: list[str]
    positive: list[str]
    negative: list[str]
    positive_keys: list[str]
    negative_keys: list[str]
    scores: list[float] | None = None

    def groups(self) -> dict[str, list[str]]:
        g = {"query": self.query, "positive": self.positive}
        if self.negative:
            g["negative"] = self.negative
        return g


def two_spans(text: str, rng: random.Random) -> tuple[str, str]:
    """Cut one document into two non-empty spans at a word boundary between 30% and 70% of its words."""
    words = text.split()
    if len(words) < 2:
        mid = max(1, len(text) // 2)
        return text[:mid], text[mid:] or text
    k = min(len(words) - 1, max(1, round(len(words) * rng.uniform(0.3, 0.7))))
    return " ".join(words[:k]), " ".join(words[k:])


def collate(examples: list[Example], query_prompt: str, seed: int, index: int) -> TextBatch:
    """Turn a micro-batch's examples into texts; span cuts depend only on (seed, micro-batch index)."""
    rng = random.Random(f"spans:{seed}:{index}")
    q, p, pk, n, nk = [], [], [], [], []
    # All examples of a batch share a number of hard negatives (the fewest any example has).
    h = min(len(e.negatives) for e in examples) if all(e.text is None for e in examples) else 0
    for e in examples:
        if e.text is not None:
            a, b = two_spans(e.text, rng)
            q.append(query_prompt + a)
            p.append(b)
            pk.append(b)
        else:
            q.append(query_prompt + (e.query or ""))
            p.append(e.positive or "")
            pk.append(f"group:{e.group}" if e.group is not None else e.positive or "")
            n += e.negatives[:h]
            nk += e.negatives[:h]
    scores = [e.score for e in examples] if all(e.score is not None for e in examples) else None
    return TextBatch(q, p, n, pk, nk, scores)
