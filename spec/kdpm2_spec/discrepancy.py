"""What a failed check found, named so that a known failure can be told from a new one.

A check that finds an implementation wrong raises ``Discrepancy``: an ``AssertionError`` whose
message is for people and whose ``findings`` are for the gate. A ``Finding`` says *what* is wrong
(a table, an output of ``step``, a call) and the *kind* of wrong (not finite at the first entry,
two entries too many, a wrong value at midpoints, raises ``TypeError``...). A finding never holds a
case's numbers, so one defect gives one finding on every case it shows in; with the configuration
family of the case (``kdpm2_spec.signatures``) it is the signature an expectation file records.

``compare`` classifies every difference between two arrays at once (a NaN in one entry does not
hide a wrong value in another), and ``excerpt`` prints the entries around the one that failed, so
a message never has to be cut before the value it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np


class Finding(NamedTuple):
    """One kind of wrong: ``what`` (a table, an output, a call) and ``kind`` (how it is wrong)."""

    what: str
    kind: str

    def __str__(self) -> str:
        return f"{self.what}: {self.kind}"


class Discrepancy(AssertionError):
    """A check's failure: a message, and the findings it is made of (at least one)."""

    def __init__(self, message: str, findings: Iterable[Finding]) -> None:
        super().__init__(message)
        self.findings = tuple(dict.fromkeys(findings))

    @classmethod
    def one(cls, what: str, kind: str, message: str) -> Discrepancy:
        """A discrepancy of one finding."""
        return cls(message, [Finding(what, kind)])

    @classmethod
    def merge(cls, parts: list[Discrepancy], where: str = "") -> Discrepancy:
        """One discrepancy holding all of ``parts`` (their messages joined, ``where`` appended once)."""
        message = "; ".join(str(p) for p in parts) + (f" [{where}]" if where else "")
        return cls(message, [f for p in parts for f in p.findings])


def findings_of(error: BaseException) -> tuple[Finding, ...]:
    """The findings of any error a check raised.

    A ``Discrepancy`` has its own; a plain ``AssertionError`` is an unnamed discrepancy; any other
    exception (raised by the implementation, or by the check on something it did not expect) is
    ``raises TYPE``.
    """
    if isinstance(error, Discrepancy):
        return error.findings
    if isinstance(error, AssertionError):
        return (Finding("check", "assertion"),)
    return (Finding("call", f"raises {type(error).__name__}"),)


def excerpt(values: Any, index: int, width: int = 2) -> str:
    """``values`` around ``index``: ``[..., a, b, >c<, d, ...] (index i of n)``, whatever the length."""
    flat = np.asarray(values).reshape(-1)
    n = len(flat)
    if n == 0:
        return "[] (empty)"
    index = min(max(index, 0), n - 1)
    lo, hi = max(0, index - width), min(n, index + width + 1)
    items = [f">{flat[i]!r}<" if i == index else repr(flat[i]) for i in range(lo, hi)]
    items = (["..."] if lo > 0 else []) + items + (["..."] if hi < n else [])
    return f"[{', '.join(items)}] (index {index} of {n})"


def _positions(indices: np.ndarray, positions: Callable[[int], str] | None) -> str:
    if positions is None:
        return ""
    names = sorted({positions(int(i)) for i in indices})
    return " at " + " and ".join(names)


def first_or_rest(index: int) -> str:
    """Position class of a sigma table entry: ``first`` (never read by diffusers) or ``rest``."""
    return "the first entry" if index == 0 else "other entries"


def call_order(index: int) -> str:
    """Position class of a per-call table entry: a main (first-order) call or a midpoint (second-order) one."""
    return "main entries" if index % 2 == 0 else "midpoints"


def compare(
    what: str,
    want: Any,
    got: Any,
    rtol: float,
    scale: float = 1.0,
    positions: Callable[[int], str] | None = None,
) -> tuple[list[Discrepancy], float]:
    """Every kind of difference between ``got`` and ``want`` (float64 arrays), and the error ratio.

    ``got`` equals ``want`` where both are finite and differ by at most ``rtol`` times the largest
    of ``|want|``, 1 and ``scale`` (the size of the operands: rounding errors are relative to
    them); infinities and NaNs must sit where the reference has them. ``positions`` names the
    class of an entry (for a finding's kind). Returns the discrepancies (none when equal) and
    the largest error divided by that scale, for the numerical level (``kdpm2_spec.levels``).
    """
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if want.shape != got.shape:
        if want.ndim == 1 and got.ndim == 1:
            delta = len(got) - len(want)
            kind = f"{abs(delta)} {'entry' if abs(delta) == 1 else 'entries'} too {'many' if delta > 0 else 'few'}"
            message = f"len({what})={len(got)}, but should be {len(want)}"
        else:
            kind, message = "wrong shape", f"{what} has shape {got.shape}, but should be {want.shape}"
        return [Discrepancy.one(what, kind, message)], 0.0
    found: list[Discrepancy] = []
    finite = np.isfinite(want)
    bad = np.flatnonzero(np.isfinite(got).reshape(-1) != finite.reshape(-1))
    if len(bad):
        i = int(bad[0])
        value = got.reshape(-1)[i]
        word = "NaN" if np.isnan(value) else "infinite" if np.isinf(value) else "finite"
        kind = ("not finite" if word != "finite" else "finite where the reference is not") + _positions(bad, positions)
        found.append(
            Discrepancy.one(
                what, kind, f"{what}[{i}]={value!r} is {word}, but should be {want.reshape(-1)[i]!r}: {excerpt(got, i)}"
            )
        )
    both = (finite & np.isfinite(got)).reshape(-1)
    if not both.any():
        return found, 0.0
    w, g = want.reshape(-1), got.reshape(-1)
    size = max(1.0, scale, float(np.max(np.abs(w[both]))))
    err = np.where(both, np.abs(g - w), 0.0)
    over = np.flatnonzero(err > rtol * size)
    if len(over):
        i = int(over[np.argmax(err[over])])
        found.append(
            Discrepancy.one(
                what,
                "wrong value" + _positions(over, positions),
                f"{what}[{i}]={g[i]!r}, but should be {w[i]!r} (error {err[i]:.3g} > {rtol:g} * {size:.3g}; "
                f"{len(over)} of {int(both.sum())} entries off): {excerpt(got, i)}",
            )
        )
    return found, float(np.max(err)) / size


def raised(what: str, error: BaseException, should: str) -> Discrepancy:
    """The implementation's ``what`` raised ``error`` where it should have done ``should``."""
    return Discrepancy.one(
        what, f"raises {type(error).__name__}", f"{what} raised {type(error).__name__}: {error}, but should {should}"
    )
