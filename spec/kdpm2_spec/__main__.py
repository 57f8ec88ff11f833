"""``python -m kdpm2_spec check MODULE:CLASS [--profile ci|dev|thorough]``: the conformance report.

Prints one line per property (``PASS``, ``FAIL`` with the shrunk case and a reproducer, or
``UNSUPPORTED``), then ``N passed, M failed``; exits 1 when a property failed. ``--only NAME``
runs some properties; ``--case REPR`` re-checks one case (the reproducer of a failure).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any


def load(spec: str) -> Any:
    """The object that ``MODULE:NAME`` (or ``MODULE.NAME``) names."""
    module, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise SystemExit(f"expected MODULE:CLASS, got {spec!r}")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the checks, print the report; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m kdpm2_spec", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a scheduler class against the spec")
    check.add_argument("target", metavar="MODULE:CLASS", help="e.g. kdpm2:KDPM2DiscreteScheduler")
    check.add_argument("--profile", choices=["ci", "dev", "thorough"], default=None, help="Hypothesis profile")
    check.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this property")
    check.add_argument("--case", default=None, help="re-check one case (with one --only)")
    check.add_argument("--no-shrink", action="store_true", help="report failing cases unshrunk (faster)")
    args = parser.parse_args(argv)

    from kdpm2_spec import conformance

    cls = load(args.target)
    unknown = sorted(set(args.only or ()) - set(conformance.PROPERTIES))
    if unknown:
        parser.error(f"unknown properties {unknown}; choose from {sorted(conformance.PROPERTIES)}")
    if args.case is not None:
        if not args.only or len(args.only) != 1:
            parser.error("--case needs exactly one --only NAME")
        from kdpm2_spec import strategies

        case = eval(args.case, {**vars(strategies), "array": __import__("numpy").array})  # a report's repr
        conformance.check_case(cls, args.only[0], case)
        print(f"PASS {args.only[0]} on {args.case}")
        return 0
    report = conformance.run(
        cls, profile=args.profile, only=args.only, echo=lambda line: print(line, flush=True), shrink=not args.no_shrink
    )
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
