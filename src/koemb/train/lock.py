"""One run per output folder: `OUT/.koemb.lock` holds the owner's pid and host.

Two processes writing the same checkpoints and stage folders would each look fine and together
produce a model neither trained. The lock is created with O_EXCL (atomic on a local file system).
A lock whose process is gone (a kill -9, a crash, a reboot) is stale: `--resume` (or
`--overwrite`) takes it over; a plain run is told how the folder got there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from koemb.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".koemb.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """`with RunLock(out, takeover=resume or overwrite): ...` - refuses while another live run holds `out`."""

    def __init__(self, out: Path, *, takeover: bool):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self.takeover = takeover
        self.mine = False

    def _record(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "argv": sys.argv})

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self._record())
        return True

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # killed while writing the lock: nobody can own it

    def acquire(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self._create():
            self.mine = True
            return
        owner = self._owner()
        pid, host = owner.get("pid"), owner.get("host")
        if host not in (None, socket.gethostname()):
            raise UserError(
                f"{self.out}: locked by a koemb run on host {host} (pid {pid}); this machine cannot tell whether it is still "
                f"running. If it is not, delete {self.path} and run again"
            )
        if isinstance(pid, int) and pid != os.getpid() and _alive(pid):
            raise UserError(
                f"{self.out}: another koemb run (pid {pid}) is writing to this folder (lock file {self.path}); "
                "wait for it to finish or stop it, or give a different --out"
            )
        if not self.takeover:
            raise UserError(
                f"{self.out}: a previous koemb run (pid {pid}) stopped here without finishing (stale lock {self.path}); "
                "continue it with --resume, or start over with --overwrite"
            )
        log.warning("%s: taking over the stale lock of pid %s (no longer running)", self.path, pid)
        tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}")
        tmp.write_text(self._record(), encoding="utf-8")
        os.replace(tmp, self.path)
        if self._owner().get("pid") != os.getpid():  # two resumers raced; the other one won
            raise UserError(f"{self.out}: another koemb run took over this folder at the same moment; let it finish")
        self.mine = True

    def release(self) -> None:
        if self.mine and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.mine = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
