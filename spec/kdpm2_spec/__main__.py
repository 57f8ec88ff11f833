"""``python -m kdpm2_spec check MODULE:CLASS``: the conformance report, and a CI gate.

Prints a header (target, device, dtype, profile, seed, tolerance), one line per property
(``PASS``, ``FAIL`` with the shrunk case and a reproducer, ``XFAIL`` for an expected failure,
``STALE`` for an expected failure that passed, ``UNSUPPORTED``), then ``N passed, M failed``.

Exit statuses: 0 it conforms (every failure expected); 1 a failure not expected; 2 a usage
error (bad argument, unloadable target, malformed ``--case`` or expectation file), reported on
one line of standard error before any check runs; 3 no new failure, but a stale expectation.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PROG = "python -m kdpm2_spec"


class UsageError(Exception):
    """A bad command line: printed as one line on standard error, exit status 2."""


def load(spec: str) -> Any:
    """The scheduler class that ``MODULE:CLASS`` (or ``MODULE.CLASS``) names; ``UsageError`` if none."""
    module, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise UsageError(f"expected MODULE:CLASS, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise UsageError(f"cannot import module {module!r} of {spec!r}: {error}") from None
    except Exception as error:  # importing user code can raise anything
        raise UsageError(f"importing {module!r} of {spec!r} raised {type(error).__name__}: {error}") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module!r} has no {name!r} (in {spec!r})")
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise UsageError(f"{spec!r} is a {type(obj).__name__}, not a scheduler class")
    missing = [m for m in ("set_timesteps", "step", "scale_model_input") if not callable(getattr(obj, m, None))]
    if missing:
        raise UsageError(f"{spec!r} is not a scheduler class: it has no {', '.join(missing)}")
    return obj


def parser() -> argparse.ArgumentParser:
    """The argument parser (``docs/ci.md`` lists the same options)."""
    from kdpm2_spec.catalog import DTYPE_NAMES

    main = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").splitlines()[0])
    commands = main.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="check a scheduler class against the spec")
    check.add_argument("target", metavar="MODULE:CLASS", help="e.g. kdpm2:KDPM2DiscreteScheduler")
    check.add_argument("--profile", choices=["ci", "dev", "thorough"], default=None, help="Hypothesis profile")
    check.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this property")
    check.add_argument("--case", default=None, help="re-check one case (with one --only): a case repr, parsed as data")
    check.add_argument("--no-shrink", action="store_true", help="report failing cases unshrunk (faster)")
    check.add_argument("--device", default="cpu", help="torch device of the tensors (default: cpu)")
    check.add_argument("--dtype", choices=DTYPE_NAMES, default="float64", help="tensor dtype (default: float64)")
    check.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: the profile's; ci is fixed)")
    check.add_argument("--database", default=None, metavar="DIR", help="Hypothesis example database (default: none)")
    check.add_argument("--expect", default=None, metavar="FILE", help="JSON of known failures, or a shipped name")
    check.add_argument("--write-expect", default=None, metavar="FILE", help="write the failures of this run as JSON")
    check.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    check.add_argument("--junit-xml", default=None, metavar="FILE", help="write the report as JUnit XML")
    return main


def _writable(option: str, path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not path or Path(path).is_dir() or not folder.is_dir():
        raise UsageError(f"{option} {path!r}: not a file in an existing folder")


def _check(args: argparse.Namespace) -> int:
    from kdpm2_spec import conformance, gate

    unknown = sorted(set(args.only or ()) - set(conformance.PROPERTIES))
    if unknown:
        raise UsageError(f"unknown properties {unknown}; choose from {', '.join(conformance.PROPERTIES)}")
    case = None
    if args.case is not None:
        if not args.only or len(args.only) != 1:
            raise UsageError("--case needs exactly one --only NAME")
        from kdpm2_spec.cases import parse_case

        try:
            case = parse_case(args.case)
        except ValueError as error:
            raise UsageError(str(error)) from None
    for option in ("json", "junit_xml", "write_expect"):
        _writable("--" + option.replace("_", "-"), getattr(args, option))
    try:
        expect = None if args.expect is None else gate.load(args.expect, conformance.PROPERTIES)
    except ValueError as error:
        raise UsageError(str(error)) from None
    cls = load(args.target)
    try:
        target = conformance.Target.of(cls, args.device, args.dtype)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.case is not None:
        try:
            conformance.check_case(target.adapter, args.only[0], case)
        except conformance.Unsupported as why:
            print(f"UNSUPPORTED {args.only[0]}: {why}")
            return conformance.EXIT_OK
        except AssertionError as error:
            print(f"FAIL {args.only[0]} on {args.case}: {error}", file=sys.stderr)
            return conformance.EXIT_FAILED
        print(f"PASS {args.only[0]} on {args.case}")
        return conformance.EXIT_OK
    report = conformance.run(
        target.adapter,
        profile=args.profile,
        only=args.only,
        echo=lambda line: print(line, flush=True),
        shrink=not args.no_shrink,
        seed=args.seed,
        database=args.database,
        expect=expect,
    )
    if args.write_expect is not None:
        gate.write(report, args.write_expect)
        report.expect = gate.failures(report)
        for result in report.results:  # the run now meets the file just written
            result.expected = report.expect.get(result.name, "")
    print(report.summary())
    from kdpm2_spec import formats

    if args.json is not None:
        formats.write_json(report, args.json)
    if args.junit_xml is not None:
        formats.write_junit(report, args.junit_xml)
    return report.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the checks, print the report; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return _check(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
