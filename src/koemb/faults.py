"""Deterministic fault injection for the reliability tests: `KOEMB_FAULT=point[:arg],...`.

A crash test that kills a process "at a random moment" is slow and flaky; instead the code calls
`fault(point, value)` at the moments that matter, and the environment variable chooses which of
them fires. Unset (the normal case) every call is a dictionary lookup that does nothing.

Points and what they do (the registry below is the list the tests and README use):

    during_donor              SIGKILL while the donor tokenizer is being trained/written
    during_expand             SIGKILL while the expanded model is being written
    after_step:N              SIGKILL right after optimizer step N of any stage (N = steps done in that stage)
    during_checkpoint_write   SIGKILL after a checkpoint's tensors are half on disk (before its manifest)
    between_stages            SIGKILL after a stage folder is written, before the next stage starts
    during_eval               SIGKILL while the evaluation runs
    nan_loss:N / inf_loss:N   the loss of optimizer step N (1-based) becomes NaN / +inf
    enospc_checkpoint[:K]     the K-th checkpoint write (default 1st) fails with OSError(ENOSPC)

For points without an explicit value, `:K` means "the K-th time this point is reached" (default 1).
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter
from collections.abc import Callable

ENV = "KOEMB_FAULT"


def _kill() -> None:
    # SIGKILL, not an exception: no finally blocks, no atexit, no flushing - what a real kill -9 or
    # an OOM killer leaves behind is exactly what the resume path has to cope with.
    os.kill(os.getpid(), signal.SIGKILL)


def _enospc() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "(injected by KOEMB_FAULT)")


# What each point does when it fires; points that change a value (nan_loss) are read with `loss_fault`.
ACTIONS: dict[str, Callable[[], None]] = {
    "during_donor": _kill,
    "during_expand": _kill,
    "after_step": _kill,
    "during_checkpoint_write": _kill,
    "between_stages": _kill,
    "during_eval": _kill,
    "enospc_checkpoint": _enospc,
}
LOSS_FAULTS: dict[str, float] = {"nan_loss": float("nan"), "inf_loss": float("inf")}

_hits: Counter[str] = Counter()


def parse(spec: str | None) -> dict[str, int | None]:
    """`"after_step:3,enospc_checkpoint"` -> {"after_step": 3, "enospc_checkpoint": None}."""
    out: dict[str, int | None] = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, arg = item.partition(":")
        if name not in ACTIONS and name not in LOSS_FAULTS:
            known = ", ".join(sorted([*ACTIONS, *LOSS_FAULTS]))
            from koemb.errors import UserError

            raise UserError(f"{ENV}={spec!r}: unknown fault point {name!r}; known: {known}")
        out[name] = int(arg) if arg else None
    return out


def _active() -> dict[str, int | None]:
    return parse(os.environ.get(ENV))


def fault(point: str, value: int | None = None) -> None:
    """Fire `point` if KOEMB_FAULT asks for it here: at `value` when given, else at the K-th call."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    active = _active()
    if point not in active:
        return
    want = active[point]
    if value is None:
        _hits[point] += 1
        if _hits[point] != (want or 1):
            return
    elif want is not None and value != want:
        return
    ACTIONS[point]()


def loss_fault(step: int) -> float | None:
    """The value the loss of optimizer step `step` (1-based) is replaced with, or None."""
    if not os.environ.get(ENV):
        return None
    for name, want in _active().items():
        if name in LOSS_FAULTS and want == step:
            return LOSS_FAULTS[name]
    return None
