"""A stage, as data: which parameters train, on what objective, on which data, with which schedule."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from koemb.config import StrictModel
from koemb.data.build_train import HubSource
from koemb.train.objectives import DualSegmentation, Objective
from koemb.train.setups import TrainSpec


class DataEntry(StrictModel):
    """One training source (a local file, or a hub data set when online) and its share of the batches."""

    path: str | None = Field(
        None, description="A .txt/.txt.gz corpus, .jsonl with `text` or `query`/`positive`[/`negative`], or builtin:ko-sample."
    )
    hub: HubSource | None = Field(None, description="A Hugging Face data set (online only), as in `koemb data build-train`.")
    weight: float = Field(1.0, gt=0, description="Relative share of micro-batches drawn from this source.")
    limit: int | None = Field(None, gt=0, description="Read at most this many examples.")
    cover_new_tokens: int | None = Field(
        None, gt=0,
        description="Keep only the examples that bring a new token seen fewer than this many times in those kept "
        "(one pass in file order): every new row gets gradients, not only the frequent ones. Needs an expanded model.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DataEntry:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of `path` and `hub`")
        return self

    @property
    def label(self) -> str:
        return self.path if self.path is not None else f"hub:{self.hub.repo}"


class StageConfig(StrictModel):
    """One stage of the pipeline; its `name` is also its output folder under OUT/stages/."""

    name: str = Field(description="Folder-safe name: letters, digits, '-', '_', '.'.")
    train: TrainSpec = Field(description="new_rows | all_rows | full | {kind: lora, r, alpha, dropout, target_modules}.")
    objective: Objective = Field(default_factory=lambda: Objective(infonce={}))
    dual_segmentation: DualSegmentation | None = Field(
        None, description="Also read every text with the base tokenizer through the same network: the objective on both "
        "readings and an agreement term (`objectives.DualSegmentation`). Needs an expanded model; about twice the compute.",
    )
    data: list[DataEntry] = Field(min_length=1)
    lr: float = Field(gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of the steps spent warming up linearly.")
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    batch_size: int = Field(32, gt=1, description="Per process; in-batch negatives come from the global batch.")
    grad_accumulation: int = Field(1, ge=1, description="Micro-batches per optimizer step (adds no negatives).")
    grad_cache_chunk: int | None = Field(
        None, gt=0, description="GradCache: embed in chunks of this many texts so the contrastive batch can exceed memory."
    )
    max_length: int = Field(512, gt=1)
    model_dropout: bool = Field(
        True,
        description="False: the network's own dropout is 0 during this stage (LoRA's `dropout` stays as set). For "
        "distillation stages: the student's dropout noise is otherwise a large share of its distance to the teacher.",
    )
    steps: int | None = Field(None, gt=0, description="Optimizer steps; or give `epochs`.")
    epochs: float | None = Field(None, gt=0)
    seed: int = 42
    max_grad_norm: float = Field(1.0, gt=0)
    query_prompt: str = Field("", description="Put before every query text (Qwen3: 'Instruct: ...\\nQuery:').")
    group_by_length: bool = True

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError("expected a folder-safe name (letters, digits, '.', '_', '-')")
        return v

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> StageConfig:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` and `epochs`")
        return self

    @model_validator(mode="after")
    def _words_without_grad_cache(self) -> StageConfig:
        # GradCache caches one pooled vector per text; the word-level term needs every word's vector.
        if self.objective.word_level and self.grad_cache_chunk:
            raise ValueError("objective.distill.words needs the direct path: remove grad_cache_chunk (or set words: 0)")
        return self

    @model_validator(mode="after")
    def _dual_direct_path(self) -> StageConfig:
        # Both are implemented on the direct path only: GradCache caches one pooled vector per text and role.
        if self.dual_segmentation is not None and self.grad_cache_chunk:
            raise ValueError("dual_segmentation needs the direct path: remove grad_cache_chunk")
        if self.dual_segmentation is not None and self.objective.word_level:
            raise ValueError("dual_segmentation does not combine with objective.distill.words: set words: 0")
        return self

    def total_steps(self, n_examples: int, world_size: int) -> int:
        if self.steps is not None:
            return self.steps
        per_step = self.batch_size * world_size * self.grad_accumulation
        return max(1, math.ceil(self.epochs * n_examples / per_step))


def _cosine(step: int, warm: int, total: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _linear(step: int, warm: int, total: int) -> float:
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


SCHEDULES: dict[str, Callable[[int, int, int], float]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": lambda step, warm, total: (step + 1) / warm if step < warm else 1.0,
}
