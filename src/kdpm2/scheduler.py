"""``KDPM2DiscreteScheduler`` and its schedule core: diffusers' public surface over pure functions.

The core (``_KDPM2Core``) keeps the schedule twice: as torch tensors in diffusers' layout (the
public attributes) and as host float64 arrays, from which ``set_timesteps`` computes every
call's coefficients once (``functional.CallTables``), on the host and as a small device table. The step index is a host
integer, so an eager loop never waits for the GPU. Under ``torch.compile`` the index moves into a
device counter that each call advances in place and the coefficients are read from the device
table, so one graph serves every call of an order instead of one graph per call.

The common eager call (CPU float32/float64 tensors, the call's own view of ``timesteps``) is
checked inline in ``_step``, ``scale_model_input`` and ``add_noise``; everything else takes the
general path, which words the errors. Both shells, ``KDPM2DiscreteScheduler`` and
``kdpm2.ancestral.KDPM2AncestralDiscreteScheduler``, run on these paths: a shell only builds its
call tables (``_call_levels``, ``_call_tables``) and says where its noise comes from.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import torch

from kdpm2 import functional, lookup, presets, tables, validation
from kdpm2.configuration import ConfigMixin
from kdpm2.outputs import KDPM2DiscreteSchedulerOutput
from kdpm2.outputs import RawStepOutput as _RawOutput
from kdpm2.outputs import step_output as _output

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

_HALF_MARGIN = 16
_HALF_LIMIT = 65504.0 / _HALF_MARGIN
"""The largest sigma or coefficient of a float16 call: 65504 (float16's largest value) / 16.

A sample at noise level sigma holds values up to about 5 sigma (a unit Gaussian exceeds 5 once in
3.5 million draws), and a step adds a model output scaled by up to about sigma: beyond 65504 / 16
a float16 result can be infinite. Such calls are refused, from host values, before any work.
"""

_HALF = torch.float16
_UPCAST = frozenset((torch.float16, torch.bfloat16))
_STEP_DTYPES = frozenset(validation.TENSOR_DTYPES)
_TIMESTEP_DTYPES = frozenset(
    (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, *validation.TENSOR_DTYPES)
)
_STRIDED = torch.strided
_NO_ADDRESS = -(1 << 80)
"""The table address of a meta table: no tensor's ``data_ptr()`` equals it (meta tensors all read 0)."""
_MISUSE = "two loops on one scheduler, or a call made twice? Call set_timesteps again to start a new loop"
_FLOAT32 = struct.Struct("f")
_is_compiling = torch.compiler.is_compiling
_dynamo_compiling = torch.compiler.is_dynamo_compiling
_compiler = torch.compiler
_TENSOR = torch.Tensor
_FAST_DTYPES = frozenset((torch.float32, torch.float64))
"""Dtypes the inline path of ``step`` computes in directly (half precision is upcast on the general path)."""


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
    _output_class: ClassVar[type[KDPM2DiscreteSchedulerOutput]] = KDPM2DiscreteSchedulerOutput
    """What ``step`` returns (``return_dict=True``)."""

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
        """float64 log training sigmas, computed again only when ``alphas_cumprod`` was replaced or changed."""
        if self.config.preset is not None:
            return presets.training_table(self.config.preset, self.config).log_sigmas.to(torch.float64)
        a = self.alphas_cumprod
        cached = self.__dict__.get("_log_sigmas_cache")
        if cached is not None and cached[0] is a and cached[1] == a._version:
            return cached[2]
        value = _log_sigmas(a)
        self._log_sigmas_cache = (a, a._version, value)
        return value

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
        # each call's timestep as a plain value is compared in the schedule's dtype (as diffusers compares)
        host_times = (device_timesteps if device_timesteps.is_cpu else built.timesteps.to(time_dtype)).numpy()
        host_times = host_times.astype(np.float64)

        self._tables = built
        self.num_inference_steps = built.num_steps
        self._sigmas64 = built.sigmas.numpy()
        self._interpol64 = built.sigmas_interpol.numpy()
        self._host_sigmas = self._sigmas64.tolist()
        self._host_interpol = self._interpol64.tolist()
        self.timesteps = device_timesteps
        self._set_time_table(device_timesteps, host_times, time_dtype)
        self._build_calls()
        self._step_counter: torch.Tensor | None = None
        self.sigmas = built.sigmas.to(torch.float32)
        self.sigmas_interpol = device_interpol
        self.log_sigmas = device_log_sigmas
        self._device_sigmas: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._noise_sigma: tuple[float, Any, Any] = (math.nan, None, None)
        self.sample: torch.Tensor | None = None
        self._stored_shape: torch.Size | None = None
        self._stored_dtype: torch.dtype | None = None
        self._ended_first = False
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def _set_time_table(self, table: torch.Tensor, host_times: np.ndarray, time_dtype: torch.dtype) -> None:
        """Keep the timestep table and what locates a timestep in it without reading the device.

        An element of ``table`` (what iterating ``scheduler.timesteps`` yields) is at the address
        ``data_ptr() == base + k * itemsize``: comparing one integer checks it is call ``k``'s.
        Meta tensors have no addresses (every one reads 0), so a meta table matches no address.
        """
        self._time_table = table
        self._time_dtype = time_dtype
        self._times = host_times
        self._n_calls = len(host_times)
        self._time_item = table.element_size()
        self._time_base = _NO_ADDRESS if table.is_meta else table.data_ptr()
        self._lookups: dict[str, Any] = {}

    def _lookup_table(self, rule: str) -> dict[float, int]:
        """Value -> call of the schedule by ``rule`` (``"diffusers"`` or ``"step_start"``), made on first use."""
        found: dict[float, int] | None = self._lookups.get(rule)
        if found is None:
            values = self._index_values_list
            found = (
                lookup.first_or_second_index(values)
                if rule == "diffusers"
                else lookup.step_start_index(values, self._calls.step_starts())
            )
            self._lookups[rule] = found
        return found

    @property
    def _index_values(self) -> list[float]:
        """Each call's timestep as the schedule's dtype holds it (host floats)."""
        return self._times.tolist()

    @property
    def _index_values_list(self) -> list[float]:
        """``_index_values``, made once per schedule (the lookup tables' keys)."""
        found: list[float] | None = self._lookups.get("values")
        if found is None:
            found = self._lookups["values"] = self._times.tolist()
        return found

    def _build_calls(self) -> None:
        """Every call's coefficients for the current config (again when a pipeline rewrote it)."""
        self._calls = self._call_tables()
        self._call_table = _to_device(self._calls.as_tensor(), self._time_table.device, torch.float64)
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
        """True when the next ``step`` is a first-order call (no sample stored).

        After a loop that ended with a first-order call (an Euler step to 0) it is False, as in
        diffusers, although that call released its sample (``step``).
        """
        return self.sample is None and not self._ended_first

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
        """Position of ``timestep`` in the schedule by diffusers' rule: the first match, or the second if it repeats.

        This is diffusers' public lookup, kept as diffusers defines it (``add_noise`` without a
        begin index uses it too). The loop does not: its first call takes a view's own position,
        or a plain value's first step start (see ``_first_call_index``). A timestep taken from
        ``self.timesteps`` is located from its storage offset, without a device sync; any other
        value is compared with the table. Raises ``ValueError`` if absent.
        """
        if schedule_timesteps is not None:
            validation.timestep_tensor("schedule_timesteps", schedule_timesteps, values=True)
            table = schedule_timesteps.detach().to("cpu").tolist()
            value = lookup.as_float(timestep, schedule_timesteps.dtype)
            return lookup.index_of_value(lookup.first_or_second_index(table), value, timestep)
        index = self._lookup_table("diffusers")
        positions = lookup.view_positions(timestep, self._time_table)
        if positions is not None and len(positions) == 1:
            return index[float(self._times[positions[0]])]
        return lookup.index_of_value(index, lookup.as_float(timestep, self._time_dtype), timestep)

    def _first_call_index(self, timestep: float | torch.Tensor) -> int:
        """The first call's index when no begin index is set: where ``timestep`` says the loop is.

        A view of ``scheduler.timesteps`` (what ``for t in scheduler.timesteps`` or a pipeline's
        slice ``timesteps[t_start * order:]`` yields) is at its own position, read from its
        storage offset: a loop visits every call in order even where timesteps repeat (sigmas
        above the training range all map to the last training timestep). A plain value (a float,
        a copy) that repeats is the first *step start* with that value (an even call, where a
        first-order call belongs), else its first call: a loop from the start begins at call 0,
        and an image-to-image start at a timestep that a midpoint shares begins at the step.
        """
        positions = lookup.view_positions(timestep, self._time_table)
        if positions is not None and len(positions) == 1:
            return positions[0]
        return lookup.index_of_value(
            self._lookup_table("step_start"), lookup.as_float(timestep, self._time_dtype), timestep
        )

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        self._step_index = self._call_index(timestep)

    def _call_index(self, timestep: float | torch.Tensor) -> int:
        """This call's index (the step index, else the begin index or the timestep's position); assigns nothing."""
        if self._step_index is not None:
            return self._step_index
        if self._begin_index is not None:
            return self._begin_index
        return self._first_call_index(timestep)

    def _call_sigma(self, k: int) -> float:
        """The noise level of call ``k`` in the current order (what ``scale_model_input`` scales for)."""
        return self._host_sigmas[k] if self.state_in_first_order else self._host_interpol[k]

    # -- calls --------------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model input ``sample / sqrt(sigma^2 + 1)`` at this call's noise level.

        Args:
            sample: The current sample (a floating-point tensor, not modified).
            timestep: This call's timestep; locates the first call when no begin index is set,
                and is checked against the call after that (see ``step``).

        Returns:
            The scaled sample, in ``sample``'s dtype.

        Raises:
            ValueError: The timestep is not in the schedule or not this call's, or every call has run.
        """
        k = self._step_index
        # the common call inline, as in step: the index known, the timestep call k's view
        placed = k is None  # the loop's first call: placed by the begin index or the timestep's view
        try:
            fast = self._step_counter is None and not _dynamo_compiling() and not _compiler._is_compiling_flag
            if fast and placed:
                k = self._first_index(timestep)
            fast = (
                fast
                and k is not None
                and type(sample) is _TENSOR
                and sample.dtype in _STEP_DTYPES
                and sample.layout is _STRIDED
                and not sample.is_nested
                and k < self._n_calls
                and (
                    placed
                    or (type(timestep) is _TENSOR and timestep.data_ptr() == self._time_base + k * self._time_item)
                )
            )
        except RuntimeError:  # a tensor without storage (functorch) has no address
            fast = False
        if fast and k is not None:
            order = 0 if self.sample is None else 1
            scaled = sample / self._calls.lanes[order].scales[k]
            self._step_index = k
            return scaled
        validation.tensor("sample", sample)
        if k is None or self._step_counter is not None or _is_compiling():
            return self._scale_first(sample, timestep)
        if k >= self._n_calls:
            raise ValueError(f"the schedule has {self._n_calls} calls and all have run; call set_timesteps again")
        if timestep is not None:
            self._check_timestep(timestep, k)
        order = 0 if self.sample is None else 1
        return sample / self._calls.lane(order).scales[k]

    def _first_index(self, timestep: Any) -> int | None:
        """The first call's index where it needs no lookup: the begin index, or the position of a view.

        ``None`` sends the call to the general path (a plain value, or a view of several elements).
        """
        if self._begin_index is not None:
            return self._begin_index
        if type(timestep) is not _TENSOR or timestep.dtype is not self._time_dtype:
            return None
        offset = timestep.data_ptr() - self._time_base
        item = self._time_item
        if 0 <= offset < self._n_calls * item and offset % item == 0 and timestep.numel() == 1:
            return offset // item
        return None

    def _scale_first(self, sample: torch.Tensor, timestep: float | torch.Tensor | None) -> torch.Tensor:
        """``scale_model_input`` of a loop's first call, or on the device counter (after a compiled call)."""
        if self._step_counter is not None or _is_compiling():
            row = self._device_row(timestep)  # type: ignore[arg-type]
            dtype = functional.compute_dtype(sample.dtype)
            return (sample.to(dtype) / row[6].to(device=sample.device, dtype=dtype)).to(sample.dtype)
        k = self._host_index(timestep, "the schedule has {} calls and all have run; call set_timesteps again")  # type: ignore[arg-type]
        scaled = sample / self._calls.lane(0 if self.sample is None else 1).scales[k]
        self._step_index = k  # assigned only once the call has succeeded
        return scaled

    @property
    def _num_calls(self) -> int:
        return self._n_calls

    def _host_index(
        self, timestep: float | torch.Tensor, past_end: str = "step past the end of the schedule: all {} calls have run"
    ) -> int:
        """This call's index on the host; raises past the end, or when ``timestep`` is not this call's.

        The loop's first call takes the begin index, or is located by its timestep; every later
        call's index is known, and its timestep is checked against it (``_check_timestep``).
        Assigns nothing: a call that fails leaves the step index as it was.
        """
        k = self._step_index
        if k is None:  # the loop's first call: its index is the begin index (as diffusers, the timestep
            k = self._begin_index  # is not read then) or where its timestep is
            return self._first_call_index(timestep) if k is None else k
        if k >= self._n_calls:
            raise ValueError(past_end.format(self._n_calls))
        if timestep is not None and not _is_compiling():  # a traced call reads no addresses
            self._check_timestep(timestep, k)
        return k

    def _check_timestep(self, timestep: float | torch.Tensor, k: int) -> None:
        """``timestep`` must be call ``k``'s, where telling costs no device sync; ``ValueError`` naming it.

        A view of ``scheduler.timesteps`` must be element ``k`` (its position is read from its
        storage offset); a Python number, a NumPy scalar or a CPU tensor must equal
        ``timesteps[k]`` in the schedule's dtype (every element, for a tensor of several). A
        tensor on another device that is not a view of the schedule, and any meta tensor, are not
        checked: reading them would wait for the device. This catches two loops interleaved on
        one scheduler and a call made twice.
        """
        if isinstance(timestep, torch.Tensor):
            if timestep.is_meta or self._time_table.is_meta:
                return
            try:
                positions = lookup.view_positions(timestep, self._time_table)
            except RuntimeError:  # no storage (a functorch wrapper): nothing to read without tracing
                return
            if positions is not None:
                wrong = [p for p in positions if p != k]
                if wrong:
                    raise ValueError(
                        f"timestep is scheduler.timesteps[{wrong[0]}], but this is call {k} of {self._n_calls} "
                        f"(scheduler.timesteps[{k}]): {_MISUSE}"
                    )
                return
            if timestep.device.type != "cpu":
                return
            if timestep.numel() > 1:
                values = [lookup.as_float(v, self._time_dtype) for v in timestep.detach().reshape(-1)]
                if all(v == self._times[k] for v in values):
                    return
                value: float | None = next(v for v in values if v != self._times[k])
            else:
                value = lookup.as_float(timestep, self._time_dtype)
        else:
            value = _round_float32(timestep) if self._time_dtype is torch.float32 else None
            if value is None:
                value = lookup.as_float(timestep, self._time_dtype)
        if value != self._times[k]:
            raise ValueError(
                f"timestep {validation.show(timestep)} is not this call's: the scheduler is at call {k} of "
                f"{self._n_calls}, whose timestep is scheduler.timesteps[{k}] = {float(self._times[k])!r}: {_MISUSE}"
            )

    def _device_row(self, timestep: float | torch.Tensor) -> torch.Tensor:
        """This call's row of the call table (7 values), indexed by the device step counter.

        The first call of this kind moves the host index into a device counter, which later calls
        advance in place: a traced step then reads no Python number that changes from call to
        call, so ``torch.compile`` makes one graph per order instead of one per call, and a CUDA
        graph of a call can be replayed for every call of that order.
        """
        if self._step_counter is None:
            traced_lookup = self._step_index is None and self._begin_index is None and _is_compiling()
            if traced_lookup:
                if not isinstance(timestep, torch.Tensor):  # a number: compared on the device too
                    timestep = torch.tensor([float(timestep)], dtype=torch.float64)
                self._step_counter = self._traced_index(timestep)
            else:
                k = self._host_index(timestep)
                self._step_counter = torch.full((), k, dtype=torch.int64, device=self._call_table.device)
        order = functional.FIRST if self.sample is None else functional.SECOND
        return self._call_table[order].index_select(0, self._step_counter.reshape(1))[0]

    def _traced_index(self, timestep: torch.Tensor) -> torch.Tensor:
        """The first call's index found on the device, for a traced call without a begin index.

        A host lookup reads storage pointers, which ``torch.compile`` cannot trace, so the timestep
        is taken as a plain value (``_first_call_index``'s rule: its first step start, else its
        first call); a timestep not in the schedule fails the device assertion instead of a
        ``ValueError``.
        """
        table = self._time_table
        if timestep.numel() != 1:
            raise ValueError(f"timestep must be a single value; got shape {tuple(timestep.shape)}")
        indices, found = lookup.device_step_start_indices(timestep.reshape(1).to(table.device), table)
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
        the device counter) in place of a draw from ``generator``. The output is of the shell's
        ``_output_class``.
        """
        k = self._step_index
        stored = self.sample
        # The common call, checked inline (validation.step_inputs words the errors on the general
        # path): CPU tensors of one float32/float64 dtype and shape, the call index known, and the
        # timestep the view of call k that iterating scheduler.timesteps yields (one address compare).
        # A loop's first call takes the begin index (its timestep is not read, as in diffusers) or
        # the position of its timestep's view.
        placed = k is None
        try:
            fast = self._step_counter is None and not _dynamo_compiling() and not _compiler._is_compiling_flag
            if fast and placed:
                k = self._first_index(timestep)
            fast = (
                fast
                and k is not None
                and type(sample) is _TENSOR
                and type(model_output) is _TENSOR
                and generator is None
                and (dtype := sample.dtype) is model_output.dtype
                and dtype in _FAST_DTYPES
                and sample.is_cpu
                and model_output.is_cpu
                and sample.layout is _STRIDED
                and model_output.layout is _STRIDED
                and (shape := sample.shape) == model_output.shape  # a nested tensor raises here
                # the stored sample as the first-order call checked it (a CPU tensor of that shape and dtype)
                and (stored is None or (shape == self._stored_shape and dtype is self._stored_dtype))
                and self._internal_dict is self._calls_config
                and k < self._n_calls
                and (
                    placed
                    or (type(timestep) is _TENSOR and timestep.data_ptr() == self._time_base + k * self._time_item)
                )
            )
        except RuntimeError:
            fast = False
        calls = self._calls
        if not fast or k is None:
            return self._step_general(model_output, timestep, sample, return_dict, generator, draw)
        if stored is None:
            model, x0_model, _, _ = calls.lanes[0]
            alpha, beta = model[k], x0_model[k]
            if alpha and beta:  # the common call (Lane.model)
                prev_sample = torch.add(sample, model_output, alpha=alpha)
                x0 = torch.add(sample, model_output, alpha=beta)
            else:
                prev_sample, x0 = calls.run(0, k, (sample, model_output, None, None))
            if calls.follows[k]:  # a second-order call follows
                self.sample = sample
                self._stored_shape, self._stored_dtype = shape, dtype
            else:  # nothing to store; the last call keeps nothing: its sample would hold the loop's autograd graph
                self._ended_first = k + 1 == self._n_calls
        else:
            noise = None
            if calls.churn:  # a call that may draw noise: the ancestral shell's draw inline, churn on the general path
                if draw is None or not calls.noise(k):
                    return self._step_general(model_output, timestep, sample, return_dict, generator, draw)
                noise = draw(k)  # every check has passed: the call cannot be refused after its draw
                if not (
                    type(noise) is _TENSOR
                    and noise.dtype is dtype
                    and noise.is_cpu
                    and noise.layout is _STRIDED
                    and noise.shape == shape
                ):
                    drawn = noise
                    return self._step_general(model_output, timestep, sample, return_dict, generator, lambda _: drawn)
            model, x0_model, noise_scale, _ = calls.lanes[1]
            alpha, beta = model[k], x0_model[k]
            if alpha and beta:  # run_sum's operations: stored + alpha * model_output, then the noise term
                prev_sample = torch.add(stored, model_output, alpha=alpha)
                if noise is not None and noise_scale[k]:
                    prev_sample.add_(noise, alpha=noise_scale[k])
                x0 = torch.add(sample, model_output, alpha=beta)
            else:
                prev_sample, x0 = calls.run(1, k, (sample, model_output, stored, noise))
            self.sample = None
        self._step_index = k + 1
        if not return_dict:
            return prev_sample, x0
        out = _RawOutput()  # KDPM2DiscreteSchedulerOutput(prev_sample, x0) without running Python code
        out["prev_sample"] = prev_sample
        out["pred_original_sample"] = x0
        out.prev_sample = prev_sample
        out.pred_original_sample = x0
        out.__class__ = self._output_class  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def _step_general(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool,
        generator: torch.Generator | None,
        draw: Callable[[int], torch.Tensor] | None = None,
    ) -> KDPM2DiscreteSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """``step`` for every call the inline path leaves out: the loop's first call, a timestep to
        check by value, promotion, half precision, CUDA (the fused kernel), churn, and the device
        counter of ``torch.compile``."""
        validation.step_inputs(model_output, sample, generator, self.sample)
        if self._internal_dict is not self._calls_config:  # register_to_config since set_timesteps
            self._build_calls()
        on_device = self._step_counter is not None or _is_compiling()
        k = -1 if on_device else self._host_index(timestep)  # the step index is assigned once the call succeeds
        first = self.sample is None
        dtype = sample.dtype
        if model_output.dtype != dtype:
            dtype = torch.promote_types(dtype, model_output.dtype)
            sample, model_output = sample.to(dtype), model_output.to(dtype)
        if dtype is _HALF and self._calls.peak > _HALF_LIMIT:
            self._check_half(k)
        noise = stored = None
        if not first:
            if self._calls.churn if on_device else self._calls.noise(k):
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
            self.sample = sample if first else None
            self._stored_shape = None
        else:
            order = 0 if first else 1
            lane = self._calls.lane(order)
            if noise is None and lane.model[k] and lane.x0_model[k] and dtype not in _UPCAST and not sample.is_cuda:
                prev_sample = torch.add(sample if first else stored, model_output, alpha=lane.model[k])  # type: ignore[arg-type]
                x0 = torch.add(sample, model_output, alpha=lane.x0_model[k])
            else:
                prev_sample, x0 = self._apply(order, k, sample, model_output, stored, noise)
            self._step_index = k + 1
            self.sample = sample if first and self._calls.follows[k] else None
            self._ended_first = first and k + 1 == self._n_calls
            # what the inline path compares the next call's sample with (validated above)
            fast_stored = sample.is_cpu and dtype in _FAST_DTYPES
            self._stored_shape, self._stored_dtype = (sample.shape if fast_stored else None), dtype
        if not return_dict:
            return prev_sample, x0
        return _output(prev_sample, x0, self._output_class)

    def _apply(
        self,
        order: int,
        k: int,
        sample: torch.Tensor,
        model_output: torch.Tensor,
        stored: torch.Tensor | None,
        noise: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Call ``k`` in ``order`` beyond the common two-term case: the fused CUDA kernel or ``run_step``'s sums."""
        if sample.is_cuda:
            return _apply(self._calls.coefficients(order, k), sample, model_output, stored, noise)
        return self._calls.run(order, k, (sample, model_output, stored, noise))

    def _check_half(self, k: int) -> None:
        """A float16 call whose sigmas or coefficients exceed ``_HALF_LIMIT`` is refused (it would give inf).

        Decided from host values: the call's noise levels and coefficients (``CallTables.peaks``).
        """
        order = 0 if self.sample is None else 1
        peak = float(self._calls.peaks[order, k]) if k >= 0 else self._calls.peak
        if peak > _HALF_LIMIT:
            where = f"call {k}" if k >= 0 else "a call"
            raise ValueError(
                f"sample is float16, whose largest finite value is 65504, but {where} of this schedule works at "
                f"{peak:.6g} (a sigma or a coefficient; at most 65504 / {_HALF_MARGIN} = {_HALF_LIMIT:g} keeps "
                "Gaussian samples and model outputs finite): step in float32 or bfloat16, or use smaller sigmas"
            )

    def _sigmas_on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._device_sigmas:
            self._device_sigmas[key] = _to_device(torch.from_numpy(self._sigmas64), device, dtype)
        return self._device_sigmas[key]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``original + sigma * noise`` at each timestep's sigma.

        The sigma is the one at ``begin_index`` before the first call, at ``step_index`` after it, and
        looked up per timestep when no begin index was set (training), by diffusers' rule
        (``index_for_timestep``).

        Args:
            original_samples: The clean samples (batch first).
            noise: Unit Gaussian noise shaped like ``original_samples``.
            timesteps: One timestep per batch item, or one for all.

        Returns:
            The noised samples.

        Raises:
            ValueError: A timestep not in the schedule, no timesteps, or float16 samples at a
                sigma beyond float16's range.
        """
        # the common call inline: CPU float32/float64 samples and noise of one shape, a timestep
        # tensor of one value or one per item, and a begin index (the pipelines' image to image)
        try:
            fast = (
                type(original_samples) is _TENSOR
                and type(noise) is _TENSOR
                and type(timesteps) is _TENSOR
                and (dtype := original_samples.dtype) is noise.dtype
                and dtype in _FAST_DTYPES
                and original_samples.is_cpu
                and noise.is_cpu
                and original_samples.layout is _STRIDED
                and noise.layout is _STRIDED
                and (shape := original_samples.shape) == noise.shape  # a nested tensor raises here
                and timesteps.layout is _STRIDED
                and not timesteps.is_nested
                and timesteps.dtype in _TIMESTEP_DTYPES
                and len(shape) > 0
                and timesteps.numel() in (1, shape[0])
            )
        except RuntimeError:
            fast = False
        if fast:
            sigma = None
            if self._begin_index is not None and self._step_counter is None:
                index = self._step_index if self._step_index is not None else self._begin_index
                sigma = self._host_sigmas[index]
            elif self._begin_index is None:
                position = self._view_position(timesteps)
                if position is not None:  # one timestep for the batch, a view of the schedule
                    sigma = self._host_sigmas[self._lookup_table("diffusers")[self._index_values_list[position]]]
            if sigma is not None:
                # noise * sigma + original: the same two roundings as original + noise * sigma, one
                # allocation fewer; the sigma as a one-element tensor of the dtype, kept for the next call
                cached = self._noise_sigma
                if cached[0] != sigma or cached[1] is not dtype:
                    cached = self._noise_sigma = (sigma, dtype, torch.full((1,), sigma, dtype=dtype))
                return (noise * cached[2]).add_(original_samples)
        if isinstance(timesteps, (int, float, np.integer, np.floating)) and not isinstance(timesteps, bool):
            timesteps = torch.tensor([validation.real("timesteps", timesteps)])
        validation.add_noise_inputs(original_samples, noise, timesteps)
        dtype = original_samples.dtype
        if self._begin_index is None:
            sigma = self._lookup_sigmas(timesteps, original_samples)
        elif self._step_counter is not None:  # after a compiled call: gather at the device counter
            if dtype is _HALF and self._calls.peak > _HALF_LIMIT:
                self._check_half_noise(max(self._host_sigmas))
            counter = self._step_counter.to(original_samples.device).reshape(1)
            sigma = self._sigmas_on(original_samples.device, dtype).index_select(0, counter)
        else:
            index = self._step_index if self._step_index is not None else self._begin_index
            value = self._host_sigmas[index]
            if dtype is _HALF and value > _HALF_LIMIT:
                self._check_half_noise(value)
            return _noised(original_samples, noise, value)
        if isinstance(sigma, float):
            return _noised(original_samples, noise, sigma)
        sigma = sigma.reshape((-1,) + (1,) * (original_samples.dim() - 1))
        return original_samples + noise * sigma

    def _view_position(self, timesteps: torch.Tensor) -> int | None:
        """The position of a view of the schedule whose elements are all one element, else ``None``.

        Reads the address, dtype and strides (no value): ``timesteps[k]``, ``timesteps[k:k + 1]``
        and ``timesteps[k:k + 1].expand(batch)`` (what image-to-image pipelines pass) qualify.
        """
        offset = timesteps.data_ptr() - self._time_base
        item = self._time_item
        if (
            0 <= offset < self._n_calls * item
            and offset % item == 0
            and timesteps.dtype is self._time_dtype
            and (timesteps.numel() == 1 or not any(timesteps.stride()))
        ):
            return offset // item
        return None

    def _check_half_noise(self, sigma: float) -> None:
        raise ValueError(
            f"original_samples is float16, whose largest finite value is 65504, but the sigma is {sigma:.6g}: "
            f"noise at more than 65504 / {_HALF_MARGIN} = {_HALF_LIMIT:g} overflows; use float32 or bfloat16"
        )

    def _lookup_sigmas(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
        """Per-timestep sigmas with diffusers' index rule; views of ``self.timesteps`` need no device read.

        A host ``float`` when every timestep is a view with the same sigma (one timestep for the batch).
        """
        positions = lookup.view_positions(timesteps, self._time_table)
        if positions is not None:
            index, times = self._lookup_table("diffusers"), self._times
            host = [self._host_sigmas[index[float(times[p])]] for p in positions]
            if like.dtype is _HALF and max(host) > _HALF_LIMIT:
                self._check_half_noise(max(host))
            if len(set(host)) == 1:
                return host[0]
            return _to_device(torch.tensor(host, dtype=torch.float64), like.device, like.dtype)
        if timesteps.is_meta:
            raise TypeError("timesteps on the meta device have no values to look up; pass views of scheduler.timesteps")
        timesteps = timesteps.reshape(-1)
        table = _to_device(self._time_table, timesteps.device, self._time_table.dtype)
        indices, found = lookup.device_indices(timesteps, table)
        if not bool(found.all()):  # one value check, only for timesteps not taken from the table
            missing = timesteps[~found].tolist()
            raise ValueError(f"timesteps {missing} are not in the schedule (see scheduler.timesteps)")
        if like.dtype is _HALF and max(self._host_sigmas) > _HALF_LIMIT:
            self._check_half_noise(max(self._host_sigmas))
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled or deep-copied: the timestep table has a new address (``_set_time_table``)."""
        self.__dict__.update(state)
        table = state.get("_time_table")
        if table is not None:
            self._time_base = _NO_ADDRESS if table.is_meta else table.data_ptr()


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
            self._sigmas64, self._interpol64, self._n_calls, c.prediction_type, c.s_churn, c.s_noise
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

        Inputs are never modified. The first call without a begin index is located by its
        timestep; every later call checks that ``timestep`` is its own where that needs no device
        sync (a view of ``scheduler.timesteps``, a number or a CPU tensor) and raises
        ``ValueError`` otherwise. The last call keeps no reference to its inputs, so the autograd
        graph of a loop is freed with its outputs. Under ``torch.compile`` (and in eager calls
        after a compiled one) the call's coefficients come from the device call table; past the
        end of the schedule that lookup fails, and timesteps are not checked.

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
            ValueError: Mismatched shapes, a timestep not in the schedule or not this call's,
                every call has run, or a float16 call beyond float16's range.
            TypeError: A non-tensor, a tensor torch cannot step, or a non-``Generator``.
        """
        return self._step(model_output, timestep, sample, return_dict, generator)


def _noised(original: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """``original + noise * sigma`` with one host sigma: a Python number (no device tensor to build).

    float16/bfloat16 multiply by the sigma rounded to their dtype, as a tensor of that dtype would
    (a Python number would be kept in float32), so the result is bit for bit the tensor path's.
    """
    if original.dtype in _UPCAST:
        return original + noise * torch.full((1,), sigma, dtype=original.dtype, device=original.device)
    return original + noise * sigma


def _round_float32(value: Any) -> float | None:
    """A Python ``float``/``int`` rounded to float32 (as torch rounds it), or ``None`` for anything else."""
    if type(value) is not float and type(value) is not int:
        return None
    try:
        return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except (OverflowError, struct.error):
        return None


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """``torch.broadcast_shapes(target, shape) == target``, without that function's Python overhead."""
    if shape == target:
        return True
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target), strict=False))


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
    if device is None or (table.is_cpu and str(device) == "cpu"):
        return table
    target = torch.device(device)
    if target.type != "cuda" or table.device.type != "cpu":
        return table.to(target)
    return table.pin_memory().to(target, non_blocking=True)


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, drawn on the generator's device."""
    device = like.device if generator is None else generator.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(like.device)
