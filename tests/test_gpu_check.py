"""``bench/gpu_check.py``, the one command of a GPU lease, dry-run on the CPU so it cannot rot.

The end-to-end run is ``--device cpu --quick`` over machine, install, bench and report; the
commands of the test and conformance steps are checked with the subprocess replaced, so this file
takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


gc = load_script()


def test_wheels_to_install_never_touch_torch(tmp_path: Path) -> None:
    """torch, triton, numpy and the CUDA libraries stay the machine's; everything else is installed."""
    names = [
        "diffusers-0.42.1-py3-none-any.whl",
        "k_diffusion-0.1.1.post1-py3-none-any.whl",
        "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "torchsde-0.2.6-py3-none-any.whl",
        "triton-3.6.0-cp312-cp312-manylinux_2_27_x86_64.whl",
        "nvidia_cublas-13.0-py3-none-manylinux_2_27_x86_64.whl",
        "numpy-2.5.2-cp312-cp312-manylinux_2_28_x86_64.whl",
    ]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    got = [w.name for w in gc.wheels_to_install(tmp_path)]
    assert got == ["diffusers-0.42.1-py3-none-any.whl", "k_diffusion-0.1.1.post1-py3-none-any.whl"]
    assert gc.wheels_to_install(tmp_path / "absent") == []


def test_junit_counts_and_summary(tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/>'
        '<testsuite tests="3" failures="0" errors="1" skipped="0"/></testsuites>'
    )
    assert gc.junit_counts(xml) == {"tests": 8, "failures": 1, "errors": 1, "skipped": 2}
    assert gc.junit_counts(tmp_path / "missing.xml") == {}
    table = gc.summary_table([gc.Step("cuda-tests", "failed", 1.25, detail="exit 1", counts=gc.junit_counts(xml))])
    assert "| cuda-tests | failed | 1.2 | exit 1 | 8 (1/1/2) |" in table


def test_a_spent_budget_skips_steps_and_still_writes_the_summary(tmp_path: Path) -> None:
    run = gc.Run(tmp_path / "out", budget=0.0, device="cpu", quick=True, site=tmp_path / "site")
    step = run.run("bench", [sys.executable, "-c", "raise SystemExit(3)"], 60)
    assert (step.status, step.detail) == ("skipped", "no time left in the budget")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"][0]["status"] == "skipped"


def test_failing_step_is_recorded_with_its_log(tmp_path: Path) -> None:
    run = gc.Run(tmp_path / "out", budget=120.0, device="cpu", quick=True, site=tmp_path / "site")
    step = run.run("boom", [sys.executable, "-c", "print('hello'); raise SystemExit(3)"], 60)
    assert (step.status, step.detail) == ("failed", "exit 3")
    assert "hello" in (tmp_path / "out" / "boom.log").read_text()


def test_step_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``pytest -m cuda`` with JUnit XML; conformance per dtype once ``check`` has the options."""
    run = gc.Run(tmp_path / "out", budget=100.0, device="cuda", quick=False, site=tmp_path / "site")
    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(run, "run", lambda name, argv, limit, files=(): seen.append((name, list(argv))))
    gc.cuda_tests(run)
    assert seen[-1][0] == "cuda-tests"
    junit = ["--junitxml", str(run.out / "cuda-tests.xml")]
    assert seen[-1][1][1:] == ["-m", "pytest", "tests", "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider", *junit]
    monkeypatch.setattr(gc, "check_options", lambda: "usage: ... --device DEVICE --dtype DTYPE --junit-xml PATH")
    gc.conformance(run)
    names = [name for name, _ in seen[1:]]
    assert names == ["conformance-float32", "conformance-float16", "conformance-bfloat16"]
    argv = seen[2][1]
    assert argv[argv.index("--device") + 1] == "cuda" and argv[argv.index("--dtype") + 1] == "float16"
    assert argv[argv.index("--junit-xml") + 1] == str(run.out / "conformance-float16.xml")
    assert "--json" not in argv
    gc.bench(run)
    argv = seen[-1][1]
    assert argv[argv.index("-k") + 1] == "cuda or bandwidth" and "--benchmark-json" in argv


def test_conformance_is_skipped_until_check_has_the_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = gc.Run(tmp_path / "out", budget=100.0, device="cuda", quick=False, site=tmp_path / "site")
    monkeypatch.setattr(gc, "check_options", lambda: "usage: check MODULE:CLASS [--profile P]")
    steps = gc.conformance(run)
    assert [(s.name, s.status) for s in steps] == [(f"conformance-{d}", "skipped") for d in gc.DTYPES]


def test_unknown_step_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gc.main(["--steps", "machine,nonsense"])
    assert "unknown steps ['nonsense']" in capsys.readouterr().err


def test_cpu_dry_run_writes_every_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The quick CPU run: machine description, benchmark JSON, the docs table and plot, the summary."""
    out = tmp_path / "gpu-check"
    steps = "machine,install,bench,report"  # conformance: its commands are checked above
    code = gc.main(["--device", "cpu", "--quick", "--out", str(out), "--steps", steps, "--archive"])
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert code == 0, printed
    assert status["machine"] == status["bench"] == status["report"] == "passed", status
    machine = json.loads((out / "machine.json").read_text())
    assert machine["device"] == "cpu" and "torch" in machine
    saved = json.loads((out / "bench-cpu.json").read_text())
    assert {b["extra_info"]["impl"] for b in saved["benchmarks"]} == {"kdpm2", "floor"}
    assert (out / "cpu.png").stat().st_size > 0
    assert "| overhead cpu step 1-element float32 | floor |" in (out / "cpu.md").read_text()
    assert (tmp_path / "gpu-check.tar.gz").exists()
    assert "| report | passed |" in printed


def fake_wheel(folder: Path, name: str, module: str) -> Path:
    """A minimal pure-Python wheel holding one module."""
    import zipfile

    info = f"{name}-0.1.dist-info"
    path = folder / f"{name}-0.1-py3-none-any.whl"
    files = {
        f"{module}.py": "VALUE = 42\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for f, text in files.items():
            archive.writestr(f, text)
    return path


def test_install_puts_missing_modules_beside_and_leaves_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing module is installed from the wheel folder into the private site; a torch wheel is not."""
    wheels = tmp_path / "whl"
    wheels.mkdir()
    fake_wheel(wheels, "kdpm2_fake_dep", "kdpm2_fake_dep")
    (wheels / "torch-9.9-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"not a wheel")
    monkeypatch.setattr(gc, "NEEDED", ("kdpm2_fake_dep",))
    run = gc.Run(tmp_path / "out", budget=120.0, device="cpu", quick=True, site=tmp_path / "site")
    step = gc.install(run, wheels)
    assert step.status == "passed", (tmp_path / "out" / "install.log").read_text()
    assert (tmp_path / "site" / "kdpm2_fake_dep.py").exists()
    assert not list((tmp_path / "site").glob("torch*"))
    assert gc.missing_modules(run.env()) == []
