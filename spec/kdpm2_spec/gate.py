"""Expectation files: what an implementation is known and accepted to get wrong, and no more.

An expectation file records, for one implementation, the *signatures* of its known failures
(``kdpm2_spec.signatures``: which table or output, which kind of discrepancy, which family of
configurations), the checks it cannot be asked (``unsupported``), the arguments its constructor and
``set_timesteps`` accept and the numerical level it meets (``kdpm2_spec.levels``)::

    {
      "kdpm2_spec_expectations": 2,
      "target": "diffusers:KDPM2DiscreteScheduler",
      "family": "kdpm2",
      "level": "float32 tables",
      "arguments": {"constructor": ["beta_end", "..."], "set_timesteps": ["device", "..."]},
      "properties": {
        "tables_finite": {
          "failures": [
            {"what": "sigmas_interpol", "kind": "not finite at the first entry", "family": [],
             "reason": "log 0 in the midpoint lerp (diffusers #14368)", "case": "Schedule(config={}, steps=1)"}
          ]
        },
        "custom_sigmas": {"unsupported": ["set_timesteps has no sigmas argument"]}
      }
    }

A run given the file fails (exit status 1) on any failure none of the signatures covers, a new
kind in an already failing property included; on an unsupported check the file does not list; on
an argument the file lists that the class no longer accepts; and on a looser numerical level. A listed signature that the run did not see and whose recorded
``case`` no longer shows it is *stale* (exit status 3). ``--write-expect`` writes the file from a
run (merged with ``--expect``'s when both are given, so several seeds can be recorded into one).

The first format, ``{"property": "reason"}``, is still read: each listed property may fail in any
way (the whole property is masked, as before signatures), and unsupported checks and levels are
not gated. Files shipped with the package are found by name (``diffusers-0.42``, see ``shipped``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from kdpm2_spec.discrepancy import Finding
from kdpm2_spec.signatures import Signature

SHIPPED = "expectations"
"""The package folder that holds the shipped files, ``NAME.json`` each."""

FORMAT_KEY, FORMAT = "kdpm2_spec_expectations", 2
"""The key and version that mark a file with signatures."""

RENAMED = {
    "tables_match_reference": (
        "reference_sigmas",
        "reference_sigmas_interpol",
        "reference_timesteps",
        "reference_init_noise_sigma",
    ),
    "sampling_loop_exact": (),
}
"""Properties of the first format that were split (a first-format entry masks each part) or became a level."""


@dataclass
class Entry:
    """One expected failure: its signature, why it is accepted, and a case that shows it."""

    signature: Signature
    reason: str = ""
    case: str = ""

    def as_dict(self) -> dict[str, Any]:
        s = self.signature
        return {"what": s.what, "kind": s.kind, "family": sorted(s.family), "reason": self.reason, "case": self.case}


@dataclass
class Expectation:
    """The contents of an expectation file (see the module docstring)."""

    entries: list[Entry] = field(default_factory=list)
    unsupported: dict[str, list[str]] = field(default_factory=dict)
    level: str | None = None
    target: str = ""
    family: str = "kdpm2"
    legacy: bool = False
    source: str = ""
    arguments: dict[str, list[str]] = field(default_factory=dict)
    mentioned: set[str] = field(default_factory=set)

    def of(self, prop: str) -> list[Entry]:
        """The expected failures of property ``prop``."""
        return [e for e in self.entries if e.signature.prop == prop]

    def match(self, prop: str, finding: Finding, case_features: frozenset[str]) -> Entry | None:
        """The entry that covers ``finding`` of ``prop`` in a case with these features, if any."""
        return next((e for e in self.entries if e.signature.covers(prop, finding, case_features)), None)

    def allows(self, prop: str, note: str) -> bool:
        """Whether the file accepts that ``prop`` could not run a check for reason ``note``."""
        return self.legacy or note in self.unsupported.get(prop, [])

    def properties(self) -> set[str]:
        """Every property the file names."""
        return {e.signature.prop for e in self.entries} | set(self.unsupported) | self.mentioned

    def as_json(self) -> dict[str, Any]:
        props: dict[str, dict[str, Any]] = {}
        for entry in self.entries:
            props.setdefault(entry.signature.prop, {}).setdefault("failures", []).append(entry.as_dict())
        for prop, notes in self.unsupported.items():
            if notes:
                props.setdefault(prop, {})["unsupported"] = sorted(notes)
        return {
            FORMAT_KEY: FORMAT,
            "target": self.target,
            "family": self.family,
            "level": self.level,
            "arguments": {k: sorted(v) for k, v in self.arguments.items()},
            "properties": props,
        }


def shipped() -> list[str]:
    """Names of the expectation files shipped with the package (usable as ``--expect NAME``)."""
    folder = resources.files("kdpm2_spec") / SHIPPED
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def _text(spec: str) -> tuple[str, str]:
    """The text of expectation file ``spec`` (a path, or the name of a shipped file) and where it came from."""
    path = Path(spec)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    if spec in shipped():
        resource = resources.files("kdpm2_spec") / SHIPPED / f"{spec}.json"
        return resource.read_text(encoding="utf-8"), f"kdpm2_spec/{SHIPPED}/{spec}.json"
    raise ValueError(
        f"--expect {spec!r}: no such file, and no shipped expectation of that name ({', '.join(shipped())})"
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def parse(data: Any, where: str = "expectations", properties: Any = None) -> Expectation:
    """An ``Expectation`` from a file's JSON data; ``ValueError`` naming what is malformed."""
    known = None if properties is None else set(properties)
    if isinstance(data, dict) and data.get(FORMAT_KEY) == FORMAT:
        props = data.get("properties", {})
        level = data.get("level")
        if not isinstance(props, dict) or not (level is None or isinstance(level, str)):
            raise ValueError(f"--expect {where}: 'properties' must be an object and 'level' a string")
        from kdpm2_spec import levels

        if level is not None and level not in levels.LEVELS:
            raise ValueError(f"--expect {where}: level must be one of {', '.join(levels.LEVELS)}, got {level!r}")
        expectation = Expectation(
            level=level, target=str(data.get("target", "")), family=str(data.get("family", "kdpm2"))
        )
        arguments = data.get("arguments", {})
        if not isinstance(arguments, dict) or not all(_strings(v) for v in arguments.values()):
            raise ValueError(f"--expect {where}: 'arguments' must map 'constructor'/'set_timesteps' to lists of names")
        expectation.arguments = {str(k): list(v) for k, v in arguments.items()}
        expectation.mentioned = set(props)
        for prop, body in props.items():
            if not isinstance(body, dict) or set(body) - {"failures", "unsupported"}:
                raise ValueError(f"--expect {where}: {prop!r} must be an object with 'failures' and/or 'unsupported'")
            notes = body.get("unsupported", [])
            if not _strings(notes):
                raise ValueError(f"--expect {where}: {prop}.unsupported must be a list of strings")
            if notes:
                expectation.unsupported[prop] = list(notes)
            for item in body.get("failures", []):
                fields = ("what", "kind", "reason", "case")
                if not isinstance(item, dict) or not all(isinstance(item.get(k, ""), str) for k in fields):
                    raise ValueError(
                        f"--expect {where}: each failure of {prop!r} needs strings what, kind, reason, case"
                    )
                if not item.get("what") or not item.get("kind") or not _strings(item.get("family", [])):
                    raise ValueError(
                        f"--expect {where}: a failure of {prop!r} lacks 'what' or 'kind', or 'family' is not a list"
                    )
                signature = Signature(prop, item["what"], item["kind"], frozenset(item.get("family", [])))
                expectation.entries.append(Entry(signature, item.get("reason", ""), item.get("case", "")))
    elif isinstance(data, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        expectation = Expectation(legacy=True)
        for prop, reason in data.items():
            for name in RENAMED.get(prop, (prop,)):
                expectation.entries.append(Entry(Signature(name, "*", "*", frozenset()), reason))
    else:
        raise ValueError(
            f"--expect {where}: must be a JSON object of property name -> reason (strings), "
            f'or a file with "{FORMAT_KEY}": {FORMAT}'
        )
    if known is not None:
        unknown = sorted((expectation.properties() - known) - set(RENAMED))
        if unknown:
            raise ValueError(f"--expect {where}: unknown properties {unknown}")
    expectation.source = where
    return expectation


def load(spec: str, properties: Any = None) -> Expectation:
    """The expectations in file ``spec`` (a path or a shipped name); ``ValueError`` if malformed.

    ``properties`` (the known property names) makes an unknown name an error: a typo would
    otherwise hide nothing and be reported stale never.
    """
    try:
        text, where = _text(spec)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--expect {spec!r}: cannot read it ({error})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"--expect {where}: not JSON ({error})") from None
    return parse(data, where, properties)


def from_report(report: Any, previous: Expectation | None = None) -> Expectation:
    """The expectation a report implies (merged into ``previous``, whose reasons are kept).

    Each signature the run recorded becomes an entry (reason: the failure's message, to be
    replaced by a person's); each property's unsupported notes are listed; the level is the
    looser of the run's and ``previous``'s.
    """
    from kdpm2_spec import levels

    merged = Expectation(
        target=report.target,
        family=getattr(report, "family", "kdpm2"),
        level=report.level if report.level != "-" else None,
        arguments={k: sorted(v) for k, v in getattr(report, "arguments", {}).items()},
    )
    if previous is not None and not previous.legacy:
        merged.entries = list(previous.entries)
        merged.unsupported = {k: list(v) for k, v in previous.unsupported.items()}
        if previous.level is not None and (merged.level is None or levels.stricter(merged.level, previous.level)):
            merged.level = previous.level
        merged.target = previous.target or merged.target
    for result in report.results:
        for item in result.recorded:
            signature = Signature(result.name, item["what"], item["kind"], frozenset(item["family"]))
            covered = any(
                e.signature.prop == signature.prop
                and e.signature.finding == signature.finding
                and e.signature.family <= signature.family
                for e in merged.entries
            )
            if covered:
                continue
            merged.entries = [  # a more general family replaces the ones it covers
                e
                for e in merged.entries
                if not (
                    e.signature.prop == signature.prop
                    and e.signature.finding == signature.finding
                    and signature.family <= e.signature.family
                )
            ]
            merged.entries.append(Entry(signature, " ".join(str(item.get("message", "")).split())[:300], item["case"]))
        if result.notes:
            notes = merged.unsupported.setdefault(result.name, [])
            notes.extend(n for n in result.notes if n not in notes)
    order = {name: i for i, name in enumerate(r.name for r in report.results)}
    merged.entries.sort(key=lambda e: (order.get(e.signature.prop, len(order)), str(e.signature)))
    return merged


def write(report: Any, path: str, previous: Expectation | None = None) -> Expectation:
    """Write the expectation ``from_report`` implies to ``path``; returns it."""
    expectation = from_report(report, previous)
    Path(path).write_text(json.dumps(expectation.as_json(), indent=2) + "\n", encoding="utf-8")
    return expectation
