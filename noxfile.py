"""Sessions for testing, linting, docs, benchmarks and the demo: ``nox -l`` lists them."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def group(name: str) -> list[str]:
    return nox.project.dependency_groups(PYPROJECT, name)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the CPU test suite (CUDA tests skip without a GPU)."""
    session.install(*TORCH, ".", *group("test"))
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": session.env.get("HYPOTHESIS_PROFILE", "ci")})


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
