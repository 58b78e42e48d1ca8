"""The ``vfl`` command: ``vfl list``, ``vfl run NAME [flags]`` and the unlearning commands
``vfl erase --run RUN_DIR --patient ID`` (or ``--client NAME --method approx``: a hospital
leaves a horizontal federation), ``vfl audit verify RUN_DIR [--keys DIR]``,
``vfl lineage RUN_DIR --patient ID`` and ``vfl check RUN_DIR`` (run directories written by
the scenarios), and ``vfl deploy ...``: a federation across machines on Flower (certificates,
the SuperLink, an organization's node, a run, and all of it on one machine).

``vfl erase`` holds the run directory's lock while it works: a second one on the same run
waits for it (``--lock-timeout SECONDS`` to give up, ``0`` to refuse at once), and it
refuses a run whose audit log does not verify. ``vfl audit verify`` only reads.

Scenarios are the modules of the ``scenarios`` package that define ``main`` (this module,
``report`` and ``vertical_runs`` are its helpers); they are found by name at run time, so
the library never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path

#: Modules of the scenarios package that are not scenarios.
HELPERS = frozenset({"cli", "report", "vertical_runs"})


def _scenario_names() -> list[str]:
    try:
        package = importlib.import_module("scenarios")
    except ImportError:
        return []
    return sorted(
        m.name for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in HELPERS
    )


def _first_line(name: str) -> str:
    module = importlib.import_module(f"scenarios.{name}")
    doc = (module.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["deploy"]:
        return deploy_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="vfl",
        description="Vertical and horizontal federated learning for healthcare.",
        epilog="Run `vfl run NAME --help` for a scenario's own flags.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the runnable scenarios")
    # `vfl deploy ...` has its own parser (deploy_parser); listed here for `vfl --help`.
    sub.add_parser(
        "deploy", add_help=False,
        help="run a federation across machines on Flower: vfl deploy {certs,superlink,node,"
        "run,job-config,split,local}; `vfl deploy --help` explains",
    )
    run = sub.add_parser(
        "run",
        help="run a scenario: vfl run NAME [--quick] [--seed N] [--out DIR] [--json PATH]",
        add_help=False,
    )
    run.add_argument("name", nargs="?")
    run.add_argument("rest", nargs=argparse.REMAINDER)
    run.add_argument("-h", "--help", action="store_true")
    erase = sub.add_parser(
        "erase", help="serve an erasure request (patients) or a client removal on a run",
        description="Erase patients (--patient, exact or sisa) or remove a whole client of a "
        "horizontal run approximately (--client NAME --method approx).")
    erase.add_argument("--run", required=True, type=Path, help="run directory (RUN_DIR)")
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--patient", action="append",
                     help="pseudonymous patient id (repeat for a batch)")
    who.add_argument("--client", help="a client (hospital) leaving a horizontal federation")
    erase.add_argument("--method", default=None, choices=["exact", "sisa", "approx"],
                       help="exact (default for --patient), sisa, or approx (a whole client; "
                       "the default for --client)")
    erase.add_argument("--reason", default=None,
                       help="recorded in the log and certificate (default: GDPR art. 17 for "
                       "patients, 'a client leaves the federation' for --client)")
    erase.add_argument("--party", default=None, help="the party that received the request")
    erase.add_argument("--retrain", action="store_true",
                       help="also retrain from scratch and report the agreement")
    erase.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                       help="when another operator is changing the run: give up after this "
                       "many seconds (0: refuse at once; default: wait)")
    audit = sub.add_parser("audit", help="audit-log commands: vfl audit verify RUN_DIR")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("run", type=Path)
    audit.add_argument("--keys", type=Path, default=None, metavar="DIR",
                       help="trusted public keys (NAME.pub files) kept outside the run "
                       "directory; default: the run's keys/")
    lineage = sub.add_parser("lineage", help="what a patient influenced in a run")
    lineage.add_argument("run", type=Path)
    lineage.add_argument("--patient", required=True)
    check = sub.add_parser("check", help="consistency of a run directory: store, lineage, "
                           "audit log and deletion registry")
    check.add_argument("run", type=Path)
    check.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                       help="give up waiting for a command changing the run after this many "
                       "seconds (default: wait)")
    check.add_argument("--json", action="store_true", help="print the problems as JSON")
    args = parser.parse_args(argv)

    if args.command in ("erase", "audit", "lineage", "check"):
        return _unlearning_command(args)
    names = _scenario_names()
    if args.command == "list":
        for name in names:
            print(f"{name:28s} {_first_line(name)}")
        return 0
    if args.name is None:
        if args.help:
            print("usage: vfl run NAME [scenario flags]\n\nscenarios: " + ", ".join(names))
            return 0
        parser.error("vfl run needs a scenario name; see `vfl list`")
    if args.name not in names:
        parser.error(f"unknown scenario {args.name!r}; available: {', '.join(names)}")
    module = importlib.import_module(f"scenarios.{args.name}")
    rest = list(args.rest) + (["--help"] if args.help else [])
    try:
        module.main(rest)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _unlearning_command(args) -> int:
    """``vfl erase`` / ``vfl audit verify`` / ``vfl lineage`` / ``vfl check``; 0 ok, 1
    verification failed (or a run that does not verify was refused), 2 bad input or a busy
    run (the message says what to do)."""
    from unlearning.errors import AuditTamperError, RunInconsistentError, UnlearningError
    from unlearning.run import RunDir

    try:
        if args.command == "audit":
            return _audit_verify(args)
        run = RunDir(args.run)
        if args.command == "lineage":
            return _lineage(run, args.patient)
        if args.command == "check":
            return _check(run, args)
        from unlearning.service import ErasureService

        request = _erase_request(args)  # validated before anything is touched

        def step(name, info):
            shown = {k: v for k, v in info.items() if not isinstance(v, list | dict)}
            print(f"[{name}] {json.dumps(shown if name == 'verified' else info)}")

        def waiting(message):
            print(message, file=sys.stderr, flush=True)

        service = ErasureService(run, retrain=args.retrain, on_step=step,
                                 lock_timeout=args.lock_timeout, on_wait=waiting)
        with service.session():
            for fix in service.repairs:
                print(f"repaired: {fix}")
            for cert in service.recover():
                print(f"recovered an interrupted erasure: {cert['request']['request_id']}")
            cert = service.submit(request)
        print("certificate:")
        print(json.dumps(cert, indent=1, sort_keys=True))
        return 0
    except (AuditTamperError, RunInconsistentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except UnlearningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _audit_verify(args) -> int:
    """Read-only: nothing in the run directory is created, repaired or rewritten."""
    from unlearning.audit_log import AuditLog
    from unlearning.errors import UnlearningError
    from unlearning.keys import Keyring

    if not (args.run / "audit.jsonl").exists():
        raise UnlearningError(f"{args.run} has no audit.jsonl; is it a run directory?")
    trusted = None
    if args.keys is not None:
        if not args.keys.is_dir():
            raise UnlearningError(f"--keys {args.keys} is not a folder of NAME.pub files")
        trusted = Keyring(args.keys).public_keys()
    log = AuditLog(args.run / "audit.jsonl", keyring=Keyring(args.run / "keys"),
                   heads_dir=args.run / "heads")
    result = log.verify(trusted_keys=trusted)
    print(json.dumps(result.to_json(), indent=1))
    if result.ok:
        how = (f"hash chain and signatures of {', '.join(result.signers)}" if result.signed
               else "hash chain only (an unsigned log)")
        print(f"audit log OK ({result.entries} entries; {how})")
    else:
        print(f"FAILED at entry {result.first_bad} ({result.fault}): {result.reason}")
    return 0 if result.ok else 1


def _lineage(run, pid: str) -> int:
    """What the committed state says about ``pid``: an erasure that stopped before its
    commit point (staged work, an uncommitted registry entry) does not count."""
    for j in run.in_flight():
        if pid in j["patients"]:
            state = ("committed; recovery finishes it" if j["committed"] else
                     "not committed; recovery rolls it back and serves it again")
            print(f"note: an erasure of patient {pid} (request {j['request_id']}) stopped "
                  f"after step {j['step']!r} ({state}); run `vfl erase` on this run to "
                  "recover it")
    erased = run.committed_erased()
    if pid in erased:
        print(f"patient {pid} was erased by request {erased[pid]}; certificate: "
              f"{run.cert_dir / (erased[pid] + '.json')}")
        return 0
    lineage = run.committed_lineage()
    holders = lineage.holders(pid) or run.adapter().holders(pid)
    if not holders:
        print(f"no party holds patient {pid!r} in this run")
        return 2
    inf = lineage.influenced([pid])
    print(f"patient {pid}: held by {', '.join(holders)}")
    if not inf["rounds"] and not inf["setup"]:
        print("  influenced no training round (held-out or not aligned)")
    for model, rounds in sorted(inf["rounds"].items()):
        print(f"  {model}: setup={'yes' if model in inf['setup'] else 'no'}, "
              f"rounds {rounds[0]}..{rounds[-1]} ({len(rounds)}), checkpoints "
              f"{len(inf['checkpoints'].get(model, []))}, last uninfluenced checkpoint "
              f"{lineage.last_uninfluenced_checkpoint([pid], model)}")
    print(f"  published models: {', '.join(inf['models']) or 'none'}")
    return 0


def _check(run, args) -> int:
    """``RunDir.consistency()`` under a shared lock (no command changes the run meanwhile);
    exit status 1 when there are problems."""
    with run.lock(timeout=args.lock_timeout, shared=True,
                  on_wait=lambda m: print(m, file=sys.stderr, flush=True)):
        problems = run.consistency()
        flying = run.in_flight()
    if args.json:
        print(json.dumps({"run": str(run.path), "ok": not problems, "problems": problems},
                         indent=1))
    elif problems:
        print(f"run {run.path}: {len(problems)} problem(s)")
        for p in problems:
            print(f"  - {p}")
        if flying:
            print("  an interrupted erasure is finished by the next `vfl erase` on this run")
    else:
        print(f"run {run.path}: consistent (store, lineage, audit log and deletion registry "
              "agree)")
    return 1 if problems else 0


def _erase_request(args):
    """The request ``vfl erase`` names: patients (exact/sisa) or a whole client (approx)."""
    from unlearning.errors import UnlearningError
    from unlearning.service import ClientRemovalRequest, ErasureRequest

    reason = {} if args.reason is None else {"reason": args.reason}
    if args.client is None:
        return ErasureRequest(tuple(args.patient), party=args.party,
                              method=args.method or "exact", **reason)
    if args.party is not None:
        raise UnlearningError("--party names who received a patient's request; a client "
                              "removal names the leaving client with --client only")
    return ClientRemovalRequest(args.client, method=args.method or "approx", **reason)


# -- vfl deploy ----------------------------------------------------------------------------
DEPLOY_DOC = """Run a federation across machines on Flower (install: pip install 'vfl[flower]').

The coordinator's host (one port, 8000, open to every node and to the `flwr run` machine):
  vfl deploy certs certs/ --host coord.example.org     a test CA and the SuperLink's certificate
  vfl deploy superlink --certs certs/                  the SuperLink (Flower's router)
Each organization, on its own machine (with its own data and a copy of certs/ca.pem):
  vfl deploy node --party lab --data lab.csv --id-column id \\
      --superlink coord.example.org:8000 --root-certificates ca.pem --out lab-model/
The coordinator's operator:
  vfl deploy job-config job.json                       the hospital_lab_pharmacy training setup
  vfl deploy run --superlink coord.example.org:8000 --root-certificates certs/ca.pem \\
      --job vertical --config job.json
Trying it: `vfl deploy split data/` writes each party's ACTG 320 table, and
`vfl deploy local --quick` runs all of the above on this machine, as separate processes.

README.md, "Run it across machines", walks through it; `vfl deploy COMMAND --help` has each
command's flags."""

#: Exit statuses of `vfl deploy`: bad input (the message says what to do); a run that failed.
BAD_INPUT, FAILED = 2, 1


def _paras(*paragraphs: str) -> str:
    """A command's description: paragraphs filled to 88 columns (raw formatting keeps the
    blank lines between them)."""
    import textwrap

    return "\n\n".join(textwrap.fill(p, 88) for p in paragraphs)


def deploy_parser() -> argparse.ArgumentParser:
    from vfl.deploy import node as deploy_node
    from vfl.vertical.config import PROTOCOLS

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="vfl deploy", description=DEPLOY_DOC,
                                     formatter_class=raw)
    sub = parser.add_subparsers(dest="deploy", required=True, metavar="COMMAND")

    certs = sub.add_parser(
        "certs", formatter_class=raw,
        help="make a test certificate authority and the SuperLink's TLS certificate",
        description=_paras(
            "Write a throwaway certificate authority (ca.pem) and a SuperLink certificate it "
            "signed (server.pem, server.key) into DIR, valid for the --host names and "
            "addresses.",
            "ca.pem goes to every organization's node and to the machine that runs `vfl "
            "deploy run`; server.pem and server.key stay on the SuperLink's host. For a real "
            "consortium use certificates from the consortium's own CA instead.",
        ))
    certs.add_argument("dir", type=Path, metavar="DIR", help="folder to write the three files to")
    certs.add_argument("--host", action="append", default=None, metavar="H",
                       help="a host name or IP address nodes use to reach the SuperLink "
                       "(repeatable; default: 127.0.0.1 and localhost). The address in every "
                       "node's --superlink must be one of them")
    certs.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    certs.add_argument("--force", action="store_true",
                       help="replace certificates already in DIR (nodes holding the old "
                       "ca.pem then no longer trust the SuperLink)")

    link = sub.add_parser(
        "superlink", formatter_class=raw,
        help="start the SuperLink (Flower's router) on the coordinator's host",
        description=_paras(
            "Run `flower-superlink` with TLS from --certs DIR (ca.pem, server.pem, server.key) "
            "and the environment installed here (no dependency installation at run time). It "
            "serves the nodes (Fleet), `flwr run` (Control) and the ServerApp on one port: "
            "open --port to every organization's node and to the machine that runs `vfl "
            "deploy run`. It runs in the foreground until Ctrl-C.",
        ))
    tls = link.add_mutually_exclusive_group(required=True)
    tls.add_argument("--certs", type=Path, metavar="DIR",
                     help="folder with ca.pem, server.pem and server.key (`vfl deploy certs`)")
    tls.add_argument("--insecure", action="store_true",
                     help="no TLS: traffic in the clear (tests on one machine only)")
    link.add_argument("--host", default="0.0.0.0",
                      help="address to listen on (default 0.0.0.0: every interface)")
    link.add_argument("--port", type=int, default=8000,
                      help="the one port for nodes, `flwr run` and the ServerApp (default 8000)")
    link.add_argument("--dry-run", action="store_true",
                      help="print the flower-superlink command instead of running it")

    deploy_node.build_parser(sub.add_parser(
        "node", formatter_class=raw, description=deploy_node.__doc__,
        help="one organization's node: its party (own data) and its Flower SuperNode"))

    run = sub.add_parser(
        "run", formatter_class=raw,
        help="run a job (vertical or horizontal) on a SuperLink with `flwr run`",
        description=_paras(
            "Write the Flower app and a `flwr` connection to the SuperLink, then `flwr run APP "
            "CONNECTION --stream` with the job's run config; the ServerApp's log streams to "
            "this terminal and the result summary is printed at the end.",
            "The ServerApp runs on the SuperLink's machine: it reads --config and writes "
            "--result THERE, at the same absolute paths. Run this on the SuperLink's host, or "
            "put the job config at the same path on it (the result then stays there).",
        ))
    run.add_argument("--superlink", required=True, metavar="HOST:PORT",
                     help="the SuperLink's address, e.g. coord.example.org:8000")
    tls = run.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", type=Path, metavar="CA",
                     help="the CA certificate (ca.pem) that signed the SuperLink's certificate")
    tls.add_argument("--insecure", action="store_true",
                     help="no TLS (a SuperLink started with --insecure; tests only)")
    run.add_argument("--job", required=True, choices=sorted(deploy_node.FACTORIES),
                     help="vertical (PSI, split training, evaluation) or horizontal")
    run.add_argument("--config", required=True, type=Path, metavar="JOB.json",
                     help="the job config (vertical: `vfl deploy job-config` writes one); "
                     "read by the ServerApp on the SuperLink's machine")
    run.add_argument("--result", type=Path, default=None, metavar="OUT.json",
                     help="where the ServerApp writes the result JSON, on the SuperLink's "
                     "machine (default: next to --config, as NAME.result.json)")
    run.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                     help="where the Flower app, the flwr connection (FLWR_HOME), the "
                     "run-config overrides and the log go (default: a temporary folder, "
                     "removed after a successful run)")
    run.add_argument("--reply-timeout", type=float, default=120.0, metavar="S",
                     help="seconds a party may take to answer one wave (default 120)")
    run.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                     help="seconds to wait for every party's node to connect (default 120)")
    run.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="give up on the whole run after this many seconds (default: none)")

    job = sub.add_parser(
        "job-config", formatter_class=raw,
        help="write a vertical job config: the hospital_lab_pharmacy training setup",
        description=_paras(
            "Write the vertical job config `vfl deploy run --job vertical` takes: the parties "
            "(the active party, which holds the label, first) and the TrainConfig the "
            "hospital_lab_pharmacy scenario trains with (same model, schedule, learning rate, "
            "split and seed).",
            "The ServerApp reads it on the SuperLink's machine: write it there, or copy it to "
            "the same absolute path there.",
        ))
    job.add_argument("out", type=Path, metavar="OUT.json", help="the job config to write")
    job.add_argument("--dataset", default="actg320",
                     help="the scenario's data set, actg320 (default)")
    job.add_argument("--protocol", default="paillier", choices=PROTOCOLS,
                     help="vertical protocol (default: paillier, the federated source layer; "
                     "plain is split learning with plaintext gradients)")
    job.add_argument("--bottom", default="linear", choices=["linear", "mlp"],
                     help="the scenario's --bottom (default linear: logistic regression)")
    job.add_argument("--epochs", type=int, default=None,
                     help="override the epoch count (default: the scenario's 12)")
    job.add_argument("--quick", action="store_true",
                     help="the scenario's --quick schedule (4 epochs)")
    job.add_argument("--seed", type=int, default=0,
                     help="seed of the split and the models (default 0; use the same "
                     "--seed for `vfl deploy split`)")

    split = sub.add_parser(
        "split", formatter_class=raw,
        help="write each party's table of a bundled data set as CSV (what each organization "
        "loads)",
        description=_paras(
            "Write each party's table of a bundled data set to DIR/NAME.csv (id column "
            "\"id\"), and print each party's label column (only the active party has one): "
            "the files and flags each organization passes to `vfl deploy node`.",
        ))
    split.add_argument("dir", type=Path, metavar="DIR", help="folder to write NAME.csv files to")
    split.add_argument("--dataset", default="actg320",
                       help="a bundled data set (default actg320; vfl.DATASETS lists them)")
    split.add_argument("--seed", type=int, default=0,
                       help="seed of the partial overlap between parties (default 0)")

    local = sub.add_parser(
        "local", formatter_class=raw,
        help="the hospital_lab_pharmacy federation across processes on this machine",
        description=_paras(
            "Split ACTG 320 into the hospital's, the lab's and the pharmacy's CSV, start a "
            "SuperLink (TLS with a test CA unless --insecure) and one `vfl deploy node` per "
            "party, run the vertical job with `flwr run`, then train the same configuration in "
            "memory and say whether the test AUC and every loss are bitwise equal. Logs and "
            "files go to --workdir.",
        ))
    local.add_argument("--dataset", default="actg320",
                       help="the scenario's data set, actg320 (default)")
    local.add_argument("--protocol", default="paillier", choices=PROTOCOLS,
                       help="vertical protocol (default: paillier)")
    local.add_argument("--quick", action="store_true",
                       help="1 epoch instead of the scenario's 12 (the shortest run that trains)")
    local.add_argument("--seed", type=int, default=0, help="seed for data, split and models")
    local.add_argument("--insecure", action="store_true", help="no TLS between the processes")
    local.add_argument("--workdir", type=Path, default=Path("runs") / "deploy_local",
                       metavar="DIR", help="files and logs (default: runs/deploy_local)")
    local.add_argument("--json", type=Path, default=None, help="also write the summary here")
    local.add_argument("--stream", action="store_true",
                       help="show `flwr run`'s streamed log (the ServerApp's) as it runs")
    local.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                       help="give up on the run after this many seconds (default 3600)")
    return parser


def deploy_main(argv) -> int:
    """``vfl deploy COMMAND``: 0 done, 2 bad input, 1 a run that failed (the message says
    why and what to do)."""
    from vfl.core.errors import ConfigError, PartyDataError, VFLError

    args = deploy_parser().parse_args(argv)
    commands = {"certs": _deploy_certs, "superlink": _deploy_superlink, "node": _deploy_node,
                "run": _deploy_run, "job-config": _deploy_job_config, "split": _deploy_split,
                "local": _deploy_local}
    try:
        return commands[args.deploy](args)
    except (ConfigError, PartyDataError) as exc:
        print(f"vfl deploy {args.deploy}: {exc}", file=sys.stderr)
        return BAD_INPUT
    except VFLError as exc:
        print(f"vfl deploy {args.deploy}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED


def _deploy_certs(args) -> int:
    from scenarios.report import console
    from vfl.core.errors import ConfigError
    from vfl.deploy.certs import make_test_certificates

    if args.dir.exists() and not args.dir.is_dir():
        raise ConfigError(f"{args.dir} is a file; give a folder for the certificates")
    names = ("ca.pem", "server.pem", "server.key")
    present = [n for n in names if (args.dir / n).exists()]
    if present and not args.force:
        raise ConfigError(
            f"{args.dir} already holds {', '.join(present)}; nodes that trust its ca.pem would "
            "stop trusting a SuperLink with new certificates. Choose another folder, or pass "
            "--force to replace them"
        )
    if args.days < 1:
        raise ConfigError(f"--days {args.days}: a certificate must be valid for 1 day or more")
    hosts = tuple(args.host) if args.host else ("127.0.0.1", "localhost")
    out = make_test_certificates(args.dir, hosts=hosts, days=args.days)
    console.print(f"[bold]test certificates[/] for {', '.join(hosts)}, valid {args.days} days:")
    for path, what in [
        (out.ca, "CA certificate: to every organization's node (--root-certificates), to the "
         "`vfl deploy run` machine (--root-certificates) and to the SuperLink"),
        (out.cert, "SuperLink certificate: the SuperLink's host only"),
        (out.key, "SuperLink private key: the SuperLink's host only; secret (mode 0600), "
         "never copied"),
    ]:
        console.print(f"  {path.resolve()}\n      {what}", soft_wrap=True)
    console.print(f"start the SuperLink with: vfl deploy superlink --certs {args.dir}",
                  soft_wrap=True)
    return 0


def _certificates(directory: Path):
    from vfl.core.errors import ConfigError
    from vfl.deploy.certs import TestCertificates

    if not directory.is_dir():
        raise ConfigError(
            f"--certs {directory}: no such folder. Make one with `vfl deploy certs {directory} "
            "--host YOUR.HOST.NAME` (a test CA), or put your consortium's ca.pem, server.pem "
            "and server.key there"
        )
    directory = directory.resolve()
    certs = TestCertificates(directory / "ca.pem", directory / "server.pem",
                             directory / "server.key")
    missing = [p.name for p in (certs.ca, certs.cert, certs.key) if not p.is_file()]
    if missing:
        raise ConfigError(
            f"--certs {directory} lacks {', '.join(missing)}: it needs ca.pem, server.pem and "
            f"server.key (`vfl deploy certs {directory} --host YOUR.HOST.NAME` writes them)"
        )
    return certs


def _deploy_superlink(args) -> int:
    import os
    import shlex

    from vfl.core.errors import ConfigError
    from vfl.deploy.local import superlink_command

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: a TCP port is 1-65535")
    certs = None if args.insecure else _certificates(args.certs)
    cmd = superlink_command(args.port, certs, host=args.host)
    print(shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    os.execv(cmd[0], cmd)  # the SuperLink replaces this process (Ctrl-C stops it)
    return 0  # not reached


def _deploy_node(args) -> int:
    from vfl.deploy.node import run_node

    return run_node(args)


def _dataset(name: str, seed: int, *, only: str | None = None):
    """A bundled data set by name; with ``only``, that one alone (the data set whose
    scenario configuration the command deploys)."""
    from vfl.core.errors import ConfigError
    from vfl.datasets.registry import DATASETS, load

    if name not in DATASETS:
        raise ConfigError(f"--dataset {name!r}: unknown data set; choose one of "
                          f"{', '.join(sorted(DATASETS))}")
    if only is not None and name != only:
        raise ConfigError(
            f"--dataset {name!r}: this command deploys the hospital_lab_pharmacy "
            f"configuration, which trains on {only}. For other data, write a job config with "
            "\"parties\", \"active\" and \"train\" (a TrainConfig's to_json()) yourself"
        )
    try:
        return load(name, seed=seed)
    except ImportError as exc:
        raise ConfigError(f"the bundled data sets need the demos extra: pip install "
                          f"'vfl[demos]' ({exc})") from None


def _job_config(dataset, config) -> dict:
    """The vertical job config for ``dataset``'s parties (active first) and ``config``."""
    return {"parties": dataset.parties, "active": dataset.active, "train": config.to_json(),
            "evaluate": ["test"]}


def _write_split(dataset, directory: Path) -> dict[str, Path]:
    from vfl.core.errors import ConfigError

    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; give a folder for the CSV files")
    directory.mkdir(parents=True, exist_ok=True)
    return {n: dataset.tables[n].to_csv(directory / f"{n}.csv", id_column="id")
            for n in dataset.parties}


def _deploy_job_config(args) -> int:
    from scenarios.hospital_lab_pharmacy import DATASET, train_config
    from scenarios.report import console, write_json
    from vfl.core.errors import ConfigError

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs}: train for 1 epoch or more")
    dataset = _dataset(args.dataset, args.seed, only=DATASET)
    config = train_config(args.protocol, bottom=args.bottom, epochs=args.epochs,
                          quick=args.quick, seed=args.seed)
    write_json(_job_config(dataset, config), args.out)
    console.print(
        f"wrote {args.out}: parties {', '.join(dataset.parties)} (active {dataset.active}), "
        f"protocol {config.protocol}, {config.epochs} epochs, seed {config.seed}.\n"
        "The ServerApp reads it on the SuperLink's machine: run `vfl deploy run --config "
        f"{args.out} ...` there, or copy it to the same absolute path there.", soft_wrap=True,
    )
    return 0


def _deploy_split(args) -> int:
    from scenarios.report import console, print_table

    dataset = _dataset(args.dataset, args.seed)
    files = _write_split(dataset, args.dir)
    rows = []
    for name in dataset.parties:
        table = dataset.tables[name]
        rows.append([name, f"{name}.csv", table.n_rows, len(table.columns),
                     table.label_name or "none"])
    print_table(f"{dataset.name} in {args.dir}: one CSV per party (id column \"id\")",
                ["party", "file", "rows", "features", "label column"], rows)
    console.print("what each organization runs with its file:")
    for name in dataset.parties:
        label = dataset.tables[name].label_name
        console.print(f"  vfl deploy node --party {name} --data {files[name]} --id-column id"
                      + (f" --label-column {label}" if label else "") + " ...", soft_wrap=True)
    return 0


def _result_rows(result: dict) -> list[list]:
    """A result JSON as (what, value) rows: its numbers and names, nested maps flattened;
    per-wave timings and the transcript left to the file."""
    skip = {"log", "capture", "wave_seconds", "node_timings", "transcript"}
    rows: list[list] = []

    def walk(prefix: str, value, depth: int) -> None:
        if isinstance(value, bool | int | float | str):
            rows.append([prefix, value])
        elif isinstance(value, dict) and depth < 3:
            for k, v in value.items():
                if k not in skip:
                    walk(f"{prefix} {k}".strip(), v, depth + 1)
        elif isinstance(value, list) and value:
            last = value[-1]
            rows.append([prefix, f"{len(value)} values, last {last:.6g}"
                         if isinstance(last, float) else f"{len(value)} values"])

    walk("", result, 0)
    return rows


def _deploy_run(args) -> int:
    import json
    import shutil
    import tempfile

    from scenarios.report import console, print_table
    from vfl.core.errors import ConfigError
    from vfl.deploy.app import write_app
    from vfl.deploy.local import (
        ResultOnSuperLinkError,
        flower_executable,
        flwr_run,
        write_connection,
    )
    from vfl.deploy.preflight import check_superlink, split_address

    split_address(args.superlink)
    ca = args.root_certificates
    if ca is not None and not ca.is_file():
        raise ConfigError(f"--root-certificates {ca}: no such file; copy the SuperLink "
                          "operator's ca.pem here (or pass --insecure for a SuperLink without TLS)")
    config_path = args.config.resolve()
    if not config_path.is_file():
        raise ConfigError(f"--config {args.config}: no such file; `vfl deploy job-config "
                          f"{args.config}` writes a vertical one")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {args.config} is not JSON ({exc})") from None
    parties = config.get("parties") if isinstance(config, dict) else None
    if not isinstance(parties, list) or not parties or not all(
        isinstance(p, str) for p in parties
    ):
        raise ConfigError(f"--config {args.config} needs \"parties\": the list of party names "
                          "the nodes serve (their --party)")
    if args.job == "vertical" and not isinstance(config.get("train"), dict):
        raise ConfigError(f"--config {args.config} needs \"train\", a TrainConfig as JSON, for "
                          "a vertical job; `vfl deploy job-config` writes one")
    result_path = (args.result.resolve() if args.result is not None
                   else config_path.with_name(config_path.stem + ".result.json"))
    flower_executable("flwr")
    check_superlink(args.superlink, ca)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="vfl-deploy-run-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    app = write_app(workdir / "app")
    home = workdir / "flwr-home"
    write_connection(home, "vfl", args.superlink, ca.resolve() if ca is not None else None)
    console.print(f"[bold]flwr run[/]: job {args.job}, parties {', '.join(parties)} on "
                  f"{args.superlink}; the ServerApp reads {config_path} and writes "
                  f"{result_path} on the SuperLink's machine", soft_wrap=True)
    try:
        result = flwr_run(app, "vfl", home, args.job, config_path, result_path,
                          stem=workdir / "run", reply_timeout=args.reply_timeout,
                          connect_timeout=args.connect_timeout, timeout=args.timeout, echo=True)
    except ResultOnSuperLinkError as exc:
        console.print(str(exc), soft_wrap=True)
        return 0
    except Exception:
        console.print(f"files and the run's log: {workdir}", soft_wrap=True)
        raise
    print_table(f"result ({result_path})", ["", "value"], _result_rows(result))
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _deploy_local(args) -> int:
    import contextlib
    import time

    from scenarios.hospital_lab_pharmacy import DATASET, NAME, train_config
    from scenarios.report import console, print_table, write_json
    from vfl.core.table import PartyTable
    from vfl.deploy.local import LocalFederation, flower_executable
    from vfl.vertical.config import SecurityPolicy
    from vfl.vertical.trainer import SplitTrainer

    for exe in ("flower-superlink", "flower-supernode", "flwr"):
        flower_executable(exe)
    dataset = _dataset(args.dataset, args.seed, only=DATASET)
    config = train_config(args.protocol, epochs=1 if args.quick else None, seed=args.seed)
    job = _job_config(dataset, config)
    workdir = args.workdir.resolve()
    files = _write_split(dataset, workdir / "data")
    tls = "TLS" if not args.insecure else "no TLS"
    console.print(f"[bold]{NAME}[/] across processes: {dataset.source}; parties "
                  f"{', '.join(dataset.parties)}; protocol {config.protocol}, {config.epochs} "
                  f"epoch(s); {tls}; files and logs in {workdir}", soft_wrap=True)
    t0 = time.perf_counter()
    with LocalFederation(workdir / "federation", tls=not args.insecure, echo=args.stream) as fed:
        fed.start_superlink()
        for name in dataset.parties:
            fed.start_node(name, files[name], "id", label_column=dataset.tables[name].label_name)
        startup = time.perf_counter() - t0
        waiting = (contextlib.nullcontext() if args.stream else
                   console.status(f"SuperLink and {len(dataset.parties)} nodes up; `flwr run` "
                                  "the vertical job (logs: federation/*.log)"))
        t1 = time.perf_counter()
        with waiting:
            deployed = fed.run("vertical", job, timeout=args.timeout, connect_timeout=300)
        deployed_wall = time.perf_counter() - t1

    with console.status("the same configuration in memory"):
        t2 = time.perf_counter()
        tables = {n: PartyTable.from_file(files[n], "id", dataset.tables[n].label_name)
                  for n in dataset.parties}
        trainer = SplitTrainer.from_tables(tables, dataset.active, config,
                                           policy=SecurityPolicy.pinned(config))
        history = trainer.fit(progress=False)
        memory_metrics = trainer.evaluate("test")["metrics"]
        memory_wall = time.perf_counter() - t2
    losses = list(history.loss)
    auc, memory_auc = deployed["metrics"]["test"]["auc"], memory_metrics["auc"]
    equal = {"auc": auc == memory_auc, "losses": deployed["losses"] == losses}
    info = deployed["deployment"]
    rounds = deployed["rounds"]
    print_table(
        f"{NAME} on {dataset.name}: deployed ({tls}) vs in memory",
        ["run", "aligned rows", "rounds", "test AUC", "wall s", "round trips", "wall s/round"],
        [
            [f"deployed: SuperLink + {len(dataset.parties)} nodes", deployed["aligned"], rounds,
             auc, f"{deployed_wall:.1f}", info["round_trips"],
             f"{deployed_wall / max(rounds, 1):.2f}"],
            ["in memory", int(trainer.federation.alignment.size), len(losses), memory_auc,
             f"{memory_wall:.1f}", "-", f"{memory_wall / max(len(losses), 1):.2f}"],
        ],
    )
    console.print(
        f"bitwise equal to the in-memory run: test AUC {'yes' if equal['auc'] else 'NO'}, "
        f"losses {'yes' if equal['losses'] else 'NO'} ({rounds} rounds). "
        f"{info['sealed_messages']} of {info['messages']} messages crossed sealed "
        "(party to party); start-up (SuperLink and nodes) "
        f"{startup:.1f} s; ServerApp {info['seconds']:.1f} s"
    )
    summary = {
        "scenario": NAME, "dataset": dataset.name, "protocol": config.protocol,
        "tls": not args.insecure, "seed": args.seed, "config": config.to_json(),
        "workdir": str(workdir), "bitwise_equal": equal,
        "deployed": {"aligned": deployed["aligned"], "rounds": rounds, "auc": auc,
                     "wall_seconds": deployed_wall, "startup_seconds": startup,
                     "round_trips": info["round_trips"], "server_seconds": info["seconds"],
                     "messages": info["messages"], "sealed_messages": info["sealed_messages"],
                     "network_bytes": info["network_bytes"], "losses": deployed["losses"],
                     "metrics": deployed["metrics"], "log": deployed["log"]},
        "in_memory": {"aligned": int(trainer.federation.alignment.size), "rounds": len(losses),
                      "auc": memory_auc, "wall_seconds": memory_wall, "losses": losses,
                      "metrics": memory_metrics},
    }
    write_json(summary, workdir / "summary.json", args.json)
    console.print(f"wrote {workdir / 'summary.json'}" + (f" and {args.json}" if args.json else ""),
                  soft_wrap=True)
    if not all(equal.values()):
        console.print("[bold red]the deployed run differs from the in-memory run[/]; see "
                      f"{deployed['log']}")
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
