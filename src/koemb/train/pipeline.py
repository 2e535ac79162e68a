"""The whole job from one YAML: expand the tokenizer, expand + initialise the model, run the stages, evaluate.

`run_pipeline` (the `koemb run` command) and `train_stages` (`koemb train`) are plain functions; the
CLI only parses flags. Output layout under OUT:

    config.yaml          the resolved config (same schema as the input)
    base/                the base model, when it is built here (`base_model: builtin:tiny-qwen3`)
    tokenizer/           the expanded tokenizer + expansion.json (and donor/ when a donor is trained)
    expanded/            the initialised expanded model (sentence-transformers folder + expansion.json)
    stages/<name>/       one sentence-transformers folder per stage, written when the stage ends
    final/               the last stage's model (with `prune:`, only N of its new tokens; with
                         `interpolate:`, moved back towards the base or an earlier stage; with `refit:`,
                         the output of its last stage, also kept as stages/<that name>/)
    refit/               with `refit:`: input/ (final/ before the refit, evaluated as `before-refit`) and
                         teacher/ (the same weights with the base tokenizer; removed once the refit stages are written)
    eval/                what `koemb evaluate` writes: results.json (base, expanded, every stage), report.md, charts;
                         interpolate-alpha/ when alpha is chosen on a validation suite
    checkpoints/         training checkpoints (model folders never hold any)
    cache/teacher.*      the distillation teacher's embeddings by text (the base model never changes):
                         teacher.safetensors + teacher.texts.json
    logs/                train.jsonl, training.png (each loss term per stage) and TensorBoard events

Every folder is written whole or not at all (temporary name, then rename), so `--resume` trusts a
folder that exists and continues the first stage that has none, from its newest checkpoint that
verifies. `OUT/.koemb.lock` keeps a second run out of a folder that a live run is writing.

Relative paths in a config file are relative to the config file's folder (so a config and its
data can move together); values given with `--set` are relative to the working directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import difflib

from pydantic import Field, field_validator, model_validator

from koemb.config import StrictModel, dump_yaml_model, read_yaml, validate_model
from koemb.errors import UserError
from koemb.faults import fault
from koemb.train.lock import LOCK_NAME, RunLock
from koemb.train.stage import DataEntry, StageConfig
from koemb.vocab.expand import ExpansionSettings

log = logging.getLogger(__name__)

BUILTIN_TINY = "builtin:tiny-qwen3"


class TokenizerConfig(StrictModel):
    """How the expanded tokenizer is made (`koemb vocab expand`), or which one to use."""

    expanded: str | None = Field(None, description="An already expanded tokenizer folder: skip the expansion.")
    donor: str | None = Field(None, description="Donor tokenizer: folder, tokenizer.json, hub id, or builtin:qwen3-embedding.")
    train_donor_vocab_size: int | None = Field(
        None, ge=1000, description="Train a donor like the base on the corpus with this vocabulary size (instead of `donor`)."
    )
    corpus: list[DataEntry] = Field(default_factory=list, description="Text the expansion learns from and is measured on.")
    settings: ExpansionSettings = Field(default_factory=ExpansionSettings)

    @model_validator(mode="after")
    def _one_way(self) -> TokenizerConfig:
        if self.expanded is None and not self.corpus and self.donor is None:
            raise ValueError("give `expanded` (a tokenizer folder), or a `corpus` (and a `donor` or `train_donor_vocab_size`)")
        if self.donor is not None and self.train_donor_vocab_size is not None:
            raise ValueError("give either `donor` or `train_donor_vocab_size`, not both")
        if self.train_donor_vocab_size is not None and not self.corpus:
            raise ValueError("`train_donor_vocab_size` needs a `corpus` to train the donor on")
        for i, entry in enumerate(self.corpus):
            if entry.cover_new_tokens is not None:
                raise ValueError(f"corpus.{i}.cover_new_tokens: only a stage's data can select by new tokens (the corpus makes them)")
        return self


class InitConfig(StrictModel):
    """How new rows start (`koemb model expand --init`)."""

    method: str = Field("mean", description="A method of koemb.model.init_methods (mean = FVT, first, random).")
    noise_std: float = Field(0.0, ge=0, description="Gaussian noise, std relative to the old rows' scale.")
    seed: int = 0

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        # Checked here, not when the expansion runs: an unknown name should fail before any work.
        from koemb.model.init_methods import INIT_METHODS

        if v not in INIT_METHODS:
            hint = difflib.get_close_matches(v, list(INIT_METHODS), n=1)
            raise ValueError(f"unknown init method {v!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; known: {', '.join(INIT_METHODS)}")
        return v


class EvaluationConfig(StrictModel):
    """What `koemb evaluate` runs on the base, the expanded model and every stage."""

    suite: str | dict[str, Any] = Field(description="A suite YAML path, or the suite itself (tasks: ...).")
    mteb: list[str] = Field(default_factory=list, description="Official MTEB task names too (online only).")
    stages: bool = Field(True, description="Also evaluate every intermediate stage, not only base, expanded and final.")


class PruneConfig(StrictModel):
    """After the last stage, `final/` keeps only N of the new tokens (`koemb model prune`)."""

    keep_new_tokens: int | None = Field(
        None,
        gt=0,
        description=(
            "How many new tokens `final/` keeps (which ones: `rank_by`). Rows of rare tokens "
            "barely train and read worse than the base's pieces; stages/<last>/ keeps them all."
        ),
    )
    target_reduction: float | None = Field(
        None,
        gt=0,
        lt=100,
        description=(
            "Instead of `keep_new_tokens`: keep the fewest new tokens (a multiple of `step`) that still make every "
            "`texts` source at least this many percent shorter than the base's segmentation, measured on the last "
            "stage's tokenizer as `koemb model prune-curve` does (written to final/prune_curve.json); all of them "
            "when no smaller number does."
        ),
    )
    texts: list[DataEntry] = Field(
        default_factory=list,
        description="With `target_reduction`: the text the saving is measured on, one set per entry (path or hub, "
        "`limit`; held-out text of the kind the model will read). Tokens are counted without special tokens.",
    )
    step: int = Field(1000, gt=0, description="With `target_reduction`: the numbers of new tokens tried, step, 2 x step, ...")
    rank_by: Literal["order", "usage", "balanced", "fidelity"] = Field(
        "order",
        description=(
            "Which N: `order` = the first N in expansion order; `usage` = the N the expanded tokenizer emits most "
            "on this run's training text (the tokenizer corpus and every stage's data; more token saving per kept "
            "row); `balanced` = the same with each of those sources weighing equally (its uses as a share of its own); "
            "`fidelity` = the most base pieces saved per unit of damage, each token's damage measured by running the "
            "last stage on occurrences in that text (how far one occurrence moves a chunk's embedding from the chunk "
            "spelt out in base pieces).",
        ),
    )

    @model_validator(mode="after")
    def _one_rule(self) -> PruneConfig:
        if (self.keep_new_tokens is None) == (self.target_reduction is None):
            raise ValueError("give exactly one of `keep_new_tokens` (a number) and `target_reduction` (a saving to keep)")
        if self.target_reduction is not None and not self.texts:
            raise ValueError("`target_reduction` needs `texts`: the text the token saving is measured on")
        if self.target_reduction is None and self.texts:
            raise ValueError("`texts` is read only with `target_reduction`")
        odd = [i for i, e in enumerate(self.texts) if e.weight != 1.0 or e.cover_new_tokens is not None]
        if odd:
            raise ValueError(f"texts.{odd[0]}: a text set reads only `path`/`hub` and `limit` (no `weight`, no `cover_new_tokens`)")
        return self


Alpha = Annotated[float, Field(ge=0, le=1)]


# interpolate.anchor's keywords; any other value names an earlier stage.
ANCHORS = ("base", "expanded")


class InterpolateConfig(StrictModel):
    """After the last stage (and the prune), `final/` = anchor + alpha * (last - anchor) (`koemb model interpolate`)."""

    anchor: str = Field(
        "base",
        description="Where the line back from the last stage ends: `base` (the base model; the new tokens' rows stay "
        "as trained, since the base has none), `expanded` (the expanded model the stages started from: the base "
        "network and rows, and the new rows at their init, so they move back along the same line), or the name of an "
        "earlier stage.",
    )
    alpha: Alpha | list[Alpha] = Field(
        0.5,
        description="0 = the anchor, 1 = the last stage. 0.5 is the usual default (WiSE-FT). A list: candidates, "
        "each written and scored on `select_on`; final/ is the best.",
    )
    select_on: str | dict[str, Any] | None = Field(
        None,
        description="With a list of alphas: the validation suite (path or inline) that chooses between them, by the mean "
        "main metric of its retrieval and STS tasks (ties: the first listed). Use sets that neither training nor your "
        "reported evaluation reads.",
    )

    @model_validator(mode="after")
    def _candidates(self) -> InterpolateConfig:
        if isinstance(self.alpha, list):
            if len(self.alpha) < 2:
                raise ValueError("alpha: a list needs at least two candidates (or give one number)")
            if len(set(self.alpha)) != len(self.alpha):
                raise ValueError(f"alpha: candidates repeat: {self.alpha}")
            if self.select_on is None:
                raise ValueError("alpha: a list of candidates needs `select_on`, the validation suite that chooses between them")
        elif self.select_on is not None:
            raise ValueError("`select_on` is read only when `alpha` is a list of candidates")
        return self

    @property
    def candidates(self) -> list[float]:
        return list(self.alpha) if isinstance(self.alpha, list) else [self.alpha]


class RuntimeConfig(StrictModel):
    """How the stages run; none of it changes what is learned."""

    mixed_precision: Literal["auto", "no", "bf16"] = Field("auto", description="auto: bf16 on a GPU, fp32 on the CPU.")
    cpu: bool = Field(False, description="Train on the CPU even when a GPU is present.")
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(0, ge=0, description="Optimizer steps between checkpoints (0: only at stage ends).")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    teacher_batch_size: int = Field(32, ge=1)
    progress: bool = True
    threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: torch's). On a busy small machine 1 thread can be many times faster."
    )
    skip_bad_batches: bool = Field(
        False, description="A step with a NaN/inf loss or gradient is skipped (counted in logs/train.jsonl) instead of stopping the run."
    )


class PipelineConfig(StrictModel):
    """One YAML for the whole job. Relative file paths are relative to the config file's folder."""

    base_model: str = Field(description=f"Folder, hub id, or {BUILTIN_TINY} (a random tiny Qwen3 with the real tokenizer).")
    preset: str | None = Field(None, description="Preset name (qwen3-embedding, e5); default: detected from the model.")
    max_seq_length: int | None = Field(None, ge=2)
    tokenizer: TokenizerConfig | None = None
    init: InitConfig = Field(default_factory=InitConfig)
    expanded_model: str | None = Field(None, description="Start the stages from this expanded model (skip tokenizer + init).")
    evaluation: EvaluationConfig | None = None
    prune: PruneConfig | None = Field(None, description="Keep only N of the new tokens in final/ (the stages keep all).")
    interpolate: InterpolateConfig | None = Field(
        None, description="Make final/ a weight-space interpolation between the last stage and the base (or the expanded model, or an earlier stage)."
    )
    refit: list[StageConfig] | None = Field(
        None,
        description="More stages after prune and interpolate, on final/, taught by final/ itself read with the BASE "
        "tokenizer (the network's reading of the base pieces, which the new tokens' reading trails): with "
        "`train: new_rows` and a distillation objective, the new rows are fitted to the network they ended up in. "
        "One stage (a mapping) or several (a list, run in order, each from the one before with its own optimizer "
        "and lr schedule, all with the same teacher). final/ becomes the last one's output.",
    )

    @field_validator("refit", mode="before")
    @classmethod
    def _one_refit_stage(cls, v: Any) -> Any:
        # A single mapping is the common case; a list gives passes whose schedules restart.
        return [v] if isinstance(v, dict) else v

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the base model (auto_map). Off: only if you trust it.")
    allow_pickle: bool = Field(False, description="Load .bin/.pt pickle weights (a pickle can run code when loaded). Off: safetensors only.")
    stages: list[StageConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> PipelineConfig:
        if (self.tokenizer is None) == (self.expanded_model is None):
            raise ValueError("give exactly one of `tokenizer` (expand here) and `expanded_model` (already expanded)")
        keep = self.prune.keep_new_tokens if self.prune is not None else None
        if keep is not None and self.tokenizer is not None and keep >= self.tokenizer.settings.max_new_tokens:
            raise ValueError(
                f"prune.keep_new_tokens ({self.prune.keep_new_tokens}) must be below tokenizer.settings.max_new_tokens "
                f"({self.tokenizer.settings.max_new_tokens}): there is nothing to prune"
            )
        names = [s.name for s in self.stages]
        if self.refit is not None:
            if not self.refit:
                raise ValueError("refit: give one stage or a non-empty list (or null for none)")
            for where, st in self.refit_stages():
                if not st.objective.needs_teacher:
                    raise ValueError(f"{where}.objective: the refit learns from final/ read with the base tokenizer; give it a `distill` term")
                if st.name in names:
                    raise ValueError(f"{where}.name {st.name!r} is a stage's name too (both are folders under stages/)")
            refits = [st.name for st in self.refit]
            if len(set(refits)) < len(refits):
                raise ValueError(f"refit: stage names must be unique (they are folder names); got {refits}")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique (they are folder names); repeated: {dup}")
        if self.interpolate is not None and self.interpolate.anchor not in (*ANCHORS, *names[:-1]):
            raise ValueError(
                f"interpolate.anchor must be `base`, `expanded` or an earlier stage ({', '.join(names[:-1]) or 'none'}); "
                f"got {self.interpolate.anchor!r}"
            )
        clash = sorted(set(names) & set(ANCHORS))
        if clash and self.interpolate is not None:
            raise ValueError(f"stage name {clash[0]!r} is also an `interpolate.anchor` keyword; rename the stage")
        return self

    def refit_stages(self) -> list[tuple[str, StageConfig]]:
        """(where, stage) for each refit stage: `refit` when it is one, `refit.<i>` in a list, as messages name them."""
        stages = self.refit or []
        return [("refit" if len(stages) == 1 else f"refit.{i}", st) for i, st in enumerate(stages)]

    def all_stages(self) -> list[tuple[str, StageConfig]]:
        """(where, stage) for the stages and then the refit stages."""
        return [*((f"stages.{i}", st) for i, st in enumerate(self.stages)), *self.refit_stages()]

    @property
    def final_is_last_stage(self) -> bool:
        """False when `final/` is derived from the last stage (pruned, interpolated or refitted)."""
        return self.prune is None and self.interpolate is None and self.refit is None

    @property
    def needs_teacher(self) -> bool:
        return any(s.objective.needs_teacher for s in self.stages)

    @property
    def needs_base(self) -> bool:
        """Whether training reads the base model: a distillation teacher, or a second (base) tokenisation."""
        return self.needs_teacher or any(s.dual_segmentation is not None for s in self.stages)


def _resolve(value: Any, base: Path, always: bool) -> Any:
    """`value` made absolute against `base` when it is a relative local path; hub ids and builtins stay."""
    if not isinstance(value, str) or not value or value.startswith("builtin:"):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    here = base / p
    # A model or donor may be a hub id (`Org/name`): only a path that says so, or exists, is local.
    if always or value.startswith(".") or here.exists():
        return os.path.normpath(here)
    return value


def resolve_config_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make the file paths of a raw pipeline mapping absolute against `base` (in place; malformed parts are left to validation)."""

    def at(node: Any, key: str, always: bool) -> None:
        if isinstance(node, dict) and key in node:
            node[key] = _resolve(node[key], base, always)

    def entries(node: Any) -> list[Any]:
        return node if isinstance(node, list) else []

    at(data, "base_model", False)
    at(data, "expanded_model", True)
    tok = data.get("tokenizer")
    if isinstance(tok, dict):
        at(tok, "expanded", True)
        at(tok, "donor", False)
        for e in entries(tok.get("corpus")):
            at(e, "path", True)
    ev = data.get("evaluation")
    if isinstance(ev, dict) and isinstance(ev.get("suite"), str):
        at(ev, "suite", True)
    elif isinstance(ev, dict) and isinstance(ev.get("suite"), dict):  # an inline suite's task files
        for t in entries(ev["suite"].get("tasks")):
            at(t, "path", True)
    refit = data.get("refit")
    for st in [*entries(data.get("stages")), *(entries(refit) or [refit])]:
        if isinstance(st, dict):
            for e in entries(st.get("data")):
                at(e, "path", True)
    pr = data.get("prune")
    if isinstance(pr, dict):
        for e in entries(pr.get("texts")):
            at(e, "path", True)
    ip = data.get("interpolate")
    if isinstance(ip, dict) and isinstance(ip.get("select_on"), str):
        at(ip, "select_on", True)
    elif isinstance(ip, dict) and isinstance(ip.get("select_on"), dict):
        for t in entries(ip["select_on"].get("tasks")):
            at(t, "path", True)
    return data


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a pipeline YAML: its paths against its own folder, then `--set` values against the working directory."""
    from koemb.config import apply_overrides

    path = Path(path)
    data = resolve_config_paths(read_yaml(path), path.resolve().parent)
    data = resolve_config_paths(apply_overrides(data, overrides or []), Path.cwd())
    return validate_model(PipelineConfig, data, str(path))


# --------------------------------------------------------------------------- validate


def _is_local(spec: str) -> bool:
    return spec.startswith(("/", ".", "~", "builtin:")) or Path(spec).exists() or spec.count("/") != 1


def validate_pipeline(cfg: PipelineConfig, source: str = "config") -> list[str]:
    """Check what can be checked without running: files, suite, model, LoRA target names.

    Raises UserError on the first problem; returns notes on what could not be checked here
    (hub models and data sets when offline).
    """
    from koemb.data.corpus import resolve_corpus_path

    notes: list[str] = []
    entries = [(f"tokenizer.corpus.{i}", d) for i, d in enumerate(cfg.tokenizer.corpus if cfg.tokenizer else [])]
    entries += [(f"prune.texts.{i}", d) for i, d in enumerate(cfg.prune.texts if cfg.prune else [])]
    for where, st in cfg.all_stages():
        entries += [(f"{where}.data.{j}", d) for j, d in enumerate(st.data)]
    for where, d in entries:
        if d.hub is not None:
            notes.append(f"{where}: hub data set {d.hub.repo} not checked (needs the network)")
            continue
        p = resolve_corpus_path(d.path)
        if not p.is_file():
            raise UserError(f"{source}: {where}.path: {p} does not exist")
    for where, st in cfg.all_stages():
        # Whether a source's pairs are scored decides which objective reads it: a stage that cannot read
        # one of its sources fails now, not when the stage starts (the loop checks again on all rows).
        scored = {f"{source}: {where}.data.{j} ({d.path})": _first_row_scored(resolve_corpus_path(d.path)) for j, d in enumerate(st.data) if d.hub is None}
        st.objective.check_sources(scored)
    for key in ("expanded_model",):
        v = getattr(cfg, key)
        if v and not Path(v).is_dir():
            raise UserError(f"{source}: {key}: {v} is not a folder")
    for key in ("base_model", "expanded_model"):
        if getattr(cfg, key):
            check_model_safe(
                getattr(cfg, key), f"{source}: {key}", trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle, need_weights=False
            )
    if cfg.tokenizer and cfg.tokenizer.expanded and not (Path(cfg.tokenizer.expanded) / "tokenizer.json").is_file():
        raise UserError(f"{source}: tokenizer.expanded: {cfg.tokenizer.expanded} has no tokenizer.json")
    if cfg.evaluation:
        _load_suite(cfg.evaluation.suite, f"{source}: evaluation.suite")
    if cfg.interpolate is not None and cfg.interpolate.select_on is not None:
        where = f"{source}: interpolate.select_on"
        if not validation_tasks(_load_suite(cfg.interpolate.select_on, where)):
            raise UserError(f"{where}: the suite has no retrieval or STS task to score the alphas on")
        if cfg.evaluation and cfg.evaluation.suite == cfg.interpolate.select_on:
            log.warning("%s is the evaluation suite: alpha is then chosen on the sets the run reports", where)
    model_cfg = _model_config(cfg.expanded_model or cfg.base_model, notes)
    if model_cfg is not None:
        skeleton = _meta_model(model_cfg)
        for where, st in cfg.all_stages():
            if st.train.kind == "lora":
                st.train.check_targets(skeleton, f"{source}: {where}.train.target_modules")
    return notes


def _first_row_scored(path: Path) -> bool:
    """Whether a training file's first row has a `score` (a file scores every pair or none)."""
    if not path.name.lower().endswith(".jsonl"):
        return False
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    return False  # the reader names the bad line when the stage reads the file
                return isinstance(row, dict) and row.get("score") is not None
    return False


def check_model_safe(spec: str, field: str, *, trust_remote_code: bool, allow_pickle: bool, need_weights: bool = True) -> None:
    """Before anything is loaded: refuse pickle weights and model code that the config did not allow.

    `need_weights=False` (validate) accepts a folder with only config and tokenizer, but still refuses pickles.
    """
    from koemb.model.files import PICKLE_SUFFIXES, check_weights_safe, transformer_dir

    p = Path(spec)
    if spec == BUILTIN_TINY or not p.is_dir():
        return  # builtins are built here; a hub id's files are checked by transformers (safetensors, no remote code)
    tdir = transformer_dir(p)
    cfg_file = tdir / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{field}: {spec}: no config.json (expected a transformers or sentence-transformers model folder)")
    pickles = sorted(q.name for q in tdir.iterdir() if q.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle and not any(tdir.glob("*.safetensors")):
        raise UserError(
            f"{field}: {tdir}: weights only as pickle ({', '.join(pickles)}); koemb loads safetensors only, because a pickle "
            "can run code when loaded. Convert the weights to safetensors, or set `allow_pickle: true` in the config if you trust them"
        )
    if need_weights:
        check_weights_safe(tdir, allow_pickle)
    try:
        auto_map = json.loads(cfg_file.read_text(encoding="utf-8")).get("auto_map")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{cfg_file}: not valid JSON ({exc})") from None
    if auto_map and not trust_remote_code:
        raise UserError(
            f"{field}: {spec}: the model needs its own Python code ({cfg_file.name} has auto_map: {sorted(auto_map)}); "
            "trust_remote_code is off, so koemb does not run it. Set `trust_remote_code: true` in the config only if you trust that code"
        )


def _model_config(spec: str, notes: list[str]):
    from transformers import AutoConfig, Qwen3Config

    if spec == BUILTIN_TINY:
        from koemb.model.tiny import TINY_QWEN3

        return Qwen3Config(vocab_size=151669, **TINY_QWEN3)
    try:
        return AutoConfig.from_pretrained(spec, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if Path(spec).exists() or spec.startswith(("/", ".", "~")):
            raise UserError(f"base_model: {spec}: cannot read its config.json ({str(exc).splitlines()[0]})") from None
        notes.append(f"base_model: {spec} not checked (not a local folder and the hub is not reachable); LoRA target names not checked")
        return None


def _meta_model(config):
    from accelerate import init_empty_weights
    from transformers import AutoModel

    with init_empty_weights():
        return AutoModel.from_config(config)


def _load_suite(suite: str | dict[str, Any], source: str):
    from koemb.eval.suite import load_suite, suite_from_dict

    if isinstance(suite, dict):
        return suite_from_dict(suite, Path.cwd(), source)
    return load_suite(suite)


# --------------------------------------------------------------------------- run


def _prepare_out(out: Path, cfg: PipelineConfig, resume: bool, overwrite: bool) -> None:
    if resume:
        saved = out / "config.yaml"
        if not saved.is_file():
            raise UserError(f"{out}: nothing to resume (no config.yaml); run without --resume")
        # A config saved before paths were resolved holds them as written (working-directory relative).
        # Compared as validated configs, so fields added to the schema since then take their defaults.
        if validate_model(PipelineConfig, resolve_config_paths(read_yaml(saved), Path.cwd()), str(saved)) != cfg:
            raise UserError(f"{saved}: the config differs from the one this run started with; resume with the same config (and --set values), or start over with --overwrite")
        return
    existing = [p for p in out.iterdir() if p.name != LOCK_NAME] if out.is_dir() else []
    if existing:
        if not overwrite:
            raise UserError(f"{out}: already exists and is not empty; pass --overwrite to replace it or --resume to continue it")
        for p in existing:  # everything but our own lock
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    dump_yaml_model(cfg, out / "config.yaml")


def _accelerator(rt: RuntimeConfig):
    from accelerate import Accelerator

    if rt.threads:
        torch.set_num_threads(rt.threads)
    cuda = torch.cuda.is_available() and not rt.cpu
    mp = "bf16" if rt.mixed_precision == "bf16" or (rt.mixed_precision == "auto" and cuda) else "no"
    return Accelerator(cpu=not cuda, mixed_precision=mp)


def _base_folder(cfg: PipelineConfig, out: Path) -> str:
    if cfg.base_model != BUILTIN_TINY:
        return cfg.base_model
    from koemb.model.tiny import build_tiny_qwen3

    folder = out / "base"
    if not (folder / "config.json").is_file():
        build_tiny_qwen3(folder, max_seq_length=cfg.max_seq_length or 512, overwrite=True)
    return str(folder)


def expand_step(cfg: PipelineConfig, out: Path, base: str) -> Path:
    """Tokenizer expansion (or the given expanded tokenizer), then `koemb model expand` into OUT/expanded."""
    from koemb.data.corpus import read_documents
    from koemb.model.expand import expand_model
    from koemb.vocab.expand import expand_tokenizer
    from koemb.vocab.io import load_tokenizer

    expanded = out / "expanded"
    if (expanded / "expansion.json").is_file():
        return expanded
    tc = cfg.tokenizer
    assert tc is not None
    if tc.expanded:
        tok_dir = Path(tc.expanded)
    elif (out / "tokenizer" / "expansion.json").is_file():
        # expansion.json is written last: the tokenizer folder is complete (a resumed run skips it).
        tok_dir = out / "tokenizer"
    else:
        tok_dir = out / "tokenizer"
        docs: list[str] = []
        for entry in tc.corpus:
            if entry.hub is not None:
                from koemb.train.data import read_entry

                docs += [e.text or f"{e.query}\n{e.positive}" for e in read_entry(entry)]
            else:
                docs += read_documents([entry.path])[0][: entry.limit]
        base_tok = load_tokenizer(base)
        donor: Any = tc.donor
        if tc.train_donor_vocab_size:
            from koemb.vocab.donor import train_donor

            donor_dir = out / "donor"
            if not (donor_dir / "donor.json").is_file():  # written after tokenizer.json: present = complete
                train_donor(base_tok, docs, tc.train_donor_vocab_size, donor_dir)
            donor = str(donor_dir / "tokenizer.json")
        expand_tokenizer(base_tok, tok_dir, donor, docs, tc.settings, overwrite=True)
    return expand_model(
        base, tok_dir, expanded, init=cfg.init.method, noise_std=cfg.init.noise_std, seed=cfg.init.seed,
        preset=cfg.preset, max_seq_length=cfg.max_seq_length, overwrite=True,
        trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
    )


def _first_new_id(folder: Path) -> int | None:
    import json

    p = folder / "expansion.json"
    return json.loads(p.read_text(encoding="utf-8")).get("first_new_id") if p.is_file() else None


def train_stages(
    cfg: PipelineConfig, out: str | Path, *, model: str | Path | None = None, base: str | None = None, resume: bool = False, accelerator=None,
    first_index: int = 0, wheres: list[str] | None = None, teacher_cache: str = "teacher",
) -> Path:
    """Run every stage from the expanded `model` (default: OUT/expanded or `expanded_model`); return the last stage's folder.

    Stage folders that exist are complete (written atomically) and are skipped; the first missing
    stage continues from its newest checkpoint when `resume`.
    """
    from transformers import AutoModel, AutoTokenizer

    from koemb.model.encoder import no_pooler_kwargs
    from koemb.model.presets import resolve_preset
    from koemb.model.save import save_sentence_transformer
    from koemb.train.encode import EncodeSpec
    from koemb.train.loop import Runtime, Teacher, train_stage

    out = Path(out)
    acc = accelerator or _accelerator(cfg.runtime)
    current = Path(model or cfg.expanded_model or out / "expanded")
    if not (current / "config.json").is_file():
        raise UserError(f"{current}: not a model folder (no config.json); run `koemb run` or give --model")
    teacher = None
    base_tok = None
    if cfg.needs_base and base is None:  # builtin:tiny-qwen3 is rebuilt identically (seeded), by one process
        if acc.is_main_process:
            _base_folder(cfg, out)
        acc.wait_for_everyone()
        base = str(out / "base") if cfg.base_model == BUILTIN_TINY else cfg.base_model
    if cfg.needs_base:
        base_tok = AutoTokenizer.from_pretrained(base, trust_remote_code=cfg.trust_remote_code)
    if cfg.needs_teacher:
        check_model_safe(base, "base_model", trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
        tpreset = resolve_preset(base, cfg.preset)
        tmodel = AutoModel.from_pretrained(
            base, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code, use_safetensors=None if cfg.allow_pickle else True,
            **no_pooler_kwargs(base),
        ).to(acc.device).eval()
        tmodel.requires_grad_(False)
        teacher = Teacher(tmodel, base_tok, EncodeSpec.from_preset(tpreset), cfg.runtime.teacher_batch_size)
        teacher.load(out / "cache" / f"{teacher_cache}.safetensors")
    rt = Runtime(
        checkpoint_dir=out / "checkpoints", log_dir=out / "logs", checkpoint_every=cfg.runtime.checkpoint_every,
        keep_checkpoints=cfg.runtime.keep_checkpoints, log_every=cfg.runtime.log_every,
        gradient_checkpointing=cfg.runtime.gradient_checkpointing, progress=cfg.runtime.progress,
        skip_bad_batches=cfg.runtime.skip_bad_batches,
    )
    # How the config names each stage, for messages: stages.<i> unless the caller says (the refit's stages).
    wheres = wheres or [f"stages.{j}" for j in range(len(cfg.stages))]
    for i, stage in enumerate(cfg.stages, start=first_index):
        rt.where = wheres[i - first_index]
        dest = out / "stages" / stage.name
        if (dest / "config.json").is_file():
            if not resume:
                raise UserError(f"{dest}: stage output exists; pass --resume to continue after it or --overwrite to start over")
            log.info("stage %s: done already (%s)", stage.name, dest)
            current = dest
            continue
        preset = resolve_preset(current, cfg.preset)
        spec = EncodeSpec.from_preset(preset, stage.max_length)
        check_model_safe(str(current), f"stage {stage.name}: input model", trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
        net = AutoModel.from_pretrained(
            str(current), dtype=torch.float32, trust_remote_code=cfg.trust_remote_code, use_safetensors=None if cfg.allow_pickle else True,
            **no_pooler_kwargs(current),  # else a BERT-family stage saves a random pooler head
        )
        tok = AutoTokenizer.from_pretrained(str(current), trust_remote_code=cfg.trust_remote_code)
        rows = net.get_input_embeddings().weight.shape[0]
        if len(tok) > rows:
            # Fewer tokens than rows is normal (e5-small has 35 spare rows); more means ids that index past the matrix.
            raise UserError(
                f"{current}: the tokenizer has {len(tok)} tokens but the model has only {rows} embedding rows; "
                "expected a tokenizer no larger than the embedding matrix (expand the model with `koemb model expand`)"
            )
        trained = train_stage(
            net, tok, stage, stage_index=i, spec=spec, first_new_id=_first_new_id(current), runtime=rt,
            accelerator=acc, teacher=teacher, resume=resume, base_tokenizer=base_tok,
        )
        if acc.is_main_process:
            if teacher is not None:
                teacher.save(out / "cache" / f"{teacher_cache}.safetensors")
            save_sentence_transformer(
                trained, tok, dest, preset, expansion=current / "expansion.json" if (current / "expansion.json").is_file() else None,
                recipe={"stage": i + 1, "of": first_index + len(cfg.stages), "from": str(current), **stage.model_dump(mode="json")},
                title=f"koemb stage {i + 1}/{first_index + len(cfg.stages)}: {stage.name}", overwrite=True,
            )
        acc.wait_for_everyone()
        current = dest
        del net, trained
        if i + 1 < first_index + len(cfg.stages):
            fault("between_stages")
    return current


def _copy_folder(src: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp", dir=dest.parent))
    shutil.copytree(src, tmp / "m")
    if dest.exists():
        shutil.rmtree(dest)
    (tmp / "m").rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def _check_prune(cfg: PipelineConfig, expanded: Path) -> None:
    """Before hours of training: `prune.keep_new_tokens` must leave something to remove."""
    if cfg.prune is None:
        return
    from koemb.model.expand import read_expansion

    exp = read_expansion(expanded)
    if exp is None:
        raise UserError(f"prune: {expanded / 'expansion.json'} not found; prune needs a model koemb expanded")
    n_new = len(exp["tokens"])
    if cfg.prune.keep_new_tokens is not None and not cfg.prune.keep_new_tokens < n_new:
        raise UserError(f"prune.keep_new_tokens ({cfg.prune.keep_new_tokens}) must be below the {n_new} new tokens of {expanded}")


def training_sources(cfg: PipelineConfig) -> dict[str, Iterator[str]]:
    """The texts of the tokenizer corpus and of every stage's data, one source per entry, each entry once
    (for `prune.rank_by: usage | balanced`)."""
    from koemb.train.data import read_entry, texts_of

    def texts(entry) -> Iterator[str]:
        for e in read_entry(entry):
            yield from texts_of(e)

    out: dict[str, Iterator[str]] = {}
    for entry in [*(cfg.tokenizer.corpus if cfg.tokenizer else []), *(d for st in cfg.stages for d in st.data)]:
        # A file two stages read (at other weights) is one source, counted once.
        name = (entry.path or f"hub:{entry.hub.repo}") + (f" (first {entry.limit})" if entry.limit else "")
        if name not in out:
            out[name] = texts(entry)
    return out


def final_step(cfg: PipelineConfig, out: Path, last: Path, base: str) -> Path:
    """final/ = the last stage, then (if configured) pruned, then interpolated towards its anchor."""
    final = out / "final"
    if cfg.final_is_last_stage:
        _copy_folder(last, final)
        return final
    with tempfile.TemporaryDirectory(prefix=".final.", dir=out) as tmp:
        src = last
        curve = None
        if cfg.prune is not None:
            from koemb.model.prune import prune_model

            dest = final if cfg.interpolate is None else Path(tmp) / "pruned"
            keep, ranking = cfg.prune.keep_new_tokens, None
            if keep is None:
                keep, ranking, curve = _keep_for_target(cfg, last)
            if keep is None:
                src = last  # no smaller number keeps the saving: final/ keeps every new token
            else:
                sources = training_sources(cfg) if cfg.prune.rank_by != "order" and ranking is None else None
                src = prune_model(src, dest, keep, rank_by=cfg.prune.rank_by, sources=sources, ranking=ranking,
                                  overwrite=True, field="prune.keep_new_tokens", trust_remote_code=cfg.trust_remote_code)
        if cfg.interpolate is not None:
            from koemb.model.interpolate import interpolate_models

            ip = cfg.interpolate
            anchor = {"base": base, "expanded": str(cfg.expanded_model or out / "expanded")}.get(
                ip.anchor, str(out / "stages" / ip.anchor))
            if len(ip.candidates) == 1:
                interpolate_models(anchor, src, final, ip.candidates[0], overwrite=True, field="interpolate.alpha",
                                   trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
            else:
                choose_alpha(cfg, anchor, src, final, Path(tmp), out / "eval" / "interpolate-alpha")
        elif src == last:
            _copy_folder(last, final)
    if curve is not None:
        (final / "prune_curve.json").write_text(json.dumps(curve, indent=2, ensure_ascii=False), encoding="utf-8")
    return final


def validation_tasks(suite) -> list[str]:
    """The tasks of a validation suite that score a choice: retrieval and STS (separation is another scale)."""
    return [t.name for t in suite.tasks if t.type in ("retrieval", "sts")]


def validation_score(task_results: dict[str, dict[str, float]], suite) -> float:
    """Mean main metric (NDCG@10, Spearman) over the suite's retrieval and STS tasks."""
    from koemb.eval.tasks import TASK_TYPES

    kind = {t.name: t.type for t in suite.tasks}
    names = validation_tasks(suite)
    return sum(task_results[n][TASK_TYPES[kind[n]].main_metric] for n in names) / len(names)


def choose_alpha(cfg: PipelineConfig, anchor: str, src: Path, final: Path, tmp: Path, report: Path) -> float:
    """`interpolate.alpha` as a list: write each candidate, score it on `select_on`, and make the best final/.

    Candidates are written and scored one at a time, and only the best so far is kept on disk (a candidate is a
    whole model). Each candidate's evaluation goes to report/alpha-<a>/; report/selection.json and final/
    interpolate_selection.json record the scores and the choice."""
    from koemb.eval.run import evaluate
    from koemb.model.interpolate import interpolate_models

    ip = cfg.interpolate
    assert ip is not None and ip.select_on is not None
    suite = _load_suite(ip.select_on, "interpolate.select_on")
    scores: dict[str, float] = {}
    best: tuple[float, float, Path] | None = None  # (score, alpha, folder)
    for alpha in ip.candidates:
        label = f"alpha-{alpha:g}"
        folder = interpolate_models(anchor, src, tmp / label, alpha, overwrite=True, field="interpolate.alpha",
                                    trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
        doc = evaluate(str(folder), suite, report / label, label=label, use_cache=False)
        scores[f"{alpha:g}"] = score = validation_score(doc["results"][label], suite)
        log.info("interpolate.alpha %g: %.4f on interpolate.select_on", alpha, score)
        if best is None or score > best[0]:
            if best is not None:
                shutil.rmtree(best[2])
            best = (score, alpha, folder)
        else:
            shutil.rmtree(folder)
    assert best is not None
    # Renames within OUT (tmp is OUT/.final.*): final/ is never a half-written folder.
    if final.exists():
        final.rename(tmp / "previous-final")
    best[2].rename(final)
    selection = {"chosen": best[1], "scores": scores, "score": "mean main metric of " + ", ".join(validation_tasks(suite)),
                 "suite": ip.select_on if isinstance(ip.select_on, str) else "inline"}
    text = json.dumps(selection, indent=2, ensure_ascii=False)
    (report / "selection.json").write_text(text, encoding="utf-8")
    (final / "interpolate_selection.json").write_text(text, encoding="utf-8")
    log.info("interpolate.alpha: chose %g of %s on interpolate.select_on", best[1], ", ".join(scores))
    return best[1]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                   "merges.txt", "vocab.txt", "sentencepiece.bpe.model", "tokenizer.model", "spiece.model", "chat_template.jinja")


def refit_teacher(model: Path, base: str, dest: Path, trust_remote_code: bool = False) -> Path:
    """`model`'s weights with the BASE tokenizer: the network reading the base pieces, which is what the new rows
    should reproduce. The base ids are the first ids of the expanded vocabulary, so the rows they index are the
    model's own (its new rows are never read). Weights are hard-linked when the file system allows it."""
    from transformers import AutoTokenizer

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for item in model.iterdir():
        if item.name in TOKENIZER_FILES or item.name == "expansion.json":
            continue
        target = dest / item.name
        if item.is_dir():
            shutil.copytree(item, target)
        else:
            try:
                os.link(item, target)
            except OSError:
                shutil.copy2(item, target)
    AutoTokenizer.from_pretrained(base, trust_remote_code=trust_remote_code).save_pretrained(str(dest))
    return dest


def refit_step(cfg: PipelineConfig, out: Path, base: str, acc, resume: bool) -> Path:
    """`refit:`: final/ (pruned, interpolated) is copied to refit/input/, the refit stages learn from it in order on
    the expanded tokenisation with refit/teacher/ (the same weights, base tokenizer) as their one teacher, and the
    last one's output (stages/<its name>/) becomes final/."""
    assert cfg.refit
    final, work = out / "final", out / "refit"
    dest = out / "stages" / cfg.refit[-1].name
    if acc.is_main_process:
        work.mkdir(exist_ok=True)
        _copy_folder(final, work / "input")
        refit_teacher(work / "input", base, work / "teacher", cfg.trust_remote_code)
    acc.wait_for_everyone()
    # Its own teacher cache: the texts are the stages' texts, the teacher is not the base model.
    refits = cfg.model_copy(update={"stages": cfg.refit})
    train_stages(refits, out, model=work / "input", base=str(work / "teacher"), resume=resume, accelerator=acc,
                 first_index=len(cfg.stages), wheres=[w for w, _ in cfg.refit_stages()], teacher_cache="refit-teacher")
    if acc.is_main_process:
        _copy_folder(dest, final)
        shutil.rmtree(work / "teacher")
    acc.wait_for_everyone()
    return final


def _keep_for_target(cfg: PipelineConfig, last: Path) -> tuple[int | None, Any, dict[str, Any]]:
    """`prune.target_reduction`: the fewest new tokens (multiples of `prune.step`) that keep every `prune.texts`
    set that much shorter, ranked as the prune will rank them (one ranking, handed to the prune: uses are counted
    and a `fidelity` damage measured once). Returns (N or None when only all of them do, the ranking, the curve as JSON)."""
    from koemb.model.prune import rank_new_tokens
    from koemb.model.prune_curve import expansion_of, prune_curve, step_keeps
    from koemb.train.data import read_entry, texts_of

    pr = cfg.prune
    assert pr is not None and pr.target_reduction is not None
    exp = expansion_of(last)
    n_new = len(exp["tokens"])
    sources = training_sources(cfg) if pr.rank_by != "order" else None
    ranking = rank_new_tokens(last, exp, pr.rank_by, sources, trust_remote_code=cfg.trust_remote_code)
    sets: dict[str, list[str]] = {}
    for i, entry in enumerate(pr.texts):
        name = f"{i}: {entry.label}"
        sets[name] = [t for e in read_entry(entry) for t in texts_of(e) if t.strip()]
    curve = prune_curve(last, step_keeps(n_new, pr.step), sets, rank_by=pr.rank_by, ranked=ranking.ranked, trust_remote_code=cfg.trust_remote_code)
    keep = curve.smallest_keep(pr.target_reduction / 100)
    doc = {**curve.to_json(), "target": {"reduction": pr.target_reduction / 100, "smallest_keep": keep}}
    if keep is None or keep >= n_new:
        log.warning("prune.target_reduction %.4g%%: only all %d new tokens reach it (or none does); final/ keeps them all",
                    pr.target_reduction, n_new)
        return None, ranking, doc
    log.info("prune.target_reduction %.4g%%: %d of %d new tokens reach it on every prune.texts set", pr.target_reduction, keep, n_new)
    return keep, ranking, doc


def evaluate_step(cfg: PipelineConfig, out: Path, base: str) -> dict[str, Any] | None:
    """`koemb evaluate` on final, with base, expanded and (optionally) every stage as baselines."""
    if cfg.evaluation is None:
        return None
    from koemb.eval.run import evaluate

    fault("during_eval")
    ev = cfg.evaluation
    suite = _load_suite(ev.suite, "evaluation.suite")
    baselines: list[str] = [base]
    labels = ["base"]
    if (out / "expanded").is_dir():
        baselines.append(str(out / "expanded"))
        labels.append("expanded")
    if ev.stages:
        # final/ is the last stage unless it was pruned or interpolated: then the last stage is a baseline too.
        for s in cfg.stages[:-1] if cfg.final_is_last_stage else cfg.stages:
            baselines.append(str(out / "stages" / s.name))
            labels.append(s.name)
        if cfg.refit is not None and (cfg.prune is not None or cfg.interpolate is not None):
            baselines.append(str(out / "refit" / "input"))  # the pruned / interpolated model the refit started from
            labels.append("before-refit")
        for s in (cfg.refit or [])[:-1]:  # each refit pass but the last (final/ is that one)
            baselines.append(str(out / "stages" / s.name))
            labels.append(s.name)
    return evaluate(
        str(out / "final"), suite, out / "eval", baselines=baselines, baseline_labels=labels,
        label="final", preset=None, mteb_tasks=ev.mteb,
    )


def run_pipeline(cfg: PipelineConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """expand -> init -> stages -> final -> evaluation; returns OUT. See the module docstring for the layout."""
    out = Path(out)
    acc = _accelerator(cfg.runtime)
    # Safety first: nothing is read or written before pickles and model code are refused.
    for key in ("base_model", "expanded_model"):
        if getattr(cfg, key):
            check_model_safe(getattr(cfg, key), key, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    # Refuses while a live run holds OUT; a dead run's lock is taken over only with --resume/--overwrite.
    lock = RunLock(out, takeover=resume or overwrite) if acc.is_main_process else None
    if lock is not None:
        lock.acquire()
    try:
        if acc.is_main_process:
            _prepare_out(out, cfg, resume, overwrite)
        acc.wait_for_everyone()
        _run(cfg, out, acc, resume)
    finally:
        if lock is not None:
            lock.release()
    return out


def _run(cfg: PipelineConfig, out: Path, acc, resume: bool) -> None:
    base = _base_folder(cfg, out) if acc.is_main_process else (str(out / "base") if cfg.base_model == BUILTIN_TINY else cfg.base_model)
    if cfg.expanded_model is None and acc.is_main_process:
        expand_step(cfg, out, base)
    acc.wait_for_everyone()
    _check_prune(cfg, Path(cfg.expanded_model or out / "expanded"))
    last = train_stages(cfg, out, base=base, resume=resume, accelerator=acc)
    if acc.is_main_process:
        _training_chart(out)
        final_step(cfg, out, last, base)
    acc.wait_for_everyone()
    if cfg.refit is not None:
        refit_step(cfg, out, base, acc, resume)
        if acc.is_main_process:
            _training_chart(out)  # again, with the refit's losses
    if acc.is_main_process:
        evaluate_step(cfg, out, base)
    acc.wait_for_everyone()


def _training_chart(out: Path) -> None:
    from koemb.eval.report import write_training_chart

    try:  # a chart is a convenience: it must never stand between finished stages and `final`
        write_training_chart(out / "logs" / "train.jsonl", out / "logs" / "training.png")
    except Exception as e:  # noqa: BLE001
        log.warning("logs/training.png not written: %s", e)
