"""Signatures of failures: what failed, how, and in which family of configurations.

A signature is a property's ``Finding`` (what is wrong and the kind of wrong, see
``kdpm2_spec.discrepancy``) with the *family* of configurations it shows in: the features of the
case (``use_karras_sigmas=True``, ``timestep_spacing=trailing``, ``num_train_timesteps``, ``image to
image``...) that the failure needs. ``features`` lists a case's features; ``minimal_family``
removes them one at a time while the failure persists, so that a family names only what matters
(diffusers' NaN ``sigmas_interpol[0]`` shows in *any configuration*; its ``-1`` timestep needs
``timestep_spacing=trailing``).

An expected signature covers a failure with the same finding in any case that has at least the
family's features: a known failure in a family stays known in every configuration of that
family, and the same property failing in another way, or the same way elsewhere, is new.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from kdpm2_spec.discrepancy import Finding

ANY = "any configuration"
"""How the empty family (every configuration) is written."""


def _defaults() -> dict[str, Any]:
    from kdpm2_spec.reference import Reference

    params = inspect.signature(Reference.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


_DEFAULTS = _defaults()


def _is_default(key: str, value: Any) -> bool:
    """Whether ``value`` is the reference's default for ``key`` (a given list or array never is)."""
    if key not in _DEFAULTS or isinstance(value, (list, tuple, np.ndarray)):
        return False
    default = _DEFAULTS[key]
    if default is None or value is None:
        return value is default
    return bool(value == default)


def feature(key: str, value: Any) -> str:
    """The feature a configuration entry contributes: ``key=value`` for a flag or a name, else ``key``."""
    if isinstance(value, (bool, str)):
        return f"{key}={value}"
    return key


def features(case: Any) -> frozenset[str]:
    """The features of a case: its non-default configuration entries, and how it samples.

    ``image to image`` for a loop that starts mid-schedule, ``dtype=NAME`` for a low-precision
    step. Numbers are not features (the family of a failure must not depend on a draw).
    """
    config = getattr(case, "config", None)
    found = set()
    if isinstance(config, dict):
        found = {feature(k, v) for k, v in config.items() if not _is_default(k, v)}
    if getattr(case, "begin", None) is not None:
        found.add("image to image")
    dtype = getattr(case, "dtype", None)
    if isinstance(dtype, str):
        found.add(f"dtype={dtype}")
    return frozenset(found)


def family_text(family: Iterable[str]) -> str:
    """A family as text: its features sorted and comma-separated, or ``any configuration``."""
    names = sorted(family)
    return ", ".join(names) if names else ANY


class Signature(NamedTuple):
    """A property's finding in a family of configurations (``family`` empty: any configuration)."""

    prop: str
    what: str
    kind: str
    family: frozenset[str]

    @property
    def finding(self) -> Finding:
        return Finding(self.what, self.kind)

    def covers(self, prop: str, finding: Finding, case_features: frozenset[str]) -> bool:
        """Whether this signature accounts for ``finding`` of property ``prop`` in a case with these features."""
        if prop != self.prop:
            return False
        if self.what == "*":  # a whole-property expectation (an old file): any finding
            return True
        return (self.what, self.kind) == finding and self.family <= case_features

    def __str__(self) -> str:
        if self.what == "*":
            return "any failure"
        return f"{self.what}: {self.kind} [{family_text(self.family)}]"


def _without(case: Any, key: str) -> Any:
    """``case`` without configuration entry ``key`` (or, for ``image to image``, sampling from noise)."""
    if key == "image to image":
        return case._replace(begin=None)
    config = {k: v for k, v in case.config.items() if k != key}
    return case._replace(config=config)


def _key_of(case: Any, name: str) -> str | None:
    if name == "image to image":
        return name
    config = getattr(case, "config", None) or {}
    return next((k for k, v in config.items() if feature(k, v) == name), None)


def minimal_family(
    case: Any, finding: Finding, reproduces: Callable[[Any], bool], keep: Iterable[str] = ()
) -> tuple[frozenset[str], Any]:
    """The smallest family (and its case) in which ``finding`` still shows, by removing features one at a time.

    ``reproduces(case)`` says whether the check still finds ``finding`` on a case; features in
    ``keep`` are never removed. Removal is greedy, in sorted order, so the result is deterministic.
    """
    current = case
    for name in sorted(features(case) - set(keep)):
        key = _key_of(current, name)
        if key is None or not hasattr(current, "_replace"):
            continue
        try:
            smaller = _without(current, key)
        except (TypeError, ValueError, AttributeError):
            continue
        if reproduces(smaller):
            current = smaller
    return features(current), current
