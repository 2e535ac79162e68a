"""Where a model folder keeps its transformers files, and which weight files koemb will read.

Shared by the encoder (evaluation), model expansion and the pipeline, so that every path that loads
weights refuses pickles the same way, before anything is read.
"""

from __future__ import annotations

import json
from pathlib import Path

from koemb.errors import UserError

# Weight formats that unpickle (and can run code) when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def transformer_dir(model: str | Path) -> str | Path:
    """Where the transformers weights live: the folder itself, or a sentence-transformers
    Transformer module's sub-folder (older ST layouts use `0_Transformer/`)."""
    folder = Path(model)
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return model
    try:
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{modules_path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    for m in modules:
        if str(m.get("type", "")).endswith(".Transformer"):
            return folder / m.get("path", "") if m.get("path") else folder
    return folder


def check_weights_safe(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle weights (they can run code when loaded) unless explicitly allowed."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise UserError(
            f"{folder}: weights only as pickle ({', '.join(pickles)}); koemb loads safetensors only, because a pickle "
            "can run code when loaded. Convert the checkpoint to safetensors, or pass --allow-pickle if you trust it"
        )
    if not pickles:
        raise UserError(f"{folder}: no model weights found (expected model.safetensors)")


def saved_max_seq_length(folder: str | Path) -> int | None:
    """`max_seq_length` from a sentence-transformers folder's sentence_bert_config.json (at the root, or in the
    Transformer module's sub-folder), or None: a model derived from it (pruned, interpolated) keeps the same."""
    for where in (Path(folder), Path(transformer_dir(folder))):
        path = where / "sentence_bert_config.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")).get("max_seq_length")
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    return None
