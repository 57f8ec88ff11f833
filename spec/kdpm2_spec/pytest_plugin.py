"""pytest plugin: ``pytest --kdpm2-target MODULE:CLASS`` runs each conformance property as a test.

Installed with the package (entry point ``pytest11``), or enabled with
``-p kdpm2_spec.pytest_plugin``. Without ``--kdpm2-target`` it only adds its options: nothing is
collected, and neither torch nor Hypothesis is imported. With it, one test per property is added
to the session, ``kdpm2_spec::NAME``, marked ``kdpm2``, so ``-k``, ``-m``, xdist and the usual
reports apply. An unsupported property is skipped; one the ``--kdpm2-expect`` file lists is an
``xfail`` (strict: if it passes, the test fails as a stale expectation).
"""

from __future__ import annotations

from typing import Any

import pytest

DTYPES = ("float64", "float32", "float16", "bfloat16")
"""As ``kdpm2_spec.catalog.DTYPE_NAMES`` (a test keeps them equal)."""

_TARGET = pytest.StashKey[Any]()
"""Where ``pytest_configure`` keeps the loaded target and its expectations."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kdpm2", "KDPM2 conformance (kdpm2_spec)")
    group.addoption("--kdpm2-target", default=None, metavar="MODULE:CLASS", help="scheduler class to check")
    group.addoption("--kdpm2-device", default="cpu", help="torch device of the tensors (default: cpu)")
    group.addoption("--kdpm2-dtype", default="float64", choices=DTYPES, help="tensor dtype (default: float64)")
    group.addoption("--kdpm2-expect", default=None, metavar="FILE", help="known failures (JSON, or a shipped name)")
    group.addoption("--kdpm2-profile", default=None, choices=("ci", "dev", "thorough"), help="Hypothesis profile")
    group.addoption("--kdpm2-seed", default=None, type=int, help="Hypothesis seed (default: the profile's)")
    group.addoption("--kdpm2-no-shrink", action="store_true", help="report failing cases unshrunk (faster)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kdpm2: a kdpm2_spec conformance property (added by --kdpm2-target)")
    spec = config.getoption("kdpm2_target")
    if spec is None:
        return
    from kdpm2_spec import conformance, gate
    from kdpm2_spec.__main__ import UsageError, load

    try:
        cls = load(spec)
        target = conformance.Target.of(cls, config.getoption("kdpm2_device"), config.getoption("kdpm2_dtype"))
        path = config.getoption("kdpm2_expect")
        expect = {} if path is None else gate.load(path, conformance.PROPERTIES)
    except (UsageError, ValueError) as error:
        raise pytest.UsageError(f"--kdpm2-target {spec}: {error}") from None
    config.stash[_TARGET] = (target, expect)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add one item per property (first, so that ``-k`` and ``-m`` deselect among them)."""
    if _TARGET not in config.stash:
        return
    suite = ConformanceSuite.from_parent(session, name="kdpm2_spec", nodeid="kdpm2_spec")
    items.extend(suite.collect())


class ConformanceSuite(pytest.Collector):
    """The properties of ``kdpm2_spec.conformance.PROPERTIES``, in their run order."""

    def collect(self) -> list[pytest.Item]:
        from kdpm2_spec import conformance

        found: list[pytest.Item] = []
        for name in conformance.PROPERTIES:
            item = PropertyItem.from_parent(self, name=name)
            item.add_marker(pytest.mark.kdpm2)
            found.append(item)
        return found


class PropertyFailed(Exception):
    """A property failed; its text is the report line's message, case and reproducer."""


class PropertyItem(pytest.Item):
    """One property checked against the target."""

    def runtest(self) -> None:
        from kdpm2_spec import conformance

        target, expect = self.config.stash[_TARGET]
        profile = self.config.getoption("kdpm2_profile")
        shrink = not self.config.getoption("kdpm2_no_shrink")
        seed = self.config.getoption("kdpm2_seed")
        result = conformance.check_one(target, self.name, profile, shrink, seed)
        reason = expect.get(self.name)
        if result.status == "unsupported":
            pytest.skip(result.message)
        if result.status == "fail" and reason:
            pytest.xfail(f"expected: {reason}")
        if result.status == "pass" and reason:
            raise PropertyFailed(f"stale expectation: {self.name} passes, but is listed as failing ({reason})")
        if result.status == "fail":
            raise PropertyFailed(f"{result.message}\ncase: {result.case!r}\nreproduce: {result.reproducer}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str | Any:
        if isinstance(excinfo.value, PropertyFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"kdpm2_spec property {self.name}"
