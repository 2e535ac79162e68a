"""Training checkpoints: safetensors + JSON, written atomically, verified on load, the last K kept.

A checkpoint holds what is needed to continue a stage exactly: the TRAINABLE parameters (the rest
of the model is the stage's input folder, which is on disk), optimizer, scheduler, RNG states and
the data position (micro-batches consumed). It is a folder:

    s00-<stage>-step0000020/
        tensors.safetensors   every tensor of the state (parameters, Adam moments, torch RNG)
        state.json            everything else, with {"__tensor__": key} where a tensor was
        manifest.json         size + sha256 of the two files above; written LAST

No pickle: loading a checkpoint never runs code, whoever wrote it. Atomic: the folder is written
under a temporary name, every file fsynced, then renamed; on load the manifest is checked, so a
checkpoint that was cut short or damaged on disk (bit rot, a copy that stopped) is skipped, with a
warning, for the newest older one that checks out.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from koemb.errors import UserError
from koemb.files import sha256_file
from koemb.faults import fault

log = logging.getLogger(__name__)

_NAME = re.compile(r"^s(\d{2})-(.+)-step(\d{7})$")
TENSORS, STATE, MANIFEST = "tensors.safetensors", "state.json", "manifest.json"


class CorruptCheckpoint(Exception):
    """A checkpoint folder that does not match its manifest (or has none)."""


def checkpoint_name(stage_index: int, stage_name: str, step: int) -> str:
    return f"s{stage_index:02d}-{stage_name}-step{step:07d}"


def rng_state() -> dict[str, Any]:
    # Python's and numpy's states as plain lists so that they go to JSON, not to a pickle.
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- state <-> (tensors, JSON)


def _split(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor in `obj` by {"__tensor__": key}; keep int dict keys and tuples exact."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _split(v, f"{path}/{k}", tensors) for k, v in obj.items()}
        # The optimizer's state is keyed by parameter index (int); JSON keys are strings.
        return {"__intkeys__": {str(k): _split(v, f"{path}/{k}", tensors) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state at {path!r}: cannot store a {type(obj).__name__} without pickle")


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__intkeys__"}:
            return {int(k): _join(v, tensors) for k, v in obj["__intkeys__"].items()}
        if set(obj) == {"__tuple__"}:
            return tuple(_join(v, tensors) for v in obj["__tuple__"])
        return {k: _join(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


# ----------------------------------------------------------------------------- files


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _write_json(path: Path, data: Any) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_dead_temporaries(folder: Path) -> None:
    # A write killed half-way leaves `.NAME.tmpPID`; it never looks like a checkpoint, but it takes disk.
    for p in folder.glob(".s*.tmp*"):
        pid = p.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(folder: Path, stage_index: int, stage_name: str, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` atomically as the checkpoint of (stage, step); delete all but the newest `keep`.

    A failed write (a full disk) removes its temporary folder and raises a UserError; the
    checkpoints written before it are untouched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(folder)
    final = folder / checkpoint_name(stage_index, stage_name, step)
    tmp = folder / f".{final.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        tensors: dict[str, torch.Tensor] = {}
        meta = _split(state, "state", tensors)
        save_file(tensors, str(tmp / TENSORS))
        _fsync_file(tmp / TENSORS)
        fault("during_checkpoint_write")
        fault("enospc_checkpoint")
        _write_json(tmp / STATE, meta)
        files = {n: {"size": (tmp / n).stat().st_size, "sha256": sha256_file(tmp / n)} for n in (TENSORS, STATE)}
        _write_json(tmp / MANIFEST, {"format": "koemb-checkpoint/1", "stage": stage_name, "step": step, "files": files})
        _fsync_dir(tmp)
        if final.exists():  # the same step written again (a resumed stage end): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_for_stage(folder, stage_index, stage_name, warn=False)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint of this stage exists"
        raise UserError(
            f"{final}: writing the checkpoint of stage '{stage_name}' at step {step} failed: {exc.strerror or exc}; "
            f"{kept}. Free space under {folder} and continue with --resume"
        ) from None
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders by name (not yet verified), oldest first (by stage index, then step)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir():
            found.append(((int(m.group(1)), int(m.group(3))), p))
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: Path) -> None:
    """Raise CorruptCheckpoint unless every file matches the manifest (size and sha256)."""
    man = path / MANIFEST
    if not man.is_file():
        raise CorruptCheckpoint(f"{path}: no {MANIFEST} (the write did not finish)")
    try:
        files = json.loads(man.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{man}: unreadable manifest ({exc})") from None
    for name, want in files.items():
        p = path / name
        if not p.is_file():
            raise CorruptCheckpoint(f"{p}: missing")
        if p.stat().st_size != want["size"]:
            raise CorruptCheckpoint(f"{p}: {p.stat().st_size} bytes, the manifest says {want['size']}")
        if sha256_file(p) != want["sha256"]:
            raise CorruptCheckpoint(f"{p}: sha256 differs from the manifest")


def latest_for_stage(folder: Path, stage_index: int, stage_name: str, *, warn: bool = True) -> Path | None:
    """The newest checkpoint of this stage that passes `verify_checkpoint`; damaged ones are skipped."""
    mine = [p for p in list_checkpoints(folder) if p.name.startswith(f"s{stage_index:02d}-{stage_name}-step")]
    for p in reversed(mine):
        try:
            verify_checkpoint(p)
        except CorruptCheckpoint as exc:
            if warn:
                log.warning("skipping damaged checkpoint: %s; trying an older one", exc)
            continue
        return p
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    verify_checkpoint(path)
    tensors = load_file(str(path / TENSORS))
    meta = json.loads((path / STATE).read_text(encoding="utf-8"))
    return _join(meta, tensors)
