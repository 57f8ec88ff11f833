"""``KDPM2DiscreteScheduler``: diffusers' public surface over the pure tables and step functions.

The shell keeps the schedule twice: as torch tensors in diffusers' layout (the public attributes)
and as host float64 lists, from which each call's coefficients are computed without touching the
device. The step index is a host integer, so a denoising loop never waits for the GPU.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from kdpm2 import functional, lookup, tables, validation
from kdpm2.configuration import ConfigMixin
from kdpm2.outputs import KDPM2DiscreteSchedulerOutput

KARRAS_COMPATIBLES = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)
"""diffusers scheduler classes whose configs load into this one (diffusers' ``_compatibles``)."""


class KDPM2DiscreteScheduler(ConfigMixin):
    """DPM-Solver-2 (Karras et al. 2022, Algorithm 2) with diffusers' API, exact and sync-free.

    Arguments are diffusers' (``num_train_timesteps`` .. ``steps_offset``) plus:

    - ``sigma_min`` / ``sigma_max``: bounds of the Karras, exponential and beta schedules
      (default: the ends of the spaced schedule, as diffusers);
    - ``sigma_interpolation``: ``"linear"`` (diffusers) or ``"log"`` (k-diffusion, A1111, ComfyUI);
    - ``discard_penultimate_sigma``: build ``n + 1`` sigmas and drop the last non-zero (A1111, ComfyUI);
    - ``quantize_timesteps``: give the model the nearest training timestep (ComfyUI);
    - ``round_karras_timesteps``: round the main Karras timesteps as diffusers does;
    - ``s_churn``, ``s_tmin``, ``s_tmax`` (``None`` is infinity), ``s_noise``: stochastic sampling.
    """

    _compatibles: ClassVar[list[str]] = list(KARRAS_COMPATIBLES)
    _unset_when_none = ("sigma_min", "sigma_max", "s_tmax")
    order = 2

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
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float | None = None,
        s_noise: float = 1.0,
    ) -> None:
        config = dict(locals())
        del config["self"]
        validation.integer("num_train_timesteps", num_train_timesteps, 2)
        validation.choice("beta_schedule", beta_schedule, validation.BETA_SCHEDULES)
        validation.choice("prediction_type", prediction_type, functional.PREDICTION_TYPES)
        validation.choice("timestep_spacing", timestep_spacing, validation.TIMESTEP_SPACINGS)
        validation.choice("sigma_interpolation", sigma_interpolation, validation.SIGMA_INTERPOLATIONS)
        validation.integer("steps_offset", steps_offset, 0)
        if sum(map(bool, (use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas))) > 1:
            raise ValueError("use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas: at most one may be True")
        if trained_betas is not None:
            validation.trained_betas(trained_betas, num_train_timesteps)
        else:
            validation.real("beta_start", beta_start, 0.0, strict=True)
            validation.real("beta_end", beta_end, 0.0, strict=True)
        lo = validation.real("sigma_min", sigma_min, 0.0, strict=True, optional=True)
        hi = validation.real("sigma_max", sigma_max, 0.0, strict=True, optional=True)
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"sigma_min ({lo}) must be smaller than sigma_max ({hi})")
        validation.real("s_churn", s_churn, 0.0)
        validation.real("s_tmin", s_tmin, 0.0)
        validation.real("s_tmax", s_tmax, 0.0, optional=True)
        validation.real("s_noise", s_noise, 0.0)
        if isinstance(trained_betas, (np.ndarray, torch.Tensor)):
            config["trained_betas"] = trained_betas.tolist()
        self.register_to_config(**config)

        self.betas = tables.train_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # diffusers builds the full-length schedule here; with the discard it has one step fewer
        self.set_timesteps(num_train_timesteps - 1 if discard_penultimate_sigma else num_train_timesteps)

    # -- schedule -----------------------------------------------------------------------------

    @property
    def _log_sigmas64(self) -> torch.Tensor:
        a = self.alphas_cumprod.to(torch.float64)
        return ((1 - a) / a).sqrt().log()

    def _family(self) -> str | None:
        c = self.config
        if c.use_karras_sigmas:
            return "karras"
        if c.use_exponential_sigmas:
            return "exponential"
        return "beta" if c.use_beta_sigmas else None

    def _spaced(self, n: int, log_sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Main timesteps and sigmas (with the final 0) of ``n`` steps from the config."""
        c = self.config
        count = n + 1 if c.discard_penultimate_sigma else n
        timesteps = tables.spaced_timesteps(count, c.num_train_timesteps, c.timestep_spacing, c.steps_offset)
        train = log_sigmas.exp()
        if c.sigma_interpolation == "log":
            sigmas = tables.interp(timesteps, log_sigmas).exp()
        else:
            sigmas = tables.interp(timesteps, train)
        family = self._family()
        if family is not None:
            lo = float(sigmas[-1]) if c.sigma_min is None else c.sigma_min
            hi = float(sigmas[0]) if c.sigma_max is None else c.sigma_max
            sigmas = tables.sigma_family(family, count, lo, hi)
            timesteps = tables.sigma_to_t(sigmas, log_sigmas, c.quantize_timesteps)
            if family == "karras" and c.round_karras_timesteps:
                timesteps = timesteps.round()
        elif c.quantize_timesteps:
            timesteps = tables.sigma_to_t(sigmas, log_sigmas, True)
        if c.discard_penultimate_sigma:
            sigmas, timesteps = sigmas[:-1], timesteps[:-1]
        return timesteps, torch.cat([sigmas, sigmas.new_zeros(1)])

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        num_train_timesteps: int | None = None,
        timesteps: list[float] | np.ndarray | torch.Tensor | None = None,
        sigmas: list[float] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        """Build the per-call tables for ``num_inference_steps``, custom ``timesteps`` or custom ``sigmas``.

        Custom ``sigmas`` include the final value (as k-diffusion's arrays); custom ``timesteps``
        take the training sigma at each and a final 0 (as diffusers' ``EulerDiscreteScheduler``).
        ``num_train_timesteps`` is accepted for diffusers' signature and must match the config.
        """
        c = self.config
        given = [x is not None for x in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("pass exactly one of num_inference_steps, timesteps and sigmas")
        if num_train_timesteps is not None and num_train_timesteps != c.num_train_timesteps:
            raise ValueError(
                f"num_train_timesteps must equal the config's {c.num_train_timesteps}; got {num_train_timesteps}"
            )
        if timesteps is not None and self._family() is not None:
            raise ValueError("timesteps cannot be combined with use_karras/exponential/beta_sigmas; pass sigmas")
        log_sigmas = self._log_sigmas64
        quantize = c.quantize_timesteps
        if sigmas is not None:
            main_sigmas = torch.from_numpy(validation.custom_sigmas(sigmas))
            main_t = tables.sigma_to_t(main_sigmas[:-1], log_sigmas, quantize)
        elif timesteps is not None:
            main_t = torch.from_numpy(validation.custom_timesteps(timesteps, c.num_train_timesteps))
            train = log_sigmas.exp()
            at = (
                tables.interp(main_t, log_sigmas).exp()
                if c.sigma_interpolation == "log"
                else tables.interp(main_t, train)
            )
            main_sigmas = torch.cat([at, at.new_zeros(1)])
        else:
            most = c.num_train_timesteps - 1 if c.discard_penultimate_sigma else c.num_train_timesteps
            n = validation.integer("num_inference_steps", num_inference_steps, 1, most)
            main_t, main_sigmas = self._spaced(n, log_sigmas)

        s_tmax = math.inf if c.s_tmax is None else c.s_tmax
        hat = tables.churned_sigmas(main_sigmas, c.s_churn, c.s_tmin, s_tmax)
        if c.s_churn > 0:
            main_t = torch.where(hat != main_sigmas[:-1], tables.sigma_to_t(hat, log_sigmas, quantize), main_t)
        built = tables.interleave(main_sigmas, hat, main_t, lambda s: tables.sigma_to_t(s, log_sigmas, quantize))

        self.num_inference_steps = built.num_steps
        self._host_sigmas = built.sigmas.tolist()
        self._host_interpol = built.sigmas_interpol.tolist()
        time_dtype = torch.float64 if self._family() is not None and sigmas is None else torch.float32
        self.timesteps = _to_device(built.timesteps, device, time_dtype)
        host_t = built.timesteps.to(time_dtype)
        self._index_values = host_t.tolist()
        self._index_of = lookup.first_or_second_index(self._index_values)
        self._time_dtype = time_dtype
        self.sigmas = built.sigmas.to(torch.float32)
        self.sigmas_interpol = _to_device(built.sigmas_interpol, device, torch.float32)
        self.log_sigmas = _to_device(log_sigmas, device, torch.float32)
        self._device_sigmas: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.sample: torch.Tensor | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Standard deviation of the initial noise (``sqrt(max^2 + 1)`` for ``leading``, as diffusers)."""
        top = max(self._host_sigmas)
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return torch.tensor(top, dtype=torch.float32)
        return torch.tensor(math.sqrt(top * top + 1), dtype=torch.float32)

    # -- state --------------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index of the next call in ``timesteps``; ``None`` before the first call."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The first call's index set by a pipeline (``set_begin_index``), else ``None``."""
        return self._begin_index

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a first-order call (no sample stored)."""
        return self.sample is None

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the loop at call ``begin_index`` (pipelines: ``t_start * order``) instead of a lookup."""
        self._begin_index = validation.integer("begin_index", begin_index, 0, self._num_calls - 1)

    @property
    def compatibles(self) -> list[Any]:
        """diffusers scheduler classes this config can load into (empty without diffusers)."""
        try:
            import diffusers
        except ImportError:
            return []
        return [getattr(diffusers, name) for name in self._compatibles if hasattr(diffusers, name)]

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule: the first match, or the second if it repeats.

        A timestep taken from ``self.timesteps`` is located from its storage offset, without a
        device sync; any other value is compared with the table. Raises ``ValueError`` if absent.
        """
        if schedule_timesteps is not None:
            table = schedule_timesteps.detach().to("cpu").tolist()
            value = lookup.as_float(timestep, schedule_timesteps.dtype)
            return lookup.index_of_value(lookup.first_or_second_index(table), value, timestep)
        positions = lookup.view_positions(timestep, self.timesteps)
        if positions is not None and len(positions) == 1:
            return self._index_of[self._index_values[positions[0]]]
        return lookup.index_of_value(self._index_of, lookup.as_float(timestep, self._time_dtype), timestep)

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _call_sigma(self, k: int) -> float:
        return self._host_sigmas[k] if self.state_in_first_order else self._host_interpol[k]

    # -- calls --------------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model input ``sample / sqrt(sigma^2 + 1)`` at this call's noise level."""
        validation.tensor("sample", sample)
        if self._step_index is None:
            self._init_step_index(timestep)  # type: ignore[arg-type]
        k = self._step_index
        assert k is not None
        if k >= self._num_calls:
            raise ValueError(f"the schedule has {self._num_calls} calls and all have run; call set_timesteps again")
        sigma = self._call_sigma(k)
        return sample / math.sqrt(sigma * sigma + 1.0)

    @property
    def _num_calls(self) -> int:
        return len(self._index_values)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> KDPM2DiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Advance one model call: first order to the midpoint, or second order to the next sigma.

        ``generator`` feeds the churn noise when ``s_churn > 0``. Inputs are never modified.
        """
        validation.tensor("model_output", model_output)
        validation.tensor("sample", sample)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
        if self._step_index is None:
            self._init_step_index(timestep)
        k = self._step_index
        assert k is not None
        if k >= self._num_calls:
            raise ValueError(f"step past the end of the schedule: all {self._num_calls} calls have run")
        c = self.config
        dtype = sample.dtype
        if model_output.dtype != dtype:
            dtype = torch.promote_types(dtype, model_output.dtype)
            sample, model_output = sample.to(dtype), model_output.to(dtype)
        noise = None
        if self.state_in_first_order:
            coefficients = functional.first_order(self._host_sigmas[k], self._host_interpol[k + 1], c.prediction_type)
            stored = None
        else:
            sigma, mid, target = self._host_sigmas[k - 1], self._host_interpol[k], self._host_sigmas[k]
            churn = 0.0
            if c.s_churn > 0 and k + 1 < self._num_calls:
                churn = c.s_noise * math.sqrt(max(self._host_sigmas[k + 1] ** 2 - target**2, 0.0))
                noise = _randn(sample, generator)
            coefficients = functional.second_order(sigma, mid, target, c.prediction_type, churn)
            stored = self.sample
            if stored is not None and stored.dtype != dtype:
                stored = stored.to(dtype)
        prev_sample, x0 = _apply(coefficients, sample, model_output, stored, noise)
        self.sample = sample if self.state_in_first_order else None
        self._step_index = k + 1
        if not return_dict:
            return prev_sample, x0
        return KDPM2DiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _sigmas_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._device_sigmas:
            self._device_sigmas[key] = _to_device(torch.tensor(self._host_sigmas, dtype=torch.float64), device, dtype)
        return self._device_sigmas[key]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``original + sigma * noise`` at each timestep's sigma (one timestep per batch item, or one for all).

        The sigma is the one at ``begin_index`` before the first call, at ``step_index`` after it, and
        looked up per timestep when no begin index was set (training).
        """
        validation.tensor("original_samples", original_samples)
        validation.tensor("noise", noise)
        if isinstance(timesteps, (int, float)):
            timesteps = torch.tensor([timesteps])
        if not isinstance(timesteps, torch.Tensor):
            raise TypeError(f"timesteps must be a torch.Tensor; got {type(timesteps).__name__}")
        count = max(timesteps.numel(), 1)
        if self._begin_index is None:
            sigma = self._lookup_sigmas(timesteps.reshape(-1), original_samples)
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
            value = self._host_sigmas[index]
            sigma = torch.full((count,), value, dtype=original_samples.dtype, device=original_samples.device)
        sigma = sigma.reshape((-1,) + (1,) * (original_samples.dim() - 1))
        return original_samples + noise * sigma

    def _lookup_sigmas(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-timestep sigmas with diffusers' index rule; views of ``self.timesteps`` need no device read."""
        positions = lookup.view_positions(timesteps, self.timesteps)
        if positions is not None:
            host = [self._host_sigmas[self._index_of[self._index_values[p]]] for p in positions]
            return _to_device(torch.tensor(host, dtype=torch.float64), like.device, like.dtype)
        table = _to_device(self.timesteps, timesteps.device, self.timesteps.dtype)
        indices, found = lookup.device_indices(timesteps, table)
        if not bool(found.all()):  # one value check, only for timesteps not taken from the table
            missing = timesteps[~found].tolist()
            raise ValueError(f"timesteps {missing} are not in the schedule (see scheduler.timesteps)")
        return self._sigmas_on(like.device, like.dtype)[_to_device(indices, like.device, indices.dtype)]

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


def _apply(
    coefficients: functional.Coefficients,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused CUDA kernel where it applies, else the plain torch combination."""
    if sample.is_cuda:
        from kdpm2 import triton_step

        if triton_step.supports(sample, model_output, stored, noise):
            return triton_step.apply_step(coefficients, sample, model_output, stored, noise)
    return functional.apply_step(coefficients, sample, model_output, stored, noise)


def _to_device(table: torch.Tensor, device: str | torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    """A host table on ``device`` in ``dtype`` without waiting: CUDA gets a pinned, non-blocking copy.

    A plain ``.to("cuda")`` from pageable memory blocks the host (and trips
    ``torch.cuda.set_sync_debug_mode``); the caching host allocator keeps the pinned buffer alive
    until the copy has run.
    """
    table = table.to(dtype)
    target = torch.device(device) if device is not None else table.device
    if target.type != "cuda" or table.device.type != "cpu":
        return table.to(target)
    return table.pin_memory().to(target, non_blocking=True)


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device."""
    device = like.device if generator is None else generator.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)
