"""Instruction counts under callgrind: kdpm2, diffusers and the bare torch ops, per operation.

    python bench/instructions.py [--out bench/results/instructions-cpu] [--only step,loop25]

Timings on a shared machine move by tens of percent from run to run; the number of instructions
a call executes does not (to within a few hundred). This script runs itself under
``valgrind --tool=callgrind --instr-atstart=no`` (imports run uninstrumented), brackets every
measured region with callgrind client requests (``bench/cg_marks.c``, compiled here with ``cc``)
and writes ``OUT.json`` and ``OUT.md``: per operation, the instructions of ``kdpm2``, of
diffusers' ``KDPM2DiscreteScheduler`` (``KDPM2AncestralDiscreteScheduler`` for the ``ancestral_``
operations) and of the ``floor``, the bare torch operations the operation cannot do without
(listed in ``FLOORS``; none is written for the ancestral ``set_timesteps``). One torch thread,
float32, Python's hash seed fixed.

Each operation is timed as a region of ``rounds`` runs, minus a region of the same rounds of its
setup alone where it has one: the ``step`` figure is a real 25-step loop (every call index once,
as pipelines call it) minus the loop's ``set_timesteps``, ``set_begin_index`` and the views of
``timesteps`` it iterates over, over 49 calls.
Needs valgrind (``apt-get install valgrind``), its ``valgrind/callgrind.h`` and a C compiler;
takes 5-15 minutes.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ("kdpm2", "diffusers", "floor")
STEPS = 25
CALLS = 2 * STEPS - 1
SHAPE = (1, 4, 64, 64)
BATCH_SHAPE = (4, 4, 64, 64)


class Op(NamedTuple):
    """One measured operation: ``build(impl)`` gives ``(run, setup)``; ``run`` does ``calls`` operations."""

    name: str
    what: str
    calls: int
    rounds: int
    build: Callable[[str], tuple[Callable[[], Any], Callable[[], Any] | None] | None]


def scheduler(impl: str, **config: Any) -> Any:
    if impl == "kdpm2":
        from kdpm2 import KDPM2DiscreteScheduler
    else:
        from diffusers import KDPM2DiscreteScheduler
    return KDPM2DiscreteScheduler(**config)


def ancestral(impl: str) -> Any:
    """``KDPM2AncestralDiscreteScheduler`` (DPM2 a) of ``impl``: the class that shares kdpm2's core."""
    if impl == "kdpm2":
        from kdpm2 import KDPM2AncestralDiscreteScheduler
    else:
        from diffusers import KDPM2AncestralDiscreteScheduler
    return KDPM2AncestralDiscreteScheduler()


def tensors(shape: tuple[int, ...], count: int) -> list[Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=g) for _ in range(count)]


# -- the floors: what the operation cannot do without, as bare torch calls --------------------


def floor_step(x: Any, m: Any) -> Any:
    """One model call at the least: ``prev`` and ``x0``, each one ``torch.add`` of two inputs."""
    import torch

    torch.add(x, m, alpha=-0.5)
    return torch.add(x, m, alpha=-1.5)


def floor_set_timesteps(n: int, train: Any) -> tuple[Any, Any, Any]:
    """The public tables of ``n`` linspace steps with vectorised float64 torch, as a minimal version would.

    Spaced timesteps, their training sigmas, the geometric midpoints and their timesteps, and the
    interleaved float32 tables: no checks, no per-call tables.
    """
    import numpy as np
    import torch

    f64 = torch.float64
    t = torch.linspace(0, len(train) - 1, n, dtype=f64).flip(0)
    grid = np.arange(len(train), dtype=np.float64)
    s = torch.from_numpy(np.interp(t.numpy(), grid, train.numpy()))
    s = torch.cat([s, s.new_zeros(1)])
    mids = (s[:-1] * s[1:]).sqrt()
    mid_t = torch.from_numpy(np.interp(np.log(mids[:-1].numpy()), np.log(train.numpy()), grid))
    sigmas = torch.cat([s[:1], s[1:].repeat_interleave(2), s[-1:]]).float()
    interpol = torch.cat([s[:1], mids.repeat_interleave(2), mids[-1:]]).float()
    timesteps = torch.cat([t[:1], torch.stack([mid_t, t[1:]], dim=1).reshape(-1), mids[-1:] * 0]).float()
    return timesteps, sigmas, interpol


def floor_constructor(train_count: int = 1000) -> Any:
    """The training table (``linspace`` of betas, cumulative product, sigmas) and ``set_timesteps(1000)``."""
    import torch

    betas = torch.linspace(0.00085, 0.012, train_count, dtype=torch.float32)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    train = ((1 - alphas_cumprod.double()) / alphas_cumprod.double()).sqrt()
    return floor_set_timesteps(train_count, train)


def training_sigmas() -> Any:
    import torch

    betas = torch.linspace(0.00085, 0.012, 1000, dtype=torch.float32)
    a = torch.cumprod(1.0 - betas, dim=0).double()
    return ((1 - a) / a).sqrt()


# -- the operations ------------------------------------------------------------------------------


def build_step(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    x0, m = tensors(SHAPE, 2)
    if impl == "floor":

        def floor_loop() -> None:
            x = x0
            for _ in range(CALLS):
                x = floor_step(x, m)

        return floor_loop, None
    s = scheduler(impl)

    def setup() -> list[Any]:
        s.set_timesteps(STEPS)
        s.set_begin_index(0)
        return list(s.timesteps)  # the views a loop over s.timesteps yields (made in both regions)

    def loop() -> None:
        x = x0
        for t in setup():
            x = s.step(m, t, x).prev_sample

    return loop, setup


def build_loop(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    x0, m = tensors(SHAPE, 2)
    if impl == "floor":

        def floor_loop() -> None:
            x = x0
            for _ in range(CALLS):
                x.div(1.5)
                x = floor_step(x, m)

        return floor_loop, None
    s = scheduler(impl)

    def loop() -> None:
        s.set_timesteps(STEPS)
        s.set_begin_index(0)
        x = x0
        for t in s.timesteps:
            s.scale_model_input(x, t)
            x = s.step(m, t, x).prev_sample

    return loop, None


def build_set_timesteps(n: int) -> Callable[[str], tuple[Callable[[], Any], Callable[[], Any] | None]]:
    def build(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
        if impl == "floor":
            train = training_sigmas()
            return lambda: floor_set_timesteps(n, train), None
        s = scheduler(impl)
        return lambda: s.set_timesteps(n), None

    return build


def build_constructor(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
    if impl == "floor":
        return floor_constructor, None
    return lambda: scheduler(impl), None


def build_add_noise(begin: bool) -> Callable[[str], tuple[Callable[[], Any], Callable[[], Any] | None]]:
    def build(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None]:
        x, noise = tensors(BATCH_SHAPE, 2)
        if impl == "floor":
            import torch

            sigma = torch.full((BATCH_SHAPE[0], 1, 1, 1), 3.0)
            return lambda: x + noise * sigma, None
        s = scheduler(impl)
        s.set_timesteps(STEPS)
        if begin:
            s.set_begin_index(10)
        t = s.timesteps[10:11].expand(BATCH_SHAPE[0])
        return lambda: s.add_noise(x, noise, t), None

    return build


def build_ancestral_step(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None] | None:
    """DPM2 a in a real 25-step loop, each second-order call drawing its noise from a generator."""
    import torch

    x0, m = tensors(SHAPE, 2)
    if impl == "floor":

        def floor_loop() -> None:
            g = torch.Generator().manual_seed(0)
            x = x0
            for k in range(CALLS):
                x = floor_step(x, m)
                if k % 2:  # a second-order call: its draw and one more term
                    x = x.add(torch.randn(SHAPE, generator=g), alpha=0.5)

        return floor_loop, None
    s = ancestral(impl)

    def setup() -> list[Any]:
        s.set_timesteps(STEPS)
        s.set_begin_index(0)
        return list(s.timesteps)

    def loop() -> None:
        g = torch.Generator().manual_seed(0)
        x = x0
        for t in setup():
            x = s.step(m, t, x, generator=g).prev_sample

    return loop, setup


def build_ancestral_set_timesteps(n: int) -> Callable[[str], tuple[Callable[[], Any], Callable[[], Any] | None] | None]:
    def build(impl: str) -> tuple[Callable[[], Any], Callable[[], Any] | None] | None:
        if impl == "floor":
            return None  # no bare-torch version of the ancestral split is written here
        s = ancestral(impl)
        return lambda: s.set_timesteps(n), None

    return build


OPS = (
    Op("step", "one `step` call in a real 25-step loop, 1x4x64x64 float32 (per call)", CALLS, 4, build_step),
    Op("loop25", "25-step loop: set_timesteps, scale_model_input + step per call (per loop)", 1, 3, build_loop),
    Op("set_timesteps_1000", "`set_timesteps(1000)`", 1, 2, build_set_timesteps(1000)),
    Op("set_timesteps_25", "`set_timesteps(25)`", 1, 5, build_set_timesteps(25)),
    Op("constructor", "`KDPM2DiscreteScheduler()` (runs `set_timesteps(1000)`)", 1, 2, build_constructor),
    Op("add_noise_begin", "`add_noise`, 4x4x64x64, begin index set", 1, 20, build_add_noise(True)),
    Op("add_noise_lookup", "`add_noise`, 4x4x64x64, timestep lookup (no begin index)", 1, 20, build_add_noise(False)),
    Op(
        "ancestral_step",
        "DPM2 a: one `step` call in a real 25-step loop, noise from a generator, 1x4x64x64 float32 (per call)",
        CALLS,
        4,
        build_ancestral_step,
    ),
    Op("ancestral_set_timesteps_1000", "DPM2 a: `set_timesteps(1000)`", 1, 2, build_ancestral_set_timesteps(1000)),
    Op("ancestral_set_timesteps_25", "DPM2 a: `set_timesteps(25)`", 1, 5, build_ancestral_set_timesteps(25)),
)

FLOORS = {
    "step": "two `torch.add(x, m, alpha=c)` (prev and x0)",
    "loop25": "per call one `x.div(c)` and two `torch.add`",
    "set_timesteps_1000": "`floor_set_timesteps`: about 20 vectorised float64 torch/NumPy ops building the three public tables",
    "set_timesteps_25": "the same for 25 steps",
    "constructor": "`linspace` of betas, `cumprod`, the training sigmas and `floor_set_timesteps(1000)`",
    "add_noise_begin": "`x + noise * sigma`, sigma a prebuilt (4, 1, 1, 1) tensor",
    "add_noise_lookup": "the same",
    "ancestral_step": "the `step` floor, plus per second-order call one `torch.randn` from a generator and one `add`",
}


# -- the child: runs under callgrind -------------------------------------------------------------


def child(names: list[str], impls: list[str]) -> None:
    import warnings

    marks = ctypes.CDLL(os.environ["KDPM2_CG_MARKS"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import diffusers  # noqa: F401
        import torch

        import kdpm2  # noqa: F401
    torch.set_num_threads(1)
    marks.cg_start()
    for op in OPS:
        if op.name not in names:
            continue
        for impl in impls:
            built = op.build(impl)
            if built is None:  # no such implementation of this operation (a floor not written)
                continue
            run, setup = built
            regions = [("run", run)] + ([("setup", setup)] if setup is not None else [])
            for label, function in regions:
                for _ in range(2):  # warm: translated code, caches, lazily built tables
                    function()
                marks.cg_zero()
                for _ in range(op.rounds):
                    function()
                marks.cg_dump(f"{op.name}|{impl}|{label}".encode())


# -- the parent: runs valgrind, parses the dumps, writes the results ----------------------------


def compile_marks(folder: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("needs a C compiler (cc) to build the callgrind client requests")
    library = folder / "cg_marks.so"
    subprocess.run(
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(ROOT / "bench" / "cg_marks.c")], check=True
    )
    return library


def parse_dumps(folder: Path) -> dict[tuple[str, str, str], int]:
    """``{(op, impl, region): instructions}`` from the dump files callgrind wrote."""
    found = {}
    for path in folder.glob("cg.*"):
        text = path.read_text(errors="replace")
        trigger = re.search(r"^desc: Trigger: Client Request: (\S+)$", text, re.M)
        summary = re.search(r"^summary: (\d+)$", text, re.M)
        if trigger and summary:
            op, impl, region = trigger.group(1).split("|")
            found[(op, impl, region)] = int(summary.group(1))
    return found


def per_call(found: dict[tuple[str, str, str], int], op: Op, impl: str) -> float | None:
    run = found.get((op.name, impl, "run"))
    if run is None:
        return None
    setup = found.get((op.name, impl, "setup"), 0)
    return (run - setup) / (op.rounds * op.calls)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "diffusers", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    out["valgrind"] = valgrind.stdout.strip()
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Instructions per operation (callgrind)",
        "",
        f"{data['date']}, commit `{data['commit']}`, {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"torch {m['torch']}, diffusers {m['diffusers']}, {m['valgrind']}, one torch thread. Command: "
        f"`{data['command']}`.",
        "",
        "| operation | kdpm2 | diffusers | floor | diffusers / kdpm2 | kdpm2 over the floor |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in data["operations"].values():
        ours, theirs, floor = row.get("kdpm2"), row.get("diffusers"), row.get("floor")
        ratio = f"{theirs / ours:.1f}x" if ours and theirs else ""
        over = f"{ours - floor:,.0f}" if ours and floor is not None else ""
        lines.append(f"| {row['what']} | {fmt(ours)} | {fmt(theirs)} | {fmt(floor)} | {ratio} | {over} |")
    lines += ["", "Floors:", ""] + [f"- `{k}`: {v}" for k, v in FLOORS.items()]
    return "\n".join(lines) + "\n"


def fmt(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "instructions-cpu")
    parser.add_argument("--only", default=",".join(op.name for op in OPS), help="comma-separated operations")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    impls = [n for n in args.impls.split(",") if n]
    unknown = sorted(set(names) - {op.name for op in OPS}) + sorted(set(impls) - set(IMPLS))
    if unknown:
        parser.error(f"unknown operations or implementations: {unknown}")
    if args.child:
        child(names, impls)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="kdpm2-cg-") as tmp:
        folder = Path(tmp)
        env = {
            **os.environ,
            "KDPM2_CG_MARKS": str(compile_marks(folder)),
            "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec"), os.environ.get("PYTHONPATH", "")]),
        }
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={folder}/cg.%p"]
        argv += [sys.executable, str(Path(__file__).resolve()), "--child", "--only", ",".join(names)]
        argv += ["--impls", ",".join(impls)]
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = parse_dumps(folder)
    operations = {}
    for op in OPS:
        if op.name in names:
            row: dict[str, Any] = {"what": op.what, "rounds": op.rounds, "calls_per_round": op.calls}
            row.update({impl: per_call(found, op, impl) for impl in impls})
            operations[op.name] = row
    shown = " ".join(["python", "bench/instructions.py", *sys.argv[1:]])
    data = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "command": shown,
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(), **versions()},
        "floors": FLOORS,
        "operations": operations,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
