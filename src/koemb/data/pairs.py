"""Training-file formats: pairs and unlabeled text, as JSON lines.

Pairs (`*.jsonl`, one object per line):
    {"query": str, "positive": str, "negative": str (optional), "group": str (optional), "source": str (optional),
     "score": number (optional)}
- `negative`: a hard negative for this query (e.g. an NLI contradiction).
- `group`: pairs with the same group share an answer or are paraphrases of each other (ChatbotData's
  duplicate answers, a paraKQC paraphrase set): in-batch negatives from the same group are FALSE
  negatives and must be masked, not just duplicate texts.
- `score`: a graded similarity (KorSTS: 0-5): such a pair is not a positive but a point on a scale,
  trained with the `cosent` objective (every pair of a file scored, or none).
Unlabeled text (`*.jsonl`): {"text": str} per line (read with `koemb.data.corpus.iter_documents`).

Readers validate every line and name file, line and field on error; writers are atomic (a temporary
file renamed into place) and deterministic (same pairs, same bytes).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from koemb.data.jsonl import iter_jsonl
from koemb.errors import UserError

PAIR_FIELDS = ("query", "positive", "negative", "group", "source", "score")
REQUIRED = ("query", "positive")


@dataclass(frozen=True)
class Pair:
    query: str
    positive: str
    negative: str | None = None
    group: str | None = None
    source: str | None = None
    score: float | None = None

    def to_json(self) -> dict[str, str | float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _atomic_lines(path: Path, lines: Iterable[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line + "\n")
                n += 1
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def write_pairs(path: str | Path, pairs: Iterable[Pair]) -> int:
    """Write pairs as JSON lines; return how many."""
    return _atomic_lines(Path(path), (json.dumps(p.to_json(), ensure_ascii=False) for p in pairs))


def write_texts(path: str | Path, texts: Iterable[str]) -> int:
    """Write unlabeled texts as `{"text": ...}` JSON lines; return how many."""
    return _atomic_lines(Path(path), (json.dumps({"text": t}, ensure_ascii=False) for t in texts))


def iter_pairs(path: str | Path) -> Iterator[Pair]:
    """Yield the pairs of a JSONL file; a bad line is a UserError naming file, line and field."""
    path = Path(path)
    for line_no, obj in iter_jsonl(path, f"{path}: pairs file not found"):
        unknown = sorted(set(obj) - set(PAIR_FIELDS))
        if unknown:
            raise UserError(f"{path}:{line_no}: unknown field(s) {unknown}; pairs have {', '.join(PAIR_FIELDS)}")
        for key in PAIR_FIELDS:
            value = obj.get(key)
            if key in REQUIRED and (not isinstance(value, str) or not value.strip()):
                raise UserError(f"{path}:{line_no}: field '{key}' must be a non-empty string (got {value!r})")
            if key == "score":
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise UserError(f"{path}:{line_no}: field 'score' must be a number (got {value!r})")
            elif value is not None and not isinstance(value, str):
                raise UserError(f"{path}:{line_no}: field '{key}' must be a string (got {type(value).__name__})")
        yield Pair(**obj)


def read_pairs(path: str | Path) -> list[Pair]:
    """All pairs of a JSONL file; an empty file is an error."""
    pairs = list(iter_pairs(path))
    if not pairs:
        raise UserError(f"{path}: holds no pairs")
    return pairs
