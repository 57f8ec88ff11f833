"""``KDPM2AncestralDiscreteScheduler``: DPM2 a (k-diffusion's ``sample_dpm_2_ancestral``) with diffusers' API.

A thin shell over the schedule core it shares with ``KDPM2DiscreteScheduler``
(``kdpm2.scheduler._KDPM2Core``): the shell validates ``eta`` and ``s_noise``, splits each step
into its descent and its noise (``kdpm2.ancestral_tables``), and says where a second-order call's
noise comes from (``kdpm2.noise``). The step is the same single pass over the data as DPM2's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, cast

import numpy as np
import torch

from kdpm2 import ancestral_tables, functional, validation
from kdpm2 import noise as noise_sources
from kdpm2.outputs import KDPM2DiscreteSchedulerOutput
from kdpm2.scheduler import _KDPM2Core, _to_device

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""k-diffusion's noise sampler: ``noise_sampler(sigma, sigma_next)`` returns unit noise shaped like the sample."""


@dataclass(init=False, slots=True)
class KDPM2AncestralDiscreteSchedulerOutput(KDPM2DiscreteSchedulerOutput):
    """What ``KDPM2AncestralDiscreteScheduler.step`` returns: the next sample and this call's denoised estimate.

    The fields and their slots are ``KDPM2DiscreteSchedulerOutput``'s (it adds none).
    """


class StepLevels(NamedTuple):
    """One step of an ancestral schedule, as k-diffusion's ``sample_dpm_2_ancestral`` walks it.

    ``sigma_mid`` is the second call's sigma; an Euler step (``sigma_down == 0``) has none and
    adds no noise.
    """

    sigma: float
    sigma_next: float
    sigma_down: float
    sigma_up: float
    sigma_mid: float | None


class KDPM2AncestralDiscreteScheduler(_KDPM2Core):
    """DPM2 a: DPM-Solver-2 with ancestral noise (k-diffusion's ``sample_dpm_2_ancestral``), diffusers' API.

    A drop-in for ``diffusers.KDPM2AncestralDiscreteScheduler``: the arguments up to
    ``steps_offset`` are diffusers', then those ``KDPM2DiscreteScheduler`` has beyond it, then
    ``eta`` and ``s_noise``.

    Each step ``s_i -> s_{i+1}`` descends to ``sigma_down`` and adds ``s_noise * sigma_up`` times
    unit noise, with k-diffusion's ``get_ancestral_step``: ``sigma_up = min(s_{i+1}, eta *
    s_{i+1} * sqrt(1 - s_{i+1}^2 / s_i^2))`` and ``sigma_down^2 + sigma_up^2 = s_{i+1}^2``, both
    computed in float64 on the host (with a preset: in the front-end's float32 arithmetic), so
    every table is finite for every accepted configuration. The first call evaluates the model at
    ``s_i`` and moves to the midpoint ``sqrt(s_i * sigma_down)``; the second evaluates it there,
    moves the stored sample to ``sigma_down`` and adds the noise, in one pass over the data.

    Where ``sigma_down`` is 0 the step is one Euler call to sigma 0 that adds no noise. That is
    the last step (to sigma 0), and any step where the clamp ``min(s_{i+1}, ...)`` binds, which
    takes ``eta > 1``: there, as in k-diffusion (so in ComfyUI and AUTOMATIC1111), the clamp
    removes the noise: the sample becomes the model's denoised estimate and the next step starts
    from it without noise, at ``s_{i+1}``. ``eta = 0`` adds no noise anywhere (DPM2 itself).

    Noise: a second-order call (``state_in_first_order`` is False) adds noise, and draws it even
    when ``eta`` or ``s_noise`` is 0, as diffusers and k-diffusion do. It comes, first found
    first used, from ``step(noise=...)``, from ``noise_sampler(sigma, sigma_next)`` (k-diffusion's
    callable, set on the scheduler) or from ``step(generator=...)`` exactly as diffusers draws it
    (shaped like ``model_output``, in its dtype; a list of generators draws one batch item from
    each, so a batch reproduces its items run alone).

    Args:
        num_train_timesteps: Length of the training schedule.
        beta_start: First beta of the training schedule.
        beta_end: Last beta of the training schedule.
        beta_schedule: ``"linear"``, ``"scaled_linear"`` (SD 1.x/SDXL) or ``"squaredcos_cap_v2"``.
        trained_betas: Explicit betas, ``num_train_timesteps`` values in (0, 1); replace the schedule.
        use_karras_sigmas: Karras et al.'s rho = 7 sigmas between the bounds.
        use_exponential_sigmas: Sigmas evenly spaced in log sigma between the bounds.
        use_beta_sigmas: Sigmas at the quantiles of a Beta(0.6, 0.6) distribution (needs scipy).
        prediction_type: What the model predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        timestep_spacing: ``"linspace"``, ``"leading"`` or ``"trailing"``, as diffusers.
        steps_offset: Added to ``leading`` timesteps (SD 1.5 configs say 1).
        sigma_min: Lower bound of the Karras, exponential and beta sigmas (default: the end of
            the spaced schedule, as diffusers).
        sigma_max: Upper bound of the same (default: the start of the spaced schedule).
        sigma_interpolation: ``"linear"`` in sigma (diffusers) or ``"log"`` in log sigma
            (k-diffusion, A1111, ComfyUI).
        discard_penultimate_sigma: Build ``n + 1`` sigmas and drop the last non-zero one
            (A1111, ComfyUI).
        quantize_timesteps: Give the model the nearest training timestep (ComfyUI).
        round_karras_timesteps: Round the main Karras timesteps, as diffusers does.
        eta: Share of each step's noise that is fresh (k-diffusion's ``eta``): 1 is DPM2 a, 0 is
            DPM2; above 1 the clamp binds (see above).
        s_noise: Factor on the added noise (k-diffusion's ``s_noise``).
        preset: A ComfyUI or AUTOMATIC1111 sampler to reproduce with its DPM2 a
            (``kdpm2.presets.NAMES``); build it with ``from_preset``, which sets the other
            arguments to the preset's (``eta`` and ``s_noise`` stay free).

    Raises:
        ValueError: An argument outside its domain, named in the message.
        TypeError: An argument of the wrong type, named in the message.
    """

    _sampler = "dpm2a"
    _output_class = KDPM2AncestralDiscreteSchedulerOutput
    _unset_when_none: ClassVar[tuple[str, ...]] = ("sigma_min", "sigma_max")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
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
        preset: str | None = None,
    ) -> None:
        config = dict(locals())
        del config["self"]
        self._noise_sampler: NoiseSampler | None = None
        self._public: tuple[Any, torch.Tensor, torch.Tensor] | None = None
        self._setup(config)

    # -- hooks of the schedule core -----------------------------------------------------------

    def _check_sampler_args(self, config: dict[str, Any]) -> None:
        """``eta`` and ``s_noise``: finite and not negative (``s_noise`` below the sigma range's top)."""
        config["eta"] = validation.real("eta", config["eta"], 0.0)
        config["s_noise"] = validation.real("s_noise", config["s_noise"], 0.0, below=validation.SIGMA_RANGE[1])

    def _call_levels(
        self,
        main_sigmas: torch.Tensor,
        main_timesteps: torch.Tensor,
        timestep_of: Callable[[torch.Tensor], torch.Tensor],
        log_sigmas: torch.Tensor,
    ) -> ancestral_tables.Tables:
        """Each step's split (the front-end's float32 arithmetic with a preset), then diffusers' layout."""
        c = self.config
        split = ancestral_tables.frontend_split if c.preset is not None else ancestral_tables.split
        levels = split(main_sigmas, c.eta)
        # an Euler step's midpoint is 0 (timestep 0 by every rule), and no call reads its timestep
        return ancestral_tables.layout(main_sigmas, levels, main_timesteps, timestep_of(levels.mids), c.eta)

    def _call_tables(self) -> functional.CallTables:
        """Every call's coefficients; ``eta`` shapes the schedule, so changing it needs ``set_timesteps``."""
        c, built = self.config, self._ancestral_tables
        if c.eta != built.eta:
            raise ValueError(
                f"eta changed from {built.eta} to {c.eta} after set_timesteps; call set_timesteps again to use it"
            )
        return ancestral_tables.call_tables(built, c.prediction_type, c.s_noise)

    @property
    def _ancestral_tables(self) -> ancestral_tables.Tables:
        return cast(ancestral_tables.Tables, self._tables)

    # -- public tables ------------------------------------------------------------------------

    def _public_levels(self) -> tuple[torch.Tensor, torch.Tensor]:
        built = self._ancestral_tables
        if self._public is None or self._public[0] is not built:
            device = self.timesteps.device
            up = _to_device(built.sigmas_up, device, torch.float32)
            down = _to_device(built.sigmas_down, device, torch.float32)
            self._public = (built, up, down)
        return self._public[1], self._public[2]

    @property
    def sigmas_up(self) -> torch.Tensor:
        """Per call, in diffusers' layout: the standard deviation of the noise a step adds (before ``s_noise``)."""
        return self._public_levels()[0]

    @property
    def sigmas_down(self) -> torch.Tensor:
        """Per call, in diffusers' layout: the level the deterministic part of a step descends to."""
        return self._public_levels()[1]

    @property
    def step_levels(self) -> list[StepLevels]:
        """Per step: ``sigma``, ``sigma_next``, ``sigma_down``, ``sigma_up`` and the midpoint (host floats)."""
        built = self._ancestral_tables
        sigmas = built.main_sigmas.tolist()
        down, up, mids = built.split.down.tolist(), built.split.up.tolist(), built.split.mids.tolist()
        return [
            StepLevels(sigmas[i], sigmas[i + 1], down[i], up[i], mids[i] if down[i] > 0 else None)
            for i in range(built.num_steps)
        ]

    # -- noise --------------------------------------------------------------------------------

    @property
    def noise_sampler(self) -> NoiseSampler | None:
        """k-diffusion's noise sampler, called as ``noise_sampler(sigma, sigma_next)`` by each call that adds noise.

        ``sigma`` and ``sigma_next`` are the step's ends as 0-d float32 tensors on the sample's
        device; the result must be shaped like the sample and on its device. Set it to reproduce
        a front-end run (``BrownianTreeNoiseSampler``, stored draws); ``None`` (the default)
        draws from ``step``'s ``generator``.
        """
        return self._noise_sampler

    @noise_sampler.setter
    def noise_sampler(self, sampler: NoiseSampler | None) -> None:
        if sampler is not None and not callable(sampler):
            raise TypeError(
                f"noise_sampler must be callable as noise_sampler(sigma, sigma_next) or None; got {type(sampler).__name__}"
            )
        self._noise_sampler = sampler

    def _sampled(self, k: int, like: torch.Tensor) -> torch.Tensor:
        """The noise sampler's draw for second-order call ``k`` (``-1``: read the device counter)."""
        table = self._sigmas_on(like.device, torch.float32)
        if k < 0:
            assert self._step_counter is not None
            counter = self._step_counter.to(like.device).reshape(1)
            pair = table.index_select(0, torch.cat([counter - 1, counter]))
            sigma, sigma_next = pair[0], pair[1]
        else:
            sigma, sigma_next = table[k - 1], table[k]
        assert self._noise_sampler is not None
        return noise_sources.given("noise_sampler's result", self._noise_sampler(sigma, sigma_next), like)

    # -- calls --------------------------------------------------------------------------------

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        noise: torch.Tensor | None = None,
    ) -> KDPM2AncestralDiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Advance one model call: first order to the midpoint, or second order to ``sigma_down`` plus noise.

        Inputs are never modified; a rejected call changes nothing (no noise is drawn).

        Args:
            model_output: The model's prediction at this call (``prediction_type``).
            timestep: This call's timestep; locates the first call when no begin index is set.
            sample: The current sample, shaped like ``model_output``.
            generator: Where a second-order call draws its noise when neither ``noise`` nor a
                ``noise_sampler`` gives it: a ``torch.Generator``, or one per batch item, used
                as diffusers uses them (same seeds, same noise).
            return_dict: Return a ``KDPM2AncestralDiscreteSchedulerOutput`` rather than a tuple.
            noise: This call's unit noise, shaped like ``sample`` and on its device; only a
                second-order call (``state_in_first_order`` False) takes it.

        Returns:
            ``prev_sample`` and ``pred_original_sample``, computed in at least float32 and
            rounded once to the promoted dtype of ``sample`` and ``model_output``.

        Raises:
            ValueError: Mismatched shapes or devices, a timestep not in the schedule, every call
                has run, ``noise`` on a first-order call, or a generator list that does not have
                one generator per batch item.
            TypeError: A non-tensor, a tensor torch cannot step, or a bad ``generator``.
        """
        first = self.sample is None
        if noise is not None:
            noise_sources.given("noise", noise, validation.tensor("sample", sample))
            if first:
                raise ValueError(
                    "noise: this is a first-order call, which adds no noise; pass noise only to second-order "
                    "calls (state_in_first_order is False before them)"
                )
        if generator is not None:
            generator = noise_sources.generators(generator, validation.tensor("model_output", model_output))
        on_device = self._step_counter is not None or torch.compiler.is_compiling()
        if on_device and self._euler_inside:
            raise NotImplementedError(
                "a schedule with Euler steps before the last (eta > 1 where the clamp binds) runs eagerly only, "
                "not under torch.compile or after a compiled call"
            )

        def draw(k: int) -> torch.Tensor:
            if noise is not None:
                return noise
            if self._noise_sampler is not None:
                return self._sampled(k, sample)
            return noise_sources.randn(model_output.shape, model_output.dtype, model_output.device, generator)

        # an Euler step before the last makes one call, which stores nothing (CallTables.follows)
        return self._step(model_output, timestep, sample, return_dict, None, draw)  # type: ignore[return-value]

    @property
    def _euler_inside(self) -> bool:
        """Some step before the last is an Euler step (one call), so call orders do not simply alternate."""
        return self._ancestral_tables.euler_inside
