"""Measure how far the recorded front-end figures move between CPU code paths; write tests/parity/spread.json.

Run from the repository root (about ten minutes on two cores; needs k-diffusion, and a C compiler
for the Intel code paths):

    PYTHONPATH=src:spec:tests python docs/scripts/parity_spread.py
    PYTHONPATH=src:spec:tests python docs/scripts/parity_spread.py --render   # docs/parity.md only

Why: torch's float32 ``sqrt``, ``pow``, ``log`` and ``exp`` on the CPU are not correctly rounded,
and which code runs them depends on the CPU. oneMKL's vector math (VML, behind ``sqrt``/``log``/
``exp``) picks a branch per instruction set (SSE2, SSE4.2, AVX2, AVX-512) on Intel processors and
a generic one on others; ATen's own vectorised kernels (``pow``) are built per
``ATEN_CPU_CAPABILITY``. The figures in ``tests/parity`` were recorded on one machine; another
CPU computes some of them an ulp or a few away, and a test that wants them bit for bit fails there.

How: the same computation runs in a subprocess per code path, the product of

- oneMKL's branch: the default and ``MKL_CBWR=COMPATIBLE`` as the CPU is; then, with oneMKL told
  the CPU is an Intel one (a preloaded ``mkl_serv_intel_cpu_true`` that returns 1, the one way to
  reach the Intel branches on an AMD processor), ``MKL_CBWR`` unset, ``COMPATIBLE``, ``SSE4_2``,
  ``AVX``, ``AVX2``, ``AVX512`` and ``AVX512_E1`` (the branch each one ran is recorded, from
  ``MKL_VERBOSE``);
- ``ATEN_CPU_CAPABILITY`` ``default``, ``avx2`` and ``avx512`` (as far as the CPU has them);
- one torch thread, and two with oneMKL's default branch (the arrays here are far below the size
  torch splits between threads, so the thread count is not expected to matter: this checks it).

Each subprocess computes (a) what kdpm2 gives, through ``KDPM2DiscreteScheduler.from_preset``, for
every recorded DPM2 case, and (b) what upstream computes: k-diffusion's own ``CompVisDenoiser``,
``get_sigmas_karras`` / ``get_sigmas_exponential``, ``sample_dpm_2`` and
``sample_dpm_2_ancestral`` (installed, run as they are), and, for ComfyUI's own few lines (its
training table, nearest-timestep rule, ``normal`` / ``simple`` / ``sgm_uniform`` schedules, input
divisor and noise factor), a transcription made for this measurement, checked by its reproducing
the recorded figures bit for bit on the recording machine's code path. The ancestral figures are
upstream only (DPM2 a is not in kdpm2 yet): the stored noise and the stand-in model
``eps = x_in * 0.5 + t * 2**-13`` of ``tests/parity/README.md``.

The result, per field: the largest distance, over all code paths, between what kdpm2 computes and
the recorded figure (what a test faces on an unknown CPU), the same for upstream, the largest
distance between two code paths of upstream, and kdpm2 against upstream on the same code path.
Units: float32 ulps (``helpers_parity.ulps``); for arrays that pass through zero (A1111's log
table, the ancestral latents) ulps of the array's largest magnitude (``scaled_ulps``); ComfyUI's
integer timesteps: which calls flip and how close each is to a tie.
``--render`` rewrites the generated table of docs/parity.md from the JSON alone.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "spec"), str(ROOT / "tests")]

import helpers_parity as hp  # noqa: E402

OUT = hp.PARITY_DIR / hp.SPREAD_FILE
PAGE = ROOT / "docs" / "parity.md"
SHIM = "int mkl_serv_intel_cpu_true(void) { return 1; }\nint mkl_serv_intel_cpu(void) { return 1; }\n"
"""oneMKL asks these whether the CPU is an Intel one before it takes an Intel branch."""

MKL_SETTINGS: list[tuple[str, bool, str | None]] = [
    ("as-is", False, None),
    ("as-is COMPATIBLE", False, "COMPATIBLE"),
    ("intel", True, None),
    ("intel COMPATIBLE", True, "COMPATIBLE"),
    ("intel SSE4_2", True, "SSE4_2"),
    ("intel AVX", True, "AVX"),
    ("intel AVX2", True, "AVX2"),
    ("intel AVX512", True, "AVX512"),
    ("intel AVX512_E1", True, "AVX512_E1"),
]
"""(label, Intel branches reachable, ``MKL_CBWR``)."""

ATEN = ("default", "avx2", "avx512")
CONTROLS = (
    "MKL_CBWR",
    "ATEN_CPU_CAPABILITY",
    "LD_PRELOAD",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
)
"""Inherited settings that would change the code path: each subprocess gets only its own."""
THREADS = (1, 2)
RECORDING_PATH = "as-is / aten avx512 / 1 thread"
"""The code path of the AMD EPYC machine comfyui.json and a1111.json were recorded on."""

COMFYUI_RULES = {
    "normal": "normal",
    "karras": "karras",
    "exponential": "exponential",
    "simple": "simple",
}
COMFYUI_RULES["sgm_uniform"] = "sgm_uniform"
A1111_RULES = {
    "Uniform": "normal",
    "Karras": "karras",
    "Exponential": "exponential",
}
A1111_PRESETS = {
    "Uniform": "a1111/uniform",
    "Karras": "a1111/karras",
    "Exponential": "a1111/exponential",
}


# -- one code path (runs in a subprocess) -------------------------------------------------------


def f32(values: Any) -> Any:
    """float32 values as the Python floats that hold them (nested lists of tensors or floats)."""
    import torch

    if isinstance(values, torch.Tensor):
        return values.to(torch.float32).tolist()
    if isinstance(values, list | tuple):
        return [f32(v) for v in values]
    return float(torch.tensor(float(values), dtype=torch.float32))


def ours(frontend: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """kdpm2's preset for every recorded case: table, sigmas, and (sigma, timestep, c_in) per call."""
    import torch

    from kdpm2 import KDPM2DiscreteScheduler, presets

    sd = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}
    table = presets.training_table(f"{frontend}/karras", sd)
    out: dict[str, Any] = {
        "train_sigmas": f32(table.sigmas),
        "train_log_sigmas": f32(table.log_sigmas),
        "cases": [],
    }
    one = torch.ones(1, dtype=torch.float64)
    schedulers: dict[str, KDPM2DiscreteScheduler] = {}
    for case in cases:
        preset = (
            f"comfyui/{case['scheduler']}"
            if frontend == "comfyui"
            else A1111_PRESETS[case["scheduler"]]
        )
        if (
            preset not in schedulers
        ):  # one per preset: the constructor's own set_timesteps(1000) costs
            schedulers[preset] = KDPM2DiscreteScheduler.from_preset(preset)
        scheduler = schedulers[preset]
        scheduler.set_timesteps(case["steps"])
        sigmas, interpol = (
            scheduler.sigmas.tolist(),
            scheduler.sigmas_interpol.tolist(),
        )
        calls, sample = [], one
        for k, t in enumerate(scheduler.timesteps):
            c_in = float(scheduler.scale_model_input(one, t))
            calls.append(
                [
                    sigmas[k] if k % 2 == 0 else interpol[k],
                    float(t),
                    c_in,
                    1.0 / c_in,
                ]
            )
            sample = scheduler.step(
                torch.zeros_like(sample), t, sample
            ).prev_sample
        out["cases"].append(
            {
                "sigmas": f32(
                    [*scheduler.sigmas[0 : 2 * case["steps"] : 2].tolist(), 0.0]
                ),
                "calls": [[f32(s), t, f32(c), f32(d)] for s, t, c, d in calls],
                "init_noise_scale": f32(float(scheduler.init_noise_sigma)),
            }
        )
    return out


def comfyui_table() -> tuple[Any, Any]:
    """ComfyUI's ``ModelSamplingDiscrete`` for LDM's linear betas: float64 torch, then float32 sigma and log."""
    import torch

    betas = (
        torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    )
    cumulative = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - cumulative) / cumulative) ** 0.5
    return sigmas.float(), sigmas.log().float()


class ComfyUI:
    """ComfyUI's arithmetic for DPM2 on an EPS model, as its source reads (measurement only)."""

    def __init__(self) -> None:
        self.sigmas, self.log_sigmas = comfyui_table()

    def log_and_timestep(self, sigma: Any) -> tuple[Any, Any]:
        """``ModelSamplingDiscrete.timestep``: float32 log, distances to the log table, first argmin."""
        log_sigma = sigma.log()
        distances = log_sigma - self.log_sigmas[:, None]
        return log_sigma, distances.abs().argmin(dim=0).view(sigma.shape)

    def sigma(self, t: Any) -> Any:
        """``ModelSamplingDiscrete.sigma``: the log table interpolated at float32 ``t``, then exp."""
        import torch

        t = torch.clamp(t.float(), min=0, max=len(self.sigmas) - 1)
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[
            t.floor().long()
        ] + w * self.log_sigmas[t.ceil().long()]
        return log_sigma.exp()

    def schedule(self, rule: str, steps: int) -> Any:
        """``KSampler.calculate_sigmas`` for a discard-penultimate sampler: ``steps + 1``, next-to-last dropped."""
        import torch
        from k_diffusion import sampling

        count = steps + 1
        if rule in ("normal", "sgm_uniform"):
            start = self.log_and_timestep(self.sigmas[-1])[1]
            end = self.log_and_timestep(self.sigmas[0])[1]
            if rule == "sgm_uniform":
                timesteps = torch.linspace(start, end, count + 1)[:-1]
            else:
                timesteps = torch.linspace(start, end, count)
            sigmas = torch.FloatTensor(
                [float(self.sigma(t)) for t in timesteps] + [0.0]
            )
        elif rule == "simple":
            stride = len(self.sigmas) / count
            sigmas = torch.FloatTensor(
                [
                    float(self.sigmas[-(1 + int(x * stride))])
                    for x in range(count)
                ]
                + [0.0]
            )
        elif rule == "karras":
            sigmas = sampling.get_sigmas_karras(
                count, float(self.sigmas[0]), float(self.sigmas[-1])
            )
        else:
            sigmas = sampling.get_sigmas_exponential(
                count, float(self.sigmas[0]), float(self.sigmas[-1])
            )
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    def noise_scale(self, sigmas: Any) -> Any:
        """``EPS.noise_scaling`` with ``Sampler.max_denoise``: sqrt(1 + sigma_0^2) at full denoise."""
        import torch

        top, first = float(self.sigmas[-1]), float(sigmas[0])
        if math.isclose(top, first, rel_tol=1e-05) or first > top:
            return torch.sqrt(1.0 + sigmas[0] ** 2.0)
        return sigmas[0]

    def inputs(self, x: Any, sigma: Any) -> tuple[Any, Any, Any, Any]:
        """What ``BaseModel._apply_model`` gives the UNet: x / sqrt(sigma^2 + 1), the integer timestep."""
        divisor = (sigma**2 + 1.0) ** 0.5
        log_sigma, t = self.log_and_timestep(sigma)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return x / divisor.view(shape), t.float(), divisor, log_sigma


class A1111:
    """k-diffusion's ``CompVisDenoiser`` on LDM's float32 ``alphas_cumprod`` (A1111's model wrapper)."""

    def __init__(self, standin: bool = False) -> None:
        import numpy as np
        import torch
        from k_diffusion import external

        # LDM: betas from a float64 torch linspace, cumprod in NumPy, stored as float32
        betas = (
            torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64)
            ** 2
        ).numpy()
        inner = torch.nn.Module()
        inner.register_buffer(
            "alphas_cumprod",
            torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32),
        )
        self.seen: list[Any] = []

        def apply_model(x_in: Any, t: Any) -> Any:
            self.seen.append(t.clone())
            if standin:  # the stand-in UNet of the ancestral figures
                return (
                    x_in * 0.5 + t.view((-1,) + (1,) * (x_in.ndim - 1)) * 2**-13
                )
            return torch.zeros_like(x_in)

        inner.apply_model = apply_model
        self.model = external.CompVisDenoiser(inner)

    def schedule(self, rule: str, steps: int) -> Any:
        """A1111's ``get_sigmas`` for DPM2 (``discard_next_to_last_sigma``)."""
        import torch
        from k_diffusion import sampling

        count = steps + 1
        lo, hi = self.model.sigmas[0].item(), self.model.sigmas[-1].item()
        if rule == "normal":
            sigmas = self.model.get_sigmas(count)
        elif rule == "karras":
            sigmas = sampling.get_sigmas_karras(count, lo, hi)
        else:
            sigmas = sampling.get_sigmas_exponential(count, lo, hi)
        return torch.cat([sigmas[:-2], sigmas[-1:]])


def upstream_dpm2(frontend: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Upstream's sigmas and per-call (sigma, timestep, c_in[, divisor, log sigma]) through ``sample_dpm_2``."""
    import torch
    from k_diffusion import sampling

    out: dict[str, Any] = {"cases": []}
    if frontend == "comfyui":
        comfy = ComfyUI()
        out["train_sigmas"], out["train_log_sigmas"] = (
            f32(comfy.sigmas),
            f32(comfy.log_sigmas),
        )
    else:
        a1111 = A1111()
        out["train_sigmas"], out["train_log_sigmas"] = (
            f32(a1111.model.sigmas),
            f32(a1111.model.log_sigmas),
        )
    for case in cases:
        calls: list[list[float]] = []
        if frontend == "comfyui":
            sigmas = comfy.schedule(
                COMFYUI_RULES[case["scheduler"]], case["steps"]
            )
            init = comfy.noise_scale(sigmas)

            def denoiser(
                x: Any, sigma: Any, calls: list[list[float]] = calls
            ) -> Any:
                _, t, divisor, log_sigma = comfy.inputs(x, sigma)
                calls.append(
                    [
                        f32(sigma[0]),
                        float(t[0]),
                        f32(1 / divisor[0]),
                        f32(divisor[0]),
                        f32(log_sigma[0]),
                    ]
                )
                return x

            x = torch.zeros(1, 4)
        else:  # classifier-free guidance runs the wrapper on a batch of two
            sigmas = a1111.schedule(
                A1111_RULES[case["scheduler"]], case["steps"]
            )
            init = sigmas[0]

            def denoiser(
                x: Any, sigma: Any, calls: list[list[float]] = calls
            ) -> Any:
                a1111.seen.clear()
                denoised = a1111.model(x, sigma)
                c_in = a1111.model.get_scalings(sigma)[1]
                calls.append(
                    [f32(sigma[0]), f32(a1111.seen[0][0]), f32(c_in[0])]
                )
                return denoised

            x = torch.zeros(2, 4)
        sampling.sample_dpm_2(denoiser, x, sigmas, disable=True)
        out["cases"].append(
            {
                "sigmas": f32(sigmas),
                "calls": calls,
                "init_noise_scale": f32(init),
            }
        )
    return out


def upstream_ancestral(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """k-diffusion's ``sample_dpm_2_ancestral`` for every ancestral case: stored noise, the stand-in model."""
    import torch
    from k_diffusion import sampling

    shape = figures["latent_shape"]
    initial = torch.tensor(
        figures["noise"]["initial"], dtype=torch.float32
    ).view(shape)
    draws = [
        torch.tensor(d, dtype=torch.float32).view(shape)
        for d in figures["noise"]["ancestral"]
    ]
    comfy, a1111 = ComfyUI(), A1111(standin=True)
    original_step = sampling.get_ancestral_step
    out = []
    for case in figures["cases"]:
        calls: list[list[float]] = []
        steps: list[list[float]] = []
        supply = iter(draws)

        def recording_step(
            sigma_from: Any,
            sigma_to: Any,
            eta: float = 1.0,
            steps: list[Any] = steps,
        ) -> Any:
            down, up = original_step(sigma_from, sigma_to, eta=eta)
            steps.append([f32(down), f32(up)])
            return down, up

        if case["frontend"] == "comfyui":
            sigmas = comfy.schedule(case["scheduler"], case["steps"])
            scale = comfy.noise_scale(sigmas)

            def model(
                x: Any, sigma: Any, calls: list[list[float]] = calls
            ) -> Any:
                x_in, t, _, log_sigma = comfy.inputs(x, sigma)
                calls.append([f32(sigma[0]), float(t[0]), f32(log_sigma[0])])
                eps = x_in * 0.5 + t.view(-1, 1, 1, 1) * 2**-13
                return x - eps * sigma.view(-1, 1, 1, 1)

        else:
            sigmas = a1111.schedule(
                {"uniform": "normal", "karras": "karras"}[case["scheduler"]],
                case["steps"],
            )
            scale = sigmas[0]

            def model(
                x: Any, sigma: Any, calls: list[list[float]] = calls
            ) -> Any:
                a1111.seen.clear()
                denoised = a1111.model(x, sigma)
                calls.append([f32(sigma[0]), f32(a1111.seen[0][0])])
                return denoised

        sampling.get_ancestral_step = recording_step
        try:
            final = sampling.sample_dpm_2_ancestral(
                model,
                initial * scale,
                sigmas,
                disable=True,
                noise_sampler=lambda _s, _t, supply=supply: next(supply),
            )
        finally:
            sampling.get_ancestral_step = original_step
        # sigma_mid is the second call of each step but the last
        mids = [calls[2 * k + 1][0] for k in range(case["steps"] - 1)]
        out.append(
            {
                "sigmas": f32(sigmas),
                "init_noise_scale": f32(scale),
                "calls": calls,
                "sigma_down": [s[0] for s in steps],
                "sigma_up": [s[1] for s in steps],
                "sigma_mid": mids,
                "final_latent": f32(final.flatten()),
            }
        )
    return out


def worker(result_path: str) -> None:
    """Measure this process's code path and write everything to ``result_path`` (JSON)."""
    import torch

    torch.set_num_threads(int(os.environ["KDPM2_SPREAD_THREADS"]))
    with torch.backends.mkl.verbose(
        torch.backends.mkl.VERBOSE_ON
    ):  # prints oneMKL's branch to stdout
        torch.mm(torch.ones(2, 2), torch.ones(2, 2))
    sys.stdout.flush()
    comfyui, a1111, ancestral = (
        hp.figures(name) for name in ("comfyui", "a1111", "ancestral")
    )
    probe = torch.tensor([14.614641189575195])
    result = {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "probe_sqrt": float(torch.sqrt(1 + probe**2)[0]),
        "ours": {
            "comfyui": ours("comfyui", comfyui["cases"]),
            "a1111": ours("a1111", a1111["cases"]),
        },
        "upstream": {
            "comfyui": upstream_dpm2("comfyui", comfyui["cases"]),
            "a1111": upstream_dpm2("a1111", a1111["cases"]),
        },
        "ancestral": upstream_ancestral(ancestral),
    }
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")


# -- the code paths -----------------------------------------------------------------------------


def intel_shim(folder: Path) -> Path | None:
    """Build the preloadable library that lets oneMKL take its Intel branches (None without a C compiler)."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    source, library = folder / "intel_shim.c", folder / "intel_shim.so"
    source.write_text(SHIM, encoding="utf-8")
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source)],
        check=True,
    )
    return library


def cpu_capabilities() -> list[str]:
    """The ``ATEN_CPU_CAPABILITY`` values this CPU can run (lower case)."""
    flags = (
        Path("/proc/cpuinfo").read_text(encoding="utf-8")
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    have = {
        "default": True,
        "avx2": " avx2 " in flags,
        "avx512": all(
            f" {f} " in flags
            for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")
        ),
    }
    return [a for a in ATEN if have[a]]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_path(label: str, env: dict[str, str], folder: Path) -> dict[str, Any]:
    """One subprocess on one code path: its measurements and the oneMKL branch it took."""
    result = folder / (re.sub(r"[^A-Za-z0-9]+", "_", label) + ".json")
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", str(result)],
        env={
            **{k: v for k, v in os.environ.items() if k not in CONTROLS},
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"code path {label!r} failed:\n{completed.stderr[-3000:]}"
        )
    header = next(
        (
            line
            for line in completed.stdout.splitlines()
            if line.startswith("MKL_VERBOSE oneMKL")
        ),
        "",
    )
    match = re.search(
        r"architecture (.*?)(?: enabled processors|,| with support)", header
    )
    data = json.loads(result.read_text(encoding="utf-8"))
    data["label"], data["mkl_branch"] = (
        label,
        match.group(1) if match else "unknown",
    )
    result.write_text(json.dumps(data), encoding="utf-8")
    return data


def code_paths(shim: Path | None) -> list[tuple[str, dict[str, str]]]:
    """(label, environment) for every combination this machine can run."""
    paths = []
    for (mkl, intel, cbwr), aten, threads in itertools.product(
        MKL_SETTINGS, cpu_capabilities(), THREADS
    ):
        if (intel and shim is None) or (
            threads > 1 and cbwr
        ):  # two threads: with each CPU's default branch
            continue
        env = {
            "ATEN_CPU_CAPABILITY": aten,
            "KDPM2_SPREAD_THREADS": str(threads),
        }
        if intel:
            env["LD_PRELOAD"] = str(shim)
        if cbwr:
            env["MKL_CBWR"] = cbwr
        paths.append(
            (
                f"{mkl} / aten {aten} / {threads} thread{'s' if threads > 1 else ''}",
                env,
            )
        )
    return paths


# -- what moves, and how far --------------------------------------------------------------------

Arrays = list[list[float]]
Getter = Callable[[dict[str, Any]], Arrays]


def column(j: int, every: slice = slice(None)) -> Getter:
    return lambda data: [
        [call[j] for call in case["calls"][every]] for case in data["cases"]
    ]


def whole(key: str) -> Getter:
    return lambda data: [data[key]]


def per_case(key: str) -> Getter:
    return lambda data: [
        case[key] if isinstance(case[key], list) else [case[key]]
        for case in data["cases"]
    ]


DPM2_FIELDS: dict[str, tuple[str, Getter, Getter]] = {
    # name: (unit, recorded getter, computed getter); computed = ours or upstream, same layout
    "train_sigmas": ("ulp", whole("train_sigmas"), whole("train_sigmas")),
    "train_log_sigmas": (
        "scaled",
        whole("train_log_sigmas"),
        whole("train_log_sigmas"),
    ),
    "sigmas": ("ulp", per_case("sigmas"), per_case("sigmas")),
    "midpoints": (
        "ulp",
        column(0, slice(1, None, 2)),
        column(0, slice(1, None, 2)),
    ),
    "c_in": ("ulp", column(2), column(2)),
    "init_noise_scale": (
        "ulp",
        per_case("init_noise_scale"),
        per_case("init_noise_scale"),
    ),
}
COMFYUI_ONLY = {"c_in_divisors": ("ulp", per_case("c_in_divisors"), column(3))}
A1111_ONLY = {"timestep": ("ulp", column(1), column(1))}


def detail(j: int) -> Getter:
    return lambda data: [
        [step[j] for step in case["steps_detail"] if step[j] is not None]
        for case in data["cases"]
    ]


def computed_detail(key: str) -> Getter:
    return lambda data: [case[key] for case in data["cases"]]


ANCESTRAL_FIELDS: dict[str, tuple[str, Getter, Getter]] = {
    "sigmas": ("ulp", per_case("sigmas"), per_case("sigmas")),
    "init_noise_scale": (
        "ulp",
        per_case("init_noise_scale"),
        per_case("init_noise_scale"),
    ),
    "call_sigma": ("ulp", column(0), column(0)),
    "sigma_down": ("ulp", detail(2), computed_detail("sigma_down")),
    "sigma_up": ("ulp", detail(3), computed_detail("sigma_up")),
    "sigma_mid": ("ulp", detail(4), computed_detail("sigma_mid")),
    "final_latent": (
        "scaled",
        per_case("final_latent"),
        per_case("final_latent"),
    ),
}


def distance(unit: str, a: list[float], b: list[float]) -> int:
    return hp.scaled_ulps(a, b) if unit == "scaled" else hp.max_ulps(a, b)


def spread_of(unit: str, runs: list[list[float]], recorded: list[float]) -> int:
    """The largest distance between two code paths' values of one array (ulps, or ulps of its largest magnitude)."""
    import numpy as np

    if unit == "scaled":
        values = (
            np.asarray(runs, dtype=np.float64)
            .astype(np.float32)
            .astype(np.float64)
        )
        scale = (
            float(np.spacing(np.float32(np.abs(np.asarray(recorded)).max())))
            if recorded
            else 1.0
        )
        return math.ceil(
            float((values.max(axis=0) - values.min(axis=0)).max(initial=0.0))
            / scale
        )
    ordinals = np.stack([hp.ordinal(run) for run in runs])
    return int((ordinals.max(axis=0) - ordinals.min(axis=0)).max(initial=0))


def summarise_field(
    unit: str,
    recorded: Arrays,
    rules: list[str],
    runs: dict[str, list[Arrays]],
    paths: list[dict[str, Any]],
) -> dict[str, Any]:
    """One field over every code path.

    ``ours`` / ``upstream``: the largest distance to the recorded figures; ``ours_vs_upstream``:
    kdpm2 against upstream on the same path; ``upstream_spread``: between two paths of upstream.
    ``by_aten``: the first two per ATen capability; ``by_rule``: per schedule rule and capability;
    ``by_path``: per path, in the order of ``paths``, with ``by_path_columns``.
    """
    rows: list[dict[str, int]] = []
    by_rule: dict[str, dict[str, dict[str, int]]] = {}
    by_aten: dict[str, dict[str, int]] = {}
    for p, path in enumerate(paths):
        row: dict[str, int] = {}
        for who, computed in runs.items():
            row[who] = 0
            for rule, got, want in zip(
                rules, computed[p], recorded, strict=True
            ):
                worst = distance(unit, got, want)
                row[who] = max(row[who], worst)
                cell = by_rule.setdefault(rule, {}).setdefault(path["aten"], {})
                cell[who] = max(cell.get(who, 0), worst)
            cell = by_aten.setdefault(path["aten"], {})
            cell[who] = max(cell.get(who, 0), row[who])
        if "ours" in runs:
            pairs = zip(runs["ours"][p], runs["upstream"][p], strict=True)
            row["ours_vs_upstream"] = max(
                distance(unit, a, b) for a, b in pairs
            )
        rows.append(row)
    upstream = runs["upstream"]
    out: dict[str, Any] = {"unit": unit}
    out.update({key: max(row[key] for row in rows) for key in rows[0]})
    out["upstream_spread"] = max(
        spread_of(unit, [run[i] for run in upstream], recorded[i])
        for i in range(len(recorded))
    )
    out["by_aten"] = by_aten
    out["by_rule"] = by_rule
    out["by_path_columns"] = list(rows[0])
    out["by_path"] = [list(row.values()) for row in rows]
    return out


def tie_summary(
    recorded: dict[str, Any],
    log_table: list[float],
    rules: list[str],
    runs: dict[str, list[Arrays]],
    logs: list[Arrays],
    paths: list[dict[str, Any]],
) -> dict[str, Any]:
    """ComfyUI's integer timesteps: the calls that flip on some code path, and the spread of float32 log sigma.

    ``log_spread`` is the largest distance, over code paths and calls, between the float32
    ``log(sigma)`` a path compares with the table and ``log`` of the recorded sigma (float64): a
    timestep can change only where the recorded sigma's log is within that distance of the
    midpoint between two table entries (``helpers_parity.tie_margin``), and then only to that
    neighbour.
    """
    sigmas, timesteps = column(0)(recorded), column(1)(recorded)
    log_spread: dict[str, float] = {}
    for p, path in enumerate(paths):
        for case_logs, case_sigmas in zip(logs[p], sigmas, strict=True):
            for value, sigma in zip(case_logs, case_sigmas, strict=True):
                gap = abs(value - math.log(sigma))
                log_spread[path["aten"]] = max(
                    log_spread.get(path["aten"], 0.0), gap
                )
    widest = max(log_spread.values())
    margins = [
        [
            hp.tie_margin(s, log_table, int(t))
            for s, t in zip(case_sigmas, case_t, strict=True)
        ]
        for case_sigmas, case_t in zip(sigmas, timesteps, strict=True)
    ]
    out: dict[str, Any] = {
        "unit": "integer",
        "log_spread": widest,
        "log_spread_by_aten": log_spread,
    }
    for who, computed in runs.items():
        flips: dict[tuple[int, int], dict[str, Any]] = {}
        for p in range(len(paths)):
            for i, (got, want) in enumerate(
                zip(computed[p], timesteps, strict=True)
            ):
                for k, (a, b) in enumerate(zip(got, want, strict=True)):
                    if a != b:
                        other, margin = margins[i][k]
                        flip = flips.setdefault(
                            (i, k),
                            {
                                "rule": rules[i],
                                "steps": recorded["cases"][i]["steps"],
                                "call": k,
                                "recorded": int(b),
                                "got": int(a),
                                "to_neighbour": other == int(a),
                                "margin": margin,
                                "paths": [],
                            },
                        )
                        flip["paths"].append(p)
        out[who] = list(flips.values())
        out[f"{who}_max_margin"] = max(
            (f["margin"] for f in flips.values()), default=0.0
        )
    out["calls"] = sum(len(case) for case in margins)
    out["calls_within_log_spread"] = sum(
        m <= widest for case in margins for _, m in case
    )
    return out


def dpm2_summary(
    frontend: str, runs: list[dict[str, Any]], paths: list[dict[str, Any]]
) -> dict[str, Any]:
    recorded = hp.figures(frontend)
    rules = [case["scheduler"] for case in recorded["cases"]]
    computed = {
        who: [run[who][frontend] for run in runs]
        for who in ("ours", "upstream")
    }
    fields = {
        **DPM2_FIELDS,
        **(COMFYUI_ONLY if frontend == "comfyui" else A1111_ONLY),
    }
    out = {}
    for name, (unit, from_recorded, from_run) in fields.items():
        want = from_recorded(recorded)
        out[name] = summarise_field(
            unit,
            want,
            rules if len(want) == len(rules) else ["table"],
            {
                who: [from_run(data) for data in datas]
                for who, datas in computed.items()
            },
            paths,
        )
    if frontend == "comfyui":
        out["timestep"] = tie_summary(
            recorded,
            recorded["train_log_sigmas"],
            rules,
            {
                who: [column(1)(data) for data in datas]
                for who, datas in computed.items()
            },
            [column(4)(data) for data in computed["upstream"]],
            paths,
        )
    return out


def ancestral_summary(
    frontend: str, runs: list[dict[str, Any]], paths: list[dict[str, Any]]
) -> dict[str, Any]:
    figures = hp.figures("ancestral")
    chosen = [
        i
        for i, case in enumerate(figures["cases"])
        if case["frontend"] == frontend
    ]
    recorded = {"cases": [figures["cases"][i] for i in chosen]}
    rules = [case["scheduler"] for case in recorded["cases"]]
    upstream = [
        {"cases": [run["ancestral"][i] for i in chosen]} for run in runs
    ]
    fields = dict(ANCESTRAL_FIELDS)
    if frontend == "a1111":
        fields["timestep"] = ("ulp", column(1), column(1))
    out = {}
    for name, (unit, from_recorded, from_run) in fields.items():
        want = from_recorded(recorded)
        out[name] = summarise_field(
            unit,
            want,
            rules,
            {"upstream": [from_run(data) for data in upstream]},
            paths,
        )
    if frontend == "comfyui":
        out["timestep"] = tie_summary(
            recorded,
            hp.figures("comfyui")["train_log_sigmas"],
            rules,
            {"upstream": [column(1)(data) for data in upstream]},
            [column(2)(data) for data in upstream],
            paths,
        )
    return out


def reproduces(section: dict[str, Any], p: int) -> bool:
    """Whether upstream on path ``p`` gave every recorded figure of a section bit for bit."""
    for field in section.values():
        if field["unit"] == "integer":
            if any(p in flip["paths"] for flip in field["upstream"]):
                return False
        elif (
            field["by_path"][p][field["by_path_columns"].index("upstream")] != 0
        ):
            return False
    return True


def threads_change_nothing(runs: list[dict[str, Any]]) -> bool:
    """Whether every value computed with two threads equals the same path's with one."""
    measured = {run["label"]: run for run in runs}

    def values(run: dict[str, Any]) -> Any:
        return {key: run[key] for key in ("ours", "upstream", "ancestral")}

    pairs = [
        (label, label.replace("2 threads", "1 thread"))
        for label in measured
        if label.endswith("2 threads")
    ]
    return bool(pairs) and all(
        values(measured[a]) == values(measured[b]) for a, b in pairs
    )


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    paths = [
        {
            "label": run["label"],
            "mkl_branch": run["mkl_branch"],
            "aten": run["aten"].lower(),
            "threads": run["threads"],
            "sqrt_probe": run["probe_sqrt"],
        }
        for run in runs
    ]
    dpm2 = {fe: dpm2_summary(fe, runs, paths) for fe in ("comfyui", "a1111")}
    ancestral = {
        fe: ancestral_summary(fe, runs, paths) for fe in ("comfyui", "a1111")
    }
    for p, path in enumerate(paths):
        path["reproduces"] = {
            "comfyui": reproduces(dpm2["comfyui"], p),
            "a1111": reproduces(dpm2["a1111"], p),
            "ancestral": reproduces(ancestral["comfyui"], p)
            and reproduces(ancestral["a1111"], p),
        }
    return {
        "measured": {
            "date": datetime.date.today().isoformat(),
            "machine": f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} CPUs)",
            "torch": torch.__version__,
            "mkl": torch.backends.mkl.is_available()
            and torch.__config__.show()
            .split("Math Kernel Library Version ")[1]
            .split("-")[0],
            "command": "PYTHONPATH=src:spec:tests python docs/scripts/parity_spread.py",
            "figures": "tests/parity/{comfyui,a1111,ancestral}.json",
            "threads_change_nothing": threads_change_nothing(runs),
        },
        "paths": paths,
        "dpm2": dpm2,
        "ancestral": ancestral,
    }


# -- docs/parity.md ------------------------------------------------------------------------------

PRESET_RULES = {
    "comfyui/normal": ("comfyui", "normal"),
    "comfyui/karras": ("comfyui", "karras"),
    "comfyui/exponential": ("comfyui", "exponential"),
    "comfyui/simple": ("comfyui", "simple"),
    "comfyui/sgm_uniform": ("comfyui", "sgm_uniform"),
    "a1111/automatic": ("a1111", "Karras"),
    "a1111/uniform": ("a1111", "Uniform"),
    "a1111/karras": ("a1111", "Karras"),
    "a1111/exponential": ("a1111", "Exponential"),
}
FIELD_NAMES = {
    "train_sigmas": ("training sigmas", "`train_sigmas`"),
    "train_log_sigmas": ("log table", "`train_log_sigmas`"),
    "sigmas": ("schedule sigmas", "`sigmas`, the even calls' sigma"),
    "midpoints": ("midpoints", "the odd calls' sigma"),
    "timestep": ("timesteps", "`calls[k][1]`"),
    "c_in": ("input scale", "`calls[k][2]`, `1/sqrt(sigma^2 + 1)`"),
    "c_in_divisors": ("input divisor", "`c_in_divisors`, `sqrt(sigma^2 + 1)`"),
    "init_noise_scale": ("initial noise factor", "`init_noise_scale`"),
    "call_sigma": ("call sigmas", "`calls[k][0]`"),
    "sigma_down": ("sigma_down", "`steps_detail[k][2]`"),
    "sigma_up": ("sigma_up", "`steps_detail[k][3]`"),
    "sigma_mid": ("sigma_mid", "`steps_detail[k][4]`"),
    "final_latent": ("final latent", "`final_latent`"),
}


def worst(by_aten: dict[str, dict[str, Any]], who: str) -> str:
    """One cell: the distance on AVX2 / AVX-512 CPUs, and without AVX2 where that differs."""
    fast = max(by_aten[a][who] for a in by_aten if a != "default")
    slow = by_aten.get("default", {}).get(who, fast)
    text = "equal" if fast == 0 else str(fast)
    return text if slow == fast else f"{text} ({slow} without AVX2)"


def flips_cell(
    field: dict[str, Any], rule: str | None, paths: list[dict[str, Any]]
) -> str:
    """ComfyUI's integer timesteps: equal, or which calls move by one on which oneMKL branch."""
    flips = [
        f
        for f in field["ours" if "ours" in field else "upstream"]
        if rule is None or f["rule"] == rule
    ]
    if not flips:
        return "equal"
    moves = sorted({(f["recorded"], f["got"]) for f in flips})
    branches = sorted(
        {
            short_branch(paths[p]["mkl_branch"])
            for f in flips
            for p in f["paths"]
        }
    )
    change = ", ".join(f"{a} to {b}" for a, b in moves)
    return f"equal but {len(flips)} calls: {change} on oneMKL's {', '.join(branches)} branch"


def short_branch(header: str) -> str:
    """oneMKL's name of a branch, shortened: ``AVX2``, ``AVX-512``, ``SSE4.2``... or ``generic``."""
    match = re.search(r"\((?:Intel\(R\) )?([^()]*)\)\s*$", header)
    return match.group(1) if match else "generic"


def render_presets(spread: dict[str, Any]) -> str:
    rows = [
        "| Preset | Schedule sigmas | Midpoints | Timesteps | Input scale `c_in` | Initial noise |",
        "|---|---|---|---|---|---|",
    ]
    for preset, (frontend, rule) in PRESET_RULES.items():
        fields = spread["dpm2"][frontend]
        cells = [
            worst(fields[name]["by_rule"][rule], "ours")
            for name in ("sigmas", "midpoints")
        ]
        timestep = fields["timestep"]
        if timestep["unit"] == "integer":
            cells.append(flips_cell(timestep, rule, spread["paths"]))
        else:
            cells.append(worst(timestep["by_rule"][rule], "ours"))
        cells += [
            worst(fields[name]["by_rule"][rule], "ours")
            for name in ("c_in", "init_noise_scale")
        ]
        rows.append(f"| `{preset}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def render_fields(spread: dict[str, Any], section: str, who: str) -> str:
    columns = list(spread[section])
    rows = [
        "| Figure | " + " | ".join(COLUMN_NAMES[c] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    names = [
        n for n in FIELD_NAMES if any(n in spread[section][c] for c in columns)
    ]
    for name in names:
        cells = []
        for c in columns:
            field = spread[section][c].get(name)
            if field is None:
                cells.append("")
            elif field["unit"] == "integer":
                cells.append(
                    flips_cell(field, None, spread["paths"]) + tie_note(field)
                )
            else:
                unit = (
                    " (ulps of the largest entry)"
                    if field["unit"] == "scaled" and field[who]
                    else ""
                )
                cells.append(worst(field["by_aten"], who) + unit)
        label, where = FIELD_NAMES[name]
        rows.append(f"| {label} ({where}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


COLUMN_NAMES = {"comfyui": "ComfyUI", "a1111": "AUTOMATIC1111"}


def tie_note(field: dict[str, Any]) -> str:
    spreads = field["log_spread_by_aten"]
    fast = max(v for a, v in spreads.items() if a != "default")
    slow = spreads.get("default", fast)
    return (
        f". float32 log sigma moves by up to {fast:.2g}"
        + (f" ({slow:.2g} without AVX2)" if slow != fast else "")
        + f": the {field['calls_within_log_spread']} of {field['calls']} calls that close to a tie may move by one"
    )


def render_paths(spread: dict[str, Any]) -> str:
    """The code-path table: the worst distance per path (one thread; two change nothing)."""
    dpm2, ancestral = spread["dpm2"], spread["ancestral"]
    head = (
        "| oneMKL setting | oneMKL branch | ATen | sigmas | midpoints | `c_in` | A1111 timesteps "
        "| ComfyUI timesteps moved | ancestral latents (upstream) | upstream reproduces |"
    )
    rows = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for p, path in enumerate(spread["paths"]):
        if path["threads"] != 1:
            continue

        def ours(frontend: str, name: str, p: int = p) -> int:
            field = dpm2[frontend][name]
            return int(
                field["by_path"][p][field["by_path_columns"].index("ours")]
            )

        def pair(name: str) -> str:
            return f"{ours('comfyui', name)} / {ours('a1111', name)}"

        moved = sum(
            p in flip["paths"] for flip in dpm2["comfyui"]["timestep"]["ours"]
        )
        latents = max(
            ancestral[f]["final_latent"]["by_path"][p][0]
            for f in ("comfyui", "a1111")
        )
        same = [name for name, yes in path["reproduces"].items() if yes]
        setting = path["label"].split(" / ")[0]
        branch = short_branch(path["mkl_branch"])
        rows.append(
            f"| {setting} | {branch} | {path['aten']} | {pair('sigmas')} | {pair('midpoints')} | {pair('c_in')} "
            f"| {ours('a1111', 'timestep')} | {moved} | {latents} | {', '.join(same) or '-'} |"
        )
    return "\n".join(rows)


def render(text: str, spread: dict[str, Any]) -> str:
    """``text`` with each ``<!-- generated: NAME -->`` block replaced from ``spread``."""
    measured = spread["measured"]
    blocks = {
        "spread-measured": (
            f"Measured on {measured['date']} on an {measured['machine']} with torch {measured['torch']} "
            f"(oneMKL {measured['mkl']}) by `{measured['command']}`, over {len(spread['paths'])} code paths; "
            f"result file `tests/parity/spread.json`."
        ),
        "spread-presets": render_presets(spread),
        "spread-fields": render_fields(spread, "dpm2", "ours"),
        "spread-ancestral": render_fields(spread, "ancestral", "upstream"),
        "spread-paths": render_paths(spread),
    }
    for name, block in blocks.items():
        pattern = re.compile(
            rf"(<!-- generated: {name} -->\n).*?(<!-- end generated -->)", re.S
        )
        if not pattern.search(text):
            raise ValueError(
                f"docs/parity.md has no <!-- generated: {name} --> block"
            )
        text = pattern.sub(
            lambda m, block=block: m.group(1) + block + "\n" + m.group(2), text
        )
    return text


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite docs/parity.md from the JSON",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep each code path's raw measurements in this folder",
    )
    parser.add_argument(
        "--from-raw",
        type=Path,
        help="summarise the raw measurements a --keep run left here",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.from_raw:
        runs = [
            json.loads(f.read_text(encoding="utf-8"))
            for f in sorted(args.from_raw.glob("*.json"))
        ]
        order = {
            label: n for n, (label, _) in enumerate(code_paths(Path("shim")))
        }
        runs.sort(key=lambda run: order[run["label"]])
        write(summarise(runs))
    elif not args.render:
        with tempfile.TemporaryDirectory(prefix="kdpm2-spread-") as tmp:
            folder = args.keep or Path(tmp)
            folder.mkdir(parents=True, exist_ok=True)
            paths = code_paths(intel_shim(Path(tmp)))
            runs = []
            for n, (label, env) in enumerate(paths, 1):
                print(
                    f"[{n}/{len(paths)}] {label}", file=sys.stderr, flush=True
                )
                runs.append(run_path(label, env, folder))
        write(summarise(runs))
    PAGE.write_text(
        render(PAGE.read_text(encoding="utf-8"), hp.spread()), encoding="utf-8"
    )
    return 0


def write(result: dict[str, Any]) -> None:
    OUT.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    hp.spread.cache_clear()
    print(f"wrote {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2])
    else:
        sys.exit(main())
