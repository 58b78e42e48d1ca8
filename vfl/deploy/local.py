"""A whole federation on one machine, as separate processes: what ``vfl deploy local``,
the integration tests and ``benchmarks/deployment.py`` start.

:class:`LocalFederation` starts a real ``flower-superlink`` (TLS with a test CA by default),
one ``vfl deploy node`` per party (its party host plus a real ``flower-supernode``), and runs
jobs with ``flwr run`` exactly as an operator would; nothing is shared in memory. Each
process writes its log under the work directory. Across machines the same commands run on
different hosts (README, "Run it across machines").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from vfl.core.errors import TransportError
from vfl.deploy.app import write_app
from vfl.deploy.certs import make_test_certificates


class DeploymentError(TransportError):
    """A deployed run did not produce its result; the message quotes the log that says why."""


class SuperLinkUnreachableError(DeploymentError):
    """No SuperLink answered at the address given (or it refused the TLS handshake)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin() -> Path:
    return Path(sys.executable).parent


def _env(home: Path) -> dict:
    return dict(os.environ, FLWR_HOME=str(home),
                PATH=os.pathsep.join([str(_bin()), os.environ.get("PATH", "")]))


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def write_connection(home: Path, name: str, address: str, ca: Path | None) -> Path:
    """The ``flwr`` CLI's connection ``name`` in ``$FLWR_HOME/config.toml``."""
    home.mkdir(parents=True, exist_ok=True)
    body = f'[superlink.{name}]\naddress = "{address}"\n'
    body += f'root-certificates = "{ca}"\n' if ca is not None else "insecure = true\n"
    path = home / "config.toml"
    path.write_text(body)
    return path


class LocalFederation:
    """A SuperLink and party nodes on localhost, each its own process."""

    def __init__(self, workdir: str | Path, *, tls: bool = True, port: int | None = None,
                 echo: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs = make_test_certificates(self.workdir / "certs") if tls else None
        self.home = self.workdir / "flwr-home"
        self.app = write_app(self.workdir / "app")
        self.echo = echo
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        self._runs = 0

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], home: Path) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (kept by the child)
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(home),
                                start_new_session=True, cwd=self.workdir)

    def start_superlink(self) -> None:
        cmd = [str(_bin() / "flower-superlink"), "--port", str(self.port),
               "--disable-runtime-dependency-installation"]
        if self.certs is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile",
                    str(self.certs.cert), "--ssl-keyfile", str(self.certs.key)]
        self.superlink = self._spawn("superlink", cmd, self.home)
        write_connection(self.home, "local", self.address,
                         self.certs.ca if self.certs else None)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.superlink.poll() is not None:
                raise DeploymentError("the SuperLink exited at start:\n"
                                      + _tail(self.workdir / "superlink.log"))
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError("the SuperLink did not open its port within 60 s")

    def start_node(self, party: str, data: str | Path, id_column: str, *,
                   label_column: str | None = None, mode: str = "vertical",
                   extra: list[str] = ()) -> None:
        """``vfl deploy node`` for ``party`` (its host and its SuperNode)."""
        cmd = [sys.executable, "-m", "vfl.deploy.node", "--mode", mode, "--party", party,
               "--data", str(data), "--id-column", id_column, "--superlink", self.address,
               "--port", str(free_port()), "--out", str(self.workdir / party)]
        if label_column:
            cmd += ["--label-column", label_column]
        cmd += ["--root-certificates", str(self.certs.ca)] if self.certs else ["--insecure"]
        cmd += list(extra)
        self.nodes[party] = self._spawn(party, cmd, self.workdir / f"flwr-home-{party}")

    def stop_node(self, party: str, *, hard: bool = True) -> None:
        """Stop ``party``'s node (SIGKILL by default: a machine that goes away)."""
        proc = self.nodes[party]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL if hard else signal.SIGTERM)
            proc.wait(30)

    def close(self) -> None:
        for party in list(self.nodes):
            self.stop_node(party, hard=False)
        if self.superlink is not None and self.superlink.poll() is None:
            os.killpg(self.superlink.pid, signal.SIGTERM)
            try:
                self.superlink.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.superlink.pid, signal.SIGKILL)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------------
    def run(self, job: str, config: dict, *, timeout: float = 600.0, reply_timeout: float = 120,
            connect_timeout: float = 120, capture: bool = False) -> dict:
        """``flwr run`` the job; its result JSON (the ServerApp's log is ``run-N.log``)."""
        self._runs += 1
        n = self._runs
        job_path = self.workdir / f"job-{n}.json"
        job_path.write_text(json.dumps(config))
        result = self.workdir / f"result-{n}.json"
        overrides = {"job": job, "job-config": str(job_path), "result": str(result),
                     "reply-timeout": float(reply_timeout),
                     "connect-timeout": float(connect_timeout)}
        if capture:
            overrides["capture"] = str(self.workdir / f"capture-{n}.bin")
        toml = self.workdir / f"run-{n}.toml"
        toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items()))
        log_path = self.workdir / f"run-{n}.log"
        cmd = [str(_bin() / "flwr"), "run", str(self.app), "local", "--stream",
               "--run-config", str(toml)]
        with open(log_path, "wb") as log:
            try:
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                      env=_env(self.home), timeout=timeout, cwd=self.workdir)
            except subprocess.TimeoutExpired as exc:
                raise DeploymentError(f"the run did not finish within {timeout:.0f} s:\n"
                                      + _tail(log_path)) from exc
        text = _tail(log_path)
        if not result.is_file():
            kind = SuperLinkUnreachableError if _unreachable(text) else DeploymentError
            raise kind(f"`flwr run` exited with {proc.returncode} and no result:\n{text}")
        if self.echo:
            print(log_path.read_text(errors="replace"))
        out = json.loads(result.read_text())
        out["log"] = str(log_path)
        if capture:
            out["capture"] = overrides["capture"]
        return out


def _unreachable(text: str) -> bool:
    low = text.lower()
    return any(s in low for s in ("connection refused", "unavailable", "connecterror",
                                  "failed to connect", "certificate", "ssl"))


def read_capture(path: str | Path) -> list[bytes]:
    """The byte strings a ServerApp received (``capture``), in order."""
    data = Path(path).read_bytes()
    out, i = [], 0
    while i < len(data):
        size = int.from_bytes(data[i : i + 8], "big")
        out.append(data[i + 8 : i + 8 + size])
        i += 8 + size
    return out
