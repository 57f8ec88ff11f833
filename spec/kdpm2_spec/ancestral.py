"""The reference DPM2 a scheduler (k-diffusion's ``sample_dpm_2_ancestral``): diffusers' API on NumPy float64.

The schedule (main sigmas ``s_0..s_n`` and their timesteps) is ``Reference``'s, with every option
it has except churn. Each step ``s_i -> s_{i+1}`` is split by k-diffusion's ``get_ancestral_step``::

    sigma_up   = min(s_{i+1}, eta * sqrt(s_{i+1}^2 (s_i^2 - s_{i+1}^2) / s_i^2))
    sigma_down = sqrt(s_{i+1}^2 - sigma_up^2)

(``ancestral_step``). A step with ``sigma_down > 0`` calls the model twice:

1. at ``s_i``: ``x0 = denoise(...)``, ``d = (x - x0) / s_i``; the sample ``x`` is stored and moves
   to the midpoint ``m = sqrt(s_i sigma_down)``: ``x + d (m - s_i)``;
2. at ``m``: ``d' = (x_m - x0') / m``; the stored sample moves to ``sigma_down`` and fresh unit
   noise ``z`` is added: ``x + d' (sigma_down - s_i) + s_noise sigma_up z``.

A step with ``sigma_down = 0`` (the last, to sigma 0, or one where the clamp binds, ``eta > 1``)
is one Euler call to 0, ``x + d (0 - s_i)``, that adds no noise, as in k-diffusion.

The public tables follow diffusers' ``KDPM2AncestralDiscreteScheduler``: at a first-order call's
index its step's ``s_i``, ``m_i``, ``sigma_up``, ``sigma_down``; at a second-order call's index
those of the next step (``repeat_interleave``); the final sigma's entries close them. A
second-order call ``k`` reads entry ``k - 1``.

How diffusers differs (its defects, not copied here): it computes ``s_{i+1}^2 - sigma_up^2`` in
float32, which goes negative for ``squaredcos_cap_v2`` at 3 to 8 steps (NaN output, #14213) and
loses digits wherever ``s_{i+1} << s_i``; it has no clamp, ``eta``, ``s_noise`` or explicit noise;
its public ``sigmas_up`` ends in NaN (``0 * 0 / 0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from kdpm2_spec.reference import Reference, StepOutput, denoise


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of a step, k-diffusion's ``get_ancestral_step`` in float64.

    The same values are written ``sigma_up = min(sigma_next, eta sigma_next sqrt((sigma -
    sigma_next)(sigma + sigma_next)) / sigma)`` and ``sigma_down = sigma_next sqrt((1 - eta)(1 +
    eta) + (eta r)^2)`` with ``r = sigma_next / sigma``, which round no difference of nearly equal
    numbers: at ``eta = 1``, ``sigma_down = sigma_next^2 / sigma`` to the last bits. Where the
    clamp binds, ``sigma_down`` is 0.
    """
    if eta == 0:
        return sigma_next, 0.0
    r = sigma_next / sigma
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt((sigma - sigma_next) * (sigma + sigma_next)) / sigma)
    if not sigma_up < sigma_next:
        return 0.0, sigma_next
    return sigma_next * math.sqrt(max((1 - eta) * (1 + eta) + (eta * r) ** 2, 0.0)), sigma_up


class AncestralStep(NamedTuple):
    """One step: its ends, the split and the midpoint (``None`` for an Euler step)."""

    sigma: float
    sigma_next: float
    sigma_down: float
    sigma_up: float
    sigma_mid: float | None


class AncestralReference(Reference):
    """A readable float64 model of ``KDPM2AncestralDiscreteScheduler`` (DPM2 a), with diffusers' names.

    Constructor arguments are ``Reference``'s without churn, plus ``eta`` (share of fresh noise,
    k-diffusion's) and ``s_noise`` (factor on it). ``step(..., noise=z)`` takes the unit noise of
    a second-order call; the index lookup, ``scale_model_input`` and ``add_noise`` are
    ``Reference``'s.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | np.ndarray | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sigma_interpolation: str = "linear",
        discard_penultimate_sigma: bool = False,
        quantize_timesteps: bool = False,
        round_karras_timesteps: bool = False,
        eta: float = 1.0,
        s_noise: float = 1.0,
    ) -> None:
        schedule = {k: v for k, v in locals().items() if k not in ("self", "__class__", "eta", "s_noise")}
        assert eta >= 0 and s_noise >= 0, (eta, s_noise)
        self._main = Reference(**schedule)  # the DPM2 reference builds the main schedule
        self.config: dict[str, Any] = {**schedule, "eta": eta, "s_noise": s_noise}
        self.betas, self.alphas_cumprod = self._main.betas, self._main.alphas_cumprod
        self.train_sigmas, self.log_sigmas = self._main.train_sigmas, self._main.log_sigmas
        self.set_timesteps(num_train_timesteps - 1 if discard_penultimate_sigma else num_train_timesteps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Build the per-call tables of ``n`` steps, custom ``timesteps`` or custom ``sigmas`` (see ``Reference``)."""
        self._main.set_timesteps(num_inference_steps, device, timesteps, sigmas)
        main_t, main_sigmas = self._main.main_timesteps, self._main.main_sigmas_table
        n = len(main_sigmas) - 1
        self.num_inference_steps = n
        eta = self.config["eta"]
        self.steps: list[AncestralStep] = []
        for i in range(n):
            down, up = ancestral_step(main_sigmas[i], main_sigmas[i + 1], eta)
            mid = math.sqrt(main_sigmas[i] * down) if down > 0 else None
            self.steps.append(AncestralStep(main_sigmas[i], main_sigmas[i + 1], down, up, mid))
        # the calls: (step, order) and their timesteps
        self.calls: list[tuple[int, int]] = []
        call_t = []
        for i, step in enumerate(self.steps):
            self.calls.append((i, 1))
            call_t.append(main_t[i])
            if step.sigma_mid is not None:
                self.calls.append((i, 2))
                call_t.append(self.sigma_to_t(np.array([step.sigma_mid]))[0])
        self.timesteps = np.array(call_t, dtype=np.float64)
        # diffusers' layout: entry k is the row of the step that a first-order call at k would take
        rows = [(s.sigma, s.sigma_mid or 0.0, s.sigma_up, s.sigma_down) for s in self.steps]
        closing = (main_sigmas[-1], 0.0, 0.0, 0.0)
        entries = [rows[i] if order == 1 else (rows[i + 1] if i + 1 < n else closing) for i, order in self.calls]
        entries += [closing] * (3 if main_sigmas[-1] == 0 else 2)
        table = np.array(entries, dtype=np.float64)
        self.sigmas, self.sigmas_interpol, self.sigmas_up, self.sigmas_down = table.T.copy()
        self.main_timesteps, self.main_sigmas_table = main_t, main_sigmas
        self._sample: np.ndarray | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def step_starts(self) -> np.ndarray:
        """Positions of the steps' first calls: not only the even ones once a step makes one call (eta > 1)."""
        return np.array([p for p, (_, order) in enumerate(self.calls) if order == 1], dtype=np.int64)

    @property
    def current_sigma(self) -> float:
        """Noise level at which the model is evaluated in the next call (a second-order call reads entry ``k - 1``)."""
        assert self._step_index is not None
        k = self._step_index
        return float(self.sigmas[k] if self.state_in_first_order else self.sigmas_interpol[k - 1])

    def adds_noise(self) -> bool:
        """True when the next call is a second-order call, which adds noise."""
        return not self.state_in_first_order

    def step(
        self, model_output: np.ndarray, timestep: float, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> StepOutput:
        """One model call's update (see the module docstring); ``noise`` is a second-order call's unit noise."""
        assert model_output.shape == sample.shape
        self._init_step_index(timestep)
        k = self._step_index
        assert k is not None
        if k >= len(self.timesteps):
            raise ValueError(f"step past the end of the schedule: all {len(self.timesteps)} calls have run")
        prediction = self.config["prediction_type"]
        if self.state_in_first_order:
            sigma, target = self.sigmas[k], self.sigmas_interpol[k]  # the midpoint, or 0 for an Euler step
            x0 = denoise(model_output, sample, sigma, prediction)
            derivative = (sample - x0) / sigma
            prev_sample = sample + derivative * (target - sigma)
            last = k + 1 >= len(self.timesteps)
            # an Euler step before the last makes one call: nothing to store for a second
            self._sample = sample if target > 0 or last else None
        else:
            sigma, mid = self.sigmas[k - 1], self.sigmas_interpol[k - 1]
            down, up = self.sigmas_down[k - 1], self.sigmas_up[k - 1]
            x0 = denoise(model_output, sample, mid, prediction)
            derivative = (sample - x0) / mid
            assert noise is not None and noise.shape == sample.shape, (
                "a second-order call needs noise of the sample's shape"
            )
            prev_sample = self._sample + derivative * (down - sigma) + noise * self.config["s_noise"] * up
            self._sample = None
        self._step_index = k + 1
        return StepOutput(prev_sample, x0)
