"""Durable file changes: atomic writes, appends, renames and removals.

:func:`atomic_write` writes a temporary file in the same folder, fsyncs it, then renames it
over the target: a crash leaves either the old file or the new one, never half of either.
Reports, checkpoints, lineage, certificates and the audit log all write through here, and
the unlearning code's other durable changes (an appended log line, a rename, a removal) go
through :func:`append_line`, :func:`replace` and :func:`remove`.

Fault injection. Every one of these changes passes a *write point* first
(:func:`write_point`); a test installs a hook with :func:`fault_hook` to count the points of
an operation or to stop the process at the k-th one. A hook that raises
:class:`SimulatedKill` emulates ``kill -9`` at that point: the change in progress is left as a
crash would leave it (a temporary file that was never renamed, half of an appended line),
nothing is cleaned up, and the hook is expected to raise again at every later point, as a
dead process writes nothing more. Without a hook a write point costs one global lookup.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

#: ``hook(op, path)`` called at every write point (None: no fault injection)
_hook: Callable[[str, Path], None] | None = None
_hook_lock = threading.Lock()


class SimulatedKill(BaseException):  # noqa: N818  (it stands for a signal, not an error)
    """Raised by a fault-injection hook: the process "died" at this write point. A
    ``BaseException`` so that ordinary ``except Exception`` handlers do not swallow it."""


def write_point(op: str, path: Path | str) -> None:
    """Announce a durable change (``op``: write, append, replace, remove) of ``path``."""
    hook = _hook
    if hook is not None:
        hook(op, Path(path))


@contextlib.contextmanager
def fault_hook(hook: Callable[[str, Path], None]) -> Iterator[None]:
    """Install ``hook`` at every write point for the block (one hook at a time; the hook
    runs in whatever thread writes, so it must be thread-safe)."""
    global _hook
    with _hook_lock:
        if _hook is not None:
            raise RuntimeError("a fault-injection hook is already installed")
        _hook = hook
    try:
        yield
    finally:
        _hook = None


def atomic_write(path: Path | str, data: bytes | str, *, fsync: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            write_point("write", path)  # a kill here leaves the temporary file behind
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except SimulatedKill:
        raise  # a dead process cleans nothing up
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_line(path: Path | str, line: str, *, fsync: bool = True) -> None:
    """Append ``line`` (ending in a newline) to ``path``. Not atomic: a crash can leave the
    line's first part without its newline (readers treat such a tail as torn)."""
    data = line.encode()
    with open(path, "ab") as fh:
        if _hook is not None:  # a kill at this point leaves half of the line on disk
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            write_point("append", path)
            data = data[half:]
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def replace(src: Path | str, dst: Path | str) -> None:
    """``os.replace`` (an atomic rename) as a write point."""
    write_point("replace", dst)
    os.replace(src, dst)


def remove(path: Path | str, *, missing_ok: bool = True) -> bool:
    """Delete a file; returns whether it existed."""
    path = Path(path)
    if missing_ok and not path.exists():
        return False
    write_point("remove", path)
    try:
        path.unlink()
    except FileNotFoundError:
        if not missing_ok:
            raise
        return False
    return True
