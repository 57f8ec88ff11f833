"""Machine-readable reports: JSON for scripts, JUnit XML for CI dashboards (one test case per property).

In JUnit terms a new failure is a ``<failure>`` (message, counterexample and reproducer in it),
an expected failure and an unsupported property are ``<skipped>`` (with the reason), and a stale
expectation is a ``<failure type="stale">``, as pytest reports a strict ``xfail`` that passed.
"""

from __future__ import annotations

import json
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
        "device": report.device,
        "dtype": report.dtype,
        "profile": report.profile,
        "seed": report.seed,
        "dtype_rtol_floor": catalog.DTYPE_RTOL[report.dtype],
        "versions": versions(report.target),
        "exit_status": report.exit_status,
        "summary": report.summary(),
        "results": [
            {
                "name": r.name,
                "status": r.status,
                "doc": r.doc,
                "tolerance": catalog.TOLERANCES.get(r.name, ""),
                "message": r.message,
                "case": None if r.case is None else repr(r.case),
                "reproducer": r.reproducer,
                "expected": r.expected or None,
                "new_failure": r.new_failure,
                "stale": r.stale,
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
        failures=str(len(report.new_failures) + len(report.stale)),
        errors="0",
        skipped=str(sum(1 for r in report.results if r.status != "pass" and not r.new_failure)),
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (("target", report.target), ("device", report.device), ("dtype", report.dtype)):
        ET.SubElement(props, "property", name=key, value=str(value))
    ET.SubElement(props, "property", name="seed", value=str(report.seed))
    for r in report.results:
        case = ET.SubElement(suite, "testcase", classname=f"kdpm2_spec.{report.target}", name=r.name)
        if r.new_failure:
            failure = ET.SubElement(case, "failure", type="conformance", message=r.message)
            failure.text = f"{r.message}\ncase: {r.case!r}\nreproduce: {r.reproducer}\n"
        elif r.stale:
            failure = ET.SubElement(
                case, "failure", type="stale", message=f"passes, but expected to fail: {r.expected}"
            )
            failure.text = f"remove {r.name!r} from the expectation file ({r.expected})\n"
        elif r.status == "fail":
            skipped = ET.SubElement(case, "skipped", type="xfail", message=f"expected failure: {r.expected}")
            skipped.text = f"{r.message}\ncase: {r.case!r}\nreproduce: {r.reproducer}\n"
        elif r.status == "unsupported":
            ET.SubElement(case, "skipped", type="unsupported", message=r.message)
    return ET.ElementTree(suite)


def write_junit(report: Any, path: str) -> None:
    """Write ``junit`` of ``report`` to ``path``."""
    tree = junit(report)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
