"""The ``ancestral`` family of the conformance gate: DPM2 a classes checked with ``ancestral_invariants``.

``python -m kdpm2_spec check kdpm2:KDPM2AncestralDiscreteScheduler`` (or diffusers' class of the
same name) runs these properties instead of the ``kdpm2`` family's: a class is of this family when
it declares ``kdpm2_spec_family = "ancestral"`` or its name says ``Ancestral``; ``--family``
overrides. Each property is a check of ``ancestral_invariants.CHECKS`` over its own strategy, so
the gate and the test suite run the same relations; the dtypes each runs in are in ``catalog.DTYPES``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from kdpm2_spec import ancestral_invariants as ai
from kdpm2_spec.registry import Target, add, register_family

FAMILY = "ancestral"


def is_ancestral(klass: type) -> bool:
    """Whether a class is an ancestral (DPM2 a) scheduler by its name (``KDPM2AncestralDiscreteScheduler``)."""
    return "Ancestral" in getattr(klass, "__name__", "")


def first_paragraph(doc: str) -> str:
    """A docstring's first paragraph on one line (the report's description of a property)."""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _bind(name: str) -> tuple[Callable[[Target], Any], Callable[[Target, Any], None]]:
    check = ai.CHECKS[name]

    def strategy(target: Target) -> Any:
        return ai.STRATEGIES[name](target.adapter)

    def run(target: Target, case: Any) -> None:
        check(target.adapter, case)

    return strategy, run


register_family(FAMILY, is_ancestral, "DPM2 a with diffusers' KDPM2AncestralDiscreteScheduler API")
for _name, _check in ai.CHECKS.items():
    _strategy, _run = _bind(_name)
    add(_name, _strategy, _run, ai.EXAMPLES, FAMILY, first_paragraph(_check.__doc__ or _name))
