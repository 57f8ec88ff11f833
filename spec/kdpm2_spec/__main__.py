"""``python -m kdpm2_spec check MODULE:CLASS``: the conformance report, and a CI gate.

Prints a header (target, device, dtype, profile, seed, tolerance), one line per property
(``PASS``; ``FAIL`` with the message, the failure's signature, the shrunk case and a reproducer;
``XFAIL`` when it failed only as the expectation file expects; ``STALE`` for expected failures no
longer seen; ``UNSUPPORTED``; ``ERROR`` when the target blocked past the time limit or ended the
process), then ``N passed, M failed`` and the numerical level met.

Exit statuses: 0 it conforms (every failure expected); 1 a failure not expected (an error, a
newly unsupported check or a lower level included); 2 the gate cannot judge (bad argument,
unloadable target, a missing dependency, malformed ``--case`` or expectation file), reported on
one line of standard error before any check runs; 3 no new failure, but a stale expectation.

``python -m kdpm2_spec diff A B`` compares two implementations' behaviour (``kdpm2_spec.differential``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdpm2_spec.deps import UsageError

PROG = "python -m kdpm2_spec"
__all__ = ["PROG", "UsageError", "load", "main", "parser"]


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


DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
"""As ``kdpm2_spec.catalog.DTYPE_NAMES`` (repeated so that ``--help`` needs no dependency)."""

LEVEL_NAMES = ("exact", "float32 tables")
"""As ``kdpm2_spec.levels.LEVELS`` (a test keeps them equal)."""


def parser() -> argparse.ArgumentParser:
    """The argument parser (``docs/ci.md`` lists the same options)."""
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
    check.add_argument(
        "--level",
        choices=LEVEL_NAMES,
        default="float32 tables",
        help="numerical level to gate at (default: float32 tables)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time limit per property (default: 600, thorough 3600; 0: none)",
    )
    check.add_argument("--family", default=None, metavar="NAME", help="property family (default: detected, kdpm2)")
    check.add_argument(
        "--path", action="append", default=[], metavar="DIR", help="import the target with DIR first on the path"
    )
    check.add_argument("--expect", default=None, metavar="FILE", help="expected failures (JSON), or a shipped name")
    check.add_argument(
        "--write-expect",
        default=None,
        metavar="FILE",
        help="write this run's failures as expectations (merged with --expect)",
    )
    check.add_argument("--json", default=None, metavar="FILE", help="write the report as JSON")
    check.add_argument("--junit-xml", default=None, metavar="FILE", help="write the report as JUnit XML")
    check.add_argument("--in-process", action="store_true", help="run in this process (no time limit; for a debugger)")
    from kdpm2_spec.differential import add_commands

    add_commands(commands)
    return main


def _writable(option: str, path: str | None) -> None:
    if path is None:
        return
    folder = Path(path).resolve().parent
    if not path or Path(path).is_dir() or not folder.is_dir():
        raise UsageError(f"{option} {path!r}: not a file in an existing folder")


def require(target_args: Sequence[str] | None = None) -> None:
    """``UsageError`` naming what the gate lacks (Hypothesis; SciPy when beta sigmas may be drawn)."""
    from kdpm2_spec import deps

    missing = deps.missing(target_args or (), need_beta=None if target_args is not None else False)
    if missing:
        why = "the target accepts use_beta_sigmas" if missing == ["scipy"] else ""
        raise UsageError(deps.message(missing, why))


def _expectation(spec: str | None) -> tuple[Any, Any]:
    """The raw JSON and the parsed ``Expectation`` of ``--expect`` (``None``s without one)."""
    if spec is None:
        return None, None
    from kdpm2_spec import gate

    try:
        text, where = gate._text(spec)
        data = json.loads(text)
        return data, gate.parse(data, where)
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--expect {spec!r}: cannot read it ({error})") from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise UsageError(f"--expect {spec!r}: not JSON ({error})") from None
    except ValueError as error:
        raise UsageError(str(error)) from None


def _check(args: argparse.Namespace) -> int:
    require()
    from kdpm2_spec import formats, gate, levels, report, worker

    if args.case is not None and (not args.only or len(args.only) != 1):
        raise UsageError("--case needs exactly one --only NAME")
    case_text = None
    if args.case is not None:
        from kdpm2_spec.cases import parse_case

        try:
            case_text = repr(parse_case(args.case))
        except ValueError as error:
            raise UsageError(str(error)) from None
    for option in ("json", "junit_xml", "write_expect"):
        _writable("--" + option.replace("_", "-"), getattr(args, option))
    if args.timeout is not None and args.timeout < 0:
        raise UsageError(f"--timeout must be 0 (none) or a number of seconds, got {args.timeout:g}")
    raw, expect = _expectation(args.expect)
    if args.in_process:
        return _check_in_process(args, expect, case_text)
    from kdpm2_spec import strategies as ks

    profile = args.profile or ks.register_profiles(load=False)
    timeout = worker.TIMEOUTS.get(profile, 600.0) if args.timeout is None else (args.timeout or None)
    init = {
        "op": "init",
        "target": args.target,
        "device": args.device,
        "dtype": args.dtype,
        "family": args.family,
        "profile": profile,
        "shrink": not args.no_shrink,
        "seed": args.seed,
        "database": args.database,
        "level": args.level,
        "expect": raw,
        "expect_source": getattr(expect, "source", ""),
        "record": args.write_expect is not None,
    }
    child = worker.Worker(init, args.path, timeout)
    try:
        try:
            hello = child.start()
        except worker.WorkerUsage as why:
            raise UsageError(str(why)) from None
        require(hello["args"])
        names = hello["properties"]
        unknown = sorted(set(args.only or ()) - set(names))
        if unknown:
            raise UsageError(f"unknown properties {unknown}; choose from {', '.join(names)}")
        if expect is not None:
            stray = sorted(expect.properties() - set(names))
            if stray:
                raise UsageError(f"--expect {expect.source}: unknown properties {stray}")
        if case_text is not None:
            return _one_case(child, args.only[0], case_text, args.target)
        fixed = bool(ks.PROFILES.get(profile, {}).get("derandomize")) and args.database is None
        run = report.Report(
            args.target,
            [],
            hello["device"],
            hello["dtype"],
            profile,
            args.seed,
            expect,
            fixed,
            args.level,
            hello["family"],
            {"constructor": hello["args"], "set_timesteps": hello["set_timesteps_args"]},
        )
        print(run.header(), flush=True)
        for name in args.only or names:
            result = child.check(name)
            run.results.append(result)
            print(result.line(), flush=True)
    finally:
        child.shutdown()
    return _finish(args, run, expect, gate, formats, levels)


def _finish(args: argparse.Namespace, run: Any, expect: Any, gate: Any, formats: Any, levels: Any) -> int:
    if args.write_expect is not None:
        written = gate.write(run, args.write_expect, expect)
        run.expect = written
        for result in run.results:  # the run now meets the file just written
            result.new_notes, result.stale = [], []
        print(f"# wrote {args.write_expect}: {len(written.entries)} expected failures", file=sys.stderr)
    if run.arguments_line():
        print(run.arguments_line(), flush=True)
    print(run.summary(), flush=True)
    if args.json is not None:
        formats.write_json(run, args.json)
    if args.junit_xml is not None:
        formats.write_junit(run, args.junit_xml)
    return int(run.exit_status)


def _one_case(child: Any, name: str, case_text: str, target: str) -> int:
    """Re-check one reproducer in the worker: PASS, UNSUPPORTED, or FAIL with the case's failure (never a traceback)."""
    from kdpm2_spec import worker

    try:
        answer = child.ask({"op": "case", "name": name, "case": case_text})
    except worker.WorkerFailed as why:
        print(f"FAIL {name} on {case_text}: {why}", file=sys.stderr)
        return 1
    if "error" in answer:
        raise UsageError(answer["error"])
    if answer["outcome"] == "unsupported":
        print(f"UNSUPPORTED {name}: {answer['message']}")
        return 0
    if answer["outcome"] == "fail":
        signature = f" | signature: {'; '.join(answer['findings'])}" if answer.get("findings") else ""
        print(f"FAIL {name} on {case_text}: {answer['message']}{signature}", file=sys.stderr)
        return 1
    print(f"PASS {name} on {case_text}")
    return 0


def _check_in_process(args: argparse.Namespace, expect: Any, case_text: str | None) -> int:
    """The same run in this process (``--in-process``): no time limit, nothing between the target and the report."""
    from kdpm2_spec import conformance, formats, gate, levels, runner

    for folder in reversed(args.path):
        sys.path.insert(0, folder)
    cls = load(args.target)
    try:
        target = conformance.Target.of(cls, args.device, args.dtype, name=args.target, family=args.family)
    except ValueError as error:
        raise UsageError(str(error)) from None
    require(sorted(target.args))
    unknown = sorted(set(args.only or ()) - set(target.properties))
    if unknown:
        raise UsageError(f"unknown properties {unknown}; choose from {', '.join(target.properties)}")
    if case_text is not None:
        from kdpm2_spec.cases import parse_case

        try:
            with levels.measuring(args.level):
                runner.check_case(target, args.only[0], parse_case(case_text))
        except conformance.Unsupported as why:
            print(f"UNSUPPORTED {args.only[0]}: {why}")
            return conformance.EXIT_OK
        except SystemExit as exit_:
            print(f"FAIL {args.only[0]} on {case_text}: the target called sys.exit({exit_.code!r})", file=sys.stderr)
            return conformance.EXIT_FAILED
        except Exception as error:
            print(f"FAIL {args.only[0]} on {case_text}: {runner.first_line(error)}", file=sys.stderr)
            return conformance.EXIT_FAILED
        print(f"PASS {args.only[0]} on {case_text}")
        return conformance.EXIT_OK
    run = runner.run(
        target.adapter,
        profile=args.profile,
        only=args.only,
        echo=lambda line: print(line, flush=True),
        shrink=not args.no_shrink,
        seed=args.seed,
        database=args.database,
        expect=expect,
        level=args.level,
        record=args.write_expect is not None,
        family=target.family,
        name=args.target,
    )
    return _finish(args, run, expect, gate, formats, levels)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments, run the checks, print the report; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        from kdpm2_spec import differential

        return differential.run_command(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
