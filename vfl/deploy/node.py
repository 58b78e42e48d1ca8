"""One organization's node: its party host and its Flower SuperNode, started together.

``vfl deploy node`` (or ``python -m vfl.deploy.node``) loads the organization's own data,
builds its party (everything about it comes from this command line: the data file, the id
and label columns, the security policy; nothing from the wire), starts the party host on a
private Unix socket and then ``flower-supernode`` with that socket in its ``--node-config``.
It stops both when either stops or on Ctrl-C / SIGTERM.

A bad data path, id column or label column fails here, before the node connects, with the
data error naming the file; so does a SuperLink that does not answer or whose certificate the
given CA does not verify (:mod:`vfl.deploy.preflight`). Nothing is started then.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from vfl.core.errors import ConfigError, VFLError
from vfl.deploy.host import PartyHost, resolve
from vfl.deploy.preflight import check_superlink

#: Mode -> ``module:function(options) -> (party, save)``; ``save(party, out_dir) -> dict``.
FACTORIES = {
    "vertical": "vfl.vertical.deployed:make_party",
    "horizontal": "horizontal.deployed:make_client",
    "cox": "vfl.survival.deployed:make_party",
}


def party_factory(mode: str):
    return resolve(FACTORIES, mode, "mode")


def parse_peer_keys(items: list[str]) -> dict[str, bytes]:
    out = {}
    for item in items or []:
        name, sep, hexkey = item.partition("=")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            key = b""
        if not sep or not name or len(key) != 32:
            raise ConfigError(
                f"--peer-key {item!r}: expected NAME=HEX with the 64 hex digits another node "
                "printed as its key at start"
            )
        out[name] = key
    return out


def supernode_command(args, socket_path: Path) -> list[str]:
    exe = shutil.which("flower-supernode", path=_bin_path())
    if exe is None:
        raise ConfigError(
            "flower-supernode is not installed here: pip install 'vfl[flower]' in this "
            "environment"
        )
    node_config = f"socket='{socket_path}' party='{args.party}'"
    cmd = [exe, "--superlink", args.superlink, "--port", str(args.port),
           "--node-config", node_config]
    if args.insecure:
        cmd.append("--insecure")
    else:
        if not args.root_certificates:
            raise ConfigError(
                "give --root-certificates CA.pem (the CA that signed the SuperLink's "
                "certificate), or --insecure for a local test without TLS"
            )
        if not Path(args.root_certificates).is_file():
            raise ConfigError(f"--root-certificates {args.root_certificates}: no such file")
        cmd += ["--root-certificates", str(args.root_certificates)]
    return cmd


def _bin_path() -> str:
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="vfl deploy node", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", choices=sorted(FACTORIES), default="vertical")
    p.add_argument("--party", required=True, help="this organization's party name")
    p.add_argument("--data", required=True, help="its CSV or Parquet file")
    p.add_argument("--id-column", required=True, help="the patient identifier column")
    p.add_argument("--label-column", default=None,
                   help="the label column (vertical: only the active party has one; cox: "
                   "the hospital's TIME,EVENT columns, e.g. time,censor)")
    p.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink Fleet address")
    p.add_argument("--root-certificates", default=None, help="CA certificate (PEM) for TLS")
    p.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    p.add_argument("--port", type=int, default=9094, help="the SuperNode's local API port")
    p.add_argument("--socket", default=None, help="party host socket (default: a private "
                   "temporary directory)")
    p.add_argument("--out", default=None, help="where this party writes its trained model")
    p.add_argument("--peer-key", action="append", default=[],
                   help="NAME=HEX: pin another party's sealing key out of band (repeatable)")
    p.add_argument("--protocols", default=None,
                   help="vertical: comma-separated protocols this party accepts")
    p.add_argument("--min-key-bits", type=int, default=2048,
                   help="vertical: shortest Paillier key this party accepts")
    p.add_argument("--allow-insecure-test-key", action="store_true",
                   help="vertical: accept keys under 2048 bits (tests only)")
    p.add_argument("--dp-secret-file", default=None,
                   help="horizontal: a file holding this hospital's differential-privacy "
                   "secret (sampling and noise; default: fresh from os.urandom)")
    # A hospital's own privacy minimum (horizontal.privacy_policy): checked against the
    # server's setup before this node reads a feature or a label.
    p.add_argument("--require-secure-aggregation", action="store_true",
                   help="horizontal: refuse a federation without SecAgg+ (the server would "
                   "see this hospital's update)")
    p.add_argument("--min-corruption", type=float, default=0.0,
                   help="horizontal: SecAgg+ must tolerate at least this fraction of a round's "
                   "clients colluding with the server (with --require-secure-aggregation)")
    p.add_argument("--max-epsilon", type=float, default=None,
                   help="horizontal: require record-level DP and refuse any setup that would "
                   "take this hospital's own lifetime epsilon above this")
    p.add_argument("--max-delta", type=float, default=1e-5,
                   help="horizontal: the largest DP delta accepted (with --max-epsilon)")
    p.add_argument("--dp-accountant", choices=("rdp", "pld"), default="rdp",
                   help="horizontal: the accountant this hospital uses for its own epsilon")
    p.add_argument("--no-release-scores", action="store_true",
                   help="horizontal: never send per-patient scores and labels for a pooled "
                   "evaluation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_node(args)
    except VFLError as exc:  # bad data, a wrong address or certificate: say it, start nothing
        print(f"vfl deploy node: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def run_node(args) -> int:
    # Compiled XLA programs persist across the host's restarts (same shapes, same code).
    cache = Path(args.out or tempfile.gettempdir()) / "jax-cache"
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    peer_keys = parse_peer_keys(args.peer_key)
    party, save = party_factory(args.mode)(vars(args))  # data errors stop us here
    check_superlink(args.superlink, None if args.insecure else args.root_certificates)
    private = Path(tempfile.mkdtemp(prefix=f"vfl-{args.party}-"))
    socket_path = Path(args.socket) if args.socket else private / "party.sock"
    command = supernode_command(args, socket_path)
    host = PartyHost(party, out_dir=args.out, peer_keys=peer_keys, save=save)
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=host.serve, args=(socket_path, ready, stop), daemon=True)
    server.start()
    ready.wait(10)
    print(f"[{args.party}] party host on {socket_path}; sealing key "
          f"{host.key.public_bytes.hex()}", flush=True)
    env = dict(os.environ, PATH=_bin_path())
    node = subprocess.Popen(command, env=env)

    def shutdown(*_):
        stop.set()
        if node.poll() is None:
            node.terminate()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        code = node.wait()
    finally:
        shutdown()
        server.join(5)
        shutil.rmtree(private, ignore_errors=True)
    return 0 if stop.is_set() else code


if __name__ == "__main__":
    sys.exit(main())
