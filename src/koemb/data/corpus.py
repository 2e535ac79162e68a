"""Unlabeled-text corpus readers.

Formats: `.txt` (one document per line) and `.jsonl` (one JSON object per line with a `text`
field), each optionally gzipped (`.gz`). Lines that are not valid UTF-8 are skipped and counted
(a multi-million-line corpus should not die on one bad byte); a malformed JSON line is an error
that names file and line, because it usually means the wrong file or format.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from koemb.errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")


@dataclass
class ReadStats:
    """What a pass over corpus files saw; filled in while iterating."""

    lines: int = 0
    documents: int = 0
    skipped_bad_utf8: int = 0
    first_bad: list[str] = field(default_factory=list)


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suf in SUFFIXES:
        if name.endswith(suf):
            return "jsonl" if "jsonl" in suf else "txt"
    raise UserError(f"{path}: unsupported corpus file type; expected one of {', '.join(SUFFIXES)}")


def _open_bytes(path: Path):
    if not path.exists():
        raise UserError(f"{path}: corpus file not found")
    if not path.is_file():
        raise UserError(f"{path}: expected a corpus file, found a directory or special file")
    try:
        return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read corpus file ({exc.strerror})") from None


def iter_documents(paths: Iterable[str | Path], stats: ReadStats | None = None, text_field: str = "text") -> Iterator[str]:
    """Yield each document's text (blank documents skipped) from the given corpus files."""
    stats = stats if stats is not None else ReadStats()
    for p in paths:
        path = Path(p)
        kind = _kind(path)
        with _open_bytes(path) as fh:
            try:
                for lineno, raw in enumerate(fh, start=1):
                    stats.lines += 1
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        stats.skipped_bad_utf8 += 1
                        if len(stats.first_bad) < 5:
                            stats.first_bad.append(f"{path}:{lineno}")
                        continue
                    line = line.rstrip("\r\n")
                    if kind == "jsonl":
                        if not line.strip():
                            continue
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as exc:
                            raise UserError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
                        if not isinstance(obj, dict) or text_field not in obj:
                            raise UserError(f"{path}:{lineno}: expected a JSON object with a '{text_field}' field")
                        text = obj[text_field]
                        if not isinstance(text, str):
                            raise UserError(f"{path}:{lineno}: field '{text_field}' must be a string, got {type(text).__name__}")
                    else:
                        text = line
                    if text.strip():
                        stats.documents += 1
                        yield text
            except (OSError, EOFError) as exc:  # truncated gzip and the like
                raise UserError(f"{path}: read failed ({exc})") from None
    if stats.skipped_bad_utf8:
        log.warning(
            "skipped %d line(s) that are not valid UTF-8 (first: %s)", stats.skipped_bad_utf8, ", ".join(stats.first_bad)
        )


BUILTIN_PREFIX = "builtin:"


def resolve_corpus_path(p: str | Path) -> Path:
    """A corpus path, or `builtin:ko-sample` for the Korean sample shipped with koemb."""
    s = str(p)
    if s.startswith(BUILTIN_PREFIX):
        from koemb.resources import BUILTIN_CORPORA

        name = s[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_CORPORA:
            raise UserError(f"{s}: unknown built-in corpus; known: {', '.join(BUILTIN_PREFIX + n for n in BUILTIN_CORPORA)}")
        return BUILTIN_CORPORA[name]
    return Path(p)


def read_documents(paths: Iterable[str | Path], text_field: str = "text") -> tuple[list[str], ReadStats]:
    """Read a whole corpus into memory; error if it holds no documents."""
    paths = [resolve_corpus_path(p) for p in paths]
    if not paths:
        raise UserError("no corpus files given (pass --corpus FILE, .txt or .jsonl, optionally .gz)")
    stats = ReadStats()
    docs = list(iter_documents(paths, stats, text_field))
    if not docs:
        raise UserError(f"{', '.join(map(str, paths))}: the corpus holds no non-empty documents")
    return docs, stats
