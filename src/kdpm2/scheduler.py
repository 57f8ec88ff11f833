"""``KDPM2DiscreteScheduler``: diffusers' public surface over the pure tables and step functions.

The shell keeps the schedule twice: as torch tensors in diffusers' layout (the public attributes)
and as host float64 lists, from which ``set_timesteps`` computes every call's coefficients once
(``functional.call_tables``), on the host and as a small device table. The step index is a host
integer, so an eager loop never waits for the GPU. Under ``torch.compile`` the index moves into a
device counter that each call advances in place and the coefficients are read from the device
table, so one graph serves every call of an order instead of one graph per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import torch

from kdpm2 import functional, lookup, presets, tables, validation
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

FAMILY_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
"""The flags that replace the spaced sigmas by a family; at most one may be set."""


class CallLevels(Protocol):
    """What a shell's ``_call_levels`` builds: the per-call tables in diffusers' layout (float64)."""

    @property
    def sigmas(self) -> torch.Tensor: ...
    @property
    def sigmas_interpol(self) -> torch.Tensor: ...
    @property
    def timesteps(self) -> torch.Tensor: ...
    @property
    def num_steps(self) -> int: ...


class _KDPM2Core(ConfigMixin):
    """The schedule and call machinery shared by ``KDPM2DiscreteScheduler`` and ``KDPM2AncestralDiscreteScheduler``.

    Everything but the sampler is here: the training table, spacing, sigma families, custom
    ``sigmas``/``timesteps``, log interpolation, the discard, quantized timesteps, presets,
    validation, the index lookup, ``scale_model_input``, ``add_noise`` and the one-pass step over
    host coefficient tables. A shell subclass supplies the constructor's signature and docstring,
    its public ``step``, and four hooks:

    - ``_sampler``: its name in ``kdpm2.presets`` (which settings a preset fixes);
    - ``_check_sampler_args(config)``: validates the arguments only it has;
    - ``_call_levels(main_sigmas, main_timesteps, timestep_of, log_sigmas)``: the per-call tables
      (``sigmas``, ``sigmas_interpol``, ``timesteps``, ``num_steps``) of the main schedule;
    - ``_call_tables()``: every call's coefficients (``functional.CallTables``) from them.
    """

    _sampler: ClassVar[str]

    _compatibles: ClassVar[list[str]] = list(KARRAS_COMPATIBLES)
    _unset_when_none: ClassVar[tuple[str, ...]] = ("sigma_min", "sigma_max", "s_tmax")
    order = 2

    def _setup(self, config: dict[str, Any]) -> None:
        """Validate the constructor's arguments ``config``, register them and build the default schedule."""
        num_train_timesteps, beta_start, beta_end = (
            config["num_train_timesteps"],
            config["beta_start"],
            config["beta_end"],
        )
        beta_schedule, trained_betas, preset = config["beta_schedule"], config["trained_betas"], config["preset"]
        prediction_type, timestep_spacing, steps_offset = (
            config["prediction_type"],
            config["timestep_spacing"],
            config["steps_offset"],
        )
        sigma_min, sigma_max, sigma_interpolation = (
            config["sigma_min"],
            config["sigma_max"],
            config["sigma_interpolation"],
        )
        # validate everything first and keep the validated values (a NumPy scalar becomes a float)
        n_train = validation.integer("num_train_timesteps", num_train_timesteps, 2, validation.MAX_TRAIN_TIMESTEPS)
        config["num_train_timesteps"] = n_train
        validation.choice("beta_schedule", beta_schedule, validation.BETA_SCHEDULES)
        validation.choice("prediction_type", prediction_type, functional.PREDICTION_TYPES)
        validation.choice("timestep_spacing", timestep_spacing, validation.TIMESTEP_SPACINGS)
        validation.choice("sigma_interpolation", sigma_interpolation, validation.SIGMA_INTERPOLATIONS)
        config["steps_offset"] = validation.integer("steps_offset", steps_offset, 0, n_train - 1)
        for name in validation.FLAGS:
            config[name] = validation.flag(name, config[name])
        if sum(config[name] for name in FAMILY_FLAGS) > 1:
            raise ValueError("use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas: at most one may be True")
        betas64 = None
        # checked even when trained_betas replaces them: the config keeps them
        config["beta_start"] = validation.real("beta_start", beta_start, 0.0, strict=True, below=1.0)
        config["beta_end"] = validation.real("beta_end", beta_end, 0.0, strict=True, below=1.0)
        source = f"beta_start={config['beta_start']}, beta_end={config['beta_end']} ({beta_schedule})"
        if trained_betas is not None:
            betas64 = validation.trained_betas(trained_betas, n_train)
            source = "trained_betas"
        lo = config["sigma_min"] = validation.sigma_bound("sigma_min", sigma_min)
        hi = config["sigma_max"] = validation.sigma_bound("sigma_max", sigma_max)
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(f"sigma_min ({lo}) must be smaller than sigma_max ({hi})")
        self._check_sampler_args(config)
        if betas64 is not None:
            config["trained_betas"] = betas64.tolist()
        if preset is not None:
            config["preset"] = presets.check(config, self._sampler)
        betas = tables.train_betas(n_train, config["beta_start"], config["beta_end"], beta_schedule, betas64)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        validation.training_sigmas(_log_sigmas(alphas_cumprod), source, betas)
        self.register_to_config(**config)

        self.betas = betas
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = alphas_cumprod
        if preset is not None:  # the front-ends' float64 LDM table, stored in float32
            self.betas = tables.ldm_betas(n_train, config["beta_start"], config["beta_end"]).float()
            self.alphas = 1.0 - self.betas
            self.alphas_cumprod = tables.ldm_alphas_cumprod(n_train, config["beta_start"], config["beta_end"]).float()
        # diffusers builds the full-length schedule here; with the discard it has one step fewer
        self.set_timesteps(n_train - 1 if config["discard_penultimate_sigma"] else n_train)

    # -- schedule -----------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, config: dict[str, Any] | None = None, **overrides: Any) -> Self:
        """A scheduler that reproduces front-end sampler ``name``.

        Args:
            name: A preset of ``kdpm2.presets.NAMES`` (``"comfyui/karras"``, ``"a1111/automatic"``...).
            config: A loaded pipeline's ``scheduler.config``, say: gives the training schedule's
                size and ends and the prediction type. The preset's settings replace its spacing
                and flags (its ``steps_offset`` is kept and has no effect).
            **overrides: Anything the preset leaves open (``prediction_type``...).

        Returns:
            The scheduler, with ``preset`` in its config.

        Raises:
            ValueError: An unknown preset, an override that contradicts it, or a config whose
                training schedule is not LDM's (``scaled_linear``).
        """
        return cls.from_config(presets.configure(name, config, overrides, cls._sampler))

    @property
    def _log_sigmas64(self) -> torch.Tensor:
        if self.config.preset is not None:
            return presets.training_table(self.config.preset, self.config).log_sigmas.to(torch.float64)
        return _log_sigmas(self.alphas_cumprod)

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
            if count > 1:  # one sigma is sigma_max alone
                validation.family_bounds(family, lo, hi, c.sigma_min is not None, c.sigma_max is not None, n)
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

        Pass exactly one of ``num_inference_steps``, ``timesteps`` and ``sigmas``. A rejected call
        changes nothing.

        Args:
            num_inference_steps: Number of steps (``2 n - 1`` model calls).
            device: Where the public tables live (``"cuda"``...); must be available.
            num_train_timesteps: Accepted for diffusers' signature; must match the config.
            timesteps: Custom decreasing training timesteps; each takes the training sigma there,
                and a final 0 follows (as diffusers' ``EulerDiscreteScheduler``).
            sigmas: Custom decreasing sigmas, the final value included (as k-diffusion's arrays).

        Raises:
            ValueError: A bad count, schedule or device, named in the message.
            TypeError: An argument of the wrong type, named in the message.
        """
        c = self.config
        given = [x is not None for x in (num_inference_steps, timesteps, sigmas)]
        if sum(given) != 1:
            raise ValueError("pass exactly one of num_inference_steps, timesteps and sigmas")
        if num_train_timesteps is not None:
            train_count = validation.integer("num_train_timesteps", num_train_timesteps, 2)
            if train_count != c.num_train_timesteps:
                raise ValueError(
                    f"num_train_timesteps must equal the config's {c.num_train_timesteps}; got {train_count}"
                )
        if timesteps is not None and self._family() is not None:
            raise ValueError("timesteps cannot be combined with use_karras/exponential/beta_sigmas; pass sigmas")
        target = validation.device(device)
        # build everything first; the scheduler is assigned only once nothing can fail any more
        log_sigmas = self._log_sigmas64
        quantize = c.quantize_timesteps

        def timestep_of(s: torch.Tensor) -> torch.Tensor:
            if c.preset is not None:
                return presets.timesteps(c.preset, s, c)
            return tables.sigma_to_t(s, log_sigmas, quantize)

        if sigmas is not None:
            main_sigmas = torch.from_numpy(validation.custom_sigmas(sigmas))
            main_t = timestep_of(main_sigmas[:-1])
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
            if c.preset is not None:
                main_sigmas = presets.spaced(c.preset, n, presets.training_table(c.preset, c))
                main_t = timestep_of(main_sigmas[:-1])
            else:
                main_t, main_sigmas = self._spaced(n, log_sigmas)

        built = self._call_levels(main_sigmas, main_t, timestep_of, log_sigmas)
        validation.finite_tables(sigmas=built.sigmas, sigmas_interpol=built.sigmas_interpol, timesteps=built.timesteps)

        time_dtype = (
            torch.float64 if self._family() is not None and sigmas is None and c.preset is None else torch.float32
        )
        device_timesteps = _to_device(built.timesteps, target, time_dtype)
        device_interpol = _to_device(built.sigmas_interpol, target, torch.float32)
        device_log_sigmas = _to_device(log_sigmas, target, torch.float32)
        index_values = built.timesteps.to(time_dtype).tolist()
        index_of = lookup.first_or_second_index(index_values)

        self._tables = built
        self.num_inference_steps = built.num_steps
        self._host_sigmas = built.sigmas.tolist()
        self._host_interpol = built.sigmas_interpol.tolist()
        self.timesteps = device_timesteps
        self._index_values = index_values
        self._index_of = index_of
        self._time_dtype = time_dtype
        self._build_calls()
        self._step_counter: torch.Tensor | None = None
        self.sigmas = built.sigmas.to(torch.float32)
        self.sigmas_interpol = device_interpol
        self.log_sigmas = device_log_sigmas
        self._device_sigmas: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self.sample: torch.Tensor | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def _build_calls(self) -> None:
        """Every call's coefficients for the current config (again when a pipeline rewrote it)."""
        self._calls = self._call_tables()
        self._call_table = _to_device(self._calls.as_tensor(), self.timesteps.device, torch.float64)
        self._calls_config = self._internal_dict

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Standard deviation of the initial noise (``sqrt(max^2 + 1)`` for ``leading``, as diffusers).

        With a preset, the factor the front-end puts on unit noise (ComfyUI: ``sqrt(1 + sigma_0^2)``).
        """
        if self.config.preset is not None:
            table = presets.training_table(self.config.preset, self.config)
            scale = presets.init_noise_scale(self.config.preset, self._host_sigmas[0], table)
            return torch.tensor(scale, dtype=torch.float32)
        top = max(self._host_sigmas)
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return torch.tensor(top, dtype=torch.float32)
        return torch.tensor(math.sqrt(top * top + 1), dtype=torch.float32)

    # -- state --------------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index of the next call in ``timesteps``; ``None`` before the first call.

        After a compiled call the index lives in a device counter, and reading it here waits for
        the device (one sync).
        """
        if self._step_counter is not None:
            return int(self._step_counter)
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
        """Start the loop at call ``begin_index`` (pipelines: ``t_start * order``) instead of a lookup.

        Args:
            begin_index: Index of the first call, from 0 to ``len(timesteps) - 1``.
        """
        self._begin_index = validation.integer("begin_index", begin_index, 0, self._num_calls - 1)

    @classmethod
    def _get_compatibles(cls) -> list[type]:
        """diffusers' compatible classes and the other kdpm2 scheduler, whose config keys load silently."""
        siblings = [other for other in _KDPM2Core.__subclasses__() if other is not cls]
        return [*super()._get_compatibles(), *siblings]

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
            validation.timestep_tensor("schedule_timesteps", schedule_timesteps, values=True)
            table = schedule_timesteps.detach().to("cpu").tolist()
            value = lookup.as_float(timestep, schedule_timesteps.dtype)
            return lookup.index_of_value(lookup.first_or_second_index(table), value, timestep)
        positions = lookup.view_positions(timestep, self.timesteps)
        if positions is not None and len(positions) == 1:
            return self._index_of[self._index_values[positions[0]]]
        return lookup.index_of_value(self._index_of, lookup.as_float(timestep, self._time_dtype), timestep)

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        self._step_index = self._call_index(timestep)

    def _call_index(self, timestep: float | torch.Tensor) -> int:
        """This call's index (the step index, else the begin index or the timestep's position); assigns nothing."""
        if self._step_index is not None:
            return self._step_index
        if self._begin_index is not None:
            return self._begin_index
        return self.index_for_timestep(timestep)

    def _call_sigma(self, k: int) -> float:
        """The noise level of call ``k`` in the current order (what ``scale_model_input`` scales for)."""
        return self._host_sigmas[k] if self.state_in_first_order else self._host_interpol[k]

    # -- calls --------------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model input ``sample / sqrt(sigma^2 + 1)`` at this call's noise level.

        Args:
            sample: The current sample (a floating-point tensor, not modified).
            timestep: This call's timestep; locates the first call when no begin index is set.

        Returns:
            The scaled sample, in ``sample``'s dtype.

        Raises:
            ValueError: The timestep is not in the schedule, or every call has run.
        """
        validation.tensor("sample", sample)
        if self._step_counter is not None or torch.compiler.is_compiling():
            row = self._device_row(timestep)  # type: ignore[arg-type]
            dtype = functional.compute_dtype(sample.dtype)
            return (sample.to(dtype) / row[6].to(device=sample.device, dtype=dtype)).to(sample.dtype)
        k = self._host_index(timestep, "the schedule has {} calls and all have run; call set_timesteps again")  # type: ignore[arg-type]
        scaled = sample / self._calls.scales[0 if self.sample is None else 1][k]
        self._step_index = k  # assigned only once the call has succeeded
        return scaled

    @property
    def _num_calls(self) -> int:
        return len(self._index_values)

    def _host_index(
        self, timestep: float | torch.Tensor, past_end: str = "step past the end of the schedule: all {} calls have run"
    ) -> int:
        """This call's index on the host (found from ``timestep`` on the first call); raises past the end.

        Assigns nothing: a call that fails leaves the step index as it was.
        """
        k = self._call_index(timestep)
        if k >= self._num_calls:
            raise ValueError(past_end.format(self._num_calls))
        return k

    def _device_row(self, timestep: float | torch.Tensor) -> torch.Tensor:
        """This call's row of the call table (7 values), indexed by the device step counter.

        The first call of this kind moves the host index into a device counter, which later calls
        advance in place: a traced step then reads no Python number that changes from call to
        call, so ``torch.compile`` makes one graph per order instead of one per call, and a CUDA
        graph of a call can be replayed for every call of that order.
        """
        if self._step_counter is None:
            traced_lookup = self._step_index is None and self._begin_index is None and torch.compiler.is_compiling()
            if traced_lookup and isinstance(timestep, torch.Tensor):
                self._step_counter = self._traced_index(timestep)
            else:
                k = self._host_index(timestep)
                self._step_counter = torch.full((), k, dtype=torch.int64, device=self._call_table.device)
        order = functional.FIRST if self.sample is None else functional.SECOND
        return self._call_table[order].index_select(0, self._step_counter.reshape(1))[0]

    def _traced_index(self, timestep: torch.Tensor) -> torch.Tensor:
        """The first call's index found on the device (diffusers' rule), for a traced call without a begin index.

        A host lookup reads storage pointers, which ``torch.compile`` cannot trace; a timestep not
        in the schedule fails the device assertion instead of a ``ValueError``.
        """
        table = self.timesteps
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single value; got shape {tuple(timestep.shape)}")
        indices, found = lookup.device_indices(timestep.reshape(1).to(table.device), table)
        torch._assert_async(found.all(), "timestep is not in the schedule (see scheduler.timesteps)")
        return indices[0].to(device=self._call_table.device, dtype=torch.int64)

    def _step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
        draw: Callable[[int], torch.Tensor] | None = None,
    ) -> KDPM2DiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """``step`` of both shells: one call, in one pass over the data.

        ``draw(k)``, when given, supplies the noise of second-order call ``k`` (``k`` is -1 under
        the device counter) in place of a draw from ``generator``.
        """
        validation.step_inputs(model_output, sample, generator, self.sample)
        if self._internal_dict is not self._calls_config:  # register_to_config since set_timesteps
            self._build_calls()
        on_device = self._step_counter is not None or torch.compiler.is_compiling()
        k = -1 if on_device else self._host_index(timestep)  # the step index is assigned once the call succeeds
        first = self.sample is None
        dtype = sample.dtype
        if model_output.dtype != dtype:
            dtype = torch.promote_types(dtype, model_output.dtype)
            sample, model_output = sample.to(dtype), model_output.to(dtype)
        noise = stored = None
        if not first:
            if self._calls.churn if on_device else self._calls.noise[k]:
                noise = _randn(sample, generator) if draw is None else draw(k)
            stored = self.sample
            if stored is not None and stored.dtype != dtype:
                stored = stored.to(dtype)
        if on_device:
            row = self._device_row(timestep)
            prev_sample, x0 = functional.apply_step_row(
                row, self._calls.live[0 if first else 1], sample, model_output, stored, noise
            )
            assert self._step_counter is not None
            self._step_counter.add_(1)
        else:
            order = 0 if first else 1
            coefficients, plans = self._calls.coefficients[order][k], self._calls.plan(order, k)
            prev_sample, x0 = _apply(coefficients, sample, model_output, stored, noise, plans)
            self._step_index = k + 1
        self.sample = sample if first else None
        if not return_dict:
            return prev_sample, x0
        return KDPM2DiscreteSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _sigmas_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._device_sigmas:
            self._device_sigmas[key] = _to_device(torch.tensor(self._host_sigmas, dtype=torch.float64), device, dtype)
        return self._device_sigmas[key]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``original + sigma * noise`` at each timestep's sigma.

        The sigma is the one at ``begin_index`` before the first call, at ``step_index`` after it, and
        looked up per timestep when no begin index was set (training).

        Args:
            original_samples: The clean samples (batch first).
            noise: Unit Gaussian noise shaped like ``original_samples``.
            timesteps: One timestep per batch item, or one for all.

        Returns:
            The noised samples.

        Raises:
            ValueError: A timestep not in the schedule, or no timesteps.
        """
        if isinstance(timesteps, (int, float, np.integer, np.floating)) and not isinstance(timesteps, bool):
            timesteps = torch.tensor([validation.real("timesteps", timesteps)])
        validation.add_noise_inputs(original_samples, noise, timesteps)
        count = timesteps.numel()
        if self._begin_index is None:
            sigma = self._lookup_sigmas(timesteps.reshape(-1), original_samples)
        elif self._step_counter is not None:  # after a compiled call: gather at the device counter
            counter = self._step_counter.to(original_samples.device).reshape(1)
            sigma = self._sigmas_on(original_samples.device, original_samples.dtype).index_select(0, counter)
            sigma = sigma.expand(count)
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
        if timesteps.is_meta:
            raise TypeError("timesteps on the meta device have no values to look up; pass views of scheduler.timesteps")
        table = _to_device(self.timesteps, timesteps.device, self.timesteps.dtype)
        indices, found = lookup.device_indices(timesteps, table)
        if not bool(found.all()):  # one value check, only for timesteps not taken from the table
            missing = timesteps[~found].tolist()
            raise ValueError(f"timesteps {missing} are not in the schedule (see scheduler.timesteps)")
        return self._sigmas_on(like.device, like.dtype)[_to_device(indices, like.device, indices.dtype)]

    # -- hooks of the shells ----------------------------------------------------------------

    def _check_sampler_args(self, config: dict[str, Any]) -> None:
        """Validate (and normalise in ``config``) the constructor arguments only this sampler has."""
        raise NotImplementedError

    def _call_levels(
        self,
        main_sigmas: torch.Tensor,
        main_timesteps: torch.Tensor,
        timestep_of: Callable[[torch.Tensor], torch.Tensor],
        log_sigmas: torch.Tensor,
    ) -> CallLevels:
        """The per-call tables of main sigmas ``s_0..s_n`` and their timesteps (``timestep_of`` maps sigmas)."""
        raise NotImplementedError

    def _call_tables(self) -> functional.CallTables:
        """Every call's coefficients for the current config and tables."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


class KDPM2DiscreteScheduler(_KDPM2Core):
    """DPM-Solver-2 (Karras et al. 2022, Algorithm 2) with diffusers' API, exact and sync-free.

    The arguments up to ``steps_offset`` are diffusers'; the others extend it.

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
        s_churn: Stochastic sampling: the churn of Karras et al. (0 is the deterministic ODE).
        s_tmin: Churn only where sigma is at least this.
        s_tmax: Churn only where sigma is at most this (``None``: no bound).
        s_noise: Scale of the churn noise.
        preset: A ComfyUI or AUTOMATIC1111 DPM2 sampler to reproduce (``kdpm2.presets.NAMES``);
            build it with ``from_preset``, which also sets the other arguments to the preset's.

    Raises:
        ValueError: An argument outside its domain, named in the message.
        TypeError: An argument of the wrong type, named in the message.

    The valid domain (betas in (0, 1) with finite training sigmas, sigmas within
    ``validation.SIGMA_RANGE``, ``num_train_timesteps`` up to ``validation.MAX_TRAIN_TIMESTEPS``) is
    described in ``kdpm2.validation``; a call outside it raises and changes nothing.
    """

    _sampler = "dpm2"

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
        preset: str | None = None,
    ) -> None:
        config = dict(locals())
        del config["self"]
        self._setup(config)

    def _check_sampler_args(self, config: dict[str, Any]) -> None:
        """The churn of Karras et al. Algorithm 2: ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``."""
        s_churn, s_tmin, s_tmax, s_noise = config["s_churn"], config["s_tmin"], config["s_tmax"], config["s_noise"]
        config["s_churn"] = validation.real("s_churn", s_churn, 0.0)
        config["s_tmin"] = validation.real("s_tmin", s_tmin, 0.0)
        config["s_tmax"] = validation.real("s_tmax", s_tmax, 0.0, optional=True)
        # bounded so that s_noise * sigma (the churn noise scale) stays finite in float32
        config["s_noise"] = validation.real("s_noise", s_noise, 0.0, below=validation.SIGMA_RANGE[1])

    def _call_levels(
        self,
        main_sigmas: torch.Tensor,
        main_timesteps: torch.Tensor,
        timestep_of: Callable[[torch.Tensor], torch.Tensor],
        log_sigmas: torch.Tensor,
    ) -> tables.Tables:
        """Churned first-order levels, then each step's midpoint (the front-end's float32 one with a preset)."""
        c, main_t, quantize = self.config, main_timesteps, self.config.quantize_timesteps
        s_tmax = math.inf if c.s_tmax is None else c.s_tmax
        hat = tables.churned_sigmas(main_sigmas, c.s_churn, c.s_tmin, s_tmax)
        if c.s_churn > 0:
            main_t = torch.where(hat != main_sigmas[:-1], tables.sigma_to_t(hat, log_sigmas, quantize), main_t)
        midpoint = presets.midpoints if c.preset is not None else None
        return tables.interleave(main_sigmas, hat, main_t, timestep_of, midpoint)

    def _call_tables(self) -> functional.CallTables:
        c = self.config
        return functional.call_tables(
            self._host_sigmas, self._host_interpol, len(self._index_values), c.prediction_type, c.s_churn, c.s_noise
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> KDPM2DiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Advance one model call: first order to the midpoint, or second order to the next sigma.

        Inputs are never modified. Under ``torch.compile`` (and in eager calls after a compiled
        one) the call's coefficients come from the device call table; past the end of the
        schedule that lookup fails.

        Args:
            model_output: The model's prediction at this call (``prediction_type``).
            timestep: This call's timestep; locates the first call when no begin index is set.
            sample: The current sample, shaped like ``model_output``.
            return_dict: Return a ``KDPM2DiscreteSchedulerOutput`` rather than a tuple.
            generator: Feeds the churn noise when ``s_churn > 0``.

        Returns:
            ``prev_sample`` and ``pred_original_sample``, computed in at least float32 and
            rounded once to the promoted dtype of ``sample`` and ``model_output``.

        Raises:
            ValueError: Mismatched shapes, a timestep not in the schedule, or every call has run.
            TypeError: A non-tensor, a tensor torch cannot step, or a non-``Generator``.
        """
        return self._step(model_output, timestep, sample, return_dict, generator)


def _log_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """float64 log training sigmas ``log sqrt((1 - a) / a)`` of the float32 ``alphas_cumprod``."""
    a = alphas_cumprod.to(torch.float64)
    return ((1 - a) / a).sqrt().log()


def _apply(
    coefficients: functional.Coefficients,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None,
    noise: torch.Tensor | None,
    plans: tuple[functional.Sum | None, functional.Sum | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused CUDA kernel where it applies, else the plain torch combination.

    ``plans`` (from the call table) spare the torch path its per-call planning of the sums.
    """
    if sample.is_cuda:
        from kdpm2 import triton_step

        if triton_step.supports(sample, model_output, stored, noise):
            return triton_step.apply_step(coefficients, sample, model_output, stored, noise)
    if plans is None:
        return functional.apply_step(coefficients, sample, model_output, stored, noise)
    return functional.run_step(plans, sample, model_output, stored, noise)


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
