"""Turn saved pytest-benchmark JSON into a markdown table and a PNG plot (ours vs baselines).

    python bench/report.py [RUN.json ...] --name cpu [--out docs/benchmarks]
        [--instructions bench/results/instructions-cpu.json] [--home docs/index.md] [--check]

Without paths, the newest file under ``.benchmarks/`` is used. Each ``benchmark.group`` holds
``kdpm2`` and its baselines (``extra_info["impl"]``); the speedup is baseline time over ours, for
the median (robust to a shared machine's noise) and the minimum.

``--instructions`` appends the callgrind counts of ``bench/instructions.py`` to the page;
``--home`` rewrites the figures block of the home page (between ``HOME_START`` and ``HOME_END``)
from the same two files, so that no figure there is typed by hand; ``--check`` only compares and
exits 1 when a generated file is out of date.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

OURS = "kdpm2"


def newest_run(root: Path = Path(".benchmarks")) -> Path:
    runs = sorted(root.rglob("*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit(f"no saved runs under {root}/ (run: nox -s bench)")
    return runs[-1]


def load(paths: list[Path]) -> tuple[dict, dict[str, dict[str, dict]]]:
    """``(machine_info, {group: {impl: benchmark}})`` from one or more saved runs."""
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    machine: dict = {}
    for path in paths:
        data = json.loads(path.read_text())
        machine = data.get("machine_info", machine) | {"datetime": data.get("datetime"), "file": str(path)}
        for b in data["benchmarks"]:
            groups[b["group"]][b["extra_info"].get("impl", b["name"])] = b
    return machine, dict(sorted(groups.items()))


def per_call_us(b: dict, stat: str) -> float:
    return b["stats"][stat] / b["extra_info"].get("calls_per_round", 1) * 1e6


def rows(groups: dict[str, dict[str, dict]]) -> list[dict]:
    out = []
    for group, impls in groups.items():
        if OURS not in impls:
            continue
        ours = impls[OURS]
        for impl, base in impls.items():
            if impl == OURS:
                continue
            out.append(
                {
                    "group": group,
                    "baseline": impl,
                    "ours_median_us": per_call_us(ours, "median"),
                    "base_median_us": per_call_us(base, "median"),
                    "speedup_median": base["stats"]["median"] / ours["stats"]["median"],
                    "speedup_min": base["stats"]["min"] / ours["stats"]["min"],
                    "extra": ours["extra_info"],
                }
            )
    return out


def markdown(machine: dict, table: list[dict], name: str) -> str:
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("machine", "?"))
    threads = {r["extra"].get("torch_threads") for r in table}
    lines = [
        f"# Benchmarks: {name}",
        "",
        f"Run {machine.get('datetime', '?')} on {cpu} ({machine.get('cpu', {}).get('count', '?')} cores), "
        f"torch threads {sorted(t for t in threads if t is not None)}, from `{machine.get('file', '?')}`.",
        f"Devices: {', '.join(sorted({str(r['extra'].get('device_name', '?')) for r in table}))}.",
        "Times are per scheduler call (a round's time over `calls_per_round`); speedup = baseline / ours.",
        "",
        "| group | baseline | ours median (us) | baseline median (us) | speedup (median) | speedup (min) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['group']} | {r['baseline']} | {r['ours_median_us']:.1f} | {r['base_median_us']:.1f} | "
            f"{r['speedup_median']:.1f}x | {r['speedup_min']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['group']} vs {r['baseline']}" for r in table]
    speedups = [r["speedup_median"] for r in table]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(table) + 1.2))
    ax.barh(range(len(table)), speedups, color=["tab:green" if s >= 1 else "tab:red" for s in speedups])
    ax.set_yticks(range(len(table)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speedup of kdpm2 over the baseline (median time per call, log scale)")
    ax.set_title(f"kdpm2 benchmarks: {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- host overhead: the figures of issue 23 (home page and CPU page) ----------------------------

HOST = (
    ("step", "one `step` call in a 25-step loop, 1x4x64x64 fp32", "step-loop cpu epsilon float32 1x4x64x64"),
    ("loop25", "25-step loop with `set_timesteps`, 1x4x64x64 fp32", "loop+set_timesteps cpu 25 steps 1x4x64x64"),
    ("set_timesteps_1000", "`set_timesteps(1000)`", "set_timesteps cpu 1000"),
    ("set_timesteps_25", "`set_timesteps(25)`", "set_timesteps cpu 25"),
    ("constructor", "`KDPM2DiscreteScheduler()`", "constructor cpu"),
    ("add_noise_begin", "`add_noise`, begin index set, 4x4x64x64", "add_noise cpu begin_index 4x4x64x64"),
    ("add_noise_lookup", "`add_noise`, timestep lookup, 4x4x64x64", "add_noise cpu lookup 4x4x64x64"),
)
"""``(instructions key, label, benchmark group)`` of each figure, in the order shown."""

HOME_START = "<!-- figures: generated by bench/report.py --home; do not edit -->"
HOME_END = "<!-- end of generated figures -->"


def _time(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def host_rows(groups: dict[str, dict[str, dict]], instructions: dict | None) -> list[dict]:
    """One row per ``HOST`` figure present: median times per call, ratio, and instruction counts."""
    out = []
    counts = (instructions or {}).get("operations", {})
    for key, label, group in HOST:
        impls = groups.get(group, {})
        if OURS not in impls or "diffusers" not in impls:
            continue
        ours, theirs = impls[OURS], impls["diffusers"]
        out.append(
            {
                "label": label,
                "ours_us": per_call_us(ours, "median"),
                "theirs_us": per_call_us(theirs, "median"),
                "ratio": theirs["stats"]["median"] / ours["stats"]["median"],
                "ratio_min": theirs["stats"]["min"] / ours["stats"]["min"],
                "counts": counts.get(key, {}),
            }
        )
    return out


def host_table(machine: dict, groups: dict[str, dict[str, dict]], instructions: dict | None) -> str:
    """The figures table: time per call (median, one torch thread) and instructions, ours and diffusers'."""
    cpu = machine.get("cpu", {}).get("brand_raw", machine.get("machine", "?"))
    day = str(machine.get("datetime", "?"))[:10]
    lines = [
        f"Measured on {day} on {cpu}, one torch thread, ours and diffusers in one run "
        f"(`{machine.get('file', '?')}`)"
        + (
            f"; instructions counted with callgrind on {instructions['date'][:10]} (`{instructions['command']}`)"
            if instructions
            else ""
        )
        + ":",
        "",
        "| operation | kdpm2 | diffusers | diffusers / kdpm2 (median, min) | instructions kdpm2 / diffusers / floor |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in host_rows(groups, instructions):
        c = r["counts"]
        counts = " / ".join(f"{c[k] / 1e6:.2f}M" if c.get(k) else "" for k in ("kdpm2", "diffusers", "floor"))
        lines.append(
            f"| {r['label']} | {_time(r['ours_us'])} | {_time(r['theirs_us'])} | "
            f"{r['ratio']:.1f}x, {r['ratio_min']:.1f}x | {counts} |"
        )
    return "\n".join(lines) + "\n"


def home_block(machine: dict, groups: dict[str, dict[str, dict]], instructions: dict | None) -> str:
    return f"{HOME_START}\n\n{host_table(machine, groups, instructions)}\n{HOME_END}"


def replace_block(text: str, block: str) -> str:
    """``text`` with the generated block replaced (``ValueError`` if the markers are missing)."""
    start, end = text.find(HOME_START), text.find(HOME_END)
    if start < 0 or end < start:
        raise ValueError(f"the page has no block between {HOME_START!r} and {HOME_END!r}")
    return text[:start] + block + text[end + len(HOME_END) :]


def instructions_markdown(data: dict) -> str:
    """The callgrind counts (``bench/instructions.py``) as a section of the benchmark page."""
    m = data["machine"]
    lines = [
        "## Instructions per operation",
        "",
        f"Counted with `{data['command']}` on {data['date']} ({m['cpu']}, Python {m['python']}, torch "
        f"{m['torch']}, diffusers {m['diffusers']}, {m['valgrind']}), commit `{data['commit']}`: callgrind "
        "counts are repeatable on a shared machine where times are not. The floor is the bare torch "
        "work an operation cannot avoid (listed below).",
        "",
        "| operation | kdpm2 | diffusers | floor | diffusers / kdpm2 |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in data["operations"].values():
        ours, theirs, floor = row.get("kdpm2"), row.get("diffusers"), row.get("floor")
        ratio = f"{theirs / ours:.1f}x" if ours and theirs else ""
        cells = [f"{v:,.0f}" if v else "" for v in (ours, theirs, floor)]
        lines.append(f"| {row['what']} | {' | '.join(cells)} | {ratio} |")
    lines += ["", *[f"- `{k}`: {v}" for k, v in data.get("floors", {}).items()]]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str, check: bool) -> bool:
    """Write ``text`` to ``path`` (or, with ``check``, only compare); True when it was already current."""
    current = path.read_text() if path.exists() else None
    if not check and current != text:
        path.write_text(text)
    return current == text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="saved pytest-benchmark JSON files")
    parser.add_argument("--name", default="cpu", help="report name: NAME.md and NAME.png")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--instructions", type=Path, help="bench/instructions.py JSON to add to the page")
    parser.add_argument("--home", type=Path, help="page whose figures block to regenerate (docs/index.md)")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a file is out of date")
    args = parser.parse_args()
    machine, groups = load(args.runs or [newest_run()])
    instructions = json.loads(args.instructions.read_text()) if args.instructions else None
    table = rows(groups)
    text = markdown(machine, table, args.name)
    if host_rows(groups, instructions):
        text += "\n## Host overhead (issue 23)\n\n" + host_table(machine, groups, instructions)
    if instructions:
        text += "\n" + instructions_markdown(instructions)
    text += f"\n![speedups]({args.name}.png)\n"
    current = True
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(table, args.out / f"{args.name}.png", args.name)
    current &= write(args.out / f"{args.name}.md", text, args.check)
    if args.home:
        page = args.home.read_text()
        current &= write(args.home, replace_block(page, home_block(machine, groups, instructions)), args.check)
    if args.check and not current:
        raise SystemExit(f"out of date: regenerate with python bench/report.py {' '.join(map(str, args.runs))} ...")
    print(text)


if __name__ == "__main__":
    main()
