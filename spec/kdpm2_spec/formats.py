"""Machine-readable reports: JSON for scripts, JUnit XML for CI dashboards (one test case per property).

In JUnit terms a new failure is a ``<failure>`` (message, signature, counterexample and
reproducer in it), a property the gate could not finish (time limit, the target ended the
process) an ``<error>``, an expected failure and an unsupported property are ``<skipped>`` (with
the reason), and a stale expectation is a ``<failure type="stale">``, as pytest reports a strict
``xfail`` that passed.
"""

from __future__ import annotations

import json
import math
import platform
import xml.etree.ElementTree as ET
from importlib import metadata
from typing import Any

from kdpm2_spec import catalog


def versions(target: str) -> dict[str, str]:
    """Versions that decide a verdict: Python, NumPy, Hypothesis, torch and the target's distribution."""
    names = ["numpy", "hypothesis", "torch", "kdpm2", target.split(":")[0].split(".")[0]]
    found = {"python": platform.python_version()}
    for name in dict.fromkeys(names):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def as_dict(report: Any) -> dict[str, Any]:
    """The report as JSON-ready data (the ``--json`` file)."""
    return {
        "target": report.target,
        "family": getattr(report, "family", "kdpm2"),
        "device": report.device,
        "dtype": report.dtype,
        "profile": report.profile,
        "seed": report.seed,
        "dtype_rtol_floor": catalog.DTYPE_RTOL[report.dtype],
        "gate_level": report.gate_level,
        "level": report.level,
        "expected_level": report.expected_level,
        "arguments": report.arguments,
        "lost_arguments": report.lost_arguments,
        "versions": versions(report.target),
        "exit_status": report.exit_status,
        "summary": report.summary(),
        "results": [
            {
                **r.as_dict(),
                "tolerance": catalog.TOLERANCES.get(r.name, ""),
                "errors": {k: (v if math.isfinite(v) else None) for k, v in r.errors.items()},
                "expected": r.expected or None,
                "new_failure": r.new_failure,
            }
            for r in report.results
        ],
    }


def write_json(report: Any, path: str) -> None:
    """Write ``as_dict`` of ``report`` to ``path``."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(as_dict(report), file, indent=2, allow_nan=False)
        file.write("\n")


def junit(report: Any) -> ET.ElementTree:
    """The report as a JUnit XML tree: one ``<testsuite>``, one ``<testcase>`` per property."""
    suite = ET.Element(
        "testsuite",
        name="kdpm2_spec",
        tests=str(len(report.results)),
        failures=str(len([r for r in report.results if r.new_failure and r.status != "error"]) + len(report.stale)),
        errors=str(len(report.errors)),
        skipped=str(
            sum(1 for r in report.results if r.status in ("xfail", "unsupported") and not r.new_failure and not r.stale)
        ),
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (("target", report.target), ("device", report.device), ("dtype", report.dtype)):
        ET.SubElement(props, "property", name=key, value=str(value))
    ET.SubElement(props, "property", name="seed", value=str(report.seed))
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"kdpm2_spec.{report.target}", name=r.name)
        case.set("time", f"{r.seconds:.3f}")
        if r.status == "error":
            error = ET.SubElement(case, "error", type="error", message=r.message)
            error.text = f"{r.message}\n"
        elif r.new_failure:
            message = r.message if r.status == "fail" else f"newly unsupported: {'; '.join(r.new_notes)}"
            failure = ET.SubElement(case, "failure", type="conformance", message=message)
            failure.text = (
                f"{message}\nsignature: {'; '.join(r.findings)}\ncase: {r.case!r}\nreproduce: {r.reproducer}\n"
            )
        elif r.stale:
            failure = ET.SubElement(
                case, "failure", type="stale", message=f"expected failures no longer seen: {'; '.join(r.stale)}"
            )
            failure.text = "".join(f"remove from the expectation file: {s}\n" for s in r.stale)
        elif r.status == "xfail":
            skipped = ET.SubElement(case, "skipped", type="xfail", message=f"expected failure: {r.expected}")
            skipped.text = "".join(f"{k['signature']} (e.g. {k['case']})\n" for k in r.known)
        elif r.status == "unsupported":
            ET.SubElement(case, "skipped", type="unsupported", message=r.message)
    return ET.ElementTree(suite)


def write_junit(report: Any, path: str) -> None:
    """Write ``junit`` of ``report`` to ``path``."""
    tree = junit(report)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
