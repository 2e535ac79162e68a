"""Separation (the seed's test): do similar Korean pairs score higher than different ones?

The built-in set (`koemb/resources/separation_ko.jsonl`, written for koemb) has 80 pairs in the
seed's 10 domains, 4 similar and 4 different per domain; the "different" pairs share words on
purpose, so that surface overlap alone does not separate them. A weak metric next to STS (few
pairs, binary labels): reports show both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from koemb.data.jsonl import iter_jsonl
from koemb.errors import UserError
from koemb.eval.metrics import separation_metrics
from koemb.eval.sts import pair_cosines
from koemb.model.encoder import Encoder
from koemb.resources import RESOURCES

BUILTIN_SEPARATION = RESOURCES / "separation_ko.jsonl"
LABELS = {"similar": True, "different": False}


@dataclass
class SeparationPair:
    domain: str
    sentence1: str
    sentence2: str
    similar: bool


def read_separation(path: str | Path | None = None) -> list[SeparationPair]:
    """A JSON-lines file of `{domain, sentence1, sentence2, label: similar|different}`; default built-in."""
    path = Path(path) if path is not None else BUILTIN_SEPARATION
    out = []
    for line_no, row in iter_jsonl(path, f"{path}: separation file not found"):
        try:
            out.append(SeparationPair(str(row["domain"]), str(row["sentence1"]), str(row["sentence2"]), LABELS[row["label"]]))
        except KeyError:
            raise UserError(
                f"{path}:{line_no}: expected keys domain, sentence1, sentence2 and label (one of {', '.join(LABELS)})"
            ) from None
    if not any(p.similar for p in out) or all(p.similar for p in out):
        raise UserError(f"{path}: needs both similar and different pairs")
    return out


def evaluate_separation(encoder: Encoder, pairs: list[SeparationPair], instruction: str | None = None) -> dict[str, float]:
    """Mean cosine of similar and of different pairs, their difference, and the difference per domain."""
    cos = pair_cosines(encoder, [(p.sentence1, p.sentence2) for p in pairs], instruction)
    return separation_metrics(cos, [p.similar for p in pairs], [p.domain for p in pairs])
