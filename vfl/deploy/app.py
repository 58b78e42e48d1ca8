"""The Flower app a deployed run uses: a ``pyproject.toml`` naming our ServerApp and
ClientApp, with the run config the coordinator's operator may override.

Flower builds a Flower App Bundle (FAB) from a directory; ours holds only this file, since
the code it names is the installed ``vfl`` package on every machine (the SuperLink and the
SuperNodes run with ``--disable-runtime-dependency-installation`` and the environment the
operator installed).
"""

from __future__ import annotations

from pathlib import Path

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "vfl-federation"
version = "1.0.0"
description = "A vfl federation: vertical or horizontal training across organizations"
license = "Apache-2.0"
dependencies = ["vfl[flower]"]

[tool.flwr.app]
publisher = "vfl"

[tool.flwr.app.components]
serverapp = "vfl.deploy.serverapp:app"
clientapp = "vfl.deploy.clientapp:app"

[tool.flwr.app.config]
job = "vertical"
job-config = ""
result = ""
capture = ""
reply-timeout = 120.0
connect-timeout = 120.0
"""


def write_app(directory: str | Path) -> Path:
    """Write the Flower app into ``directory`` (created) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(PYPROJECT)
    return directory
