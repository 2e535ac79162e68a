"""The whole job from one YAML: expand the tokenizer, expand + initialise the model, run the stages, evaluate.

`run_pipeline` (the `koemb run` command) and `train_stages` (`koemb train`) are plain functions; the
CLI only parses flags. Output layout under OUT:

    config.yaml          the resolved config (same schema as the input)
    base/                the base model, when it is built here (`base_model: builtin:tiny-qwen3`)
    tokenizer/           the expanded tokenizer + expansion.json (and donor/ when a donor is trained)
    expanded/            the initialised expanded model (sentence-transformers folder + expansion.json)
    stages/<name>/       one sentence-transformers folder per stage, written when the stage ends
    final/               the last stage's model
    eval/                what `koemb evaluate` writes: results.json (base, expanded, every stage), report.md, charts
    checkpoints/         training checkpoints (model folders never hold any)
    cache/teacher.pt     the distillation teacher's embeddings by text (the base model never changes)
    logs/                train.jsonl and TensorBoard events

Every folder is written whole or not at all (temporary name, then rename), so `--resume` trusts a
folder that exists and continues the first stage that has none, from its newest checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from koemb.config import StrictModel, dump_yaml_model, load_yaml_model, read_yaml
from koemb.errors import UserError
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
        return self


class InitConfig(StrictModel):
    """How new rows start (`koemb model expand --init`)."""

    method: str = Field("mean", description="A method of koemb.model.init_methods (mean = FVT, first, random).")
    noise_std: float = Field(0.0, ge=0, description="Gaussian noise, std relative to the old rows' scale.")
    seed: int = 0


class EvaluationConfig(StrictModel):
    """What `koemb evaluate` runs on the base, the expanded model and every stage."""

    suite: str | dict[str, Any] = Field(description="A suite YAML path, or the suite itself (tasks: ...).")
    mteb: list[str] = Field(default_factory=list, description="Official MTEB task names too (online only).")
    stages: bool = Field(True, description="Also evaluate every intermediate stage, not only base, expanded and final.")


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


class PipelineConfig(StrictModel):
    """One YAML for the whole job. Relative file paths are relative to the working directory."""

    base_model: str = Field(description=f"Folder, hub id, or {BUILTIN_TINY} (a random tiny Qwen3 with the real tokenizer).")
    preset: str | None = Field(None, description="Preset name (qwen3-embedding, e5); default: detected from the model.")
    max_seq_length: int | None = Field(None, ge=2)
    tokenizer: TokenizerConfig | None = None
    init: InitConfig = Field(default_factory=InitConfig)
    expanded_model: str | None = Field(None, description="Start the stages from this expanded model (skip tokenizer + init).")
    evaluation: EvaluationConfig | None = None
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    stages: list[StageConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _checks(self) -> PipelineConfig:
        if (self.tokenizer is None) == (self.expanded_model is None):
            raise ValueError("give exactly one of `tokenizer` (expand here) and `expanded_model` (already expanded)")
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique (they are folder names); repeated: {dup}")
        return self

    @property
    def needs_teacher(self) -> bool:
        return any(s.objective.needs_teacher for s in self.stages)


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineConfig:
    return load_yaml_model(PipelineConfig, path, overrides)


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
    for si, st in enumerate(cfg.stages):
        entries += [(f"stages.{si}.data.{j}", d) for j, d in enumerate(st.data)]
    for where, d in entries:
        if d.hub is not None:
            notes.append(f"{where}: hub data set {d.hub.repo} not checked (needs the network)")
            continue
        p = resolve_corpus_path(d.path)
        if not p.is_file():
            raise UserError(f"{source}: {where}.path: {p} does not exist")
    for key in ("expanded_model",):
        v = getattr(cfg, key)
        if v and not Path(v).is_dir():
            raise UserError(f"{source}: {key}: {v} is not a folder")
    if cfg.tokenizer and cfg.tokenizer.expanded and not (Path(cfg.tokenizer.expanded) / "tokenizer.json").is_file():
        raise UserError(f"{source}: tokenizer.expanded: {cfg.tokenizer.expanded} has no tokenizer.json")
    if cfg.evaluation:
        _load_suite(cfg.evaluation.suite, f"{source}: evaluation.suite")
    model_cfg = _model_config(cfg.expanded_model or cfg.base_model, notes)
    if model_cfg is not None:
        skeleton = _meta_model(model_cfg)
        for si, st in enumerate(cfg.stages):
            if st.train.kind == "lora":
                st.train.check_targets(skeleton, f"{source}: stages.{si}.train.target_modules")
    return notes


def _model_config(spec: str, notes: list[str]):
    from transformers import AutoConfig, Qwen3Config

    if spec == BUILTIN_TINY:
        from koemb.model.tiny import TINY_QWEN3

        return Qwen3Config(vocab_size=151669, **TINY_QWEN3)
    try:
        return AutoConfig.from_pretrained(spec)
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
        if read_yaml(saved) != cfg.model_dump(mode="json"):
            raise UserError(f"{saved}: the config differs from the one this run started with; resume with the same config (and --set values), or start over with --overwrite")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: already exists and is not empty; pass --overwrite to replace it or --resume to continue it")
        shutil.rmtree(out)
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
            train_donor(base_tok, docs, tc.train_donor_vocab_size, donor_dir)
            donor = str(donor_dir / "tokenizer.json")
        expand_tokenizer(base_tok, tok_dir, donor, docs, tc.settings, overwrite=True)
    return expand_model(
        base, tok_dir, expanded, init=cfg.init.method, noise_std=cfg.init.noise_std, seed=cfg.init.seed,
        preset=cfg.preset, max_seq_length=cfg.max_seq_length, overwrite=True,
    )


def _first_new_id(folder: Path) -> int | None:
    import json

    p = folder / "expansion.json"
    return json.loads(p.read_text(encoding="utf-8")).get("first_new_id") if p.is_file() else None


def train_stages(
    cfg: PipelineConfig, out: str | Path, *, model: str | Path | None = None, base: str | None = None, resume: bool = False, accelerator=None
) -> Path:
    """Run every stage from the expanded `model` (default: OUT/expanded or `expanded_model`); return the last stage's folder.

    Stage folders that exist are complete (written atomically) and are skipped; the first missing
    stage continues from its newest checkpoint when `resume`.
    """
    from transformers import AutoModel, AutoTokenizer

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
    if cfg.needs_teacher:
        if base is None:  # builtin:tiny-qwen3 is rebuilt identically (seeded), by one process
            if acc.is_main_process:
                _base_folder(cfg, out)
            acc.wait_for_everyone()
            base = str(out / "base") if cfg.base_model == BUILTIN_TINY else cfg.base_model
        tpreset = resolve_preset(base, cfg.preset)
        tmodel = AutoModel.from_pretrained(base, dtype=torch.float32).to(acc.device).eval()
        tmodel.requires_grad_(False)
        teacher = Teacher(tmodel, AutoTokenizer.from_pretrained(base), EncodeSpec.from_preset(tpreset), cfg.runtime.teacher_batch_size)
        teacher.load(out / "cache" / "teacher.pt")
    rt = Runtime(
        checkpoint_dir=out / "checkpoints", log_dir=out / "logs", checkpoint_every=cfg.runtime.checkpoint_every,
        keep_checkpoints=cfg.runtime.keep_checkpoints, log_every=cfg.runtime.log_every,
        gradient_checkpointing=cfg.runtime.gradient_checkpointing, progress=cfg.runtime.progress,
    )
    for i, stage in enumerate(cfg.stages):
        dest = out / "stages" / stage.name
        if (dest / "config.json").is_file():
            if not resume:
                raise UserError(f"{dest}: stage output exists; pass --resume to continue after it or --overwrite to start over")
            log.info("stage %s: done already (%s)", stage.name, dest)
            current = dest
            continue
        preset = resolve_preset(current, cfg.preset)
        spec = EncodeSpec.from_preset(preset, stage.max_length)
        net = AutoModel.from_pretrained(str(current), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(current))
        trained = train_stage(
            net, tok, stage, stage_index=i, spec=spec, first_new_id=_first_new_id(current), runtime=rt,
            accelerator=acc, teacher=teacher, resume=resume,
        )
        if acc.is_main_process:
            if teacher is not None:
                teacher.save(out / "cache" / "teacher.pt")
            save_sentence_transformer(
                trained, tok, dest, preset, expansion=current / "expansion.json" if (current / "expansion.json").is_file() else None,
                recipe={"stage": i + 1, "of": len(cfg.stages), "from": str(current), **stage.model_dump(mode="json")},
                title=f"koemb stage {i + 1}/{len(cfg.stages)}: {stage.name}", overwrite=True,
            )
        acc.wait_for_everyone()
        current = dest
        del net, trained
    return current


def _copy_folder(src: Path, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp", dir=dest.parent))
    shutil.copytree(src, tmp / "m")
    if dest.exists():
        shutil.rmtree(dest)
    (tmp / "m").rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)


def evaluate_step(cfg: PipelineConfig, out: Path, base: str) -> dict[str, Any] | None:
    """`koemb evaluate` on final, with base, expanded and (optionally) every stage as baselines."""
    if cfg.evaluation is None:
        return None
    from koemb.eval.run import evaluate

    ev = cfg.evaluation
    suite = _load_suite(ev.suite, "evaluation.suite")
    baselines: list[str] = [base]
    labels = ["base"]
    if (out / "expanded").is_dir():
        baselines.append(str(out / "expanded"))
        labels.append("expanded")
    if ev.stages:
        for s in cfg.stages[:-1]:
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
    if acc.is_main_process:
        _prepare_out(out, cfg, resume, overwrite)
    acc.wait_for_everyone()
    base = _base_folder(cfg, out) if acc.is_main_process else (str(out / "base") if cfg.base_model == BUILTIN_TINY else cfg.base_model)
    if cfg.expanded_model is None and acc.is_main_process:
        expand_step(cfg, out, base)
    acc.wait_for_everyone()
    last = train_stages(cfg, out, base=base, resume=resume, accelerator=acc)
    if acc.is_main_process:
        _copy_folder(last, out / "final")
        evaluate_step(cfg, out, base)
    acc.wait_for_everyone()
    return out
