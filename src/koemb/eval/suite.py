"""Evaluation suites: a YAML file listing tasks, so that anyone can point koemb at their own data.

```yaml
max_length: 512        # optional; otherwise the preset's
batch_size: 32         # optional
tasks:
  - {name: my-retrieval, type: retrieval, path: /data/beir_folder, instruction: "Given a question, retrieve the passage that answers it"}
  - {name: my-sts, type: sts, path: /data/pairs.jsonl, instruction: "Retrieve semantically similar text."}
  - {name: separation, type: separation}          # the built-in set
  - {name: korsts-test, type: sts, reader: korsts, path: ../data/ko/korsts/sts-test.tsv}
```

Relative paths are resolved against the suite file's folder (`~` and `$VARS` are expanded first).
Readers per type: retrieval `beir` (default), `korquad`, `strategyqa`, `korsts` (sentence1 -> its sentence2
scored >= 4 among every sentence2), `inverse_cloze` (a .txt of paragraphs: a sentence -> the rest of its
paragraph); sts `file` (default: `.jsonl`,
`.tsv`, `.csv` with a header), `korsts`; separation `jsonl` (default: the built-in Korean set).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr

from koemb.config import StrictModel, load_yaml_model, validate_model
from koemb.errors import UserError
from koemb.eval.tasks import READER_SPLITS, TASK_TYPES


class TaskSpec(StrictModel):
    """One task of a suite."""

    name: str = Field(min_length=1)
    """Label of the task in results.json and the report."""
    type: Literal["retrieval", "sts", "separation"]
    path: str | None = None
    """Data file or folder; relative to the suite file. Optional for `separation` (built-in set)."""
    reader: str | None = None
    """How to read `path` (see the module docstring); default per type."""
    instruction: str | None = None
    """Task instruction for presets that take one (Qwen3-Embedding: the text after `Instruct: `)."""
    limit: int | None = Field(default=None, ge=1)
    """Use only the first N queries (retrieval) or pairs (sts, separation): quick runs."""
    split: str = "test"
    """BEIR qrels split (`qrels/<split>.tsv`); for `strategyqa`, `test` (the hold-out) or `validation`; the other
    readers read one fixed set and accept only `test`."""


class Suite(StrictModel):
    """A list of tasks and the encoding settings they share."""

    max_length: int | None = Field(default=None, ge=2)
    """Overrides the preset's max_length (tokens) for every model."""
    batch_size: int | None = Field(default=None, ge=1)
    top_k: int = Field(default=100, ge=10)
    """Documents kept per query by the exact search (metrics are at 10)."""
    tasks: list[TaskSpec] = Field(min_length=1)

    # The suite file's folder (set by `load_suite`); relative task paths resolve against it.
    _base_dir: Path | None = PrivateAttr(default=None)

    def resolve_path(self, task: TaskSpec) -> Path | None:
        if task.path is None:
            return None
        p = Path(os.path.expandvars(os.path.expanduser(task.path)))
        if not p.is_absolute() and self._base_dir is not None:
            p = (self._base_dir / p).resolve()
        return p


def check_suite(suite: Suite, source: str) -> Suite:
    """Cross-field checks that pydantic cannot express: readers per type, paths, unique names."""
    seen: set[str] = set()
    for i, task in enumerate(suite.tasks):
        where = f"{source}: tasks.{i} ({task.name})"
        tt = TASK_TYPES[task.type]
        if task.reader is not None and task.reader not in tt.readers:
            raise UserError(f"{where}.reader: unknown reader {task.reader!r} for type {task.type}; expected one of {', '.join(tt.readers)}")
        reader = task.reader or tt.default_reader
        splits = READER_SPLITS.get(reader, ("test",))
        if splits is not None and task.split not in splits:
            raise UserError(f"{where}.split: reader {reader!r} reads {', '.join(splits)}; got {task.split!r}")
        if tt.needs_path and task.path is None:
            raise UserError(f"{where}.path: a {task.type} task needs a path")
        path = suite.resolve_path(task)
        if path is not None and not path.exists():
            raise UserError(f"{where}.path: {path} does not exist")
        if task.name in seen:
            raise UserError(f"{where}.name: duplicate task name {task.name!r}")
        seen.add(task.name)
    return suite


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Read and check a suite YAML; its folder becomes the base of relative task paths."""
    suite = load_yaml_model(Suite, path, overrides)
    suite._base_dir = Path(path).resolve().parent
    return check_suite(suite, str(path))


def suite_from_dict(data: dict, base_dir: str | Path | None = None, source: str = "suite") -> Suite:
    """A suite from a mapping (e.g. the `evaluation:` section of a pipeline YAML)."""
    suite = validate_model(Suite, data, source)
    suite._base_dir = Path(base_dir).resolve() if base_dir is not None else None
    return check_suite(suite, source)
