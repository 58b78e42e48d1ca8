"""One lock per run directory: ``fcntl.flock`` on ``RUN_DIR/run.lock``.

Every command or API call that changes a run directory (training it, serving or recovering
an erasure) holds the lock exclusively for its whole duration; a consistency check holds
it shared. A second operator waits for it (``timeout=None``), waits at most ``timeout``
seconds, or (``timeout=0``) is refused at once with :class:`RunLockedError`, whose message
names the holder (pid, command and start time, which the holder writes into the lock
file). The kernel drops the lock when its holder dies, so a crashed command never leaves
the run locked.

Within one process the lock is re-entrant for the thread that holds it (a service method
calling another) and excludes other threads; the outermost acquisition is reported to the
caller (``yield True``) so that it can reload what other processes may have changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from unlearning.errors import RunLockedError

LOCK_NAME = "run.lock"
_POLL_SECONDS = 0.05


class _Held:
    def __init__(self):
        self.mutex = threading.Lock()  # excludes other threads of this process
        self.owner: int | None = None  # thread id holding it
        self.depth = 0
        self.shared = False


_registry: dict[str, _Held] = {}
_registry_lock = threading.Lock()


def _entry(path: Path) -> _Held:
    key = os.path.realpath(path)
    with _registry_lock:
        return _registry.setdefault(key, _Held())


def held(path: str | Path, *, exclusive: bool = True) -> bool:
    """Whether the calling thread holds ``path``'s lock (exclusively, by default)."""
    h = _entry(Path(path))
    return h.owner == threading.get_ident() and (not exclusive or not h.shared)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    return (f"pid {info.get('pid')} ({info.get('command', '?')}, since "
            f"{info.get('since', '?')})")


@contextlib.contextmanager
def run_lock(path: str | Path, *, timeout: float | None = None, shared: bool = False,
             on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold ``path``'s lock for the block; yields True for the outermost acquisition."""
    path = Path(path)
    h = _entry(path)
    me = threading.get_ident()
    if h.owner == me:
        if h.shared and not shared:
            raise RuntimeError(f"{path}: a shared run lock cannot be upgraded to exclusive")
        h.depth += 1
        try:
            yield False
        finally:
            h.depth -= 1
        return
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    if not h.mutex.acquire(blocking=False):
        if on_wait is not None and timeout != 0:
            on_wait(f"waiting for run directory {path}, in use by another thread of this "
                    "process")
        left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
        if timeout == 0 or not h.mutex.acquire(timeout=left):
            raise RunLockedError(
                f"run directory {path} is in use by another thread of this process "
                f"({'refused' if not timeout else f'gave up after {timeout:g} s'})"
            )
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            waiting = False
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        what = "refused" if not timeout else f"gave up after {timeout:g} s"
                        raise RunLockedError(
                            f"run directory {path} is locked by {_holder(fd)}: another "
                            f"operator is changing it ({what}). Wait for that command to "
                            "finish and try again, or pass a longer --lock-timeout"
                        ) from None
                    if not waiting and on_wait is not None:
                        on_wait(f"waiting for run directory {path}, locked by {_holder(fd)}")
                    waiting = True
                    time.sleep(_POLL_SECONDS)
            if not shared:
                info = json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv[:4]),
                                   "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime())})
                os.ftruncate(fd, 0)
                os.pwrite(fd, info.encode(), 0)
            h.owner, h.depth, h.shared = me, 1, shared
            try:
                yield True
            finally:
                h.owner, h.depth, h.shared = None, 0, False
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        h.mutex.release()
