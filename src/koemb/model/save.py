"""Write a model as a self-describing sentence-transformers folder.

Every model koemb writes (the expanded model, each stage, the final one) goes through
`save_sentence_transformer`, so every folder answers the same questions on its own:

- weights as safetensors (`model.safetensors`, never a pickle) and `config.json`;
- the tokenizer (`tokenizer.json` + `tokenizer_config.json`) with the preset's padding side written
  into `tokenizer_config.json` (transformers 5 does not persist a `padding_side` set after loading,
  and Qwen3-Embedding's last-token recipe needs LEFT padding);
- `modules.json` (Transformer -> Pooling [-> Normalize]), `1_Pooling/config.json` with the preset's
  pooling mode, `sentence_bert_config.json` with `max_seq_length`;
- `config_sentence_transformers.json` with the preset's prompts (`query`, `document`, and
  `symmetric` when it differs from `query`);
- `expansion.json` when the model has added rows (copied or written from a dict);
- `README.md`: a model card with the preset, the recipe and how to load it.

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model where a finished one is expected.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from koemb.errors import UserError
from koemb.model.presets import Preset, get_preset

POOLING_FLAGS = {
    "lasttoken": "pooling_mode_lasttoken",
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
}
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]
NORMALIZE_MODULE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def st_prompts(preset: Preset) -> dict[str, str]:
    """The prompts a sentence-transformers user needs: `encode(x, prompt_name="query")` etc."""
    prompts = {"query": preset.query_prefix(), "document": preset.document_prompt}
    sym = preset.symmetric_prefix()
    if sym != prompts["query"]:
        prompts["symmetric"] = sym
    return prompts


def pooling_config(preset: Preset, dim: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {"word_embedding_dimension": dim}
    for mode, key in POOLING_FLAGS.items():
        cfg[key] = preset.pooling == mode
    cfg.update({"pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
                "pooling_mode_weightedmean_tokens": False, "include_prompt": True})
    return cfg


def model_card(
    title: str,
    preset: Preset,
    prompts: Mapping[str, str],
    recipe: Mapping[str, Any] | None,
    expansion: Mapping[str, Any] | None,
    rows: int,
    dim: int,
) -> str:
    """Markdown model card: what the model is, how it was made, how to use it."""
    lines = [f"# {title}", "", "Written by koemb (sentence-transformers layout).", ""]
    lines += ["## Usage", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              'model = SentenceTransformer("PATH/TO/THIS/FOLDER")',
              'q = model.encode(["..."], prompt_name="query")', 'd = model.encode(["..."], prompt_name="document")',
              "```", ""]
    lines += ["## Preset", "", "| field | value |", "|---|---|"]
    for key, value in (("preset", preset.name), ("pooling", preset.pooling), ("padding side", preset.padding_side),
                       ("L2-normalised", preset.normalize), ("max_seq_length", preset.max_length),
                       ("embedding rows", rows), ("hidden size", dim)):
        lines.append(f"| {key} | `{value}` |")
    for name, text in prompts.items():
        lines.append(f"| prompt `{name}` | `{json.dumps(text, ensure_ascii=False)}` |")
    lines.append("")
    if expansion:
        init = expansion.get("init") or {}
        lines += ["## Vocabulary expansion", "",
                  f"- tokenizer method: `{expansion.get('method')}`; base vocabulary {expansion.get('base_vocab_size')}, "
                  f"{expansion.get('added')} tokens added from id {expansion.get('first_new_id')}",
                  ]
        if init:
            lines.append(f"- new rows initialised with `{init.get('method')}`, relative noise std {init.get('noise_std')}")
        if expansion.get("rows"):
            r = expansion["rows"]
            lines.append(f"- embedding rows {r.get('before')} -> {r.get('after')}")
        lines += ["- details: `expansion.json` in this folder", ""]
    if recipe:
        lines += ["## Recipe", "", "```yaml",
                  yaml.safe_dump(json.loads(json.dumps(recipe, default=str)), sort_keys=False, allow_unicode=True).rstrip(),
                  "```", ""]
    return "\n".join(lines)


def _load_expansion(expansion: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    if expansion is None or isinstance(expansion, Mapping):
        return dict(expansion) if expansion is not None else None
    path = Path(expansion)
    if path.is_dir():
        path = path / "expansion.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: expansion.json not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> None:
    """Fail early (before hours of work) if `out` exists, is not empty, and may not be replaced."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out}: already exists and is not empty; choose another --out or pass --overwrite")


def save_sentence_transformer(
    model: Any,
    tokenizer: Any,
    out_dir: str | os.PathLike,
    preset: Preset | str,
    *,
    max_seq_length: int | None = None,
    expansion: Mapping[str, Any] | str | Path | None = None,
    recipe: Mapping[str, Any] | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` + `tokenizer` as a sentence-transformers folder at `out_dir`; return the path.

    model: a transformers `PreTrainedModel` (the bare encoder, e.g. `Qwen3Model`); saved as safetensors.
    tokenizer: a transformers tokenizer, or a folder/hub id to load one from.
    preset: a `Preset` or a registered preset name; fixes pooling, padding side, normalisation,
        prompts and (unless `max_seq_length` is given) the maximum length.
    expansion: `expansion.json` content, or a path to it (or to a folder holding it), copied in.
    recipe: how the model was made (stage config, base model, ...), rendered into the model card.
    overwrite: replace an existing `out_dir`; otherwise an existing non-empty folder is an error.

    Loadable afterwards with `SentenceTransformer(out_dir)`, `AutoModel`/`AutoTokenizer`, and
    `koemb.model.presets.detect_preset(out_dir)`.
    """
    out = Path(out_dir)
    if isinstance(preset, str):
        preset = get_preset(preset)
    if max_seq_length is not None:
        preset = preset.with_overrides(max_length=max_seq_length)
    check_out_dir(out, overwrite)
    if isinstance(tokenizer, (str, os.PathLike)):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
    exp = _load_expansion(expansion)

    emb = model.get_input_embeddings().weight  # (V, D)
    rows, dim = int(emb.shape[0]), int(emb.shape[1])
    if len(tokenizer) > rows:
        raise UserError(f"tokenizer has {len(tokenizer)} tokens but the model has only {rows} embedding rows")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model folder should not be
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tok_cfg_path = tmp / "tokenizer_config.json"
        tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8")) if tok_cfg_path.is_file() else {}
        tok_cfg["padding_side"] = preset.padding_side
        _write_json(tok_cfg_path, tok_cfg)

        modules = list(ST_MODULES) + ([NORMALIZE_MODULE] if preset.normalize else [])
        _write_json(tmp / "modules.json", modules)
        _write_json(tmp / "1_Pooling" / "config.json", pooling_config(preset, dim))
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": preset.max_length, "do_lower_case": False})
        prompts = st_prompts(preset)
        _write_json(tmp / "config_sentence_transformers.json",
                    {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})
        if exp is not None:
            _write_json(tmp / "expansion.json", exp)
        card = model_card(title or out.name, preset, prompts, recipe, exp, rows, dim)
        (tmp / "README.md").write_text(card, encoding="utf-8")

        if out.exists():
            # Replace only after the new folder is complete.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
