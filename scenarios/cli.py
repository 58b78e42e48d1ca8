"""The ``vfl`` command: ``vfl list``, ``vfl run NAME [flags]`` and the unlearning commands
``vfl erase --run RUN_DIR --patient ID`` (or ``--client NAME --method approx``: a hospital
leaves a horizontal federation), ``vfl audit verify RUN_DIR [--keys DIR]``,
``vfl lineage RUN_DIR --patient ID`` and ``vfl check RUN_DIR`` (run directories written by
the scenarios).

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
    parser = argparse.ArgumentParser(
        prog="vfl",
        description="Vertical and horizontal federated learning for healthcare.",
        epilog="Run `vfl run NAME --help` for a scenario's own flags.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the runnable scenarios")
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


if __name__ == "__main__":
    sys.exit(main())
