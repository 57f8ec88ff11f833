"""Fill every measured number on the site from the committed result files, and check them.

    python docs/scripts/site_numbers.py           # rewrite the numbers in docs/**/*.md and README.md
    python docs/scripts/site_numbers.py --check   # exit 1 listing each number that disagrees

A number is written in a page between two HTML comments (invisible on the site) that name its
source; the text between them is what this script writes:

    <!-- n: median ; cpu-home-1thread ; set_timesteps cpu 1000 ; kdpm2 ; ms -->12.1 ms<!-- /n -->

Fields are separated by ``;`` (a ``|`` would end a table cell). The kinds:

``median ; RUN ; GROUP ; IMPL ; UNIT``
    the median time of one call of ``IMPL`` in benchmark group ``GROUP`` (a round's median over
    ``extra_info["calls_per_round"]``), in ``s``, ``ms`` or ``us``, three significant digits.
``ratio ; RUN ; GROUP ; BASELINE[ ; IMPL]``
    ``BASELINE``'s median over kdpm2's (or ``IMPL``'s) in that group: ``262x`` from 10 up, else
    ``2.6x``.
``run ; RUN``
    when and where ``RUN`` was measured: date, CPU, core count, torch, torch threads.
``value ; FILE ; KEY[.KEY...] ; FORMAT``
    an entry of any committed JSON file, formatted with ``FORMAT`` (``.3g``, ``.2e``, ...).
``demo ; FILE``
    the demo's table from a ``docs/scripts/demo_figure.py`` record: per step count the model
    calls, kdpm2's error and each other sampler's RMS distance from kdpm2 (a Markdown table:
    write the marker on its own lines).
``demo-run ; FILE``
    when and where that record was made: date, machine, torch, diffusers and k-diffusion.
``instructions ; FILE``
    the callgrind counts of a ``bench/instructions.py`` record: per operation the instructions
    of kdpm2, diffusers and the floor and diffusers' over kdpm2's, then what each floor is (a
    Markdown table and list: write the marker on its own lines).
``instructions-run ; FILE``
    when, where and at which commit that record was made, with the versions and its command.
``count ; FILE ; OPERATION ; IMPL``
    one count of that record, in thousands or millions (``66.4k``, ``6.59M``).

``RUN`` is a pytest-benchmark JSON file under ``bench/results/`` named without ``.json``
(``bench/results/cpu-home-1thread.json`` is ``cpu-home-1thread``); ``FILE`` is a path from the
repository root. So adding a number is writing its marker and running this script; adding a run
is committing its JSON (``--benchmark-json=bench/results/NAME.json``) and pointing markers at it.
``tests/test_docs_numbers.py`` fails when a page and its source disagree, and when a page has a
time or a speed-up outside a marker.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MARKER = re.compile(
    r"<!-- n: (?P<spec>[^>]*?) -->(?P<text>.*?)<!-- /n -->", re.DOTALL
)
UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}


def pages(root: Path = ROOT) -> list[Path]:
    """The Markdown files whose numbers are filled: the docs and the README."""
    return [*sorted((root / "docs").rglob("*.md")), root / "README.md"]


@cache
def _json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(
            f"no result file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def run(name: str) -> dict[str, Any]:
    """The pytest-benchmark run ``bench/results/NAME.json``."""
    return _json(RESULTS / f"{name}.json")


def benchmark(name: str, group: str, impl: str) -> dict[str, Any]:
    """The benchmark of ``impl`` in ``group`` of run ``name``."""
    for b in run(name)["benchmarks"]:
        if b["group"] == group and b["extra_info"].get("impl") == impl:
            return b
    groups = sorted({b["group"] for b in run(name)["benchmarks"]})
    raise ValueError(
        f"run {name!r} has no benchmark of {impl!r} in group {group!r}; its groups: {groups}"
    )


def per_call(name: str, group: str, impl: str) -> float:
    """Median seconds of one call (pytest-benchmark times a round of ``calls_per_round`` calls)."""
    b = benchmark(name, group, impl)
    return b["stats"]["median"] / b["extra_info"].get("calls_per_round", 1)


def significant(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits, without an exponent (12.1, 0.487, 271)."""
    text = f"{value:.{digits}g}"
    if "e" in text:
        text = f"{float(text):.0f}"
    return text


def describe(name: str) -> str:
    """``2026-12-04 on a 2-core AMD EPYC VM (torch 2.14.1, 1 thread)``: when and where a run was made."""
    data = run(name)
    machine = data["machine_info"]
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("machine", "?")
    cores = machine.get("cpu", {}).get("count", "?")
    infos = [b["extra_info"] for b in data["benchmarks"]]
    torch = sorted(
        {str(i["torch"]).split("+")[0] for i in infos if "torch" in i}
    )
    threads = sorted(
        {i["torch_threads"] for i in infos if "torch_threads" in i}
    )
    thread_text = ", ".join(str(t) for t in threads) + (
        " thread" if threads == [1] else " threads"
    )
    date = datetime.fromisoformat(data["datetime"]).date().isoformat()
    return f"{date} on {cores}-core {cpu.strip()} (torch {', '.join(torch)}, {thread_text}; `bench/results/{name}.json`)"


def value(path: str, keys: str, form: str) -> str:
    """Entry ``keys`` (dot-separated; integers index lists) of the JSON file ``path``, formatted."""
    data = _json(ROOT / path)
    for key in keys.split("."):
        data = data[int(key)] if isinstance(data, list) else data[key]
    return format(data, form)


def demo_table(data: dict[str, Any]) -> str:
    """The demo record as a Markdown table, between blank lines so that it stands alone."""
    others = list(data["from_kdpm2"])
    head = [
        "steps",
        "model calls",
        "kdpm2 error",
        *(f"{name} - kdpm2" for name in others),
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for i, steps in enumerate(data["step_counts"]):
        cells = [
            str(steps),
            str(data["calls"][i]),
            f"{data['errors']['kdpm2'][i]:.3e}",
        ]
        cells += [f"{data['from_kdpm2'][name][i]:.1e}" for name in others]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n\n" + "\n".join(rows) + "\n\n"


def instructions_table(data: dict[str, Any]) -> str:
    """A ``bench/instructions.py`` record as a Markdown table and the list of floors, between blank lines."""
    rows = [
        "| operation | kdpm2 | diffusers | floor | diffusers / kdpm2 |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in data["operations"].values():
        ours, theirs, floor = (
            op.get("kdpm2"),
            op.get("diffusers"),
            op.get("floor"),
        )
        cells = [f"{v:,.0f}" if v else "" for v in (ours, theirs, floor)]
        ratio = f"{theirs / ours:.1f}x" if ours and theirs else ""
        rows.append(f"| {op['what']} | {' | '.join(cells)} | {ratio} |")
    floors = [
        f"- {name}: {what}" for name, what in data.get("floors", {}).items()
    ]
    return (
        "\n\n"
        + "\n".join(rows)
        + "\n\nFloors:\n\n"
        + "\n".join(floors)
        + "\n\n"
    )


def instructions_run(path: str) -> str:
    """``2026-12-04 09:10 UTC at commit abc1234 on ... (Python ..., ...; `FILE`, `COMMAND`)``."""
    data = _json(ROOT / path)
    m = data["machine"]
    versions = f"Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, {m['valgrind']}"
    return (
        f"{data['date']} at commit `{data['commit']}` on {m['cores']}-core {m['cpu']} ({versions}; "
        f"`{path}`, made by `{data['command']}`)"
    )


def count(path: str, operation: str, impl: str) -> str:
    """One instruction count of a ``bench/instructions.py`` record: ``66.4k``, ``6.59M``."""
    value = _json(ROOT / path)["operations"][operation][impl]
    if value is None:
        raise ValueError(f"{path} has no count of {impl!r} for {operation!r}")
    if value >= 1e6:
        return f"{significant(value / 1e6, 3)}M"
    return f"{significant(value / 1e3, 3)}k"


def render(spec: str) -> str:
    """The text of the marker whose fields are ``spec``."""
    kind, *args = (field.strip() for field in spec.split(";"))
    if kind == "median" and len(args) == 4:
        name, group, impl, unit = args
        if unit not in UNITS:
            raise ValueError(f"unit {unit!r} is not one of {sorted(UNITS)}")
        return f"{significant(per_call(name, group, impl) * UNITS[unit], 3)} {unit}"
    if kind == "ratio" and len(args) in (3, 4):
        name, group, base, impl = (*args, "kdpm2")[:4]
        ratio = per_call(name, group, base) / per_call(name, group, impl)
        return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
    if kind == "run" and len(args) == 1:
        return describe(args[0])
    if kind == "value" and len(args) == 3:
        return value(*args)
    if kind == "demo" and len(args) == 1:
        return demo_table(_json(ROOT / args[0]))
    if kind == "demo-run" and len(args) == 1:
        data = _json(ROOT / args[0])
        versions = ", ".join(
            f"{k} {v}"
            for k, v in data["versions"].items()
            if v and k != "numpy"
        )
        return (
            f"{data['date']} on a {data['machine']} ({versions}; `{args[0]}`)"
        )
    if kind == "instructions" and len(args) == 1:
        return instructions_table(_json(ROOT / args[0]))
    if kind == "instructions-run" and len(args) == 1:
        return instructions_run(args[0])
    if kind == "count" and len(args) == 3:
        return count(*args)
    raise ValueError(
        f"unknown number {spec!r}: see docs/scripts/site_numbers.py for the kinds and their fields"
    )


def markers(text: str) -> Iterator[re.Match[str]]:
    return MARKER.finditer(text)


def fill(text: str) -> str:
    """``text`` with every marker's content replaced by its value."""
    return MARKER.sub(
        lambda m: f"<!-- n: {m['spec']} -->{render(m['spec'])}<!-- /n -->", text
    )


def disagreements(paths: list[Path]) -> list[str]:
    """One line per marker whose text is not its source's value (or whose source is missing)."""
    found = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        for m in markers(text):
            line = text.count("\n", 0, m.start()) + 1
            where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
            try:
                wanted = render(m["spec"])
            except (ValueError, KeyError, IndexError) as error:
                found.append(f"{where}: {m['spec']!r}: {error}")
                continue
            if m["text"] != wanted:
                found.append(
                    f"{where}: {m['text']!r} should be {wanted!r} ({m['spec']})"
                )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="report disagreements instead of rewriting",
    )
    args = parser.parse_args()
    if args.check:
        found = disagreements(pages())
        print("\n".join(found) or "every number agrees with its source")
        return 1 if found else 0
    for path in pages():
        text = path.read_text(encoding="utf-8")
        new = fill(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
