"""Levels of numerical strictness: how close to the float64 reference an implementation computes.

A correct implementation may keep its sigma tables in float32 (diffusers does: ``sigmas`` is a
float32 tensor, and every coefficient of ``step`` is computed from its entries) or in float64
(kdpm2 does, and rounds only the public copies). Both are right; they are not equally exact. So
the checks that compare computed samples with the reference (the sampling loops, the exact
denoiser) measure their error, and a run reports the strictest level every comparison met:

- ``exact``: float64 arithmetic on float64 tables: loops within 1e-12 of the reference, relative to
  the largest operand, relations (the exact denoiser) within 1e-9 (a few float64 roundings);
- ``float32 tables``: each coefficient computed from float32 table entries: loops within 1e-6,
  churned loops within 1e-4, relations within 1e-6.

Loop and relation tolerances are per unit of *amplification* (``kdpm2_spec.loops.amplification``):
a second-order call multiplies an error in its midpoint sample by ``s_i / m_i``: 1.3 for 25
Karras steps, 2.7 for 25 linspace steps, 36 for ``squaredcos_cap_v2`` at 25 steps (its first
step falls from 20291 to 15.4) and 1777 at 2 steps. Churn gets its own
tolerance: the lift ``s_noise * sqrt(sh^2 - s^2)`` is a difference of squares that turns a table
entry's rounding into a relative error of about ``2^-24 / (2 gamma)``.

A run gates at one level (``--level``, default ``float32 tables``, the loosest correct one): a
comparison beyond that level's tolerance is a failure. An expectation file records the level its
implementation met, and a run that meets only a looser one fails it. The float32 tolerances are at
least ten times the largest errors of ``kdpm2_spec.float32.Float32TablesReference`` (the reference
computing from float32 tables, as diffusers does) in every property (``FLOAT32_TABLES_MEASURED``),
so that a correct float32-table implementation never fails, while a wrong coefficient (a power, a
sign, a sigma one entry off: errors of 1e-3 and more) never passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

LEVELS: dict[str, dict[str, float]] = {
    "exact": {"loop": 1e-12, "churn": 1e-12, "relation": 1e-9},
    "float32 tables": {"loop": 1e-6, "churn": 1e-4, "relation": 1e-6},
}
"""Each level's tolerance per comparison class, strictest level first (per unit of amplification, see below)."""

DEFAULT = "float32 tables"
"""The level a run gates at unless told otherwise: the loosest that a correct implementation meets."""

FLOAT32_TABLES_MEASURED = {"loop": 8.3e-8, "churn": 6.1e-6, "relation": 3.5e-8}
"""Largest errors (per unit of amplification) of ``Float32TablesReference`` in every property, ``ci``
profile at seeds 0 to 19 (2026-12-04): each float32 tolerance is at least 10 times its figure."""

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
