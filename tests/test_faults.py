"""Faults on real `koemb run` processes: kill -9 at chosen points, NaN/inf losses, a full disk, a second run.

The kills come from KOEMB_FAULT (koemb/faults.py): the process SIGKILLs itself at a named point, so
every test is deterministic and no time is spent waiting for "the right moment". The yardstick is an
uninterrupted run of the same config: after the faults and `--resume`, the final weights must be
the same bits (CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from koemb import faults
from koemb.cli import main
from koemb.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, latest_for_stage, verify_checkpoint
from koemb.train.lock import LOCK_NAME

CONFIG = Path(__file__).parent / "data" / "tiny_pipeline.yaml"
KOEMB = str(Path(sys.executable).parent / "koemb")


@pytest.fixture(autouse=True)
def _fresh_fault_counters(monkeypatch):
    # In-process runs share koemb.faults' hit counters; each test starts from zero and no fault.
    faults._hits.clear()
    monkeypatch.delenv(faults.ENV, raising=False)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def koemb_proc(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.run([KOEMB, *args], env=env, capture_output=True, text=True, timeout=600)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its sha256: 'nothing written was damaged' is this, before == after."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted run (in-process: no interpreter start-up to pay; no evaluation: it changes no weight)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["run", "--config", str(CONFIG), "--out", str(out), "--set", "evaluation=null"]) == 0
    assert not (out / LOCK_NAME).exists()  # released when the run ends
    return out


def test_kill_at_every_point_then_resume_gives_the_same_weights(reference, tmp_path):
    out = tmp_path / "run"
    run = ["run", "--config", str(CONFIG), "--out", str(out)]

    def killed_at(point: str, *, resume: bool = True) -> str:
        p = koemb_proc(*run, *(["--resume"] if resume else []), fault=point)
        assert p.returncode == -signal.SIGKILL, f"{point}: rc {p.returncode}\n{p.stderr[-3000:]}"
        assert (out / LOCK_NAME).is_file()  # a kill leaves its lock behind: stale from now on
        return p.stderr

    killed_at("during_donor", resume=False)
    assert (out / "donor" / "tokenizer.json").is_file() and not (out / "donor" / "donor.json").exists()
    # A stale lock: a plain run is told to resume; nothing is touched.
    before = tree(out)
    assert main(run) == 2 and tree(out) == before

    killed_at("during_expand")
    assert (out / "tokenizer" / "expansion.json").is_file() and not (out / "expanded").exists()
    assert (out / "donor" / "donor.json").is_file()  # the resumed donor training finished this time

    # 2nd checkpoint write of stage `rows` (step 4) is cut after its tensors hit the disk.
    killed_at("during_checkpoint_write:2")
    ck = out / "checkpoints"
    assert [p.name for p in list_checkpoints(ck)] == ["s00-rows-step0000002"]
    assert [p for p in ck.iterdir() if ".tmp" in p.name]  # the half-written one, under its temporary name
    assert not (out / "stages" / "rows").exists()

    killed_at("between_stages")
    assert (out / "stages" / "rows" / "model.safetensors").is_file() and not (out / "stages" / "lora").exists()
    assert not [p for p in ck.iterdir() if ".tmp" in p.name]  # the dead write's leftovers were cleared

    killed_at("after_step:3")  # stage `lora`: checkpoint at step 2, killed after step 3
    lora_ck = latest_for_stage(ck, 1, "lora")
    assert lora_ck is not None and lora_ck.name == "s01-lora-step0000002"
    # ...and that checkpoint then rots on disk: resume must notice and start the stage over.
    blob = lora_ck / "tensors.safetensors"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert latest_for_stage(ck, 1, "lora") is None

    err = killed_at("during_eval")
    assert "skipping damaged checkpoint" in err and "sha256 differs" in err
    assert (out / "final" / "model.safetensors").is_file() and not (out / "eval" / "results.json").exists()

    p = koemb_proc(*run, "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    assert not (out / LOCK_NAME).exists()

    for folder in ("expanded", "stages/rows", "stages/lora", "final"):
        assert same_weights(out / folder, reference / folder), folder
    results = json.loads((out / "eval" / "results.json").read_text())["results"]
    assert {"base", "expanded", "final"} <= set(results) and "separation" in results["final"]["separation"]


def train_args(reference: Path, out: Path, *extra: str) -> list[str]:
    # The stages only, from the reference's expanded model; only stage `rows`, to keep it short.
    return ["train", "--config", str(CONFIG), "--out", str(out), "--model", str(reference / "expanded"),
            "--set", "stages=[" + json.dumps(_rows_stage()) + "]", *extra]


def _rows_stage() -> dict:
    import yaml

    return yaml.safe_load(CONFIG.read_text())["stages"][0]


def test_nan_loss_stops_with_stage_and_step_and_keeps_the_last_checkpoint(reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t"
    monkeypatch.setenv(faults.ENV, "nan_loss:3")
    assert main(train_args(reference, out)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "stage 'rows' (stages.0), step 3 of 4: the loss is nan" in err and "s00-rows-step0000002" in err
    assert "skip_bad_batches" in err and "Traceback" not in err
    good = latest_for_stage(out / "checkpoints", 0, "rows")
    assert good is not None and good.name == "s00-rows-step0000002"
    verify_checkpoint(good)
    state = load_checkpoint(good)
    assert all(torch.isfinite(t).all() for t in state["trainable"].values())
    assert not (out / "stages" / "rows").exists()

    # Resuming without the fault finishes exactly like the uninterrupted reference.
    monkeypatch.delenv(faults.ENV)
    assert main(train_args(reference, out, "--resume")) == 0
    assert same_weights(out / "stages" / "rows", reference / "stages" / "rows")


def test_inf_loss_skipped_when_asked_counted_in_the_log(reference, tmp_path, monkeypatch):
    out = tmp_path / "t"
    monkeypatch.setenv(faults.ENV, "inf_loss:2")
    assert main(train_args(reference, out, "--set", "runtime.skip_bad_batches=true")) == 0
    records = [json.loads(line) for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("skipped")]
    assert [(r["step"], r["reason"]) for r in skipped] == [(2, "the loss is inf")]
    assert records[-1] == {"stage": "rows", "event": "stage_end", "steps": 4, "skipped_bad_batches": 1}
    w = weights(out / "stages" / "rows")
    assert all(torch.isfinite(t).all() for t in w.values())
    # A skipped step is a different run: it must not pass for the reference.
    assert not same_weights(out / "stages" / "rows", reference / "stages" / "rows")


def test_full_disk_during_a_checkpoint_write(reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t"
    monkeypatch.setenv(faults.ENV, "enospc_checkpoint:2")  # step 2 is written, step 4 hits a full disk
    assert main(train_args(reference, out)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "No space left on device" in err and "s00-rows-step0000004" in err
    assert "the previous checkpoint s00-rows-step0000002 is intact" in err and "--resume" in err
    ck = out / "checkpoints"
    assert [p.name for p in ck.iterdir()] == ["s00-rows-step0000002"]  # no temporary left behind
    verify_checkpoint(ck / "s00-rows-step0000002")

    monkeypatch.delenv(faults.ENV)
    faults._hits.clear()
    assert main(train_args(reference, out, "--resume")) == 0
    assert same_weights(out / "stages" / "rows", reference / "stages" / "rows")


def test_a_second_run_on_a_live_folder_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        # A live process owns the folder (what a running `koemb run` writes into its lock).
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        before = tree(out)
        for flags in ([], ["--resume"], ["--overwrite"]):
            assert main(["run", "--config", str(CONFIG), "--out", str(out), *flags]) == 2, flags
            err = " ".join(capsys.readouterr().err.split())
            assert f"another koemb run (pid {holder.pid}) is writing to this folder" in err, flags
            assert tree(out) == before, flags
    finally:
        holder.kill()
        holder.wait()
    # Its owner is gone: the lock is stale. A plain run says how to go on; --resume takes it over.
    assert main(["run", "--config", str(CONFIG), "--out", str(out)]) == 2
    assert "stale lock" in " ".join(capsys.readouterr().err.split())
    final = weights(out / "final")
    assert main(["run", "--config", str(CONFIG), "--out", str(out), "--resume", "--set", "evaluation=null"]) == 0
    assert not (out / LOCK_NAME).exists() and same_weights(out / "final", reference / "final")
    assert all(torch.equal(final[k], v) for k, v in weights(out / "final").items())


def test_damaged_checkpoints_are_skipped_for_the_previous_good_one(tmp_path, caplog):
    ck = tmp_path / "ck"
    state = lambda v: {"step": v, "trainable": {"w": torch.full((3, 2), float(v))}, "opt": {0: {"m": torch.ones(2)}}, "betas": (0.9, 0.99)}  # noqa: E731
    for step in (2, 4, 6):
        save_checkpoint(ck, 0, "s", step, state(step), keep=3)
    back = load_checkpoint(ck / "s00-s-step0000006")
    assert back["betas"] == (0.9, 0.99) and list(back["opt"]) == [0] and torch.equal(back["trainable"]["w"], state(6)["trainable"]["w"])
    (ck / "s00-s-step0000006" / "manifest.json").unlink()  # cut before the manifest
    with (ck / "s00-s-step0000004" / "state.json").open("a") as fh:  # a byte appended
        fh.write(" ")
    # An old-style pickle checkpoint with a newer step is never a candidate, so never unpickled.
    import pickle

    marker = tmp_path / "PICKLE_WAS_LOADED"
    (ck / "s00-s-step0000009.pt").write_bytes(pickle.dumps(_Payload(marker)))
    assert latest_for_stage(ck, 0, "s").name == "s00-s-step0000002"
    assert "no manifest.json" in caplog.text and "bytes, the manifest says" in caplog.text
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))
