"""The outcome of a conformance run: one ``Result`` per property, and the ``Report`` of all.

A result is ``pass``, ``fail``, ``xfail`` (failed only as an expectation file expects, see
``kdpm2_spec.gate``), ``unsupported`` or ``error`` (the gate could not finish the property: the
target blocked past the time limit or ended the process). With an expectation a result also
carries the known failures it saw, the expected signatures it no longer shows (``STALE``) and
unsupported checks the file does not allow. The report's ``Report.exit_status`` is what ``python -m kdpm2_spec check``
exits with, and ``Report.level`` the numerical level the run met (``kdpm2_spec.levels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdpm2_spec import catalog, levels


class CaseText(str):
    """A case as the text of its ``repr`` (as received from a worker process): its repr is the text."""

    def __repr__(self) -> str:
        return str(self)


@dataclass
class Result:
    """The outcome of one property.

    ``status``: ``pass`` (every case that ran agreed), ``xfail`` (some disagreed, all only as
    expected), ``fail`` (a failure no expectation covers: ``message``, ``case``, ``reproducer`` and
    its ``findings``), ``unsupported`` (no case could run: ``message`` says why) or ``error``. ``known`` lists the
    expected signatures seen (text, reason, a case); ``stale`` the expected ones not seen whose
    recorded case no longer fails that way; ``notes`` why some cases or comparisons could not run
    (with their counts) and ``new_notes`` those the expectation does not allow; ``errors`` the
    largest error ratio per comparison class; ``recorded`` every failure signature seen, for
    ``--write-expect``.
    """

    name: str
    status: str
    doc: str
    message: str = ""
    case: Any = None
    reproducer: str = ""
    findings: list[str] = field(default_factory=list)
    known: list[dict[str, str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    notes: dict[str, int] = field(default_factory=dict)
    new_notes: list[str] = field(default_factory=list)
    cases: int = 0
    errors: dict[str, float] = field(default_factory=dict)
    recorded: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def new_failure(self) -> bool:
        """A failure no expectation accounts for, an error, or an unsupported check the expectation does not allow."""
        return self.status in ("fail", "error") or bool(self.new_notes)

    @property
    def expected(self) -> str:
        """Why the known failures seen are accepted (their reasons, else their signatures; ``""``: none)."""
        return "; ".join(dict.fromkeys(k.get("reason") or k["signature"] for k in self.known))

    @property
    def xfail(self) -> bool:
        """Failed only as expected."""
        return self.status == "xfail" and not self.new_failure

    def line(self) -> str:
        """One line of the report (a failure's message, signature, case and reproducer follow on it)."""
        if self.status == "error":
            return f"ERROR {self.name}: {self.message}"
        stale = f" | stale: {'; '.join(self.stale)}" if self.stale else ""
        if self.status == "fail":
            signature = f" | signature: {'; '.join(self.findings)}" if self.findings else ""
            return f"FAIL {self.name}: {self.message}{signature} | case: {self.case!r} | reproduce: {self.reproducer}{stale}"
        if self.new_notes:
            return f"FAIL {self.name}: unsupported, which the expectation does not allow: {'; '.join(self.new_notes)}"
        if self.stale:
            return (
                f"STALE {self.name}: expected failures no longer seen (their recorded cases pass): "
                f"{'; '.join(self.stale)}"
            )
        if self.status == "xfail":
            seen = "; ".join(f"{k['signature']} (e.g. {k['case']})" for k in self.known)
            return f"XFAIL {self.name}: known failures only: {seen}"
        if self.status == "unsupported":
            return f"UNSUPPORTED {self.name}: {self.message}"
        partly = ""
        if self.notes:
            partly = " (not checked: " + "; ".join(f"{n} in {k} cases" for n, k in self.notes.items()) + ")"
        return f"PASS {self.name}: {self.doc}{partly}"

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (what a worker process sends, and the ``--json`` report's entries)."""
        return {
            "name": self.name,
            "status": self.status,
            "doc": self.doc,
            "message": self.message,
            "case": None if self.case is None else repr(self.case),
            "reproducer": self.reproducer,
            "findings": self.findings,
            "known": self.known,
            "stale": self.stale,
            "notes": self.notes,
            "new_notes": self.new_notes,
            "cases": self.cases,
            "errors": self.errors,
            "recorded": self.recorded,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        """The result ``as_dict`` made (the case comes back as its text)."""
        values = dict(data)
        values["case"] = None if values.get("case") is None else CaseText(values["case"])
        return cls(**values)


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STALE = 0, 1, 2, 3
"""Exit statuses of a run: it conforms; a failure not expected; cannot judge (usage, dependency); stale only."""


@dataclass
class Report:
    """All results of a run; ``failed`` lists the names of the failed properties."""

    target: str
    results: list[Result] = field(default_factory=list)
    device: str = "cpu"
    dtype: str = "float64"
    profile: str = "ci"
    seed: int | None = None
    expect: Any = None
    derandomized: bool = True
    gate_level: str = levels.DEFAULT
    family: str = "kdpm2"
    arguments: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        return [r.name for r in self.results if r.status == "pass" and not r.new_failure]

    @property
    def failed(self) -> list[str]:
        """Properties that failed, as expected or not (errors included)."""
        return [r.name for r in self.results if r.status in ("fail", "error", "xfail") or r.new_notes]

    @property
    def unsupported(self) -> list[str]:
        return [r.name for r in self.results if r.status == "unsupported"]

    @property
    def errors(self) -> list[str]:
        return [r.name for r in self.results if r.status == "error"]

    @property
    def new_failures(self) -> list[str]:
        """Failed properties the expectations do not account for (and errors)."""
        return [r.name for r in self.results if r.new_failure]

    @property
    def stale(self) -> list[str]:
        """Properties with expected failures that are no longer seen."""
        return [r.name for r in self.results if r.stale]

    @property
    def level(self) -> str | None:
        """The strictest numerical level every comparison of the run met (``None``: none; ``"-"``: none measured)."""
        errors: dict[str, float] = {}
        for r in self.results:
            for kind, ratio in r.errors.items():
                errors[kind] = max(errors.get(kind, 0.0), ratio)
        return levels.met(errors) if errors else "-"

    @property
    def expected_level(self) -> str | None:
        return getattr(self.expect, "level", None)

    @property
    def level_dropped(self) -> bool:
        """The run met a looser level than the expectation records."""
        want, got = self.expected_level, self.level
        return want is not None and got != "-" and levels.stricter(want, got)

    @property
    def level_stale(self) -> bool:
        """The run met a stricter level than the expectation records."""
        want, got = self.expected_level, self.level
        return want is not None and got != "-" and levels.stricter(got, want)

    @property
    def lost_arguments(self) -> dict[str, list[str]]:
        """Arguments the expectation records that the class no longer accepts (``constructor``, ``set_timesteps``)."""
        recorded = getattr(self.expect, "arguments", None) or {}
        lost = {k: sorted(set(v) - set(self.arguments.get(k, []))) for k, v in recorded.items() if self.arguments}
        return {k: v for k, v in lost.items() if v}

    @property
    def ok(self) -> bool:
        """No failure, or (with expectations) none that is not expected."""
        return not self.new_failures and not self.level_dropped and not self.lost_arguments

    @property
    def exit_status(self) -> int:
        """``EXIT_FAILED`` on a new failure or a lower level, else ``EXIT_STALE`` on a stale expectation, else 0."""
        if not self.ok:
            return EXIT_FAILED
        return EXIT_STALE if self.stale or self.level_stale else EXIT_OK

    def __getitem__(self, name: str) -> Result:
        return next(r for r in self.results if r.name == name)

    def header(self) -> str:
        """The first line: target, device, dtype, Hypothesis profile and seed, and the tolerance."""
        seed = (
            str(self.seed) if self.seed is not None else "0 (fixed by the profile)" if self.derandomized else "random"
        )
        floor = catalog.DTYPE_RTOL[self.dtype]
        tolerance = f"level {self.gate_level}" if floor == 0 else f"at least {floor:g} relative (loops)"
        return (
            f"# {self.target} on {self.device} in {self.dtype}: profile {self.profile}, seed {seed}, "
            f"tolerance {tolerance}"
        )

    def level_line(self) -> str:
        """What the run says about the numerical level (``""`` when nothing was measured)."""
        got = self.level
        if got == "-":
            return ""
        text = f"numerical level: {got or 'below ' + list(levels.LEVELS)[-1]}"
        if self.level_dropped:
            text += f", but the expectation records {self.expected_level}"
        elif self.level_stale:
            text += f" (stale: the expectation records {self.expected_level})"
        return text

    def arguments_line(self) -> str:
        """A failure line for lost arguments (``""``: none)."""
        lost = self.lost_arguments
        if not lost:
            return ""
        text = "; ".join(f"{where} no longer accepts {', '.join(names)}" for where, names in lost.items())
        return f"FAIL arguments: {text} (the expectation records them)"

    def summary(self) -> str:
        """The last line: ``N passed, M failed`` (unsupported properties are listed, not counted).

        With expectations it adds how many failures were expected and how many properties are
        stale; then the numerical level met, when the run measured one.
        """
        text = f"{len(self.passed)} passed, {len(self.failed)} failed"
        if self.expect is not None:
            expected = len(self.failed) - len(self.new_failures)
            text += f" ({expected} expected), {len(self.stale)} stale"
        level = self.level_line()
        return f"{text}; {level}" if level else text

    def __str__(self) -> str:
        lines = [self.header(), *(r.line() for r in self.results), self.arguments_line(), self.summary()]
        return "\n".join(line for line in lines if line)
