"""Every measured number on the site agrees with the committed result file it names.

``docs/scripts/site_numbers.py`` fills the numbers written between ``<!-- n: ... -->`` markers from
``bench/results/*.json``; ``bench/report.py`` writes the benchmark pages from the run they name.
These tests fail when a page and its source disagree, when a page quotes a time or a speed-up
outside a marker, and when the checker itself would miss a wrong number.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


numbers = load("site_numbers", ROOT / "docs" / "scripts" / "site_numbers.py")

MEASURED = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?(?:ms|us|µs|seconds?)\b|(?<![\w.])\d+(?:\.\d+)?x(?![\w])")
"""A time or a speed-up in prose: ``12.5 ms``, ``40 us``, ``26x`` (not a shape such as ``1x4x64x64``)."""
GENERATED = {"docs/benchmarks/cpu.md", "docs/benchmarks/cpu-1thread.md", "docs/changelog.md"}
"""Pages outside the prose check: benchmark pages are written whole by bench/report.py (checked
below); the changelog records what was true of past versions, with their dates."""


def prose(text: str) -> str:
    """``text`` without fenced code, inline code, markers' contents and HTML comments."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    text = numbers.MARKER.sub("", text)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def test_every_marked_number_agrees_with_its_source() -> None:
    assert numbers.disagreements(numbers.pages()) == []


TABLE_MARKERS = ("<!-- n: demo ;", "<!-- n: instructions ;")
"""The markers that write a whole table, so stand on their own lines."""


def test_inline_markers_do_not_start_a_line() -> None:
    """A marker at the start of a line opens an HTML block in Markdown and splits its paragraph."""
    found = []
    for path in numbers.pages():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.lstrip().startswith("<!-- n: ") and not line.lstrip().startswith(TABLE_MARKERS):
                found.append(f"{path.relative_to(ROOT)}:{number}")
    assert found == []


def test_the_pages_have_marked_numbers() -> None:
    """The home page's and the README's performance claims are marked (so they are checked)."""
    for page in ("docs/index.md", "README.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        kinds = {m["spec"].split(";")[0].strip() for m in numbers.markers(text)}
        assert {"median", "ratio", "run"} <= kinds, (page, kinds)


def test_no_time_or_speedup_outside_a_marker() -> None:
    found = []
    for path in numbers.pages():
        name = path.relative_to(ROOT).as_posix()
        if name in GENERATED:
            continue
        for m in MEASURED.finditer(prose(path.read_text(encoding="utf-8"))):
            found.append(f"{name}: {m.group()!r}")
    assert found == [], "write these as <!-- n: ... --> markers (docs/scripts/site_numbers.py):\n" + "\n".join(found)


def test_benchmark_pages_are_the_report_of_the_run_they_name() -> None:
    report = load("bench_report", ROOT / "bench" / "report.py")
    for name in ("cpu", "cpu-1thread"):
        page = (ROOT / "docs" / "benchmarks" / f"{name}.md").read_text(encoding="utf-8")
        source = re.search(r"from `(bench/results/[^`]+\.json)`", page)
        assert source is not None, f"docs/benchmarks/{name}.md does not name its run"
        machine, groups = report.load([Path(source.group(1))])
        expected = report.markdown(machine, report.rows(groups), name)
        assert page.startswith(expected), f"docs/benchmarks/{name}.md: rerun bench/report.py {source.group(1)}"


def test_checker_reports_a_wrong_number_and_a_missing_source(tmp_path: Path) -> None:
    run = json.loads((numbers.RESULTS / "cpu-1thread.json").read_text())
    ours = numbers.per_call("cpu-1thread", "set_timesteps cpu 1000", "kdpm2")
    theirs = numbers.per_call("cpu-1thread", "set_timesteps cpu 1000", "diffusers")
    b = next(
        b for b in run["benchmarks"] if b["group"] == "set_timesteps cpu 1000" and b["extra_info"]["impl"] == "kdpm2"
    )
    assert ours == b["stats"]["median"] / b["extra_info"]["calls_per_round"]
    right = numbers.render("median ; cpu-1thread ; set_timesteps cpu 1000 ; kdpm2 ; ms")
    assert right == f"{ours * 1e3:.3g} ms"
    assert numbers.render("ratio ; cpu-1thread ; set_timesteps cpu 1000 ; diffusers") == f"{theirs / ours:.0f}x"
    assert numbers.render("ratio ; cpu-1thread ; set_timesteps cpu 1000 ; kdpm2 ; diffusers") == f"{ours / theirs:.1f}x"
    page = tmp_path / "page.md"
    page.write_text(
        "| a | <!-- n: median ; cpu-1thread ; set_timesteps cpu 1000 ; kdpm2 ; ms -->9.99 ms<!-- /n --> |\n"
        f"ok <!-- n: median ; cpu-1thread ; set_timesteps cpu 1000 ; kdpm2 ; ms -->{right}<!-- /n -->\n"
        "<!-- n: run ; no-such-run -->x<!-- /n -->\n"
    )
    found = numbers.disagreements([page])
    assert len(found) == 2, found
    assert found[0].endswith(
        f":1: '9.99 ms' should be '{right}' (median ; cpu-1thread ; set_timesteps cpu 1000 ; kdpm2 ; ms)"
    )
    assert "no result file bench/results/no-such-run.json" in found[1]
    assert numbers.fill(page.read_text().splitlines()[0]) == (
        f"| a | <!-- n: median ; cpu-1thread ; set_timesteps cpu 1000 ; kdpm2 ; ms -->{right}<!-- /n --> |"
    )


def test_run_description_names_date_machine_and_file() -> None:
    text = numbers.describe("cpu-1thread")
    assert text == (
        "2026-11-25 on 2-core Intel(R) Xeon(R) Processor (torch 2.14.1, 1 thread; `bench/results/cpu-1thread.json`)"
    )


def test_prose_check_sees_times_and_speedups_but_not_shapes() -> None:
    text = (
        "took 12.5 ms, 40 us and 3 seconds: 26x faster on 1x4x64x64 `2.0x` <!-- n: ratio ; a ; b ; c -->9x<!-- /n -->"
    )
    assert [m.group() for m in MEASURED.finditer(prose(text))] == ["12.5 ms", "40 us", "3 seconds", "26x"]


@pytest.mark.parametrize(
    "spec",
    ["median ; cpu-1thread ; nope ; kdpm2 ; ms", "median ; cpu-1thread ; set_timesteps cpu 25 ; kdpm2 ; ns", "sum ; x"],
)
def test_bad_markers_are_errors_that_say_why(spec: str) -> None:
    with pytest.raises(ValueError, match=r"no benchmark of 'kdpm2' in group 'nope'|unit 'ns'|unknown number 'sum ; x'"):
        numbers.render(spec)


def test_demo_table_is_the_record_row_by_row() -> None:
    """The home page's demo table: one row per step count, kdpm2's error and the others' distance."""
    path = ROOT / "docs" / "images" / "demo.json"
    data = json.loads(path.read_text())
    lines = numbers.render("demo ; docs/images/demo.json").strip().splitlines()
    assert lines[0] == "| steps | model calls | kdpm2 error | k-diffusion - kdpm2 | diffusers - kdpm2 |"
    assert len(lines) == 2 + len(data["step_counts"])
    for line, steps, calls, error in zip(
        lines[2:], data["step_counts"], data["calls"], data["errors"]["kdpm2"], strict=True
    ):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert (int(cells[0]), int(cells[1]), float(cells[2])) == (steps, 2 * steps - 1, float(f"{error:.3e}"))
        assert calls == 2 * steps - 1
        assert all(float(c) < 1e-3 * error for c in cells[3:]), "the samplers agree far below the error"


def test_instruction_counts_are_the_record_row_by_row(tmp_path: Path) -> None:
    """The callgrind table, one count and the run line come from a ``bench/instructions.py`` record."""
    record = {
        "date": "2026-12-04 09:10 UTC",
        "commit": "abc1234",
        "command": "python bench/instructions.py",
        "machine": {
            "cpu": "Some CPU",
            "cores": 2,
            "python": "3.11.7",
            "torch": "2.14.1",
            "diffusers": "0.42.1",
            "valgrind": "valgrind-3.22.0",
        },
        "floors": {"step": "two `torch.add`"},
        "operations": {
            "step": {"what": "one `step`", "kdpm2": 67548.2, "diffusers": 217000.0, "floor": 50123.0},
            "ancestral_set_timesteps_25": {
                "what": "DPM2 a: `set_timesteps(25)`",
                "kdpm2": 2345678.0,
                "diffusers": 23456789.0,
                "floor": None,
            },
        },
    }
    path = tmp_path / "instructions.json"
    path.write_text(json.dumps(record))
    lines = numbers.render(f"instructions ; {path}").strip().splitlines()
    assert lines[0] == "| operation | kdpm2 | diffusers | floor | diffusers / kdpm2 |"
    assert lines[2] == "| one `step` | 67,548 | 217,000 | 50,123 | 3.2x |"
    assert lines[3] == "| DPM2 a: `set_timesteps(25)` | 2,345,678 | 23,456,789 |  | 10.0x |"
    assert lines[-1] == "- step: two `torch.add`"
    assert numbers.render(f"count ; {path} ; step ; kdpm2") == "67.5k"
    assert numbers.render(f"count ; {path} ; ancestral_set_timesteps_25 ; diffusers") == "23.5M"
    with pytest.raises(ValueError, match="no count of 'floor'"):
        numbers.render(f"count ; {path} ; ancestral_set_timesteps_25 ; floor")
    run = numbers.render(f"instructions-run ; {path}")
    assert run.startswith("2026-12-04 09:10 UTC at commit `abc1234` on 2-core Some CPU (Python 3.11.7, torch 2.14.1")
