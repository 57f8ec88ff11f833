"""Write the generated tables of docs/ci.md: the ``check`` options and every property's definition.

Run from the repository root:

    PYTHONPATH=src:spec python docs/scripts/ci_tables.py

The options come from the argument parser of ``python -m kdpm2_spec``; the properties from
``kdpm2_spec.conformance.PROPERTIES`` (their docstrings) and ``kdpm2_spec.catalog`` (tolerance,
reason, dtypes). Each table replaces the text between its ``<!-- generated: NAME -->`` and
``<!-- end generated -->`` lines; ``tests/test_spec_docs.py`` checks the page is up to date.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "ci.md"


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_table(command: str = "check") -> str:
    """One row per option of ``python -m kdpm2_spec COMMAND``."""
    from kdpm2_spec.__main__ import parser

    commands = next(
        a
        for a in parser()._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    check = commands.choices[command]
    rows = ["| option | values | meaning |", "|---|---|---|"]
    for action in check._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = (
            "`" + ", ".join(action.option_strings) + "`"
            if action.option_strings
            else f"`{action.metavar}`"
        )
        if action.choices:
            values = ", ".join(f"`{c}`" for c in action.choices)
        elif action.nargs == 0:
            values = ""
        else:
            values = f"`{action.metavar or action.dest.upper()}`"
        rows.append(f"| {flag} | {values} | {_cell(action.help)} |")
    return "\n".join(rows)


def properties_table() -> str:
    """One row per conformance property, in run order: what it checks, tolerance and why, dtypes.

    Each row carries an anchor named after its property (``ci.md#sampling_loop``).
    """
    from kdpm2_spec import catalog, conformance

    rows = [
        "| property | what it checks | tolerance, and why | dtypes |",
        "|---|---|---|---|",
    ]
    for name, prop in conformance.PROPERTIES.items():
        dtypes = catalog.dtypes_of(name)
        where = "all" if dtypes == catalog.DTYPE_NAMES else ", ".join(dtypes)
        anchor = f'<a id="{name}"></a>'  # docs/conformance.md links each property here, as ci.md#NAME
        rows.append(
            f"| {anchor}`{name}` | {_cell(prop.doc)} | {_cell(catalog.TOLERANCES[name])} | {where} |"
        )
    return "\n".join(rows)


def dtype_table() -> str:
    """The loop tolerance floor per dtype."""
    from kdpm2_spec import catalog

    rows = [
        "| dtype | loop tolerance floor (relative to the largest operand) |",
        "|---|---|",
    ]
    for name in catalog.DTYPE_NAMES:
        floor = catalog.DTYPE_RTOL[name]
        rows.append(
            f"| `{name}` | {'each property its own' if floor == 0 else f'{floor:g}'} |"
        )
    return "\n".join(rows)


def diff_options_table() -> str:
    """The options of ``diff`` (``snapshot`` takes the same draws options and ``--out``)."""
    return options_table("diff")


PLANTED = Path(__file__).with_name("planted_diffusers.json")
"""The outcomes of ``tests/planted_diffusers.py --json`` (``nox -s planted``)."""


def planted_table() -> str:
    """One row per planted bug: what it does, the gate's exit status, the first property that caught it."""
    import json

    data = json.loads(PLANTED.read_text(encoding="utf-8"))
    outcomes = data["outcomes"]
    caught = sum(1 for o in outcomes if o["caught"])
    rows = [
        f"{caught} of {len(outcomes)} caught at seed {data['seed']} ({data['date']}, diffusers {data['diffusers']}).",
        "",
        "| bug | what it does | exit | caught by |",
        "|---|---|---|---|",
    ]
    for o in outcomes:
        first = o["lines"][0].split(":")[0] if o["lines"] else ""
        by = (
            f"`{first.split()[1]}`"
            + (
                f" and {len(o['lines']) - 1} more"
                if len(o["lines"]) > 1
                else ""
            )
            if first
            else "-"
        )
        rows.append(
            f"| `{o['bug']}` | {_cell(o['why'])} | {o['status']} | {by} |"
        )
    return "\n".join(rows)


TABLES = {
    "options": options_table,
    "diff-options": diff_options_table,
    "properties": properties_table,
    "dtypes": dtype_table,
    "planted": planted_table,
}


def render(text: str) -> str:
    """``text`` with every generated section replaced by its current table."""
    for name, table in TABLES.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n).*?(\n<!-- end generated -->)",
            re.DOTALL,
        )
        assert pattern.search(text), f"docs/ci.md lacks the markers of {name}"
        text = pattern.sub(lambda m, t=table: m[1] + t() + m[2], text)  # type: ignore[misc]
    return text


def main() -> None:
    OUT.write_text(render(OUT.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
