"""Shared by the unlearning tests: a private copy of a module-scoped run, and a run's
final trainer."""

import shutil

from unlearning.run import RunDir


def copy_run(base: RunDir, dest) -> RunDir:
    """A copy of ``base`` at ``dest/run`` that a test may erase from freely."""
    shutil.copytree(base.path, dest / "run")
    return RunDir(dest / "run")


def load_final(run: RunDir, model: str = "main"):
    """``(adapter, trainer)`` with ``model`` restored from its final stored checkpoint."""
    adapter, trainers = run.final_trainers([model])
    return adapter, trainers[model]
