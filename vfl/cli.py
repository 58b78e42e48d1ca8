"""The ``vfl`` command: ``vfl list`` and ``vfl run NAME [flags]``.

Scenarios live in the top-level ``scenarios`` package and are found by name at run time,
so the library never imports them.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys


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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
