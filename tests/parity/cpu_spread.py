"""How far upstream's own DPM2 a runs move between CPU code paths, and how far kdpm2's do.

``ancestral.json`` was recorded on an Intel Xeon; torch's float32 sqrt/log/exp/pow round
differently on other CPUs and MKL/ATen code paths (``../../docs/parity.md``). This script re-runs,
in one subprocess per code path (``MKL_CBWR`` x ``ATEN_CPU_CAPABILITY``):

- upstream: the front-end's schedule built with k-diffusion's functions on the front-end's
  training table, then k-diffusion's ``sample_dpm_2_ancestral`` with the stored noise through its
  ``noise_sampler`` and the stand-in model of the file's metadata;
- kdpm2: ``KDPM2AncestralDiscreteScheduler.from_preset`` in a diffusers-style loop fed the same
  noise through ``step(noise=...)``;

and writes, per variant and in all, the largest distance of each field from the recorded
figures: call sigmas and A1111 timesteps in float32 ulps, ComfyUI timesteps as integer steps,
the final latent in ulps of its largest entry (``|a - b| / ulp(max |b|)``) and as relative L2.

    PYTHONPATH=src:spec python tests/parity/cpu_spread.py [--out tests/parity/ancestral_cpu_spread.json]

It takes about 25 minutes on a busy 2-core machine (40 subprocesses; k-diffusion imports CLIP, so pin
``setuptools<81``). The committed ``ancestral_cpu_spread.json`` is its output on an AMD EPYC
(2026-12-04); the tolerances of ``tests/test_ancestral_parity.py`` cite it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIGURES = HERE / "ancestral.json"
MKL_PATHS = [None, "COMPATIBLE", "AVX", "AVX2", "AVX512"]
ATEN_PATHS = [None, "default", "avx2", "avx512"]


def ulp32(value: float) -> float:
    import numpy as np

    return float(np.spacing(np.float32(abs(value))))


def upstream_run(case: dict[str, Any], noise: dict[str, Any], shape: list[int]) -> dict[str, Any]:
    """k-diffusion's own sampler, as the front-end of ``case`` runs it (see the module docstring)."""
    import numpy as np
    import torch
    from k_diffusion import external, sampling

    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    comfy = case["frontend"] == "comfyui"
    if comfy:  # float64 sigma and log, each rounded to float32
        train = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
        sigmas_t, log_t = torch.from_numpy(train.astype(np.float32)), torch.from_numpy(np.log(train).astype(np.float32))
    else:  # A1111: CompVisDenoiser on float32 alphas_cumprod
        a = torch.from_numpy(alphas_cumprod.astype(np.float32))
        sigmas_t = ((1 - a) / a) ** 0.5
        log_t = sigmas_t.log()
    model = external.DiscreteSchedule(sigmas_t.clone(), quantize=comfy)
    model.log_sigmas = log_t.clone()
    n = case["steps"]
    lo, hi = float(sigmas_t[0]), float(sigmas_t[-1])
    karras = case["scheduler"] == "karras"
    sigmas = sampling.get_sigmas_karras(n + 1, lo, hi) if karras else model.get_sigmas(n + 1)
    sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])  # the next-to-last sigma dropped
    calls: list[list[float]] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = model.sigma_to_t(sigma).to(torch.float32).reshape(-1, 1, 1, 1)
        calls.append([float(sigma[0]), float(t)])
        s = sigma.reshape(-1, 1, 1, 1)  # as the front-ends broadcast it
        x_in = x / (s**2 + 1) ** 0.5 if comfy else x * (1 / (s**2 + 1) ** 0.5)  # ComfyUI divides, A1111 multiplies
        eps = x_in * 0.5 + t * 2**-13
        return x - eps * s if comfy else x + eps * -s

    draws = iter(noise["ancestral"])

    def noise_sampler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.tensor(next(draws), dtype=torch.float32).reshape(shape)

    initial = torch.tensor(noise["initial"], dtype=torch.float32).reshape(shape)
    s0 = sigmas[0]
    scale = torch.sqrt(1.0 + s0**2.0) if comfy else s0
    x = sampling.sample_dpm_2_ancestral(
        denoiser, initial * scale, sigmas, disable=True, noise_sampler=noise_sampler, eta=1.0, s_noise=1.0
    )
    return {"sigmas": sigmas.tolist(), "calls": calls, "final_latent": x.flatten().tolist()}


def kdpm2_run(case: dict[str, Any], noise: dict[str, Any], shape: list[int]) -> dict[str, Any]:
    """``KDPM2AncestralDiscreteScheduler.from_preset`` in a diffusers loop with the stored noise."""
    import torch

    from kdpm2 import KDPM2AncestralDiscreteScheduler

    name = f"{case['frontend']}/{case['scheduler']}"
    scheduler = KDPM2AncestralDiscreteScheduler.from_preset(name)
    scheduler.set_timesteps(case["steps"])
    draws = iter(noise["ancestral"])
    x = torch.tensor(noise["initial"], dtype=torch.float32).reshape(shape) * scheduler.init_noise_sigma
    calls = []
    sigmas, interpol = scheduler.sigmas.tolist(), scheduler.sigmas_interpol.tolist()
    for k, t in enumerate(scheduler.timesteps):
        first = scheduler.state_in_first_order
        calls.append([sigmas[k] if first else interpol[k - 1], float(t)])
        x_in = scheduler.scale_model_input(x, t)
        eps = x_in * 0.5 + torch.tensor(float(t), dtype=torch.float32) * 2**-13
        given = None if first else torch.tensor(next(draws), dtype=torch.float32).reshape(shape)
        x = scheduler.step(eps, t, x, noise=given).prev_sample
    main = [level.sigma for level in scheduler.step_levels] + [0.0]
    return {"sigmas": main, "calls": calls, "final_latent": x.flatten().tolist()}


def distances(run: dict[str, Any], case: dict[str, Any]) -> dict[str, float]:
    """The largest distance of each field of ``run`` from the recorded ``case``."""
    import numpy as np

    out = {"sigmas_ulps": 0.0, "call_sigma_ulps": 0.0, "timestep_steps": 0.0, "timestep_ulps": 0.0}
    if len(run["sigmas"]) != len(case["sigmas"]) or len(run["calls"]) != len(case["calls"]):
        raise AssertionError(f"{case['frontend']}/{case['scheduler']} n={case['steps']}: different lengths")
    for a, b in zip(run["sigmas"], case["sigmas"], strict=True):
        out["sigmas_ulps"] = max(out["sigmas_ulps"], abs(float(np.float32(a)) - b) / ulp32(b) if b else abs(a))
    for (sa, ta), (sb, tb) in zip(run["calls"], case["calls"], strict=True):
        out["call_sigma_ulps"] = max(out["call_sigma_ulps"], abs(float(np.float32(sa)) - sb) / ulp32(sb))
        if case["frontend"] == "comfyui":
            out["timestep_steps"] = max(out["timestep_steps"], abs(ta - tb))
        else:
            out["timestep_ulps"] = max(out["timestep_ulps"], abs(float(np.float32(ta)) - tb) / ulp32(tb or 1.0))
    a, b = np.array(run["final_latent"], dtype=np.float64), np.array(case["final_latent"], dtype=np.float64)
    scale = ulp32(float(np.abs(b).max()))
    out["final_scale_ulps"] = float(np.abs(a - b).max() / scale)
    out["final_rel_l2"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return out


def child(which: str) -> None:
    """Run every case with ``which`` (``upstream`` or ``kdpm2``) and print the distances as JSON."""
    import torch

    torch.set_num_threads(1)
    figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    run = upstream_run if which == "upstream" else kdpm2_run
    result = {}
    for case in figures["cases"]:
        label = f"{case['frontend']}/{case['scheduler']}/{case['steps']}"
        result[label] = distances(run(case, figures["noise"], figures["latent_shape"]), case)
    print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "cases": result}))


def worst(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(per_case.values())).keys()
    return {k: max(d[k] for d in per_case.values()) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "ancestral_cpu_spread.json"))
    parser.add_argument("--child", choices=["upstream", "kdpm2"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    variants = []
    for mkl, aten in itertools.product(MKL_PATHS, ATEN_PATHS):
        env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY")}
        if mkl:
            env["MKL_CBWR"] = mkl
        if aten:
            env["ATEN_CPU_CAPABILITY"] = aten
        row: dict[str, Any] = {"MKL_CBWR": mkl, "ATEN_CPU_CAPABILITY": aten}
        for which in ("upstream", "kdpm2"):
            done = subprocess.run(
                [sys.executable, __file__, "--child", which], env=env, capture_output=True, text=True, check=True
            )
            data = json.loads(done.stdout.strip().splitlines()[-1])
            row["capability"] = data["capability"]
            row[which] = worst(data["cases"])
            if mkl is None and aten is None:  # per case for the default code path only (the file stays small)
                row[f"{which}_cases"] = data["cases"]
        variants.append(row)
        print(mkl, aten, row["capability"], "upstream", row["upstream"], "kdpm2", row["kdpm2"], flush=True)
    summary = {
        which: {k: max(v[which][k] for v in variants) for k in variants[0][which]} for which in ("upstream", "kdpm2")
    }
    import torch

    report = {
        "what": __doc__.split("\n\n")[0],
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": 1},
        "cpu_model": _cpu_model(),
        "summary_max_over_variants": summary,
        "variants": variants,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
