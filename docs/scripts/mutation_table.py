"""Print the per-module score table of a finished ``nox -s mutation`` run (Markdown).

Run from the repository root after ``mutmut run``:

    python docs/scripts/mutation_table.py [mutants]

It reads mutmut's result files (``mutants/src/kdpm2/*.py.meta``) with mutmut's own exit-code
meanings, and prints one row per module, a total, and the surviving mutants' names.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

STATUS = {
    1: "killed",
    3: "killed",
    0: "survived",
    5: "no tests",
    33: "no tests",
    None: "not checked",
}
STATUS.update(dict.fromkeys((36, -24, 24, 152, 255), "timeout"))
COLUMNS = ("killed", "timeout", "survived", "no tests", "not checked")


def counts(root: Path) -> tuple[dict[str, Counter[str]], list[str]]:
    """Status counts per module and the names of the surviving mutants."""
    table: dict[str, Counter[str]] = {}
    survivors = []
    for meta in sorted((root / "src" / "kdpm2").glob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if not codes:
            continue
        module = meta.name.removesuffix(".meta")
        table[module] = Counter(
            STATUS.get(code, "other") for code in codes.values()
        )
        survivors += [
            name
            for name, code in codes.items()
            if STATUS.get(code) in ("survived", "no tests")
        ]
    return table, survivors


def markdown(table: dict[str, Counter[str]]) -> str:
    """The score table: mutants, each status, and the share detected (killed or timed out).

    A status column that is 0 in every row is left out, and the table says so below it, so that
    the table fits the page's column.
    """
    total: Counter[str] = Counter()
    for c in table.values():
        total.update(c)
    columns = [k for k in COLUMNS if total[k]]
    dropped = [k for k in COLUMNS if not total[k]]
    lines = [
        "| module | mutants | " + " | ".join(columns) + " | detected |",
        "|---" + "|---:" * (len(columns) + 2) + "|",
    ]
    for module, c in [*table.items(), ("**all of src/kdpm2**", total)]:
        n = sum(c.values())
        detected = (c["killed"] + c["timeout"]) / n if n else 0.0
        cells = [
            module if c is total else f"`{module}`",
            str(n),
            *(str(c[k]) for k in columns),
            f"{detected:.1%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if dropped:
        lines += [
            "",
            f"No mutant was {', '.join(repr(k) for k in dropped)}: those columns are left out.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    table, survivors = counts(
        Path(sys.argv[1] if len(sys.argv) > 1 else "mutants")
    )
    print(markdown(table))
    print()
    print("\n".join(survivors))
