"""Measure the figures quoted on docs/parity.md (prints them; nothing is written).

Run from the repository root (the figures are in ``tests/parity``):

    PYTHONPATH=src:spec:tests python docs/scripts/parity_measure.py

1. Presets against upstream's recorded figures: per preset, over every recorded step count, the
   largest relative difference of a call's sigma (float32 values compared), the number of
   timesteps that differ, the largest relative difference of the initial-noise factor, and of
   a float32 loop against ``sample_dpm_2`` fed the recorded sigmas and timesteps.
2. ``squaredcos_cap_v2`` loops against diffusers (float32, the stand-in model of
   ``tests/test_sched_parity.py``), and both against diffusers' loop on float64 tables; with
   2000 training steps, both against the spec's float64 loop.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "spec"), str(ROOT / "tests")]

from k_diffusion import sampling  # noqa: E402

from helpers_sched import CONFIGS, STEP_COUNTS, pair, run_loop, stand_in_model  # noqa: E402
from kdpm2 import KDPM2DiscreteScheduler, presets  # noqa: E402
from kdpm2_spec import Reference  # noqa: E402
from test_sched_parity import _exact_diffusers, first_timestep_repeats, latents  # noqa: E402

PARITY = ROOT / "tests" / "parity"
LABELS = {"a1111/automatic": "Karras"}


def stand_in(x: torch.Tensor, t: float) -> torch.Tensor:
    return 0.8 * torch.tanh(x * (1.0 + t / 1000.0)) + 0.05 * math.sin(t / 37.0)


def front_end_loop(case: dict, noise: torch.Tensor) -> torch.Tensor:
    calls = iter(case["calls"])

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        _, t, _ = next(calls)
        s = float(sigma[0])
        return x - s * stand_in(x / math.sqrt(s * s + 1), t)

    sigmas = torch.tensor(case["sigmas"], dtype=torch.float32)
    return sampling.sample_dpm_2(
        denoiser, noise * case["init_noise_scale"], sigmas, disable=True
    )


def presets_against_figures() -> None:
    print(
        "| preset | cases | calls | max rel. sigma diff | timesteps differing | init noise rel. diff | loop rel. diff |"
    )
    print("|---|---|---|---|---|---|---|")
    noise = torch.randn(
        (2, 4, 8, 8), generator=torch.Generator().manual_seed(0)
    )
    for name in presets.NAMES:
        preset = presets.get(name)
        data = json.loads((PARITY / f"{preset.frontend}.json").read_text())
        label = LABELS.get(name, name.split("/")[1])
        cases = [
            c for c in data["cases"] if c["scheduler"].lower() == label.lower()
        ]
        sig = ts = init = loop = 0.0
        calls = 0
        for case in cases:
            scheduler = KDPM2DiscreteScheduler.from_preset(name)
            scheduler.set_timesteps(case["steps"])
            sigmas, interpol = (
                scheduler.sigmas.tolist(),
                scheduler.sigmas_interpol.tolist(),
            )
            for k, (t, up) in enumerate(
                zip(scheduler.timesteps.tolist(), case["calls"], strict=True)
            ):
                ours = sigmas[k] if k % 2 == 0 else interpol[k]
                sig = max(sig, abs(ours - up[0]) / up[0])
                ts += t != up[1]
                calls += 1
            init = max(
                init,
                abs(
                    float(scheduler.init_noise_sigma) - case["init_noise_scale"]
                )
                / case["init_noise_scale"],
            )
            expected = front_end_loop(case, noise)
            sample = noise * scheduler.init_noise_sigma
            for t in scheduler.timesteps:
                sample = scheduler.step(
                    stand_in(scheduler.scale_model_input(sample, t), float(t)),
                    t,
                    sample,
                ).prev_sample
            loop = max(
                loop,
                float((sample - expected).abs().max() / expected.abs().max()),
            )
        print(
            f"| `{name}` | {len(cases)} | {calls} | {sig:.3g} | {int(ts)} | {init:.3g} | {loop:.3g} |"
        )


def cosine_v_prediction() -> None:
    x = latents()
    for prediction in ("epsilon", "v_prediction"):
        worst_ours = worst_theirs = worst_pair = 0.0
        at = ""
        for config in [c for c in CONFIGS if c[0] == "squaredcos_cap_v2"]:
            for n in STEP_COUNTS:
                theirs, ours = pair(*config, prediction=prediction)
                theirs.set_timesteps(n)
                if first_timestep_repeats(theirs):
                    continue
                expected, _ = run_loop(theirs, n, x)
                actual, _ = run_loop(ours, n, x)
                exact = _exact_diffusers(config, prediction, n, x)
                err = float(
                    (actual - expected).abs().max() / expected.abs().max()
                )
                if err > worst_pair:
                    worst_pair, at = err, f"{config}, n={n}"
                scale = exact.abs().max()
                worst_ours = max(
                    worst_ours,
                    float((actual.double() - exact).abs().max() / scale),
                )
                worst_theirs = max(
                    worst_theirs,
                    float((expected.double() - exact).abs().max() / scale),
                )
        print(
            f"squaredcos_cap_v2 {prediction}: ours vs diffusers (float32 loops) up to {worst_pair:.3g} ({at}); "
            f"against diffusers on float64 tables: ours {worst_ours:.3g}, diffusers {worst_theirs:.3g}"
        )


def spec_loop(kwargs: dict, n: int, x: torch.Tensor) -> torch.Tensor:
    """The same loop on the spec (``kdpm2_spec.Reference``, NumPy float64)."""
    ref = Reference(**kwargs)
    ref.set_timesteps(n)
    sample = x.double().numpy() * float(ref.init_noise_sigma)
    for t in ref.timesteps:
        output = stand_in_model(
            torch.from_numpy(ref.scale_model_input(sample, t)), float(t)
        ).numpy()
        sample = ref.step(output, t, sample).prev_sample
    return torch.from_numpy(sample)


def cosine_2000_training_steps() -> None:
    """The default options with 2000 training steps (the grid above has 1000), and against the spec."""
    import diffusers

    x = latents()
    for prediction in ("epsilon", "v_prediction"):
        kwargs = {
            "num_train_timesteps": 2000,
            "beta_schedule": "squaredcos_cap_v2",
            "prediction_type": prediction,
        }
        worst = (0.0, 0, 0.0, 0.0)
        for n in STEP_COUNTS:
            expected, _ = run_loop(
                diffusers.KDPM2DiscreteScheduler(**kwargs), n, x
            )
            actual, _ = run_loop(KDPM2DiscreteScheduler(**kwargs), n, x)
            exact = spec_loop(kwargs, n, x)
            err = float((actual - expected).abs().max() / expected.abs().max())
            ours = float(
                (actual.double() - exact).abs().max() / exact.abs().max()
            )
            theirs = float(
                (expected.double() - exact).abs().max() / exact.abs().max()
            )
            worst = max(worst, (err, n, ours, theirs))
        err, n, ours, theirs = worst
        print(
            f"squaredcos_cap_v2 {prediction}, 2000 training steps, linspace: ours vs diffusers up to {err:.3g} "
            f"(n={n}); there against the spec's float64 loop: ours {ours:.3g}, diffusers {theirs:.3g}"
        )


if __name__ == "__main__":
    torch.set_num_threads(1)
    presets_against_figures()
    cosine_v_prediction()
    cosine_2000_training_steps()
