"""Running properties: Hypothesis' search, expected signatures, unsupported cases, levels, staleness.

``check_one`` runs one property on a target under a Hypothesis profile. Each drawn case's failure
is split into findings (``kdpm2_spec.discrepancy``); with an expectation (``kdpm2_spec.gate``) a
case whose findings are all covered by expected signatures counts as a known failure and the
search goes on, so that Hypothesis keeps looking for other failures in the same property; the
first case with a finding no signature covers fails the property and is shrunk. A case that
raises ``Unsupported`` is skipped (counted, with its reason). In recording mode
(``--write-expect``) every failure is recorded with the smallest family it shows in. After the
search, each expected signature the run did not meet is re-checked on its recorded case: if that
case no longer shows it, the signature is stale.

``run`` runs a list of properties in this process and returns the ``Report``; the command line
runs them in a worker process instead (``kdpm2_spec.worker``), which adds time limits and
survives a target that ends the process.
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kdpm2_spec import catalog, levels
from kdpm2_spec import strategies as ks
from kdpm2_spec.discrepancy import Finding, findings_of
from kdpm2_spec.registry import FAMILIES, Target, Unsupported, take_notes
from kdpm2_spec.report import Report, Result
from kdpm2_spec.signatures import Signature, features, minimal_family


class TargetExited(Exception):
    """The target called ``sys.exit`` (or raised ``SystemExit``) inside a check: a failure of that case."""


def first_line(error: BaseException) -> str:
    """The whole message of ``error`` on one line (a group's messages joined by `` / ``); never cut."""
    group = getattr(error, "exceptions", None)  # an ExceptionGroup: Hypothesis found distinct failures
    if isinstance(group, tuple):
        return " / ".join(first_line(e) for e in group)
    text = f"{type(error).__name__}: {error}" if not isinstance(error, AssertionError) else str(error)
    return " ".join(text.split())


SHARED_SEED = 0
"""The seed of a derandomized profile's draws (``ci``), the same for every property: properties
that draw configurations alike then draw the same ones, and an implementation whose constructor is
slow (diffusers' builds 1000-step tables) is built once per configuration, not once per property."""


def derandomized(profile: str | None, default: bool = False) -> bool:
    """Whether ``profile`` fixes the draws (``ci`` does), read from ``strategies.PROFILES``.

    Read there, not from the registered profile, which inherits whatever profile was loaded.
    """
    return bool(ks.PROFILES.get(profile or "", {}).get("derandomize", default))


def dtype_name(target: Target) -> str:
    return str(getattr(target.adapter, "dtype_name", "float64"))


def options(target: Target, seed: int | None, level: str = levels.DEFAULT) -> str:
    """The ``check`` options that reproduce a run's device, dtype, seed and level (defaults left out)."""
    device = str(getattr(target.adapter, "device", "cpu"))
    words = [] if device == "cpu" else [f"--device {device}"]
    words += [] if dtype_name(target) == "float64" else [f"--dtype {dtype_name(target)}"]
    words += [] if level == levels.DEFAULT else [f"--level '{level}'"]
    if target.family != "kdpm2":
        words.append(f"--family {target.family}")
    return " ".join(words + ([] if seed is None else [f"--seed {seed}"]))


def as_expectation(expect: Any) -> Any:
    """An ``Expectation`` from one, or from a mapping of property to reason (the first file format)."""
    if expect is None or not isinstance(expect, Mapping):
        return expect
    from kdpm2_spec import gate

    return gate.parse(dict(expect), "expect=")


def _control(error: BaseException) -> bool:
    """Hypothesis' own control flow (never a finding)."""
    return type(error).__module__.split(".")[0] == "hypothesis"


def attempt(target: Target, name: str, case: Any) -> tuple[BaseException | None, list[str]]:
    """Check ``case`` of property ``name``: the error it raised (``None``: it passed) and its unsupported notes.

    ``Unsupported`` comes back as the error; ``SystemExit`` as ``TargetExited``.
    """
    take_notes()
    try:
        target.properties[name].check(target, case)
    except SystemExit as exit_:
        return TargetExited(f"the target called sys.exit({exit_.code!r})"), take_notes()
    except Exception as error:
        if _control(error):
            raise
        return error, take_notes()
    return None, take_notes()


def _shows(target: Target, name: str, finding: Finding, case: Any) -> bool:
    return shows(target, name, case, finding)


def shows(target: Target, name: str, case: Any, finding: Finding) -> bool:
    """Whether checking ``case`` still finds ``finding`` (errors measured here do not count towards the level)."""
    with levels.measuring():
        error, _ = attempt(target, name, case)
    return error is not None and not isinstance(error, Unsupported) and finding in findings_of(error)


@contextlib.contextmanager
def hypothesis_storage(directory: str | None = None) -> Iterator[None]:
    """Keep Hypothesis' files (its constants cache) in ``directory``, by default a temporary one.

    Without this Hypothesis writes ``.hypothesis/`` into the working directory.
    """
    from hypothesis import configuration

    with contextlib.ExitStack() as stack:
        where = directory or stack.enter_context(tempfile.TemporaryDirectory(prefix="kdpm2-spec-"))
        configuration.set_hypothesis_home_dir(where)
        try:
            yield
        finally:
            configuration.set_hypothesis_home_dir(None)


def check_one(
    target: Target,
    name: str,
    profile: str | None = None,
    shrink: bool = True,
    seed: int | None = None,
    database: str | None = None,
    expect: Any = None,
    level: str = levels.DEFAULT,
    record: bool = False,
) -> Result:
    """Run one property under the Hypothesis ``profile`` (the loaded one if ``None``).

    Pinned examples whose configuration the class does not accept are skipped; ``shrink=False``
    reports the first failing case as found (diffusers' constructor makes shrinking slow).
    ``seed`` fixes the random draws (else the profile decides: ``ci`` is derandomized);
    ``database`` is a directory of saved examples (default: none, so nothing carries over; with
    one, draws are random unless ``seed`` is given, as Hypothesis requires). ``expect`` (an
    ``Expectation``) lets known signatures pass while the search goes on; ``level`` is the
    numerical level comparisons are gated at; ``record`` records every failure instead of failing.
    A property that does not run in the target's dtype (``catalog.DTYPES``) is ``unsupported``.
    """
    from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings
    from hypothesis import seed as fix_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    from kdpm2_spec.cases import reproducer

    expect = as_expectation(expect)
    ks.register_profiles(load=False)
    prop_ = target.properties[name]
    dtypes = catalog.dtypes_of(name)
    if dtype_name(target) not in dtypes:
        return Result(name, "unsupported", prop_.doc, f"runs in {' or '.join(dtypes)} only (tolerance: see docs/ci.md)")
    failing: list[tuple[Any, BaseException]] = []
    notes: Counter[str] = Counter()
    known: dict[str, dict[str, str]] = {}
    recorded: dict[Finding, list[tuple[Any, str]]] = {}
    ran = 0

    def test(case: Any) -> None:
        nonlocal ran
        error, made = attempt(target, name, case)
        notes.update(made)
        if isinstance(error, Unsupported):
            notes[str(error)] += 1
            return
        ran += 1
        if error is None:
            return
        found = findings_of(error)
        if record:
            for finding in found:
                recorded.setdefault(finding, []).append((case, first_line(error)))
            return
        if expect is not None:
            entries = [expect.match(name, f, features(case)) for f in found]
            if all(entries):
                for entry in entries:
                    known.setdefault(
                        str(entry.signature),
                        {"signature": str(entry.signature), "reason": entry.reason, "case": repr(case)},
                    )
                return
        failing.append((case, error))
        raise error

    chosen = settings() if profile is None else settings.get_profile(profile)
    phases = chosen.phases if shrink else tuple(p for p in chosen.phases if p is not Phase.shrink)
    runner = given(prop_.strategy(target))(test)
    for pinned in reversed(prop_.examples):
        if set(getattr(pinned, "config", {})) <= target.args:
            runner = example(pinned)(runner)
    db = None if database is None else DirectoryBasedExampleDatabase(database)
    given_seed = seed
    if seed is None and database is None and derandomized(profile, chosen.derandomize):
        seed = SHARED_SEED
    if seed is not None:
        runner = fix_seed(seed)(runner)
    derandomize = False
    wrapped = settings(
        chosen,
        database=db,
        phases=phases,
        derandomize=derandomize,
        verbosity=Verbosity.quiet,
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )(runner)
    result = Result(name, "pass", prop_.doc)
    started = time.perf_counter()
    with levels.measuring(level) as errors:
        try:
            wrapped()
        except Exception as error:
            case = _failing_case(error, failing)
            new = [
                str(Signature(name, f.what, f.kind, features(case)))
                for f in findings_of(_first_of(error))
                if expect is None or expect.match(name, f, features(case)) is None
            ]
            result = Result(
                name,
                "fail",
                prop_.doc,
                first_line(error),
                case,
                reproducer(target.name, name, case, options(target, given_seed, level)),
                findings=new,
            )
    result.errors = dict(errors)
    result.seconds = round(time.perf_counter() - started, 3)
    result.notes = dict(notes.most_common())
    result.cases = ran
    if result.status == "pass" and ran == 0 and notes:
        result.status, result.message = "unsupported", notes.most_common(1)[0][0]
    if record:
        result.recorded = _families(target, name, recorded)
        result.known = [
            {
                "signature": str(Signature(name, r["what"], r["kind"], frozenset(r["family"]))),
                "reason": "",
                "case": r["case"],
            }
            for r in result.recorded
        ]
    elif expect is not None:
        result.known = list(known.values())
        result.new_notes = [n for n in result.notes if not expect.allows(name, n)]
        result.stale = _stale(target, name, expect, known, result)
    if result.known and result.status == "pass":
        result.status = "xfail"
    return result


def _first_of(error: BaseException) -> BaseException:
    group = getattr(error, "exceptions", None)
    return group[0] if isinstance(group, tuple) and group else error


def _failing_case(error: BaseException, failing: list[tuple[Any, BaseException]]) -> Any:
    """The case that raised ``error`` (the first of a group): the report's message and case must match.

    Hypothesis raises the first failing pinned example's error after running them all, but a
    shrunk failure from a final replay, the last call.
    """
    first = _first_of(error)
    return next((case for case, raised in failing if raised is first), failing[-1][0] if failing else None)


def _families(target: Target, name: str, recorded: dict[Finding, list[tuple[Any, str]]]) -> list[dict[str, Any]]:
    """Each recorded finding with the smallest families it shows in (a case each, and its message)."""
    out: list[dict[str, Any]] = []
    for finding, cases in recorded.items():
        families: list[tuple[frozenset[str], Any, str]] = []
        for case, message in cases[:12]:
            if any(family <= features(case) for family, _, _ in families):
                continue
            family, smallest = minimal_family(case, finding, functools.partial(_shows, target, name, finding))
            families = [f for f in families if not family <= f[0]] + [(family, smallest, message)]
        for family, smallest, message in families:
            out.append(
                {
                    "what": finding.what,
                    "kind": finding.kind,
                    "family": sorted(family),
                    "case": repr(smallest),
                    "message": message,
                }
            )
    return out


def _stale(target: Target, name: str, expect: Any, known: dict[str, dict[str, str]], result: Result) -> list[str]:
    """Expected signatures of ``name`` the run did not meet and whose recorded case no longer shows them."""
    from kdpm2_spec.cases import parse_case

    stale = []
    for entry in expect.of(name):
        text = str(entry.signature)
        if text in known:
            continue
        if entry.signature.what == "*":  # a whole-property expectation: stale when the property met no failure
            if result.status == "pass":
                stale.append(f"{text} ({entry.reason})" if entry.reason else text)
            continue
        try:
            case = parse_case(entry.case) if entry.case else None
        except ValueError:
            case = None
        if case is not None and not set(getattr(case, "config", None) or {}) <= target.args:
            continue  # the class no longer takes the case's arguments: a lost argument, reported as such
        if (
            case is not None
            and entry.signature.family <= features(case)
            and shows(target, name, case, entry.signature.finding)
        ):
            continue
        stale.append(text)
    return stale


def check_case(
    cls_or_adapter: Any, name: str, case: Any, device: str = "cpu", dtype: str = "float64", family: str | None = None
) -> None:
    """Check one property on one case (a reproducer): raises what the property raises.

    Raises ``Unsupported`` when the property does not run in ``dtype``.
    """
    target = (
        cls_or_adapter
        if isinstance(cls_or_adapter, Target)
        else Target.of(cls_or_adapter, device, dtype, family=family)
    )
    if dtype_name(target) not in catalog.dtypes_of(name):
        raise Unsupported(f"{name} runs in {' or '.join(catalog.dtypes_of(name))} only")
    target.properties[name].check(target, case)


def names_of(family: str) -> list[str]:
    """The property names of ``family`` in run order."""
    import kdpm2_spec.conformance  # noqa: F401 - registers the kdpm2 family's properties

    return list(FAMILIES[family].properties)


def run(
    cls_or_adapter: Any,
    profile: str | None = None,
    only: list[str] | None = None,
    echo: Callable[[str], None] | None = None,
    shrink: bool = True,
    device: str = "cpu",
    dtype: str = "float64",
    seed: int | None = None,
    database: str | None = None,
    expect: Any = None,
    level: str = levels.DEFAULT,
    record: bool = False,
    family: str | None = None,
    name: str | None = None,
) -> Report:
    """Check every property (or ``only`` these) against a scheduler class or adapter, in this process.

    ``profile`` names a Hypothesis settings profile (``ci``, ``dev``, ``thorough``; default: the
    one ``$HYPOTHESIS_PROFILE`` names). ``echo`` receives the header and each report line as it
    is decided. ``device`` and ``dtype`` place a class's tensors (an adapter keeps its own);
    ``seed``, ``database``, ``expect`` (an ``Expectation`` or ``{property: reason}``), ``level``
    and ``record`` as in ``check_one``. Hypothesis keeps its files in a temporary folder.
    """
    profile = profile or ks.register_profiles(load=False)
    target = Target.of(cls_or_adapter, device, dtype, name=name, family=family)
    names = names_of(target.family)
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {sorted(names)}")
    expected = as_expectation(expect)
    report = start_report(target, profile, seed, database, expected, level)
    if echo is not None:
        echo(report.header())
    with hypothesis_storage():
        for prop_name in only or names:
            try:
                result = check_one(target, prop_name, profile, shrink, seed, database, expected, level, record)
            except Exception as error:  # the harness itself must not crash on a broken class
                result = Result(
                    prop_name, "error", "", f"harness error: {first_line(error)}", None, traceback.format_exc(limit=1)
                )
            report.results.append(result)
            if echo is not None:
                echo(result.line())
    return report


def start_report(
    target: Target, profile: str, seed: int | None, database: str | None, expect: Any, level: str
) -> Report:
    """An empty report of a run with these settings (its header is printed before any result)."""
    fixed = derandomized(profile) and database is None
    device = str(getattr(target.adapter, "device", "cpu"))
    arguments = {"constructor": sorted(target.args), "set_timesteps": sorted(target.set_timesteps_args)}
    return Report(
        target.name, [], device, dtype_name(target), profile, seed, expect, fixed, level, target.family, arguments
    )
