"""STS: sentence pairs with gold scores -> Spearman and Pearson of the cosine of their embeddings.

Files: `.jsonl` (one object per line with `sentence1`, `sentence2`, `score`) or `.tsv` / `.csv`
(a header row naming those columns, standard CSV quoting). Both sentences get the preset's
symmetric prompt (the query side, as MTEB does for STS).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch.nn.functional as F

from koemb.data.eval_sets import StsPair
from koemb.errors import UserError
from koemb.eval.metrics import correlation_metrics
from koemb.model.encoder import Encoder

csv.field_size_limit(sys.maxsize)
COLUMNS = ("sentence1", "sentence2", "score")


def _pair(path: Path, line_no: int, row: dict) -> StsPair:
    missing = [c for c in COLUMNS if c not in row or row[c] is None]
    if missing:
        raise UserError(f"{path}:{line_no}: missing {missing}; expected columns {list(COLUMNS)}")
    try:
        return StsPair(str(row["sentence1"]), str(row["sentence2"]), float(row["score"]))
    except ValueError:
        raise UserError(f"{path}:{line_no}: score {row['score']!r} is not a number") from None


def _read_jsonl(path: Path) -> list[StsPair]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
                out.append(_pair(path, line_no, row))
    return out


def _read_delimited(delimiter: str) -> Callable[[Path], list[StsPair]]:
    def read(path: Path) -> list[StsPair]:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            if not set(COLUMNS) <= set(reader.fieldnames or []):
                raise UserError(f"{path}:1: header {reader.fieldnames} lacks {list(COLUMNS)}")
            return [_pair(path, i, row) for i, row in enumerate(reader, start=2)]

    return read


STS_FORMATS: dict[str, Callable[[Path], list[StsPair]]] = {
    ".jsonl": _read_jsonl,
    ".tsv": _read_delimited("\t"),
    ".csv": _read_delimited(","),
}


def read_sts(path: str | Path) -> list[StsPair]:
    """Read an STS file by its suffix (`.jsonl`, `.tsv`, `.csv`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: STS file not found")
    reader = STS_FORMATS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unknown STS file type {path.suffix!r}; expected one of {', '.join(STS_FORMATS)}")
    pairs = reader(path)
    if len(pairs) < 2:
        raise UserError(f"{path}: needs at least 2 pairs, found {len(pairs)}")
    return pairs


def pair_cosines(encoder: Encoder, pairs: list[tuple[str, str]], instruction: str | None) -> list[float]:
    """Cosine per pair; each distinct sentence is encoded once, with the symmetric prompt."""
    unique = list(dict.fromkeys(s for pair in pairs for s in pair))
    pos = {s: i for i, s in enumerate(unique)}
    emb = F.normalize(encoder.encode_symmetric(unique, instruction), dim=-1)  # (U, D)
    a = emb[[pos[p[0]] for p in pairs]]
    b = emb[[pos[p[1]] for p in pairs]]
    return (a * b).sum(-1).tolist()


def evaluate_sts(encoder: Encoder, pairs: list[StsPair], instruction: str | None = None) -> dict[str, float]:
    """Spearman and Pearson correlation between cosine similarity and the gold scores."""
    cos = pair_cosines(encoder, [(p.sentence1, p.sentence2) for p in pairs], instruction)
    return correlation_metrics(cos, [p.score for p in pairs])
