"""Readers for the Korean data sets laid out as in this workplace's `shared/data/ko`.

Each reader takes the data root (the folder holding `korsts/`, `petitions/`, ...) and yields
plain texts. They are the unlabeled-text side of the data: what the donor tokenizer and the
vocabulary expansion learn from. Evaluation sets (KorSTS dev/test, KorQuAD dev, the StrategyQA
hold-out) are deliberately absent here.

Traps handled (see the shared README): KorSTS is read with quoting off; the question-pair CSV
has a UTF-8 BOM; NSMC author fields are dropped.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from koemb.errors import UserError

csv.field_size_limit(sys.maxsize)

Reader = Callable[[Path], Iterator[str]]
UNLABELED_SOURCES: dict[str, Reader] = {}


def source(name: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        UNLABELED_SOURCES[name] = fn
        return fn

    return deco


def _csv_rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        yield from csv.DictReader(fh)


@source("petitions")
def _petitions(root: Path) -> Iterator[str]:
    for path in sorted((root / "petitions").glob("petitions_*")):
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    for key in ("title", "content"):
                        if obj.get(key):
                            yield obj[key]


@source("nsmc")
def _nsmc(root: Path) -> Iterator[str]:
    for path in sorted((root / "nsmc_raw_sample" / "raw").glob("*.json")):
        for row in json.loads(path.read_text(encoding="utf-8")):
            if row.get("review"):
                yield row["review"]


@source("book_reviews")
def _book_reviews(root: Path) -> Iterator[str]:
    for name in ("book_review01.csv", "book_review02.csv"):
        for row in _csv_rows(root / "boddari" / name):
            if row.get("내용"):
                yield row["내용"]


@source("fairytales")
def _fairytales(root: Path) -> Iterator[str]:
    for row in _csv_rows(root / "boddari" / "fairytale01.csv"):
        if row.get("body"):
            yield from (p for p in row["body"].split("\n") if p.strip())


@source("unesco")
def _unesco(root: Path) -> Iterator[str]:
    with (root / "boddari" / "unesco_report.txt").open(encoding="utf-8") as fh:
        yield from (line.rstrip("\n") for line in fh if line.strip())


@source("chatbot")
def _chatbot(root: Path) -> Iterator[str]:
    for row in _csv_rows(root / "chatbot_data" / "ChatbotData.csv"):
        yield row["Q"]
        yield row["A"]


@source("question_pair")
def _question_pair(root: Path) -> Iterator[str]:
    for name in ("kor_pair_train.csv", "kor_Pair_test.csv"):
        for row in _csv_rows(root / "question_pair" / name):
            for key in ("question1", "question2"):
                if row.get(key):
                    yield row[key]


@source("parakqc")
def _parakqc(root: Path) -> Iterator[str]:
    with (root / "parakqc" / "paraKQC_v1.txt").open(encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 3 and parts[2].strip():
                yield parts[2]


@source("korsts_train")
def _korsts_train(root: Path) -> Iterator[str]:
    with (root / "korsts" / "sts-train.tsv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            yield row["sentence1"]
            yield row["sentence2"]


@source("kornli_xnli")
def _xnli(root: Path) -> Iterator[str]:
    for name in ("xnli.dev.ko.tsv", "xnli.test.ko.tsv"):
        with (root / "kornli_xnli" / name).open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
                yield row["sentence1"]
                yield row["sentence2"]


@source("klue_nli")
def _klue(root: Path) -> Iterator[str]:
    for row in json.loads((root / "klue_nli" / "klue-nli-v1.1_dev.json").read_text(encoding="utf-8")):
        yield row["premise"]
        yield row["hypothesis"]


def unlabeled_texts(root: str | Path, sources: list[str] | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
    """Texts of the named sources (default: all), de-duplicated, in a fixed order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: Korean data folder not found")
    names = sources or list(UNLABELED_SOURCES)
    unknown = [n for n in names if n not in UNLABELED_SOURCES]
    if unknown:
        raise UserError(f"unknown Korean source(s) {unknown}; known: {', '.join(UNLABELED_SOURCES)}")
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name in exclude:
            continue
        for text in UNLABELED_SOURCES[name](root):
            text = text.strip()
            if text and text not in seen:
                seen.add(text)
                out.append(text)
    return out
