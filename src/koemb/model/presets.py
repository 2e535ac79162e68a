"""Presets: how a model family wants its texts prompted, padded, pooled and normalised.

A broken preset silently ruins every number (the seed measured Qwen3-Embedding-0.6B at 57.66
NDCG@10 on Ko-StrategyQA instead of 76.55 with mean pooling, no instruction and right padding),
so these facts live in one registry, are detected from the model's own files, and are written
into every result's provenance.

Public API (imported by the encoder, the evaluation and the training loop; keep it stable):

- `Preset`: the fields `name`, `pooling` ("lasttoken" | "mean" | "cls", see `koemb.model.pooling.pool`),
  `padding_side` ("left" | "right"), `normalize` (L2 after pooling), `max_length` (tokens, including
  special tokens), `query_prompt` (may contain `{task}`), `document_prompt`, `default_task`,
  `symmetric_task`; and the methods `format_query(text, task=None)`, `format_document(text)`,
  `format_symmetric(text, task=None)`, `query_prefix(task=None)`, `symmetric_prefix(task=None)`,
  `with_overrides(**fields)`.
- `PRESETS`, `register_preset(preset)`, `get_preset(name)`: the registry.
- `detect_preset(model)`: a preset from a model folder's files (or a hub id's name).
- `resolve_preset(model, name=None, overrides=None)`: name or detection, then overrides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, ValidationError, field_validator

from koemb.config import StrictModel, format_validation_error
from koemb.errors import UserError
from koemb.model.pooling import POOLING_MODES, PoolingMode

TASK_FIELD = "{task}"


class Preset(StrictModel):
    """Everything that must match between how a model was trained and how it is used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Registry name, or "sentence-transformers" for one read from a model's own ST config."""
    pooling: PoolingMode
    """How token states become one vector; see `koemb.model.pooling.pool`."""
    padding_side: Literal["left", "right"]
    """Which side the tokenizer pads. Pooling reads the mask, so this matters for parity with a
    model's reference recipe (and for speed), not for correctness of `pool`."""
    normalize: bool = True
    """L2-normalise the pooled vector."""
    max_length: int = 512
    """Longest input in tokens, special tokens included; longer texts are truncated."""
    query_prompt: str = ""
    """Prefix for queries. `{task}` in it is replaced by the task's instruction (Qwen3-Embedding:
    `Instruct: {task}\\nQuery:`, the query follows with no space)."""
    document_prompt: str = ""
    """Prefix for documents (e5: `passage: `; Qwen3-Embedding: none)."""
    default_task: str | None = None
    """Instruction for asymmetric tasks (retrieval) when the task gives none."""
    symmetric_task: str | None = None
    """Instruction for symmetric tasks (STS, separation), where BOTH texts get the query prompt."""

    @field_validator("max_length")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 2:
            raise ValueError("max_length must be at least 2")
        return v

    @property
    def uses_instruction(self) -> bool:
        """True when the query prompt takes a task instruction (`{task}`)."""
        return TASK_FIELD in self.query_prompt

    def _prefix(self, task: str | None, fallback: str | None) -> str:
        if not self.uses_instruction:
            # A preset without instructions ignores them (e5 always says `query: `).
            return self.query_prompt
        task = task or fallback
        if not task:
            raise UserError(f"preset {self.name!r} needs a task instruction for its query prompt, and none was given")
        return self.query_prompt.replace(TASK_FIELD, task)

    def query_prefix(self, task: str | None = None) -> str:
        """The text put before a query (retrieval side)."""
        return self._prefix(task, self.default_task)

    def symmetric_prefix(self, task: str | None = None) -> str:
        """The text put before EACH text of a symmetric pair (STS, separation)."""
        return self._prefix(task, self.symmetric_task or self.default_task)

    def format_query(self, text: str, task: str | None = None) -> str:
        return self.query_prefix(task) + text

    def format_document(self, text: str) -> str:
        return self.document_prompt + text

    def format_symmetric(self, text: str, task: str | None = None) -> str:
        return self.symmetric_prefix(task) + text

    def with_overrides(self, **fields: Any) -> Preset:
        """A validated copy with some fields replaced (e.g. `max_length=512` from a suite)."""
        data = {**self.model_dump(), **{k: v for k, v in fields.items() if v is not None}}
        try:
            return Preset.model_validate(data)
        except ValidationError as err:
            raise UserError(format_validation_error(err, Preset, f"preset {self.name!r} overrides")) from None


PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add a preset to the registry (a later one with the same name replaces the earlier)."""
    PRESETS[preset.name] = preset
    return preset


register_preset(
    Preset(
        name="qwen3-embedding",
        pooling="lasttoken",
        # The model card pads on the LEFT so that the last position is the `<|endoftext|>` that the
        # tokenizer's post-processor appends to every input; never append EOS by hand.
        padding_side="left",
        normalize=True,
        max_length=8192,
        query_prompt="Instruct: {task}\nQuery:",
        document_prompt="",
        # The model card advises English task descriptions, also for other languages.
        default_task="Given a web search query, retrieve relevant passages that answer the query",
        symmetric_task="Retrieve semantically similar text.",
    )
)
register_preset(
    Preset(
        name="e5",
        pooling="mean",
        padding_side="right",
        normalize=True,
        max_length=512,
        query_prompt="query: ",
        document_prompt="passage: ",
    )
)


def get_preset(name: str) -> Preset:
    """The registered preset `name`; a UserError lists the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def _st_pooling(folder: Path) -> tuple[str | None, bool]:
    """(pooling mode, normalize) from a sentence-transformers layout; (None, False) without one."""
    modules = _read_json(folder / "modules.json") or []
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    pooling_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    cfg = _read_json(folder / (pooling_dir or "1_Pooling") / "config.json")
    if not cfg:
        return None, normalize
    flags = {"lasttoken": "pooling_mode_lasttoken", "mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
    on = [mode for mode, key in flags.items() if cfg.get(key)]
    if len(on) != 1:
        other = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        raise UserError(
            f"{folder}/{pooling_dir or '1_Pooling'}/config.json: pooling {other or 'none'} is not supported; "
            f"koemb supports exactly one of {', '.join(POOLING_MODES)} (choose a preset with --preset)"
        )
    return on[0], normalize


def detect_preset(model: str | Path) -> Preset:
    """The preset for a model folder (from its files) or a hub id (from its name).

    Rules, first match wins:
    1. a Qwen3 model (`config.json` model_type "qwen3") whose sentence-transformers pooling is last-token,
       or that has no pooling config → `qwen3-embedding`;
    2. sentence-transformers prompts `query: ` / `passage: ` → `e5`;
       (for 1 and 2, `sentence_bert_config.json`'s `max_seq_length`, when present, sets max_length)
    3. any other sentence-transformers layout → a preset named "sentence-transformers" built from
       its own pooling, Normalize module, prompts, `max_seq_length` and tokenizer padding side;
    4. a hub id (no such folder) whose name contains "qwen3-embedding" or "e5" → that preset.
    Anything else is a UserError asking for `--preset`.
    """
    folder = Path(model)
    if not folder.is_dir():
        lowered = str(model).lower()
        for key, name in (("qwen3-embedding", "qwen3-embedding"), ("e5", "e5")):
            if key in lowered:
                return get_preset(name)
        raise UserError(f"{model}: not a folder, and its name does not say which preset it needs; pass --preset ({', '.join(sorted(PRESETS))})")

    config = _read_json(folder / "config.json") or {}
    pooling, normalize = _st_pooling(folder)
    st = _read_json(folder / "config_sentence_transformers.json") or {}
    prompts = st.get("prompts") or {}
    bert_cfg = _read_json(folder / "sentence_bert_config.json") or {}
    max_len = bert_cfg.get("max_seq_length")

    family = None
    if config.get("model_type") == "qwen3" and pooling in (None, "lasttoken"):
        family = "qwen3-embedding"
    elif prompts.get("query") == "query: " and prompts.get("document") == "passage: ":
        family = "e5"
    if family is not None:
        # A saved model's own max_seq_length wins over the family default.
        preset = get_preset(family)
        return preset.with_overrides(max_length=max_len) if max_len else preset
    if pooling is not None:
        tok_cfg = _read_json(folder / "tokenizer_config.json") or {}
        side = tok_cfg.get("padding_side") or ("left" if pooling == "lasttoken" else "right")
        return Preset(
            name="sentence-transformers",
            pooling=pooling,
            padding_side=side,
            normalize=normalize,
            max_length=max_len or 512,
            query_prompt=prompts.get("query", ""),
            document_prompt=prompts.get("document", ""),
        )
    raise UserError(
        f"{folder}: cannot tell which preset this model needs (no sentence-transformers pooling config, "
        f"model_type {config.get('model_type')!r}); pass --preset ({', '.join(sorted(PRESETS))})"
    )


def resolve_preset(model: str | Path, name: str | None = None, overrides: dict[str, Any] | None = None) -> Preset:
    """`get_preset(name)` if a name is given, else `detect_preset(model)`; then the overrides."""
    preset = get_preset(name) if name else detect_preset(model)
    return preset.with_overrides(**overrides) if overrides else preset
