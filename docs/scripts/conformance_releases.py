"""What the gate says about diffusers' releases 0.16 to 0.42.1: the table in docs/ci.md.

Run from the repository root (network needed only with ``--install``):

    PYTHONPATH=src:spec python docs/scripts/conformance_releases.py [--install] [--jobs 2] [--render]

Each release is installed apart, without its dependencies, beside the environment's
(``pip install --no-deps --target /tmp/gate-diffusers-X diffusers==X``); a release that does not
import with the environment's ``huggingface_hub`` gets ``huggingface_hub==0.25.2`` (the last with
``cached_download``) in the same folder. For each release the script then records:

- whether ``from diffusers import KDPM2DiscreteScheduler`` works, and the error if not;
- the gate's verdict with the shipped expectation, ``python -m kdpm2_spec check
  diffusers:KDPM2DiscreteScheduler --path DIR --expect diffusers-0.42 --no-shrink`` (exit status
  and each property that failed it, with its signature);
- what differs from 0.42.1 in the differential mode, ``python -m kdpm2_spec diff`` against a
  snapshot of 0.42.1 (the kinds of difference).

Releases whose KDPM2 sources are byte-identical (the scheduler file, ``scheduling_utils.py``,
``configuration_utils.py`` and ``utils/outputs.py``) share one run: the table says which. The
results go to ``conformance_releases.json`` beside this script and the table between the
``<!-- generated: releases -->`` markers of ``docs/ci.md``; ``--render`` rewrites the table from
the saved JSON without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("conformance_releases.json")
PAGE = ROOT / "docs" / "ci.md"
TARGET = "diffusers:KDPM2DiscreteScheduler"
RELEASES = [
    "0.16.0",
    "0.16.1",
    "0.17.0",
    "0.17.1",
    "0.18.0",
    "0.18.1",
    "0.18.2",
    "0.19.0",
    "0.19.1",
    "0.19.2",
    "0.19.3",
    "0.20.0",
    "0.20.1",
    "0.20.2",
    "0.21.0",
    "0.21.1",
    "0.21.2",
    "0.21.3",
    "0.21.4",
    "0.22.0",
    "0.22.1",
    "0.22.2",
    "0.22.3",
    "0.23.0",
    "0.23.1",
    "0.24.0",
    "0.25.0",
    "0.25.1",
    "0.26.0",
    "0.26.1",
    "0.26.2",
    "0.26.3",
    "0.27.0",
    "0.27.1",
    "0.27.2",
    "0.28.0",
    "0.28.1",
    "0.28.2",
    "0.29.0",
    "0.29.1",
    "0.29.2",
    "0.30.0",
    "0.30.1",
    "0.30.2",
    "0.30.3",
    "0.31.0",
    "0.32.0",
    "0.32.1",
    "0.32.2",
    "0.33.0",
    "0.33.1",
    "0.34.0",
    "0.35.0",
    "0.35.1",
    "0.35.2",
    "0.36.0",
    "0.37.0",
    "0.37.1",
    "0.38.0",
    "0.39.0",
    "0.40.0",
    "0.41.0",
    "0.42.0",
    "0.42.1",
]
"""Every diffusers release from 0.16.0 to 0.42.1 (PyPI, 2026-12-04)."""

OLD_HUB = "huggingface_hub==0.25.2"
SOURCES = (
    "schedulers/scheduling_k_dpm_2_discrete.py",
    "schedulers/scheduling_utils.py",
    "configuration_utils.py",
    "utils/outputs.py",
)
"""The files of a release that decide its KDPM2 behaviour (besides torch and NumPy)."""


def folder(version: str) -> Path:
    return Path(tempfile.gettempdir()) / f"gate-diffusers-{version}"


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")]),
    }


def importable(version: str) -> str:
    """``""`` if the release's scheduler imports from its folder, else the error's last line."""
    code = (
        "import diffusers, sys\n"
        "from diffusers import KDPM2DiscreteScheduler\n"
        f"assert diffusers.__version__ == {version!r}, diffusers.__version__\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code],
        env={**os.environ, "PYTHONPATH": str(folder(version))},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode == 0:
        return ""
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def install(version: str) -> None:
    """Install the release (and, if it needs one, the old huggingface_hub) into its own folder."""
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--target",
        str(folder(version)),
    ]
    if not (folder(version) / "diffusers").is_dir():
        subprocess.run([*pip, f"diffusers=={version}"], check=True)
    error = importable(version)
    if (
        error
        and "huggingface_hub" in error
        and not (folder(version) / "huggingface_hub").is_dir()
    ):
        subprocess.run([*pip, OLD_HUB], check=True)


def sources_hash(version: str) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        path = folder(version) / "diffusers" / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    return digest.hexdigest()[:12]


def gate(version: str) -> dict[str, object]:
    """The gate's verdict on one release with the shipped expectation."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-m",
            "kdpm2_spec",
            "check",
            TARGET,
            "--path",
            str(folder(version)),
        ]
        command += [
            "--expect",
            "diffusers-0.42",
            "--no-shrink",
            "--json",
            str(report),
        ]
        done = subprocess.run(
            command,
            env=env(),
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp,
        )
        data = json.loads(report.read_text()) if report.is_file() else {}
    failed = {}
    for result in data.get("results", []):
        if result["new_failure"]:
            failed[result["name"]] = (
                result["findings"]
                or result["new_notes"]
                or [result["message"][:120]]
            )
        elif result["stale"]:
            failed[result["name"]] = [f"stale: {s}" for s in result["stale"]]
    summary = (
        data.get("summary") or (done.stderr.strip().splitlines() or ["?"])[-1]
    )
    return {"status": done.returncode, "summary": summary, "failed": failed}


def snapshot(path: Path) -> None:
    """The behaviour of 0.42.1, recorded once for every comparison."""
    command = [
        sys.executable,
        "-m",
        "kdpm2_spec",
        "snapshot",
        f"{TARGET}@{folder('0.42.1')}",
        "--out",
        str(path),
    ]
    subprocess.run(command, env=env(), check=True, capture_output=True)


def differ(version: str, reference: Path) -> dict[str, object]:
    """What differs from 0.42.1's snapshot."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "diff.json"
        command = [
            sys.executable,
            "-m",
            "kdpm2_spec",
            "diff",
            f"{TARGET}@{folder(version)}",
            str(reference),
        ]
        done = subprocess.run(
            [*command, "--json", str(out)],
            env=env(),
            capture_output=True,
            text=True,
            check=False,
        )
        data = json.loads(out.read_text()) if out.is_file() else {}
    kinds = [d["what"] for d in data.get("differences", [])]
    return {"status": done.returncode, "kinds": kinds}


def measure(jobs: int, installing: bool) -> dict[str, object]:
    if installing:
        for version in RELEASES:
            install(version)
    rows: dict[str, dict[str, object]] = {}
    for version in RELEASES:
        error = (
            importable(version)
            if (folder(version) / "diffusers").is_dir()
            else "not installed"
        )
        rows[version] = {"import": error}
    groups: dict[str, list[str]] = {}
    for version, row in rows.items():
        if not row["import"]:
            row["sources"] = sources_hash(version)
            groups.setdefault(str(row["sources"]), []).append(version)
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "diffusers-0.42.1.json"
        snapshot(reference)

        def one(versions: list[str]) -> None:
            first = versions[0]
            verdict, difference = gate(first), differ(first, reference)
            for version in versions:
                rows[version].update(
                    gate=verdict,
                    diff=difference,
                    shares=first if version != first else "",
                )
            print(
                f"{', '.join(versions)}: exit {verdict['status']}, {len(difference['kinds'])} kinds of difference",
                flush=True,
            )

        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, groups.values()))
    import diffusers  # the environment's, for the record
    import torch

    return {
        "date": datetime.date.today().isoformat(),
        "platform": f"{platform.machine()} CPU, Python {platform.python_version()}, torch {torch.__version__}, "
        f"environment's diffusers {diffusers.__version__}",
        "rows": rows,
    }


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _reason(item: str) -> str:
    """A failure of the gate without its family and positions: ``add_noise after a step: wrong value``."""
    item = re.sub(r" \[[^\]]*\]$", "", item)
    return re.sub(
        r" at (after )?(first|second)-order calls| at (main entries|midpoints)( and \w+)?",
        "",
        item,
    )


def _failures(verdict: dict) -> str:
    """Why a release fails the expectation: each distinct reason and the properties it fails."""
    by_reason: dict[str, list[str]] = {}
    for name, items in sorted(verdict["failed"].items()):
        for reason in dict.fromkeys(_reason(item) for item in items):
            by_reason.setdefault(reason, []).append(name)
    return "; ".join(
        f"{reason} ({len(names)} {'property' if len(names) == 1 else 'properties'})"
        for reason, names in by_reason.items()
    )


def _row(row: dict) -> tuple[str, str, str]:
    if row["import"]:
        error = re.sub(
            r" \(/[^)]*\)$", "", row["import"]
        )  # the installed file's path
        return "cannot import", _cell(error), ""
    kinds = ", ".join(
        sorted(
            set(
                re.sub(r" at a (first|second)-order call", "", k)
                for k in row["diff"]["kinds"]
            )
        )
    )
    return (
        str(row["gate"]["status"]),
        _cell(_failures(row["gate"]) or "none"),
        _cell(kinds or "nothing"),
    )


def table(data: dict) -> str:
    """The Markdown table of the saved results, consecutive releases with the same row merged."""
    lines = [
        f"Generated by `docs/scripts/conformance_releases.py` on {data['date']} ({data['platform']}): "
        "`check` with `--expect diffusers-0.42 --no-shrink`, `diff` against a snapshot of 0.42.1 (68 pipeline "
        "runs). A failure is listed once with the number of properties it fails; `stale:` a recorded failure "
        "that no longer shows.",
        "",
        "| releases | gate exit | why the gate fails the expectation | differs from 0.42.1 in |",
        "|---|---|---|---|",
    ]
    merged: list[tuple[list[str], tuple[str, str, str]]] = []
    for version, row in data["rows"].items():
        cells = _row(row)
        if merged and merged[-1][1] == cells:
            merged[-1][0].append(version)
        else:
            merged.append(([version], cells))
    for versions, (status, why, kinds) in merged:
        span = (
            versions[0]
            if len(versions) == 1
            else f"{versions[0]} to {versions[-1]}"
        )
        lines.append(f"| {span} | {status} | {why} | {kinds} |")
    return "\n".join(lines)


def render(data: dict) -> None:
    text = PAGE.read_text(encoding="utf-8")
    pattern = re.compile(
        r"(<!-- generated: releases -->\n).*?(\n<!-- end generated -->)",
        re.DOTALL,
    )
    assert pattern.search(text), "docs/ci.md lacks the releases markers"
    PAGE.write_text(
        pattern.sub(lambda m: m[1] + table(data) + m[2], text), encoding="utf-8"
    )
    print(f"wrote {PAGE}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help="install the releases first (network)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="releases checked at once (default 1)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the table from the saved JSON",
    )
    args = parser.parse_args()
    if args.render:
        data = json.loads(DATA.read_text(encoding="utf-8"))
    else:
        data = measure(args.jobs, args.install)
        DATA.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {DATA}")
    render(data)


if __name__ == "__main__":
    main()
