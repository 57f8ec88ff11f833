"""pytest plugin: ``pytest --kdpm2-target MODULE:CLASS`` runs each conformance property as a test.

Installed with the package (entry point ``pytest11``), or enabled with
``-p kdpm2_spec.pytest_plugin``. Without ``--kdpm2-target`` it only adds its options: nothing is
collected, and neither torch nor Hypothesis is imported. With it, one test per property is added
to the session, ``kdpm2_spec::NAME``, marked ``kdpm2``, so ``-k``, ``-m``, xdist and the usual
reports apply. The properties run in a worker process (``kdpm2_spec.worker``) with a time limit
each, as on the command line. An unsupported property is skipped; one that fails only as the
``--kdpm2-expect`` file expects is an ``xfail``; a stale expectation fails the test. A target that
does not load, or a missing dependency, is a usage error (pytest's exit status 4), one line.
"""

from __future__ import annotations

from typing import Any

import pytest

DTYPES = ("float64", "float32", "float16", "bfloat16")
"""As ``kdpm2_spec.catalog.DTYPE_NAMES`` (a test keeps them equal)."""

LEVELS = ("exact", "float32 tables")
"""As ``kdpm2_spec.levels.LEVELS``."""

_TARGET = pytest.StashKey[Any]()
"""Where ``pytest_configure`` keeps the worker, its greeting and the expectations."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kdpm2", "KDPM2 conformance (kdpm2_spec)")
    group.addoption("--kdpm2-target", default=None, metavar="MODULE:CLASS", help="scheduler class to check")
    group.addoption("--kdpm2-device", default="cpu", help="torch device of the tensors (default: cpu)")
    group.addoption("--kdpm2-dtype", default="float64", choices=DTYPES, help="tensor dtype (default: float64)")
    group.addoption("--kdpm2-expect", default=None, metavar="FILE", help="known failures (JSON, or a shipped name)")
    group.addoption("--kdpm2-profile", default=None, choices=("ci", "dev", "thorough"), help="Hypothesis profile")
    group.addoption("--kdpm2-seed", default=None, type=int, help="Hypothesis seed (default: the profile's)")
    group.addoption("--kdpm2-no-shrink", action="store_true", help="report failing cases unshrunk (faster)")
    group.addoption("--kdpm2-level", default="float32 tables", choices=LEVELS, help="numerical level to gate at")
    group.addoption("--kdpm2-timeout", default=None, type=float, help="time limit per property in seconds (0: none)")
    group.addoption("--kdpm2-family", default=None, help="property family (default: detected)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kdpm2: a kdpm2_spec conformance property (added by --kdpm2-target)")
    spec = config.getoption("kdpm2_target")
    if spec is None:
        return
    from kdpm2_spec import deps

    missing = deps.missing()
    if missing:
        raise pytest.UsageError(f"--kdpm2-target {spec}: {deps.message(missing)}")
    from kdpm2_spec import worker
    from kdpm2_spec.__main__ import UsageError, _expectation, require
    from kdpm2_spec.strategies import register_profiles

    profile = config.getoption("kdpm2_profile") or register_profiles(load=False)
    timeout = config.getoption("kdpm2_timeout")
    try:
        raw, expect = _expectation(config.getoption("kdpm2_expect"))
    except UsageError as error:
        raise pytest.UsageError(f"--kdpm2-target {spec}: {error}") from None
    init = {
        "op": "init",
        "target": spec,
        "device": config.getoption("kdpm2_device"),
        "dtype": config.getoption("kdpm2_dtype"),
        "family": config.getoption("kdpm2_family"),
        "profile": profile,
        "shrink": not config.getoption("kdpm2_no_shrink"),
        "seed": config.getoption("kdpm2_seed"),
        "level": config.getoption("kdpm2_level"),
        "expect": raw,
        "expect_source": getattr(expect, "source", ""),
    }
    child = worker.Worker(init, [], worker.TIMEOUTS.get(profile, 600.0) if timeout is None else (timeout or None))
    try:
        hello = child.start()
        require(hello["args"])
    except (worker.WorkerUsage, UsageError) as error:
        child.shutdown()
        raise pytest.UsageError(f"--kdpm2-target {spec}: {error}") from None
    config.stash[_TARGET] = (child, hello, expect)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _TARGET in config.stash:
        child, _, _ = config.stash[_TARGET]
        child.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add one item per property (first, so that ``-k`` and ``-m`` deselect among them)."""
    if _TARGET not in config.stash:
        return
    suite = ConformanceSuite.from_parent(session, name="kdpm2_spec", nodeid="kdpm2_spec")
    items.extend(suite.collect())


class ConformanceSuite(pytest.Collector):
    """The properties of the target's family, in their run order."""

    def collect(self) -> list[pytest.Item]:
        _, hello, _ = self.config.stash[_TARGET]
        found: list[pytest.Item] = []
        for name in hello["properties"]:
            item = PropertyItem.from_parent(self, name=name)
            item.add_marker(pytest.mark.kdpm2)
            found.append(item)
        return found


class PropertyFailed(Exception):
    """A property failed; its text is the report line's message, signature, case and reproducer."""


class PropertyItem(pytest.Item):
    """One property checked against the target (in the session's worker process)."""

    def runtest(self) -> None:
        child, _, _ = self.config.stash[_TARGET]
        result = child.check(self.name)
        if result.status == "error":
            raise PropertyFailed(f"ERROR: {result.message}")
        if result.status == "fail":
            raise PropertyFailed(
                f"{result.message}\nsignature: {'; '.join(result.findings)}\ncase: {result.case!r}\n"
                f"reproduce: {result.reproducer}"
            )
        if result.new_notes:
            raise PropertyFailed(f"unsupported, which the expectation does not allow: {'; '.join(result.new_notes)}")
        if result.stale:
            raise PropertyFailed(f"stale expectation: {self.name} no longer fails as listed: {'; '.join(result.stale)}")
        if result.status == "unsupported":
            pytest.skip(result.message)
        if result.status == "xfail":
            pytest.xfail(f"expected: {result.expected}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, PropertyFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"kdpm2_spec property {self.name}"
