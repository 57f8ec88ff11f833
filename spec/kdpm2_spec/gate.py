"""Expectation files: the failures an implementation is known and accepted to have.

An expectation file is a JSON object mapping a property name to the reason it is known to fail,
``{"illegal_calls": "set_begin_index accepts any value"}``. A run given one fails only on a
failure the file does not list, and reports a listed property that passes as stale (exit status
3, so a gate can choose to ignore it or to insist the file be updated). Files shipped with the
package are found by name (``diffusers-0.42``, see ``shipped``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

SHIPPED = "expectations"
"""The package folder that holds the shipped files, ``NAME.json`` each."""


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


def load(spec: str, properties: Any = None) -> dict[str, str]:
    """The expectations in file ``spec``: ``{property: reason}``; ``ValueError`` if malformed.

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
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"--expect {where}: must be a JSON object of property name -> reason (strings)")
    if properties is not None:
        unknown = sorted(set(data) - set(properties))
        if unknown:
            raise ValueError(f"--expect {where}: unknown properties {unknown}")
    return data


def failures(report: Any) -> dict[str, str]:
    """The expectations a report implies: each failed property and its message (cut to 300 characters)."""
    return {r.name: r.expected or r.message[:300] for r in report.results if r.status == "fail"}


def write(report: Any, path: str) -> None:
    """Write the failures of ``report`` as an expectation file (a reason kept where one was expected)."""
    Path(path).write_text(json.dumps(failures(report), indent=2) + "\n", encoding="utf-8")
