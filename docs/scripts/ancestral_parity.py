"""The DPM2 a figures of docs/parity.md: measure them into a result file, or print the page's tables.

    PYTHONPATH=src:spec python docs/scripts/ancestral_parity.py --measure   # writes the file below
    PYTHONPATH=src:spec python docs/scripts/ancestral_parity.py --nan-steps # adds this CPU's NaN step counts
    PYTHONPATH=src:spec python docs/scripts/ancestral_parity.py             # prints the tables

Inputs and outputs, all committed under ``tests/parity/``:

- ``ancestral_cpu_spread.json`` (from ``tests/parity/cpu_spread.py``): how far upstream's own
  runs and ours move from ``ancestral.json`` across CPU code paths;
- ``ancestral_measured.json`` (``--measure``): ours against k-diffusion run on this machine, and
  against diffusers 0.42 (where its ``squaredcos_cap_v2`` runs are NaN; how far its loops are from
  ours on the grid of ``tests/test_ancestral_diffusers.py``).

``tests/test_ancestral_parity.py`` checks that the page shows what this prints.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PARITY = ROOT / "tests" / "parity"
SPREAD = PARITY / "ancestral_cpu_spread.json"
MEASURED = PARITY / "ancestral_measured.json"
BEGIN, END = (
    "<!-- ancestral-parity: begin -->",
    "<!-- ancestral-parity: end -->",
)

FIELDS = [
    ("sigmas_ulps", "main sigmas", "float32 ulps"),
    ("call_sigma_ulps", "every call's sigma", "float32 ulps"),
    ("timestep_steps", "ComfyUI timesteps (integers)", "steps"),
    ("timestep_ulps", "A1111 timesteps (continuous)", "float32 ulps"),
    ("final_scale_ulps", "final latent", "ulps of its largest entry"),
    ("final_rel_l2", "final latent", "relative L2"),
]


def measure() -> dict[str, Any]:
    """Ours against k-diffusion here (28 recorded cases) and against diffusers 0.42."""
    import numpy as np
    import torch

    sys.path[:0] = [str(PARITY), str(ROOT / "tests")]
    import cpu_spread

    from test_ancestral_diffusers import (
        BETAS,
        FAMILIES,
        LOOP_RTOL,
        SPACINGS,
        STEPS,
        cancellation,
        pair,
        scaled_loop,
    )

    torch.set_num_threads(1)
    figures = json.loads(
        (PARITY / "ancestral.json").read_text(encoding="utf-8")
    )
    worst = {"call_mismatches": 0, "final_scale_ulps": 0.0, "final_rel_l2": 0.0}
    for case in figures["cases"]:
        up = cpu_spread.upstream_run(
            case, figures["noise"], figures["latent_shape"]
        )
        ours = cpu_spread.kdpm2_run(
            case, figures["noise"], figures["latent_shape"]
        )
        calls = [[float(np.float32(s)), t] for s, t in ours["calls"]]
        worst["call_mismatches"] += sum(
            a != b for a, b in zip(calls, up["calls"], strict=True)
        )
        a, b = np.array(ours["final_latent"]), np.array(up["final_latent"])
        worst["final_scale_ulps"] = max(
            worst["final_scale_ulps"],
            float(np.abs(a - b).max())
            / cpu_spread.ulp32(float(np.abs(b).max())),
        )
        worst["final_rel_l2"] = max(
            worst["final_rel_l2"],
            float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        )
    import diffusers

    nan_steps = nan_steps_squaredcos()
    loop_worst, loop_sd, loop_ratio = 0.0, 0.0, 0.0
    for beta, family, (spacing, offset), n in itertools.product(
        BETAS, FAMILIES, SPACINGS, STEPS
    ):
        if family == "beta" and beta == "trained_betas":
            continue
        d, o = pair(beta, family, spacing, offset)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(n))
        want, scale = scaled_loop(d, n, x, torch.Generator().manual_seed(10))
        got, _ = scaled_loop(o, n, x, torch.Generator().manual_seed(10))
        if bool(torch.isfinite(want).all()):
            error = float((got - want).abs().max()) / scale
            loop_worst = max(loop_worst, error)
            loop_ratio = max(
                loop_ratio, error / (LOOP_RTOL + 4 * cancellation(o))
            )
            if beta == "scaled_linear":
                loop_sd = max(loop_sd, error)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": _cpu_model(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "threads": 1,
        },
        "kdiffusion_here": worst,
        "diffusers_nan_steps_squaredcos": nan_steps,
        "diffusers_loop_worst": loop_worst,
        "diffusers_loop_worst_scaled_linear": loop_sd,
        "diffusers_loop_worst_over_bound": loop_ratio,
    }


def nan_steps_squaredcos() -> dict[str, list[int]]:
    """Per spacing/sigmas, the step counts (1 to 100) where diffusers' squaredcos_cap_v2 tables are NaN here."""
    import diffusers
    import torch

    nan_steps: dict[str, list[int]] = {}
    theirs = diffusers.KDPM2AncestralDiscreteScheduler(
        beta_schedule="squaredcos_cap_v2"
    )
    for spacing, family in itertools.product(
        ("linspace", "leading", "trailing"), (None, "karras", "exponential")
    ):
        flags = {
            "use_karras_sigmas": family == "karras",
            "use_exponential_sigmas": family == "exponential",
        }
        theirs.register_to_config(timestep_spacing=spacing, **flags)
        bad = []
        for n in range(1, 101):
            theirs.set_timesteps(n)
            calls = len(theirs.timesteps)
            if not (
                torch.isfinite(theirs.sigmas_down).all()
                and torch.isfinite(theirs.sigmas_interpol[:calls]).all()
            ):
                bad.append(n)
        nan_steps[f"{spacing}/{family or 'spaced'}"] = bad
    return nan_steps


def record_nan_steps() -> None:
    """Add (or replace) this CPU's entry of ``diffusers_nan_steps_by_cpu`` in the measured file."""
    import diffusers

    measured = json.loads(MEASURED.read_text(encoding="utf-8"))
    cpu = _cpu_model()
    entries = [
        e
        for e in measured.get("diffusers_nan_steps_by_cpu", [])
        if e["cpu"] != cpu
    ]
    entries.append(
        {
            "cpu": cpu,
            "date": datetime.date.today().isoformat(),
            "diffusers": diffusers.__version__,
            "steps": nan_steps_squaredcos(),
        }
    )
    measured["diffusers_nan_steps_by_cpu"] = entries
    MEASURED.write_text(json.dumps(measured, indent=1) + "\n", encoding="utf-8")


def _cpu_model() -> str:
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines()
        if Path("/proc/cpuinfo").exists()
        else []
    ):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _number(value: float, unit: str) -> str:
    return f"{value:.2g}" if unit == "relative L2" else f"{value:g}"


def tables() -> str:
    """The Markdown between the page's markers."""
    spread = json.loads(SPREAD.read_text(encoding="utf-8"))
    measured = json.loads(MEASURED.read_text(encoding="utf-8"))
    summary = spread["summary_max_over_variants"]
    count = len(spread["variants"])
    lines = [
        f"Largest distance from the recorded figures over the 28 runs, across {count} CPU code paths of one "
        f"{spread['cpu_model']} (`MKL_CBWR` x `ATEN_CPU_CAPABILITY`; the figures were recorded on an Intel Xeon):",
        "",
        "| field | unit | upstream's own code | kdpm2 | tolerance in the tests |",
        "|---|---|---|---|---|",
    ]
    for key, name, unit in FIELDS:
        up, ours = summary["upstream"][key], summary["kdpm2"][key]
        tolerance = "exact" if up == 0 else _number(2 * max(up, ours), unit)
        lines.append(
            f"| {name} | {unit} | {_number(up, unit)} | {_number(ours, unit)} | {tolerance} |"
        )
    here = measured["kdiffusion_here"]
    nan = measured["diffusers_nan_steps_squaredcos"]
    nan_text = "; ".join(f"{k}: {_ranges(v)}" for k, v in nan.items() if v)
    lines += [
        "",
        f"On one machine ({measured['machine']['cpu']}, {measured['date']}): against k-diffusion's sampler run "
        f"there, {here['call_mismatches']} of the calls' sigmas and timesteps differ (bit for bit equal), and the "
        f"final latent is within {here['final_scale_ulps']:g} ulps of its largest entry "
        f"(relative L2 {here['final_rel_l2']:.2g}).",
        "",
        f"diffusers {measured['machine']['diffusers']}, same seeds, on the grid of "
        "`tests/test_ancestral_diffusers.py`: where its loop is finite, ours is within "
        f"{measured['diffusers_loop_worst_scaled_linear']:.2g} of the loop's largest sample with the SD betas, "
        f"and within {measured['diffusers_loop_worst']:.2g} in all, where diffusers' float32 "
        "`sqrt(s_next^2 - sigma_up^2)` cancels (at most "
        f"{measured['diffusers_loop_worst_over_bound']:.2g} of the test's bound, 2e-5 plus four times that "
        f"cancellation error). On that machine its `squaredcos_cap_v2` runs are NaN at (spacing/sigmas: steps, "
        f"of 1 to 100) {nan_text}.",
    ]
    others = [
        e
        for e in measured.get("diffusers_nan_steps_by_cpu", [])
        if e["cpu"] != measured["machine"]["cpu"]
    ]
    if others:
        text = " and ".join(
            f"on an {e['cpu']} ({e['date']}), "
            + "; ".join(
                f"{k}: {_ranges(v)}" for k, v in e["steps"].items() if v
            )
            for e in others
        )
        lines[-1] += (
            " Which step counts turn NaN depends on the last bit of its float32 sigmas, so on the CPU: "
            f"{text}. `tests/test_ancestral_diffusers.py` asserts the cause wherever it is NaN, and NaN at 2 and 3 "
            "steps."
        )
    return "\n".join(lines)


def _ranges(values: list[int]) -> str:
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--measure",
        action="store_true",
        help=f"measure and write {MEASURED.name}",
    )
    parser.add_argument(
        "--nan-steps",
        action="store_true",
        help=f"record where diffusers' squaredcos_cap_v2 tables are NaN on this CPU into {MEASURED.name}",
    )
    args = parser.parse_args()
    if args.nan_steps:
        record_nan_steps()
    if args.measure:
        MEASURED.write_text(
            json.dumps(measure(), indent=1) + "\n", encoding="utf-8"
        )
    print(tables())


if __name__ == "__main__":
    main()
