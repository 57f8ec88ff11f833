"""The reference KDPM2 scheduler: diffusers' API on NumPy float64 arrays.

Sampling with DPM-Solver-2 (Karras et al. 2022, Algorithm 2 with the midpoint rule) takes
``n`` full steps ``s_i -> s_{i+1}``; a full step calls the model twice:

1. First-order call at ``s_i`` (after churn: ``sh_i = s_i (1 + gamma_i)``): denoise, take the
   derivative ``d = (x - x0) / sh_i`` and move the sample to the midpoint
   ``m = sqrt(sh_i * s_{i+1})``. The sample ``x`` is stored.
2. Second-order call at ``m``: denoise again, ``d' = (x_m - x0') / m``, and move the *stored*
   sample by the whole step: ``x_{i+1} = x + d' (s_{i+1} - sh_i)``.

When ``s_{i+1} = 0`` the midpoint is 0, the first call is an Euler step to 0 and the second is
skipped, so a schedule ending in 0 takes ``2n - 1`` calls. With churn, noise of standard
deviation ``s_noise * sqrt(sh_{i+1}^2 - s_{i+1}^2)`` is added after each full step that another
follows, so that the model is evaluated at the churned level, as k-diffusion's ``sample_dpm_2``.

How diffusers differs (its defects, not copied here):

- ``sigmas_interpol[0]`` is NaN in diffusers; here it is ``s_0`` (it is never read).
- diffusers rounds the main Karras timesteps but not their midpoints; from 50 steps on, timesteps
  repeat and stop decreasing (``[..., 2, 1, 0.97, 1, 0.33, 0]``). Here every timestep is the
  unrounded ``sigma_to_t`` of its sigma, as for the exponential and beta families and in
  k-diffusion; ``round_karras_timesteps=True`` reproduces diffusers.
- ``trailing`` spacing: diffusers' ``np.arange(T, 0, -T / n)`` yields ``n + 1`` timesteps for some
  ``n`` (61, 103, ... of 1000), the last of them ``-1``. Here there are always ``n``.
- ``prediction_type="sample"``, custom ``timesteps``/``sigmas``, ``sigma_min``/``sigma_max``, the
  A1111/ComfyUI options and churn are absent from diffusers.
- A sigma family's bounds must not cross: with only one of ``sigma_min``/``sigma_max`` given, the
  other is the spaced schedule's end, which depends on the step count (``trailing`` spacing at
  2 steps ends at timestep ``T/2 - 1``, sigma about 2.4). ``sigma_max=1`` alone then asks for
  sigmas that rise from 1 to 2.4; ``set_timesteps`` raises ``ValueError`` for such a request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from kdpm2_spec import schedule

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""What the model predicts: the noise, the velocity ``v`` (Salimans & Ho 2022), or ``x0``."""


class StepOutput(NamedTuple):
    """What ``step`` returns: the next sample and the denoised estimate of this call."""

    prev_sample: np.ndarray
    pred_original_sample: np.ndarray


def denoise(model_output: np.ndarray, sample: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """The denoised sample ``x0`` that a model output implies at noise level ``sigma``."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / math.sqrt(sigma**2 + 1)) + sample / (sigma**2 + 1)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def model_output_for(x0: np.ndarray, sample: np.ndarray, sigma: float, prediction_type: str) -> np.ndarray:
    """The model output that ``denoise`` maps back to ``x0``: an exact model's prediction."""
    if prediction_type == "epsilon":
        return (sample - x0) / sigma
    if prediction_type == "v_prediction":
        return (sample / (sigma**2 + 1) - x0) * math.sqrt(sigma**2 + 1) / sigma
    if prediction_type == "sample":
        return x0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class Reference:
    """A readable float64 model of ``KDPM2DiscreteScheduler``, with the same names.

    Constructor arguments are diffusers' plus ``sigma_min``/``sigma_max`` (bounds of the Karras,
    exponential and beta families), ``sigma_interpolation`` (``"log"`` as k-diffusion),
    ``discard_penultimate_sigma`` (A1111, ComfyUI), ``quantize_timesteps`` (timesteps of the
    nearest training sigma, ComfyUI), ``round_karras_timesteps`` (diffusers) and the churn
    parameters of Karras et al. Algorithm 2 (``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).
    """

    order = 2

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
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
    ) -> None:
        assert use_karras_sigmas + use_exponential_sigmas + use_beta_sigmas <= 1, "one sigma family at most"
        assert prediction_type in PREDICTION_TYPES, prediction_type
        assert timestep_spacing in schedule.TIMESTEP_SPACINGS, timestep_spacing
        self.config: dict[str, Any] = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.betas = schedule.train_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas_cumprod = schedule.alphas_cumprod(self.betas)
        self.train_sigmas = schedule.train_sigmas(self.alphas_cumprod)
        self.log_sigmas = np.log(self.train_sigmas)
        # diffusers' default tables have T steps; dropping the penultimate sigma needs T spaced
        # timesteps for n steps plus one, so the longest schedule it allows is T - 1 steps.
        self.set_timesteps(num_train_timesteps - 1 if discard_penultimate_sigma else num_train_timesteps)

    # -- schedule -----------------------------------------------------------------------------

    def main_sigmas(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The main timesteps ``t_0..t_{n-1}`` and sigmas ``s_0..s_n`` (``s_n = 0``) of ``n`` steps."""
        c = self.config
        n = num_inference_steps + 1 if c["discard_penultimate_sigma"] else num_inference_steps
        timesteps = schedule.spaced_timesteps(n, c["num_train_timesteps"], c["timestep_spacing"], c["steps_offset"])
        sigmas = schedule.t_to_sigma(timesteps, self.train_sigmas, c["sigma_interpolation"])
        lo = sigmas[-1] if c["sigma_min"] is None else c["sigma_min"]
        hi = sigmas[0] if c["sigma_max"] is None else c["sigma_max"]
        family_set = c["use_karras_sigmas"] or c["use_exponential_sigmas"] or c["use_beta_sigmas"]
        if family_set and n > 1 and not lo < hi:  # one sigma is sigma_max whatever the bounds
            raise ValueError(
                f"sigma_min={lo} must be below sigma_max={hi} for {n} sigmas (a bound not given is the "
                "spaced schedule's end)"
            )
        family = None
        if c["use_karras_sigmas"]:
            family = schedule.karras_sigmas(n, lo, hi)
        elif c["use_exponential_sigmas"]:
            family = schedule.exponential_sigmas(n, lo, hi)
        elif c["use_beta_sigmas"]:
            family = schedule.beta_sigmas(n, lo, hi)
        if family is not None:
            sigmas = family
            timesteps = self.sigma_to_t(sigmas)
            if c["use_karras_sigmas"] and c["round_karras_timesteps"]:
                timesteps = np.round(timesteps)
        if c["discard_penultimate_sigma"]:
            sigmas, timesteps = sigmas[:-1], timesteps[:-1]
        return timesteps, np.append(sigmas, 0.0)

    def sigma_to_t(self, sigmas: np.ndarray) -> np.ndarray:
        """Model-facing timestep of each sigma: log-sigma interpolation, or nearest if quantized."""
        if self.config["quantize_timesteps"]:
            return schedule.sigma_to_nearest_t(sigmas, self.log_sigmas)
        return schedule.sigma_to_t(sigmas, self.log_sigmas)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Build the per-call tables for ``n`` steps, custom ``timesteps``, or custom ``sigmas``.

        Custom sigmas include the final value (as k-diffusion's arrays do); custom timesteps get
        the training sigma at each and a final 0 (as diffusers' Euler scheduler).
        """
        assert (num_inference_steps is not None) + (timesteps is not None) + (sigmas is not None) == 1
        del device
        c = self.config
        if sigmas is not None:
            main_sigmas = np.asarray(sigmas, dtype=np.float64)
            assert len(main_sigmas) >= 2 and np.all(main_sigmas[:-1] > 0) and np.all(np.diff(main_sigmas) < 0)
            main_t = self.sigma_to_t(main_sigmas[:-1])
        elif timesteps is not None:
            main_t = np.asarray(timesteps, dtype=np.float64)
            interpolation = c["sigma_interpolation"]
            main_sigmas = np.append(schedule.t_to_sigma(main_t, self.train_sigmas, interpolation), 0.0)
        else:
            assert num_inference_steps is not None
            main_t, main_sigmas = self.main_sigmas(num_inference_steps)
            if c["quantize_timesteps"]:
                main_t = self.sigma_to_t(main_sigmas[:-1])
        n = len(main_sigmas) - 1
        self.num_inference_steps = n

        # Churn (Karras et al. Algorithm 2): raise s_i to sh_i before the first call of step i.
        s_tmax = math.inf if c["s_tmax"] is None else c["s_tmax"]
        gamma = min(c["s_churn"] / n, 2**0.5 - 1)
        churned = (c["s_churn"] > 0) & (c["s_tmin"] <= main_sigmas[:-1]) & (main_sigmas[:-1] <= s_tmax)
        hat = np.where(churned, main_sigmas[:-1] * (1 + gamma), main_sigmas[:-1])
        main_t = np.where(churned, self.sigma_to_t(hat), main_t)

        mids = np.sqrt(hat * main_sigmas[1:])
        # Per call: first-order calls read hat (even entries), second-order calls their target.
        self.sigmas = schedule.interleave_sigmas(main_sigmas)
        self.sigmas[0:-2:2] = hat
        self.sigmas_interpol = np.concatenate([hat[:1], np.repeat(mids, 2), mids[-1:]])
        self.timesteps = schedule.interleave_timesteps(main_t, self.sigma_to_t(mids), main_sigmas[-1] == 0)
        self.main_timesteps, self.main_sigmas_table = main_t, main_sigmas
        self._sample: np.ndarray | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def init_noise_sigma(self) -> float:
        """Standard deviation of the initial noise; diffusers adds 1 in quadrature for ``leading``."""
        top = float(self.sigmas.max())
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return top
        return math.sqrt(top**2 + 1)

    # -- state --------------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index of the next call in ``timesteps``; ``None`` until the first call."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first call's index when a pipeline set it, else ``None``."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next loop at call ``begin_index`` instead of looking the timestep up."""
        if not 0 <= begin_index < len(self.timesteps):
            raise ValueError(f"begin_index must be in [0, {len(self.timesteps) - 1}], got {begin_index}")
        self._begin_index = begin_index

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a first-order call (no sample stored)."""
        return self._sample is None

    def index_for_timestep(self, timestep: float, schedule_timesteps: np.ndarray | None = None) -> int:
        """Position of ``timestep`` in the schedule: the first match, the second if it repeats.

        The second match avoids skipping a sigma when a loop starts mid-schedule (image to image)
        in schedules that repeat timesteps. Raises ``ValueError`` when the timestep is absent.
        """
        table = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = np.flatnonzero(table == timestep)
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep} is not in the schedule")
        return int(matches[1] if len(matches) > 1 else matches[0])

    def first_call_index(self, timestep: float) -> int:
        """Where a loop without a begin index starts: the first *step start* matching ``timestep``.

        A loop's first call is a first-order call, a step's first (``step_starts``: the even
        positions here). So the first call is the first step start holding ``timestep``, else its
        first position: a plain loop ``for t in timesteps`` starts at call 0 even when the first
        timesteps repeat (sigmas above the training range all map to timestep ``T - 1``), and an
        image-to-image start at a timestep that the previous midpoint shares starts at its step.
        (An implementation that receives an element of its own ``timesteps`` tensor may take that
        element's position.)
        ``index_for_timestep`` keeps diffusers' rule (second match), which made such loops skip
        their first call. Raises ``ValueError`` when the timestep is absent.
        """
        matches = np.flatnonzero(self.timesteps == timestep)
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep} is not in the schedule")
        starts = matches[np.isin(matches, self.step_starts())]
        return int(starts[0] if len(starts) else matches[0])

    def step_starts(self) -> np.ndarray:
        """Positions of the steps' first calls: the even ones, as every DPM2 step but the last makes two calls."""
        return np.arange(0, len(self.timesteps), 2)

    def _init_step_index(self, timestep: float) -> None:
        if self._step_index is None:
            begin = self._begin_index
            self._step_index = self.first_call_index(timestep) if begin is None else begin

    @property
    def current_sigma(self) -> float:
        """Noise level at which the model is evaluated in the next call."""
        assert self._step_index is not None
        table = self.sigmas if self.state_in_first_order else self.sigmas_interpol
        return float(table[self._step_index])

    # -- calls --------------------------------------------------------------------------------

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """The model input ``sample / sqrt(sigma^2 + 1)`` at this call's noise level."""
        self._init_step_index(timestep)
        return sample / math.sqrt(self.current_sigma**2 + 1)

    def step(
        self, model_output: np.ndarray, timestep: float, sample: np.ndarray, noise: np.ndarray | None = None
    ) -> StepOutput:
        """One model call's update (see the module docstring); ``noise`` feeds the churn."""
        assert model_output.shape == sample.shape
        self._init_step_index(timestep)
        k = self._step_index
        assert k is not None
        if k >= len(self.timesteps):
            raise ValueError(f"step past the end of the schedule: all {len(self.timesteps)} calls have run")
        prediction = self.config["prediction_type"]
        if self.state_in_first_order:
            sigma, sigma_mid = self.sigmas[k], self.sigmas_interpol[k + 1]
            x0 = denoise(model_output, sample, sigma, prediction)
            derivative = (sample - x0) / sigma
            prev_sample = sample + derivative * (sigma_mid - sigma)
            self._sample = sample
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[k - 1], self.sigmas_interpol[k], self.sigmas[k]
            x0 = denoise(model_output, sample, sigma_mid, prediction)
            derivative = (sample - x0) / sigma_mid
            prev_sample = self._sample + derivative * (sigma_next - sigma)
            self._sample = None
            prev_sample = self._churn(prev_sample, k, noise)
        self._step_index = k + 1
        return StepOutput(prev_sample, x0)

    def _churn(self, sample: np.ndarray, k: int, noise: np.ndarray | None) -> np.ndarray:
        """Raise the sample from ``sigmas[k]`` to the next step's churned level ``sigmas[k + 1]``."""
        if self.config["s_churn"] <= 0 or k + 1 >= len(self.timesteps):
            return sample
        assert noise is not None and noise.shape == sample.shape, "churn needs noise of the sample's shape"
        spread = math.sqrt(max(self.sigmas[k + 1] ** 2 - self.sigmas[k] ** 2, 0.0))
        return sample + noise * self.config["s_noise"] * spread

    def add_noise(self, original_samples: np.ndarray, noise: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        """``x0 + sigma * noise`` at each timestep's sigma (batch along the first axis).

        The sigma's index is ``begin_index`` before the first call, ``step_index`` after it, and
        looked up with ``index_for_timestep`` when no begin index was set (training).
        """
        timesteps = np.atleast_1d(np.asarray(timesteps, dtype=np.float64))
        if self._begin_index is None:
            indices = [self.index_for_timestep(t) for t in timesteps]
        elif self._step_index is not None:
            indices = [self._step_index] * len(timesteps)
        else:
            indices = [self._begin_index] * len(timesteps)
        sigma = self.sigmas[indices].reshape((-1,) + (1,) * (original_samples.ndim - 1))
        return original_samples + noise * sigma

    def __len__(self) -> int:
        return int(self.config["num_train_timesteps"])
