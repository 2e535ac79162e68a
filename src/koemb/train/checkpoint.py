"""Training checkpoints: written atomically, the last K kept, the newest found again on `--resume`.

A checkpoint holds what is needed to continue a stage exactly: the TRAINABLE parameters (the rest
of the model is the stage's input folder, which is on disk), optimizer, scheduler, RNG states and
the data position (micro-batches consumed). Atomic: written under a temporary name, fsynced, then
renamed, so a crash leaves either the old set or the new file, never half a file.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^s(\d{2})-(.+)-step(\d{7})\.pt$")


def checkpoint_name(stage_index: int, stage_name: str, step: int) -> str:
    return f"s{stage_index:02d}-{stage_name}-step{step:07d}.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, stage_index: int, stage_name: str, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` atomically as the checkpoint of (stage, step); delete all but the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(stage_index, stage_name, step)
    tmp = folder / f".{final.name}.tmp{os.getpid()}"
    with tmp.open("wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(folder)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints, oldest first (by stage index, then step)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append(((int(m.group(1)), int(m.group(3))), p))
    return [p for _, p in sorted(found)]


def latest_for_stage(folder: Path, stage_index: int, stage_name: str) -> Path | None:
    mine = [p for p in list_checkpoints(folder) if p.name.startswith(f"s{stage_index:02d}-{stage_name}-step")]
    return mine[-1] if mine else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Our own files, holding optimizer state and RNG tuples: not loadable with weights_only=True.
    return torch.load(path, map_location="cpu", weights_only=False)
