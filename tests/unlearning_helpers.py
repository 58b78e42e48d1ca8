"""Shared by the unlearning tests: a module-scoped horizontal run, a private copy of a run,
and a run's final trainer."""

import shutil

from horizontal.checkpointing import horizontal_spec
from unlearning.run import RunDir, train_run

#: Four synthetic hospitals of unequal size (tests/test_horizontal_helpers.make_hospitals).
HOSPITALS = {"factory": "test_horizontal_helpers:make_hospitals",
             "kwargs": {"sizes": [60, 40, 80, 50]}}


def train_horizontal(tmp_path_factory, name: str, config, **spec) -> RunDir:
    """A horizontal run over :data:`HOSPITALS`, trained once per module (``spec``: more
    :func:`horizontal_spec` options, e.g. ``retention``)."""
    spec = horizontal_spec(HOSPITALS, config, fsync=False, **spec)
    return train_run(tmp_path_factory.mktemp(name) / "base", spec)


def copy_run(base: RunDir, dest) -> RunDir:
    """A copy of ``base`` at ``dest/run`` that a test may erase from freely."""
    shutil.copytree(base.path, dest / "run")
    return RunDir(dest / "run")


def load_final(run: RunDir, model: str = "main"):
    """``(adapter, trainer)`` with ``model`` restored from its final stored checkpoint."""
    adapter, trainers = run.final_trainers([model])
    return adapter, trainers[model]
