"""Write docs/conformance.md from a real run of the conformance suite and the k-diffusion tests.

Run from the repository root with the test dependencies installed:

    PYTHONPATH=src:spec python docs/scripts/conformance_table.py [--render]

It runs ``kdpm2_spec.conformance.run`` on the reference, on ours and on diffusers (``ci`` profile,
no shrinking), and the tests that hold the reference against k-diffusion's functions, saves what
it found in ``conformance.json`` next to this script, and writes one table per comparison with
the date, versions and command. Each diffusers counterexample is shown whole (as far as the
suite keeps it), folded in a collapsed block. ``--render`` rewrites the page from the saved
JSON without running anything (to pick up a change of layout, or the property links to
``ci.md``, which are added when that page exists).
"""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "conformance.md"
DATA = Path(__file__).with_name("conformance.json")
PROPERTY_PAGE = ROOT / "docs" / "ci.md"
"""The page that defines each property under an anchor named after it; linked when it exists."""

KDIFFUSION_ROWS = {
    "test_family_equals_kdiffusion": "Karras and exponential sigmas equal `get_sigmas_karras` / `get_sigmas_exponential`",
    "test_train_sigmas_equal_discrete_schedule": "training sigmas equal `DiscreteSchedule.sigmas`",
    "test_t_to_sigma_and_back_equal_discrete_schedule": "`t_to_sigma` / `sigma_to_t` equal `DiscreteSchedule`'s",
    "test_log_interpolated_sigmas_equal_get_sigmas": "log-interpolated schedule equals `get_sigmas(n)` (A1111 discard too)",
    "test_quantized_timesteps_equal_comfyui": "quantized timesteps equal `sigma_to_t(quantize=True)`",
    "test_sampling_loop_equals_sample_dpm_2": "whole loops equal `sample_dpm_2` (float64, 1e-10)",
    "test_churn_equals_sample_dpm_2": "churned loops equal `sample_dpm_2(s_churn=...)` given the same noise",
}


def conformance_rows() -> tuple[
    list[str], dict[str, dict[str, str]], dict[str, list[str]], dict[str, str]
]:
    """Property names, status per target, diffusers' failures (signature, reason, case) and each target's level."""
    import diffusers

    import kdpm2
    from kdpm2_spec import Reference, conformance, gate
    from kdpm2_spec.float32 import Float32TablesReference

    targets = {
        "Reference": conformance.run(Reference, profile="ci"),
        "float32-table model": conformance.run(
            Float32TablesReference, profile="ci"
        ),
        "kdpm2": conformance.run(kdpm2.KDPM2DiscreteScheduler, profile="ci"),
        "diffusers": conformance.run(
            diffusers.KDPM2DiscreteScheduler,
            profile="ci",
            shrink=False,
            expect=gate.load("diffusers-0.42"),
        ),
    }
    names = list(conformance.PROPERTIES)
    status = {
        t: {
            r.name: "fail" if r.name in report.failed else r.status
            for r in report.results
        }
        for t, report in targets.items()
    }
    reasons: dict[str, list[str]] = {}
    for r in targets["diffusers"].results:
        if r.status == "xfail":
            reasons[r.name] = [
                f"`{k['signature']}`: {k['reason']} (e.g. `{k['case']}`)"
                for k in r.known
            ]
        elif r.status != "pass":
            reasons[r.name] = [f"`{r.message}`"]
    level = {t: str(report.level) for t, report in targets.items()}
    return names, status, reasons, level


def kdiffusion_rows() -> dict[str, Counter[str]]:
    """Outcome counts per k-diffusion test function, from a pytest run with a JUnit report."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "report.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/test_spec_vs_kdiffusion.py",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={xml}",
            ],
            cwd=ROOT,
            check=False,
            capture_output=True,
        )
        tree = ET.parse(xml)
    counts: dict[str, Counter[str]] = {}
    for case in tree.iter("testcase"):
        base = case.get("name", "").split("[")[0].removesuffix("_given")
        outcome = (
            "failed"
            if case.find("failure") is not None
            or case.find("error") is not None
            else "passed"
        )
        if case.find("skipped") is not None:
            outcome = "skipped"
        counts.setdefault(base, Counter())[outcome] += 1
    return counts


def mark(status: str) -> str:
    return {"pass": "pass", "fail": "**fail**", "unsupported": "n/a"}.get(
        status, status
    )


def measure() -> dict:
    """Run everything and return what the page shows, as JSON-ready data."""
    import diffusers
    import k_diffusion  # noqa: F401 - its version is reported below
    import torch

    names, status, reasons, level = conformance_rows()
    counts = kdiffusion_rows()
    return {
        "date": datetime.date.today().isoformat(),
        "platform": f"{platform.machine()} CPU, Python {platform.python_version()}",
        "versions": f"torch {torch.__version__}, diffusers {diffusers.__version__}, k-diffusion 0.1.1.post1",
        "names": names,
        "status": status,
        "reasons": reasons,
        "level": level,
        "counts": {test: dict(c) for test, c in counts.items()},
    }


def property_cell(name: str) -> str:
    """The property's name, linked to its definition on the CI page when that page exists."""
    return (
        f"[`{name}`](ci.md#{name})" if PROPERTY_PAGE.exists() else f"`{name}`"
    )


def folded(name: str, status: str, reasons: list[str]) -> list[str]:
    """A property's known failures as a collapsed block: the property in the title, one item each, whole."""
    kind = "note" if status == "n/a" else "failure"
    items = [f"    - {text}" for text in reasons]
    return [f'??? {kind} "{name}: {status.strip("*")}"', "", *items, ""]


def render(data: dict) -> str:
    """The Markdown page for one run's data."""
    names, status, reasons = data["names"], data["status"], data["reasons"]
    lines = [
        "# Conformance",
        "",
        "Generated by `PYTHONPATH=src:spec python docs/scripts/conformance_table.py` on "
        f"{data['date']} ({data['platform']}, {data['versions']}), Hypothesis profile `ci`. Run it "
        "yourself with `python -m kdpm2_spec check MODULE:CLASS`.",
        "",
        "## Schedulers with diffusers' API",
        "",
        "The float32-table model is the reference computing from float32 tables "
        "(`kdpm2_spec.float32.Float32TablesReference`, as diffusers computes): it defines what the "
        "`float32 tables` level accepts. diffusers is run with the shipped `diffusers-0.42` "
        "expectation: its failures are all known ones.",
        "",
        "| property | " + " | ".join(status) + " |",
        "|---|" + "---|" * len(status),
    ]
    for name in names:
        lines.append(
            f"| {property_cell(name)} | "
            + " | ".join(mark(status[t][name]) for t in status)
            + " |"
        )
    lines.append(
        "| numerical level | "
        + " | ".join(f"`{data['level'][t]}`" for t in status)
        + " |"
    )
    lines += [
        "",
        "Why diffusers fails or cannot be asked (each known failure's signature, the shipped reason and a case; "
        "click to unfold):",
        "",
    ]
    for name, reason in reasons.items():
        lines += folded(name, mark(status["diffusers"][name]), reason)
    lines += [
        "## k-diffusion's functions",
        "",
        "k-diffusion has no scheduler object; `tests/test_spec_vs_kdiffusion.py` holds the reference",
        "against its functions. Cases passed / run in this run:",
        "",
        "| relation | passed | run |",
        "|---|---|---|",
    ]
    for test, text in KDIFFUSION_ROWS.items():
        c = Counter(data["counts"].get(test, {}))
        lines.append(f"| {text} | {c['passed']} | {sum(c.values())} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if "--render" in sys.argv[1:]:
        data = json.loads(DATA.read_text(encoding="utf-8"))
    else:
        data = measure()
        DATA.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {DATA}")
    OUT.write_text(render(data), encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
