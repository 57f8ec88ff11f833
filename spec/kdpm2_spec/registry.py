"""Families of properties, and the target they are checked on.

A *family* is a set of properties for one kind of scheduler: ``kdpm2`` (DPM-Solver-2, diffusers'
``KDPM2DiscreteScheduler`` API, checked against ``Reference``) is registered by
``kdpm2_spec.conformance``. Another kind (the ancestral DPM2 a) registers its own family with
``register_family`` and its properties with ``prop(..., family=NAME)``; a run checks a class with
the family it declares (a ``kdpm2_spec_family = "NAME"`` class attribute), else the last
registered family whose ``detect`` accepts the class, else ``kdpm2``; ``--family`` overrides.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kdpm2_spec import strategies as ks
from kdpm2_spec.catalog import DTYPE_NAMES


class Unsupported(Exception):
    """The class lacks what a case needs (a method, an argument, a dtype): the case is skipped, not failed."""


_notes: list[str] = []


def unsupported_part(note: str) -> None:
    """Note that part of a case could not be checked (``note`` says what the class lacks); the case goes on."""
    _notes.append(note)


def take_notes() -> list[str]:
    """The notes ``unsupported_part`` made since the last call (and forget them)."""
    notes = list(_notes)
    _notes.clear()
    return notes


def need(obj: Any, name: str, what: str = "the scheduler") -> Any:
    """``obj.name``, or ``Unsupported`` naming what is missing (a check needs it; a target may lack it)."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise Unsupported(f"{what} has no {name}") from None


@dataclass
class Target:
    """A scheduler class, how to talk to it, what it supports, and the family of properties it is checked with."""

    adapter: Any
    name: str
    args: frozenset[str]
    set_timesteps_args: frozenset[str]
    family: str = "kdpm2"

    @classmethod
    def of(
        cls,
        cls_or_adapter: Any,
        device: str = "cpu",
        dtype: str = "float64",
        name: str | None = None,
        family: str | None = None,
    ) -> Target:
        """A target for a class (torch unless it is a NumPy reference) or a ready adapter.

        A class gets tensors on ``device`` in ``dtype``; the NumPy ``Reference`` works in float64.
        ``name`` is how reproducers name the class (default ``module:qualname``); ``family`` picks
        the property family (default: ``family_of`` the class).
        """
        from kdpm2_spec.adapter import NumpyAdapter, TorchAdapter
        from kdpm2_spec.reference import Reference

        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        adapter: Any
        if isinstance(cls_or_adapter, type):
            if issubclass(cls_or_adapter, Reference) or getattr(cls_or_adapter, "kdpm2_spec_numpy", False):
                if (device, dtype) != ("cpu", "float64"):
                    raise ValueError(f"the NumPy Reference runs on cpu in float64 only, not {device} {dtype}")
                adapter = NumpyAdapter(cls_or_adapter)
            else:
                adapter = TorchAdapter(cls_or_adapter, device, dtype)
        else:
            adapter = cls_or_adapter
        klass = adapter.cls
        chosen = family or family_of(klass)
        if chosen not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {chosen!r}")
        text = name or f"{klass.__module__}:{klass.__qualname__}"
        return cls(adapter, text, ks.supported_args(klass), ks.set_timesteps_args(klass), chosen)

    def create(self, config: dict[str, Any]) -> Any:
        return self.adapter.create(**config)

    @property
    def properties(self) -> dict[str, Property]:
        """The properties of this target's family, in run order."""
        return FAMILIES[self.family].properties


class Property(NamedTuple):
    """One checked relation: a strategy of cases (given the target) and a check of one case."""

    name: str
    doc: str
    strategy: Callable[[Target], Any]
    check: Callable[[Target, Any], None]
    examples: tuple[Any, ...] = ()


@dataclass
class Family:
    """A kind of scheduler and its properties (``detect`` says whether a class is of this kind)."""

    name: str
    detect: Callable[[type], bool]
    doc: str = ""
    properties: dict[str, Property] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}
"""Every registered family by name, in registration order (``kdpm2`` first)."""


def register_family(name: str, detect: Callable[[type], bool], doc: str = "") -> Family:
    """Register (or return) the family ``name``; its properties are added with ``prop(..., family=name)``."""
    if name not in FAMILIES:
        FAMILIES[name] = Family(name, detect, doc)
    return FAMILIES[name]


def family_of(klass: Any) -> str:
    """The family a class is checked with: its ``kdpm2_spec_family``, else the last family that detects it, else ``kdpm2``."""
    declared = getattr(klass, "kdpm2_spec_family", None)
    if isinstance(declared, str) and declared in FAMILIES:
        return declared
    for family in reversed(list(FAMILIES.values())):
        try:
            if family.detect(klass):
                return family.name
        except Exception:  # a detector must not break a run on an odd class
            continue
    return "kdpm2"


register_family("kdpm2", lambda klass: True, "DPM-Solver-2 with diffusers' KDPM2DiscreteScheduler API")


def prop(
    strategy: Callable[[Target], Any], examples: tuple[Any, ...] = (), family: str = "kdpm2"
) -> Callable[[Callable[[Target, Any], None]], Callable[[Target, Any], None]]:
    """Register a check under its function name in ``family``; its docstring's first line describes it."""

    def register(check: Callable[[Target, Any], None]) -> Callable[[Target, Any], None]:
        add(check.__name__, strategy, check, examples, family)
        return check

    return register


def add(
    name: str,
    strategy: Callable[[Target], Any],
    check: Callable[[Target, Any], None],
    examples: tuple[Any, ...] = (),
    family: str = "kdpm2",
    doc: str | None = None,
) -> Property:
    """Register property ``name`` in ``family`` (``doc``: default the check's docstring's first line)."""
    text = doc if doc is not None else (inspect.getdoc(check) or name).splitlines()[0]
    made = Property(name, text, strategy, check, examples)
    FAMILIES[family].properties[name] = made
    return made
