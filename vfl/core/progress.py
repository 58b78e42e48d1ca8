"""Progress bars (rich) that stay silent in tests and when output is not a terminal."""

from __future__ import annotations

import contextlib
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass


class _RichBar:
    def __init__(self, progress: Progress, task_id):
        self._progress, self._task = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True):
    if not enabled or not sys.stderr.isatty():
        yield _NullBar()
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        yield _RichBar(progress, progress.add_task(description, total=total))
