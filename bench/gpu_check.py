"""One command for a GPU lease: install what is missing, run the CUDA tests, conformance and benchmarks.

    python bench/gpu_check.py [--device cuda|cpu] [--out DIR] [--budget SECONDS] [--quick] [--archive]

(``nox -s cuda`` runs the same with ``--device cuda``.) Runs with the machine's own python and
torch, without network and without nox: every step is a subprocess with its own time limit,
taken from one overall budget (default 450 s, inside a lease's 8 minutes), and writes its log
and results into ``--out`` even when it fails. The steps:

1. ``machine``: ``machine.json`` (python, torch, CUDA, Triton, GPU, ``nvidia-smi``, commit);
2. ``install``: diffusers, k-diffusion and their pure-Python needs from wheels beside the
   checkout (``.whl/``, as ``fetch-wheels.sh`` leaves them) into a private folder with
   ``pip --no-index --no-deps --target``: torch, triton and the CUDA libraries are never touched;
3. ``cuda-tests``: ``pytest -m cuda`` with JUnit XML;
4. ``bench``: the ``bench/`` benchmarks of the device, ours and diffusers in one run (JSON);
5. ``report``: ``bench/report.py`` on that JSON, the docs table and plot (``DEVICE.md/png``);
6. ``conformance-<dtype>``: ``python -m kdpm2_spec check --device DEVICE --dtype DTYPE`` for
   float32, float16 and bfloat16, when that command has the options (else skipped: the CUDA
   tests cover the GPU path until then), each within what is left of the budget.

``summary.json`` and ``summary.md`` are rewritten after every step, and the summary is printed
last. ``--device cpu`` is the dry run (everything that can run on a CPU does); ``--quick`` runs a
tiny subset of each step (the test of this script uses both).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("machine", "install", "cuda-tests", "bench", "report", "conformance")
"""In running order: the benchmarks (the published numbers) come before the longest optional step."""
DTYPES = ("float32", "float16", "bfloat16")
NEEDED = ("diffusers", "k_diffusion")
"""Modules the tests and benchmarks need beyond what a CUDA machine with torch already has."""
KEEP_OFF = ("torch", "triton", "nvidia", "numpy")
"""Wheel name prefixes never installed: the machine's own builds of these stay."""
LIMITS = {"install": 90, "cuda-tests": 180, "conformance": 60, "bench": 200, "report": 40}
"""Seconds a step may take at most (less when the budget left is smaller)."""
RESERVE = 15
"""Seconds of the budget kept for the report and the summary."""


@dataclass
class Step:
    """What one step did: ``passed``, ``failed``, ``timeout``, ``skipped`` or ``error``."""

    name: str
    status: str
    seconds: float = 0.0
    command: str = ""
    detail: str = ""
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Run:
    """The output folder, the budget, the child environment and the steps so far."""

    def __init__(self, out: Path, budget: float, device: str, quick: bool, site: Path) -> None:
        self.out, self.budget, self.device, self.quick, self.site = out, budget, device, quick, site
        self.start = time.monotonic()
        self.steps: list[Step] = []
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def env(self) -> dict[str, str]:
        """The children's environment: our sources first, then the installed wheels."""
        paths = [str(ROOT / "src"), str(ROOT / "spec")]
        if self.site.is_dir():
            paths.append(str(self.site))
        old = os.environ.get("PYTHONPATH")
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([*paths, *([old] if old else [])]),
            "PYTHONUNBUFFERED": "1",
            "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "ci"),
            "MPLBACKEND": "Agg",
        }

    def record(self, step: Step) -> Step:
        self.steps.append(step)
        self.write_summary()
        return step

    def run(self, name: str, argv: Sequence[str], limit: float, files: Sequence[str] = ()) -> Step:
        """Run ``argv`` from the repository root, its output in ``NAME.log``; never raises."""
        timeout = min(limit, self.left() - RESERVE)
        command = " ".join(argv)
        if timeout < 5:
            return self.record(Step(name, "skipped", command=command, detail="no time left in the budget"))
        log = self.out / f"{name}.log"
        began = time.monotonic()
        with log.open("w") as stream:
            stream.write(f"$ {command}\n")
            stream.flush()
            try:
                code = subprocess.run(
                    list(argv), cwd=ROOT, env=self.env(), stdout=stream, stderr=subprocess.STDOUT, timeout=timeout
                ).returncode
                status, detail = ("passed" if code == 0 else "failed"), f"exit {code}"
            except subprocess.TimeoutExpired:
                status, detail = "timeout", f"stopped after {timeout:.0f} s"
            except OSError as error:
                status, detail = "error", str(error)
        present = [f for f in (log.name, *files) if (self.out / f).exists()]
        step = Step(name, status, time.monotonic() - began, command, detail, present)
        for f in present:
            if f.endswith(".xml"):
                step.counts = junit_counts(self.out / f)
        return self.record(step)

    def write_summary(self) -> None:
        data = {"device": self.device, "quick": self.quick, "steps": [asdict(s) for s in self.steps]}
        (self.out / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
        (self.out / "summary.md").write_text(summary_table(self.steps))


def junit_counts(path: Path) -> dict[str, int]:
    """``tests``, ``failures``, ``errors`` and ``skipped`` summed over a JUnit XML file's suites."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return {}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def summary_table(steps: Sequence[Step]) -> str:
    lines = ["| step | status | seconds | detail | tests (fail/err/skip) |", "|---|---|---:|---|---|"]
    for s in steps:
        c = s.counts
        tests = f"{c['tests']} ({c['failures']}/{c['errors']}/{c['skipped']})" if c else ""
        lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.detail} | {tests} |")
    return "\n".join(lines) + "\n"


def wheels_to_install(folder: Path) -> list[Path]:
    """The wheels in ``folder``, without any build of torch, triton, numpy or the CUDA libraries."""
    if not folder.is_dir():
        return []
    return sorted(w for w in folder.glob("*.whl") if not w.name.lower().startswith(KEEP_OFF))


def missing_modules(env: dict[str, str]) -> list[str]:
    """The modules of ``NEEDED`` that the child environment cannot import."""
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    done = subprocess.run([sys.executable, "-c", code, *NEEDED], env=env, capture_output=True, text=True, check=False)
    return done.stdout.split()


def machine(run: Run) -> Step:
    """``machine.json``: what ran, where (read in a child process, so a broken CUDA cannot stop us)."""
    code = r"""
import json, os, platform, sys
info = {"python": sys.version, "platform": platform.platform(), "cpu_count": os.cpu_count()}
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_bytes": p.total_memory,
                       "multiprocessors": p.multi_processor_count}
except Exception as error:
    info["torch_error"] = repr(error)
from importlib import metadata
for name in ("triton", "diffusers", "k-diffusion", "numpy", "pytest", "pytest-benchmark", "hypothesis", "matplotlib"):
    try:
        info[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        info[name] = "missing"
print(json.dumps(info))
"""
    began = time.monotonic()
    info: dict[str, object] = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "device": run.device}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=run.env(), capture_output=True, text=True, timeout=60, check=False
        )
        info.update(json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"error": done.stderr})
    except (subprocess.TimeoutExpired, json.JSONDecodeError) as error:
        info["error"] = repr(error)
    info["commit"] = _output(["git", "rev-parse", "HEAD"]) or "unknown (no git)"
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu"
        info["nvidia_smi"] = _output(["nvidia-smi", f"--query-gpu={query}", "--format=csv"])
    info["host"] = {"machine": platform.machine(), "node": platform.node()}
    (run.out / "machine.json").write_text(json.dumps(info, indent=2) + "\n")
    status = "failed" if "error" in info else "passed"
    return run.record(Step("machine", status, time.monotonic() - began, files=["machine.json"]))


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=20, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def install(run: Run, wheels: Path | None) -> Step:
    """Install the wheels beside the checkout into ``run.site`` when a needed module is missing."""
    missing = missing_modules(run.env())
    if not missing:
        return run.record(Step("install", "skipped", detail=f"{', '.join(NEEDED)} already importable"))
    folders = [wheels] if wheels else [ROOT / ".whl", ROOT.parent / ".whl"]
    found = next((f for f in folders if wheels_to_install(f)), None)
    if found is None:
        detail = f"missing {missing}; no wheels in {', '.join(map(str, folders))} (run fetch-wheels.sh)"
        return run.record(Step("install", "failed", detail=detail))
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    argv += ["--no-cache-dir", "--upgrade", "--target", str(run.site), *map(str, wheels_to_install(found))]
    step = run.run("install", argv, LIMITS["install"])
    still = missing_modules(run.env())
    if still and step.status == "passed":
        step.status, step.detail = "failed", f"installed, but {still} still do not import"
        run.write_summary()
    return step


def cuda_tests(run: Run) -> Step:
    target = ["tests/test_gpu_cuda.py"] if run.quick else ["tests"]
    argv = [sys.executable, "-m", "pytest", *target, "-m", "cuda", "-q", "-rfEs", "-p", "no:cacheprovider"]
    argv += ["--junitxml", str(run.out / "cuda-tests.xml")]
    return run.run("cuda-tests", argv, LIMITS["cuda-tests"], ["cuda-tests.xml"])


def check_options() -> str:
    """The help text of ``python -m kdpm2_spec check`` (empty when it does not run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec")])}
    argv = [sys.executable, "-m", "kdpm2_spec", "check", "--help"]
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout


def conformance(run: Run) -> list[Step]:
    """The conformance suite on the device in each dtype, when ``check`` has ``--device``/``--dtype``."""
    help_text = check_options()
    if "--device" not in help_text or "--dtype" not in help_text:
        reason = "python -m kdpm2_spec check has no --device/--dtype yet; the CUDA tests cover the GPU path"
        return [run.record(Step(f"conformance-{d}", "skipped", detail=reason)) for d in DTYPES]
    steps = []
    for dtype in DTYPES:
        name = f"conformance-{dtype}"
        argv = [sys.executable, "-m", "kdpm2_spec", "check", "kdpm2:KDPM2DiscreteScheduler"]
        argv += ["--device", run.device, "--dtype", dtype, "--no-shrink"]
        files = []
        for option in ("--junitxml", "--junit-xml"):
            if option in help_text:
                argv += [option, str(run.out / f"{name}.xml")]
                files.append(f"{name}.xml")
                break
        if "--json" in help_text:
            argv += ["--json", str(run.out / f"{name}.json")]
            files.append(f"{name}.json")
        if run.quick:
            argv += ["--only", first_property()]
        steps.append(run.run(name, argv, LIMITS["conformance"], files))
    return steps


QUICK_PROPERTY = "step_alternates"
"""The property the quick run checks: cheap, and it applies in every dtype."""


def first_property() -> str:
    """The conformance property the quick run checks (``QUICK_PROPERTY`` where it exists)."""
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "spec")]
    from kdpm2_spec import conformance

    return QUICK_PROPERTY if QUICK_PROPERTY in conformance.PROPERTIES else sorted(conformance.PROPERTIES)[0]


def bench(run: Run) -> Step:
    """The device's benchmarks, ours and diffusers in one pytest-benchmark run."""
    name = f"bench-{run.device}.json"
    if run.quick:
        select = ["bench/test_bench_overhead.py", "-k", f"{run.device} and not diffusers"]  # no diffusers import
        rounds = ["--benchmark-min-rounds=1"]
        rounds += ["--benchmark-max-time=0.0001", "--benchmark-warmup=off", "--benchmark-calibration-precision=1"]
    else:
        keyword = "cuda or bandwidth" if run.device == "cuda" else "cpu"
        select, rounds = ["bench", "-k", keyword], ["--benchmark-min-rounds=10", "--benchmark-max-time=0.5"]
    argv = [sys.executable, "-m", "pytest", *select, "--benchmark-only", *rounds, "-q", "-p", "no:cacheprovider"]
    argv += ["--benchmark-columns=min,median,mean,iqr,rounds", "--benchmark-json", str(run.out / name)]
    argv += ["--junitxml", str(run.out / "bench.xml")]
    return run.run("bench", argv, LIMITS["bench"], [name, "bench.xml"])


def report(run: Run) -> Step:
    """``bench/report.py`` on the saved run: ``DEVICE.md`` and ``DEVICE.png`` in the output folder."""
    saved = run.out / f"bench-{run.device}.json"
    if not saved.exists():
        return run.record(Step("report", "skipped", detail=f"no {saved.name}"))
    argv = [sys.executable, str(ROOT / "bench" / "report.py"), str(saved), "--name", run.device, "--out", str(run.out)]
    return run.run("report", argv, LIMITS["report"] + RESERVE - 5, [f"{run.device}.md", f"{run.device}.png"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected steps; print the summary; exit 1 when a step failed or timed out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when torch sees one")
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-check", help="results folder")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all steps together")
    parser.add_argument("--wheels", type=Path, default=None, help="wheel folder (default .whl/ or ../.whl/)")
    parser.add_argument("--site", type=Path, default=None, help="install target (default OUT/../site)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--quick", action="store_true", help="a tiny subset of each step (the dry-run test)")
    parser.add_argument("--archive", action="store_true", help="also pack the folder as OUT.tar.gz")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STEPS))
    if unknown:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    device = args.device or ("cuda" if importlib.util.find_spec("torch") and _has_cuda() else "cpu")
    site = args.site or args.out.parent / "site"
    run = Run(args.out, args.budget, device, args.quick, site)
    actions = {
        "machine": lambda: machine(run),
        "install": lambda: install(run, args.wheels),
        "cuda-tests": lambda: cuda_tests(run),
        "bench": lambda: bench(run),
        "report": lambda: report(run),
        "conformance": lambda: conformance(run),
    }
    for name in STEPS:
        if name in wanted:
            try:
                actions[name]()
            except Exception as error:  # a broken step must not cost the others their results
                run.record(Step(name, "error", detail=f"{type(error).__name__}: {error}"))
    if args.archive:
        with tarfile.open(args.out.with_name(args.out.name + ".tar.gz"), "w:gz") as tar:
            tar.add(args.out, arcname=args.out.name)
    print(f"\ngpu_check on {device}, results in {args.out}:\n")
    print(summary_table(run.steps))
    return 1 if any(s.status in ("failed", "timeout", "error") for s in run.steps) else 0


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


if __name__ == "__main__":
    sys.exit(main())
