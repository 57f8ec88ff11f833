"""The outcome of a conformance run: one ``Result`` per property, and the ``Report`` of all.

A result is ``pass``, ``fail`` or ``unsupported``; an expectation (see ``kdpm2_spec.gate``)
turns an expected failure into ``XFAIL`` and an expected failure that passed into ``STALE``. The
report's ``Report.exit_status`` is what ``python -m kdpm2_spec check`` exits with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdpm2_spec import catalog


@dataclass
class Result:
    """The outcome of one property: ``pass``, ``fail`` or ``unsupported``.

    ``expected`` is the reason an expectation file gives for a known failure (``""``: none); a
    failure with one is ``XFAIL`` in the report, a pass with one is ``STALE``.
    """

    name: str
    status: str
    doc: str
    message: str = ""
    case: Any = None
    reproducer: str = ""
    expected: str = ""

    @property
    def new_failure(self) -> bool:
        """A failure no expectation accounts for (what makes a gate fail)."""
        return self.status == "fail" and not self.expected

    @property
    def stale(self) -> bool:
        """Expected to fail, but passed: the expectation should go."""
        return self.status == "pass" and bool(self.expected)

    def line(self) -> str:
        """One line of the report (a failure's message, case and reproducer follow on it)."""
        if self.stale:
            return f"STALE {self.name}: passes, but the expectation says it fails ({self.expected})"
        if self.status == "pass":
            return f"PASS {self.name}: {self.doc}"
        if self.status == "unsupported":
            return f"UNSUPPORTED {self.name}: {self.message}"
        word = "XFAIL" if self.expected else "FAIL"
        return f"{word} {self.name}: {self.message} | case: {self.case!r} | reproduce: {self.reproducer}"


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STALE = 0, 1, 2, 3
"""Exit statuses of a run: it conforms; a failure not expected; a usage error; a stale expectation only."""


@dataclass
class Report:
    """All results of a run; ``failed`` lists the names of the failed properties."""

    target: str
    results: list[Result] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float64"
    profile: str = "ci"
    seed: int | None = None
    expect: dict[str, str] | None = None
    derandomized: bool = True

    @property
    def passed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "pass"]

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "fail"]

    @property
    def unsupported(self) -> list[str]:
        return [r.name for r in self.results if r.status == "unsupported"]

    @property
    def new_failures(self) -> list[str]:
        """Failed properties the expectations do not list."""
        return [r.name for r in self.results if r.new_failure]

    @property
    def stale(self) -> list[str]:
        """Properties the expectations list as failing that passed."""
        return [r.name for r in self.results if r.stale]

    @property
    def ok(self) -> bool:
        """No failure, or (with expectations) none that is not expected."""
        return not self.new_failures

    @property
    def exit_status(self) -> int:
        """``EXIT_FAILED`` on a new failure, else ``EXIT_STALE`` on a stale expectation, else 0."""
        if self.new_failures:
            return EXIT_FAILED
        return EXIT_STALE if self.stale else EXIT_OK

    def __getitem__(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def header(self) -> str:
        """The first line: target, device, dtype, Hypothesis profile and seed, and the dtype's tolerance floor."""
        seed = str(self.seed) if self.seed is not None else "fixed by the profile" if self.derandomized else "random"
        floor = catalog.DTYPE_RTOL[self.dtype]
        tolerance = "each property's own" if floor == 0 else f"at least {floor:g} relative (loops)"
        return (
            f"# {self.target} on {self.device} in {self.dtype}: profile {self.profile}, seed {seed}, "
            f"tolerance {tolerance}"
        )

    def summary(self) -> str:
        """The last line: ``N passed, M failed`` (unsupported properties are listed, not counted).

        With expectations it adds how many failures were expected and how many expectations are stale.
        """
        text = f"{len(self.passed)} passed, {len(self.failed)} failed"
        if self.expect is not None:
            expected = len(self.failed) - len(self.new_failures)
            text += f" ({expected} expected), {len(self.stale)} stale"
        return text

    def __str__(self) -> str:
        return "\n".join([self.header(), *(r.line() for r in self.results), self.summary()])
