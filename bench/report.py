"""Turn saved pytest-benchmark JSON into a markdown table and a PNG plot (ours vs baselines).

    python bench/report.py [RUN.json ...] --name cpu [--out docs/benchmarks]

Without paths, the newest file under ``.benchmarks/`` is used. Each ``benchmark.group`` holds
``kdpm2`` and its baselines (``extra_info["impl"]``); the speedup is baseline time over ours, for
the median (robust to a shared machine's noise) and the minimum.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="saved pytest-benchmark JSON files")
    parser.add_argument("--name", default="cpu", help="report name: NAME.md and NAME.png")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    args = parser.parse_args()
    machine, groups = load(args.runs or [newest_run()])
    table = rows(groups)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(machine, table, args.name) + f"\n![speedups]({args.name}.png)\n"
    (args.out / f"{args.name}.md").write_text(text)
    plot(table, args.out / f"{args.name}.png", args.name)
    print(text)


if __name__ == "__main__":
    main()
