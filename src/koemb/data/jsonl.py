"""JSON-lines reading shared by every reader: blank lines skipped, a bad line named by file:line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from koemb.errors import UserError


def iter_jsonl(path: str | Path, missing: str | None = None) -> Iterator[tuple[int, dict]]:
    """Yield `(line_no, object)` for each non-blank line; `missing` is the message when the file is absent."""
    path = Path(path)
    if not path.is_file():
        raise UserError(missing or f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_no}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj
