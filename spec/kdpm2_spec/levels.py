"""Levels of numerical strictness: how close to the float64 reference an implementation computes.

A correct implementation may keep its sigma tables in float32 (diffusers does: ``sigmas`` is a
float32 tensor, and every coefficient of ``step`` is computed from its entries) or in float64
(kdpm2 does, and rounds only the public copies). Both are right; they are not equally exact. So
the checks that compare computed samples with the reference (the sampling loops, the exact
denoiser) measure their error, and a run reports the strictest level every comparison met:

- ``exact``: float64 arithmetic on float64 tables; loops within 1e-12 of the reference relative
  to the largest operand, relations within 1e-9 (a few float64 roundings).
- ``float32 tables``: each coefficient rounded once or twice in float32; loops within 1e-6
  relative to the largest operand, relations within 2e-6.

A run gates at one level (``--level``, default ``float32 tables``, the loosest correct one): a
comparison beyond that level's tolerance is a failure. An expectation file records the level its
implementation met, and a run that meets only a looser one fails it.

The float32 tolerances are 30 times the largest error measured for a float32-table model of the
reference (``FLOAT32_TABLES_MEASURED``) and twice diffusers' largest, so that a correct float32-
table implementation never fails and a wrong coefficient (a power, a sign, a sigma off by one
entry: errors of 1e-3 and more) never passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

LEVELS: dict[str, dict[str, float]] = {
    "exact": {"loop": 1e-12, "churn": 1e-12, "relation": 1e-9},
    "float32 tables": {"loop": 1e-6, "churn": 1e-4, "relation": 1e-6},
}
"""Each level's tolerance per comparison class, strictest level first."""

DEFAULT = "float32 tables"
"""The level a run gates at unless told otherwise: the loosest that a correct implementation meets."""

FLOAT32_TABLES_MEASURED = {"loop": 3.2e-8, "relation": 6.0e-8}
"""Largest error ratios of ``tests/test_spec_levels.py``'s float32-table reference (2026-12-04, 2000 cases)."""

_state: dict[str, object] = {"level": DEFAULT, "errors": {}}


def names() -> tuple[str, ...]:
    """The level names, strictest first."""
    return tuple(LEVELS)


def tolerance(kind: str) -> float:
    """The tolerance of comparison class ``kind`` (``loop`` or ``relation``) at the run's gate level."""
    return LEVELS[str(_state["level"])][kind]


def record(kind: str, ratio: float) -> None:
    """Note an error ratio of a comparison of class ``kind`` (the largest one counts)."""
    errors = _state["errors"]
    assert isinstance(errors, dict)
    errors[kind] = max(errors.get(kind, 0.0), ratio)


@contextmanager
def measuring(level: str = DEFAULT) -> Iterator[dict[str, float]]:
    """Gate at ``level`` and collect the largest error ratio per class into the yielded dict."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(repr(n) for n in LEVELS)}, got {level!r}")
    saved = dict(_state)
    errors: dict[str, float] = {}
    _state.update(level=level, errors=errors)
    try:
        yield errors
    finally:
        _state.clear()
        _state.update(saved)


def met(errors: dict[str, float]) -> str | None:
    """The strictest level whose tolerances all ``errors`` satisfy (``None``: not even the loosest)."""
    for name, tolerances in LEVELS.items():
        if all(ratio <= tolerances.get(kind, float("inf")) for kind, ratio in errors.items()):
            return name
    return None


def stricter(a: str | None, b: str | None) -> bool:
    """Whether level ``a`` is stricter than level ``b`` (``None`` is below every level)."""
    order = [*LEVELS, None]
    return order.index(a) < order.index(b)
