"""The ``vfl`` command: ``vfl list``, ``vfl run NAME [flags]`` and the unlearning commands
``vfl erase --run RUN_DIR --patient ID`` (or ``--client NAME --method approx``: a hospital
leaves a horizontal federation), ``vfl audit verify RUN_DIR`` and
``vfl lineage RUN_DIR --patient ID`` (run directories written by the scenarios).

Scenarios live in the top-level ``scenarios`` package and are found by name at run time,
so the library never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from pathlib import Path


def _scenario_names() -> list[str]:
    try:
        package = importlib.import_module("scenarios")
    except ImportError:
        return []
    return sorted(
        m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")
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
    audit = sub.add_parser("audit", help="audit-log commands: vfl audit verify RUN_DIR")
    audit.add_argument("action", choices=["verify"])
    audit.add_argument("run", type=Path)
    lineage = sub.add_parser("lineage", help="what a patient influenced in a run")
    lineage.add_argument("run", type=Path)
    lineage.add_argument("--patient", required=True)
    args = parser.parse_args(argv)

    if args.command in ("erase", "audit", "lineage"):
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
    """``vfl erase`` / ``vfl audit verify`` / ``vfl lineage``; 0 ok, 1 verification failed,
    2 bad input (the message says what to do)."""
    import unlearning  # noqa: F401  (registers the trainer adapters)
    from unlearning.errors import UnlearningError
    from unlearning.run import RunDir

    try:
        if args.command == "audit":
            from unlearning.audit_log import AuditLog

            if not (args.run / "audit.jsonl").exists():
                raise UnlearningError(f"{args.run} has no audit.jsonl; is it a run directory?")
            result = AuditLog(args.run / "audit.jsonl").verify()
            print(json.dumps(result.to_json(), indent=1))
            print("audit log OK" if result.ok else
                  f"TAMPERED or MISSING at entry {result.first_bad}: {result.reason}")
            return 0 if result.ok else 1
        run = RunDir(args.run)
        if args.command == "lineage":
            pid = args.patient
            erased = run.erased()
            if pid in erased:
                print(f"patient {pid} was erased by request {erased[pid]}; certificate: "
                      f"{run.cert_dir / (erased[pid] + '.json')}")
                return 0
            holders = run.lineage.holders(pid) or run.adapter().holders(pid)
            if not holders:
                print(f"no party holds patient {pid!r} in this run")
                return 2
            inf = run.lineage.influenced([pid])
            print(f"patient {pid}: held by {', '.join(holders)}")
            if not inf["rounds"] and not inf["setup"]:
                print("  influenced no training round (held-out or not aligned)")
            for model, rounds in sorted(inf["rounds"].items()):
                print(f"  {model}: setup={'yes' if model in inf['setup'] else 'no'}, "
                      f"rounds {rounds[0]}..{rounds[-1]} ({len(rounds)}), checkpoints "
                      f"{len(inf['checkpoints'].get(model, []))}, last uninfluenced checkpoint "
                      f"{run.lineage.last_uninfluenced_checkpoint([pid], model)}")
            print(f"  published models: {', '.join(inf['models']) or 'none'}")
            return 0
        from unlearning.requests import ErasureService

        request = _erase_request(args)  # validated before anything is touched

        def step(name, info):
            shown = {k: v for k, v in info.items() if not isinstance(v, list | dict)}
            print(f"[{name}] {json.dumps(shown if name == 'verified' else info)}")

        service = ErasureService(run, retrain=args.retrain, on_step=step)
        for cert in service.recover():
            print(f"recovered an interrupted erasure: {cert['request']['request_id']}")
        cert = service.submit(request)
        print("certificate:")
        print(json.dumps(cert, indent=1, sort_keys=True))
        return 0
    except UnlearningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _erase_request(args):
    """The request ``vfl erase`` names: patients (exact/sisa) or a whole client (approx)."""
    from unlearning.errors import UnlearningError
    from unlearning.requests import ClientRemovalRequest, ErasureRequest

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
