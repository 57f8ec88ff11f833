"""Realistic one-line bugs planted in diffusers' own KDPM2 scheduler, and the gate run against each.

Each bug is an edit of ``diffusers/schedulers/scheduling_k_dpm_2_discrete.py`` (the installed
diffusers, 0.42.1): a short ``old`` substring (unique in the file, or its ``nth`` occurrence)
and its ``new`` text. Only these descriptions are committed; the edited file is written at run
time to a temporary folder, beside a small module that loads it in diffusers' package (its
relative imports then resolve) and re-exports the class. The gate checks it with
``--expect diffusers-0.42``: a bug is caught when the gate exits non-zero.

The kinds are those of diffusers' history and of ports: schedule construction (spacing, offsets,
families, interpolation), the interleaved tables, the timesteps of midpoints, ``init_noise_sigma``,
``scale_model_input``, each term of ``step`` (both orders, every prediction type), the step index
and begin index (``set_timesteps`` resets, ``#7386``'s ``add_noise`` after the first step), the
lookup rule of ``index_for_timestep``.

Run all of them (``nox -s planted``, about 40 minutes on two cores), or some::

    PYTHONPATH=src:spec python tests/planted_diffusers.py [--seed 0] [--only NAME ...] [--json FILE] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
TARGET = "kdpm2_planted:KDPM2DiscreteScheduler"


class Bug(NamedTuple):
    """One planted bug: ``old`` (its ``nth`` occurrence, from 0) becomes ``new``."""

    name: str
    old: str
    new: str
    nth: int = 0
    why: str = ""


BUGS = (
    # -- the spaced timesteps and the training schedule
    Bug(
        "steps_offset_ignored",
        "timesteps += self.config.steps_offset",
        "timesteps += 0",
        why="leading ignores steps_offset",
    ),
    Bug("trailing_not_shifted", "timesteps -= 1", "timesteps -= 0", why="trailing timesteps one too high"),
    Bug(
        "leading_float_ratio",
        "step_ratio = num_train_timesteps // self.num_inference_steps",
        "step_ratio = num_train_timesteps / self.num_inference_steps",
        why="leading spacing with a fractional ratio",
    ),
    Bug(
        "linspace_to_T",
        "np.linspace(0, num_train_timesteps - 1, num_inference_steps",
        "np.linspace(0, num_train_timesteps, num_inference_steps",
        why="linspace ends at T, not T - 1",
    ),
    Bug(
        "log_interpolated_sigmas",
        "sigmas = np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)",
        "sigmas = np.exp(np.interp(timesteps, np.arange(0, len(sigmas)), log_sigmas))",
        why="k-diffusion's log-sigma interpolation instead of diffusers' linear one",
    ),
    Bug(
        "scaled_linear_not_squared",
        "beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2",
        "beta_end**0.5, num_train_timesteps, dtype=torch.float32)",
        why="scaled_linear betas not squared",
    ),
    Bug(
        "cosine_offset",
        "(t + 0.008) / 1.008",
        "(t + 0.008) / 1.0",
        why="squaredcos_cap_v2 without the offset's normalisation",
    ),
    # -- sigma families
    Bug("karras_rho", "rho = 7.0", "rho = 5.0", why="Karras rho"),
    Bug(
        "karras_reversed",
        "sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho",
        "sigmas = (min_inv_rho + ramp * (max_inv_rho - min_inv_rho)) ** rho",
        why="Karras sigmas rising",
    ),
    Bug(
        "karras_sigma_min_from_top",
        "sigma_min = sigma_min if sigma_min is not None else in_sigmas[-1].item()",
        "sigma_min = sigma_min if sigma_min is not None else in_sigmas[-2].item()",
        0,
        why="Karras lower bound from the wrong end of the spaced schedule",
    ),
    Bug(
        "exponential_reversed",
        "np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps)",
        "np.linspace(math.log(sigma_min), math.log(sigma_max), num_inference_steps)",
        why="exponential sigmas rising",
    ),
    Bug(
        "exponential_base_2",
        "sigmas = np.exp(np.linspace(",
        "sigmas = np.exp2(np.linspace(",
        why="exp2 of natural logs",
    ),
    Bug(
        "beta_ppf_increasing",
        "for timestep in 1 - np.linspace(0, 1, num_inference_steps)",
        "for timestep in np.linspace(0, 1, num_inference_steps)",
        why="beta sigmas rising",
    ),
    Bug(
        "beta_range_dropped",
        "sigma_min + (ppf * (sigma_max - sigma_min))",
        "sigma_min + (ppf * sigma_max)",
        why="beta sigmas overshoot sigma_max",
    ),
    Bug(
        "karras_timesteps_from_spaced",
        "timesteps = np.array([self._sigma_to_t(sigma, log_sigmas) for sigma in sigmas]).round()",
        "timesteps = timesteps.round()",
        why="Karras main timesteps left at the spaced ones",
    ),
    # -- the interleaved tables
    Bug(
        "arithmetic_midpoints",
        "sigmas_interpol = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()",
        "sigmas_interpol = sigmas.lerp(sigmas.roll(1), 0.5)",
        why="arithmetic instead of geometric midpoints",
    ),
    Bug(
        "midpoint_weight",
        "sigmas.roll(1).log(), 0.5)",
        "sigmas.roll(1).log(), 0.4)",
        why="midpoints off the geometric mean",
    ),
    Bug(
        "midpoints_rolled_back", "sigmas.roll(1).log()", "sigmas.roll(-1).log()", why="midpoints towards the next step"
    ),
    Bug(
        "midpoint_timesteps_not_interpolated",
        "for sigma_interpol in sigmas_interpol]",
        "for sigma_interpol in sigmas.cpu()]",
        why="the midpoint timesteps are the main sigmas' timesteps",
    ),
    Bug(
        "timesteps_interleaved_backwards",
        "torch.stack((timesteps_interpol[1:-1, None], timesteps[1:, None]), dim=-1)",
        "torch.stack((timesteps[1:, None], timesteps_interpol[1:-1, None]), dim=-1)",
        why="main and midpoint timesteps swapped",
    ),
    Bug(
        "final_sigma_not_zero",
        "np.concatenate([sigmas, [0.0]])",
        "np.concatenate([sigmas, [1e-3]])",
        why="a final sigma of 1e-3",
    ),
    # -- init_noise_sigma and scale_model_input
    Bug(
        "init_noise_sigma_trailing",
        '["linspace", "trailing"]',
        '["linspace"]',
        why="init_noise_sigma wrong for trailing",
    ),
    Bug(
        "init_noise_sigma_leading",
        "return (self.sigmas.max() ** 2 + 1) ** 0.5",
        "return self.sigmas.max()",
        why="init_noise_sigma without the +1 for leading",
    ),
    Bug(
        "model_input_main_sigma",
        "            sigma = self.sigmas_interpol[self.step_index]",
        "            sigma = self.sigmas[self.step_index]",
        why="scale_model_input at a second-order call uses the main sigma",
    ),
    Bug(
        "model_input_no_sqrt",
        "sample = sample / ((sigma**2 + 1) ** 0.5)",
        "sample = sample / (sigma**2 + 1)",
        why="scale_model_input divides by sigma^2 + 1",
    ),
    # -- step
    Bug(
        "v_prediction_power",
        "(-sigma_input / (sigma_input**2 + 1) ** 0.5)",
        "(-sigma_input / (sigma_input**2 + 1) ** 1)",
        why="v-prediction: wrong power of sigma^2 + 1",
    ),
    Bug(
        "v_prediction_sample_term",
        "sample / (sigma_input**2 + 1)\n",
        "sample / (sigma_input**2 + 1) ** 0.5\n",
        why="v-prediction: the sample term's power",
    ),
    Bug(
        "epsilon_second_order_sigma_hat",
        "sigma_input = sigma_hat if self.state_in_first_order else sigma_interpol",
        "sigma_input = sigma_hat",
        0,
        why="epsilon: the second-order call denoises at the step's start sigma",
    ),
    Bug(
        "first_order_derivative_sigma",
        "derivative = (sample - pred_original_sample) / sigma_hat",
        "derivative = (sample - pred_original_sample) / sigma_interpol",
        why="first-order derivative divided by the midpoint sigma",
    ),
    Bug(
        "first_order_euler_to_next",
        "dt = sigma_interpol - sigma_hat",
        "dt = sigma_next - sigma_hat",
        why="first call steps to the next sigma",
    ),
    Bug(
        "second_order_dt",
        "dt = sigma_next - sigma_hat",
        "dt = sigma_next - sigma_interpol",
        why="second call's step from the midpoint",
    ),
    Bug(
        "second_order_from_midpoint",
        "            sample = self.sample\n",
        "            sample = sample\n",
        why="second call moves the midpoint sample, not the stored one",
    ),
    Bug(
        "first_order_midpoint_index",
        "sigma_interpol = self.sigmas_interpol[self.step_index + 1]",
        "sigma_interpol = self.sigmas_interpol[self.step_index]",
        why="first call's midpoint one entry early",
    ),
    Bug(
        "second_order_start_sigma",
        "sigma = self.sigmas[self.step_index - 1]",
        "sigma = self.sigmas[self.step_index]",
        why="second call's start sigma one entry late",
    ),
    Bug(
        "pred_original_sample_is_sample",
        "pred_original_sample=pred_original_sample)",
        "pred_original_sample=sample)",
        why="pred_original_sample returns the sample",
    ),
    # -- step index, begin index, lookups
    Bug(
        "set_timesteps_keeps_step_index",
        "        self._step_index = None\n        self._begin_index = None\n        self.sigmas = self.sigmas.to",
        "        self._begin_index = None\n        self.sigmas = self.sigmas.to",
        1,
        why="set_timesteps does not reset the step index",
    ),
    Bug(
        "set_timesteps_keeps_begin_index",
        "        self._begin_index = None\n        self.sigmas = self.sigmas.to",
        "        self.sigmas = self.sigmas.to",
        1,
        why="set_timesteps does not reset the begin index",
    ),
    Bug(
        "add_noise_pre_7386",
        "step_indices = [self.step_index] * timesteps.shape[0]",
        "step_indices = [self.begin_index] * timesteps.shape[0]",
        why="add_noise after the first step uses the begin index (before #7386)",
    ),
    Bug(
        "lookup_first_match",
        "pos = 1 if len(indices) > 1 else 0",
        "pos = 0",
        why="index_for_timestep takes the first match",
    ),
    Bug(
        "begin_index_ignored",
        "            self._step_index = self._begin_index",
        "            self._step_index = self.index_for_timestep(timestep)",
        why="the first call looks its timestep up although a begin index is set",
    ),
    Bug(
        "sigma_to_t_weights_swapped",
        "t = (1 - w) * low_idx + w * high_idx",
        "t = (1 - w) * high_idx + w * low_idx",
        why="sigma_to_t interpolates the wrong way",
    ),
)
"""The planted bugs, grouped by where they are."""


def source() -> Path:
    """The installed diffusers' KDPM2 scheduler file."""
    import diffusers.schedulers.scheduling_k_dpm_2_discrete as module

    return Path(module.__file__ or "")


def planted_text(bug: Bug, text: str) -> str:
    """``text`` with ``bug`` applied; ``ValueError`` when its ``old`` does not occur ``nth + 1`` times."""
    parts = text.split(bug.old)
    if len(parts) - 1 <= bug.nth:
        raise ValueError(f"{bug.name}: {bug.old!r} occurs {len(parts) - 1} times, not at least {bug.nth + 1}")
    return bug.old.join(parts[: bug.nth + 1]) + bug.new + bug.old.join(parts[bug.nth + 1 :])


SHIM = '''"""diffusers' KDPM2 scheduler with one planted bug (written by tests/planted_diffusers.py)."""
import importlib.util
import sys
from pathlib import Path

import diffusers.schedulers

_NAME = "diffusers.schedulers.scheduling_k_dpm_2_discrete_planted"
_spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).with_name("scheduling_k_dpm_2_discrete_planted.py"))
_module = importlib.util.module_from_spec(_spec)
sys.modules[_NAME] = _module
_spec.loader.exec_module(_module)
KDPM2DiscreteScheduler = _module.KDPM2DiscreteScheduler
'''


def plant(bug: Bug, folder: Path) -> None:
    """Write the planted file and its loader module into ``folder``."""
    text = source().read_text(encoding="utf-8")
    (folder / "scheduling_k_dpm_2_discrete_planted.py").write_text(planted_text(bug, text), encoding="utf-8")
    (folder / "kdpm2_planted.py").write_text(SHIM, encoding="utf-8")


def gate(bug: Bug, seed: int | None = 0, extra: tuple[str, ...] = ()) -> dict[str, object]:
    """Run the gate on ``bug`` with ``--expect diffusers-0.42``: its exit status and the lines that failed."""
    with tempfile.TemporaryDirectory(prefix="kdpm2-planted-") as folder:
        plant(bug, Path(folder))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec"), os.environ.get("PYTHONPATH", "")]),
        }
        command = [sys.executable, "-m", "kdpm2_spec", "check", TARGET, "--path", folder, "--expect", "diffusers-0.42"]
        command += ([] if seed is None else ["--seed", str(seed)]) + list(extra)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=folder, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(("FAIL", "ERROR", "STALE"))]
    return {
        "bug": bug.name,
        "why": bug.why,
        "status": done.returncode,
        "caught": done.returncode != 0,
        "lines": [line[:300] for line in lines],
        "stderr": done.stderr[-500:] if done.returncode == 2 else "",
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="Hypothesis seed of every run (default 0)")
    parser.add_argument("--only", action="append", default=None, metavar="NAME", help="run only this bug")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the outcomes as JSON")
    parser.add_argument("--jobs", type=int, default=1, help="gate runs at once (default 1)")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if args.only is None or b.name in args.only]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        outcomes = []
        for outcome in pool.map(lambda bug: gate(bug, args.seed), bugs):
            outcomes.append(outcome)
            mark = "caught" if outcome["caught"] else "MISSED"
            print(
                f"{mark:6} {outcome['bug']} (exit {outcome['status']}, {outcome['seconds']} s): {outcome['why']}",
                flush=True,
            )
            for line in outcome["lines"][:3]:
                print(f"       {line[:200]}")
    caught = sum(1 for o in outcomes if o["caught"])
    print(f"{caught} of {len(outcomes)} planted bugs caught at seed {args.seed} with --expect diffusers-0.42")
    if args.json:
        import datetime

        import diffusers

        data = {"date": datetime.date.today().isoformat(), "diffusers": diffusers.__version__, "seed": args.seed}
        Path(args.json).write_text(json.dumps({**data, "outcomes": outcomes}, indent=1) + "\n", encoding="utf-8")
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
