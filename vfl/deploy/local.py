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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from vfl.core.errors import ConfigError
from vfl.deploy.app import write_app
from vfl.deploy.certs import TestCertificates, make_test_certificates
from vfl.deploy.preflight import DeploymentError, SuperLinkUnreachableError, check_superlink

__all__ = ["DeploymentError", "LocalFederation", "ResultOnSuperLinkError",
           "SuperLinkUnreachableError", "flwr_run", "read_capture", "write_connection"]


class ResultOnSuperLinkError(DeploymentError):
    """The run finished, but its result file was written on the SuperLink's machine, which
    is not this one."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin() -> Path:
    return Path(sys.executable).parent


def flower_executable(name: str) -> Path:
    """``flwr``, ``flower-superlink`` or ``flower-supernode`` of this environment."""
    path = os.pathsep.join([str(_bin()), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        raise ConfigError(
            f"`{name}` is not installed in this environment ({sys.executable}): "
            "pip install 'vfl[flower]'"
        )
    return Path(found)


def superlink_command(port: int, certs: TestCertificates | None, *,
                      host: str | None = None) -> list[str]:
    """``flower-superlink`` serving Fleet, Control and Runtime on ``port`` (TLS with
    ``certs``, else ``--insecure``), with the environment its operator installed (no
    dependency installation at run time)."""
    cmd = [str(flower_executable("flower-superlink"))]
    if host is not None:
        cmd += ["--host", host]
    cmd += ["--port", str(port), "--disable-runtime-dependency-installation"]
    if certs is None:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certs.ca), "--ssl-certfile", str(certs.cert),
                "--ssl-keyfile", str(certs.key)]
    return cmd


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
        cmd = superlink_command(self.port, self.certs)
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
        check_superlink(self.address, self.certs.ca if self.certs else None)
        self._runs += 1
        n = self._runs
        job_path = self.workdir / f"job-{n}.json"
        job_path.write_text(json.dumps(config))
        return flwr_run(
            self.app, "local", self.home, job, job_path, self.workdir / f"result-{n}.json",
            stem=self.workdir / f"run-{n}", reply_timeout=reply_timeout,
            connect_timeout=connect_timeout,
            capture=self.workdir / f"capture-{n}.bin" if capture else None,
            timeout=timeout, echo=self.echo,
        )


def flwr_run(app: Path, connection: str, home: Path, job: str, job_config: Path,
             result: Path, *, stem: Path, reply_timeout: float = 120.0,
             connect_timeout: float = 120.0, capture: Path | None = None,
             timeout: float | None = None, echo: bool = False) -> dict:
    """``flwr run APP CONNECTION --stream`` (``CONNECTION`` in ``$FLWR_HOME/config.toml``,
    ``home``) for ``job``; the job's result JSON, with ``log`` (and ``capture``) added.

    The run-config overrides go to ``STEM.toml`` and the streamed output to ``STEM.log``
    (and to this terminal with ``echo``), in the folder where ``flwr run`` runs.
    ``job_config``, ``result`` and ``capture`` are paths on the SuperLink's machine: the
    ServerApp reads and writes them there. Without a fresh result here,
    :class:`DeploymentError` (or :class:`SuperLinkUnreachableError`, or
    :class:`ResultOnSuperLinkError` when the ServerApp wrote it on another machine) quotes
    the log."""
    # Absolute paths: flwr runs in stem's folder, the ServerApp in the SuperLink's.
    app, home, job_config, result, stem = (
        Path(p).resolve() for p in (app, home, job_config, result, stem)
    )
    capture = Path(capture).resolve() if capture is not None else None
    overrides = {"job": job, "job-config": str(job_config), "result": str(result),
                 "reply-timeout": float(reply_timeout),
                 "connect-timeout": float(connect_timeout)}
    if capture is not None:
        overrides["capture"] = str(capture)
    toml = stem.with_name(stem.name + ".toml")
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in overrides.items()))
    log_path = stem.with_name(stem.name + ".log")
    before = result.stat().st_mtime_ns if result.is_file() else None
    cmd = [str(flower_executable("flwr")), "run", str(app), connection, "--stream",
           "--run-config", str(toml)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=_env(home), cwd=stem.parent)
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, echo), daemon=True)
        pump.start()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            pump.join(5)
            raise DeploymentError(f"the run did not finish within {timeout:.0f} s:\n"
                                  + _tail(log_path)) from exc
        pump.join()
    text = _tail(log_path)
    if not result.is_file() or result.stat().st_mtime_ns == before:
        if proc.returncode == 0 and "result written to" in text:
            raise ResultOnSuperLinkError(
                f"the run finished, and the ServerApp wrote its result to {result} on the "
                "SuperLink's machine, which is not this one: copy it from there (or run "
                "`flwr run` on the SuperLink's machine)"
            )
        kind = SuperLinkUnreachableError if _unreachable(text) else DeploymentError
        raise kind(f"`flwr run` exited with {proc.returncode} and no result:\n{text}")
    out = json.loads(result.read_text())
    out["log"] = str(log_path)
    if capture is not None:
        out["capture"] = str(capture)
    return out


def _pump(stream, log, echo: bool) -> None:
    """Copy ``flwr run``'s output to its log file (and to this terminal) as it comes."""
    for line in iter(stream.readline, b""):
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()
    stream.close()


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
