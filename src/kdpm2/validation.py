"""Argument checks shared by the scheduler: each error names the argument and what is allowed.

Every check is a pure function that returns the validated value (a Python ``int``/``float``/
``bool``, a float64 NumPy array or a ``torch.device``), so callers use what was checked and not
what was passed: a NumPy scalar or a 0-d tensor becomes a plain number before it reaches torch.

The valid domain of the schedule (decided in issue 11):

- betas lie in the open interval (0, 1) and give a training sigma table that is finite and
  within ``SIGMA_RANGE`` (float32 ``alphas_cumprod`` must neither reach 0 nor stay at 1);
- every non-zero sigma lies in ``SIGMA_RANGE``, the range where ``sigma**2`` is a normal
  float32, so the float32 public tables, ``sigma**2 + 1`` and products of two sigmas are finite
  and non-zero;
- ``num_train_timesteps`` is at most ``MAX_TRAIN_TIMESTEPS``.

The tensor checks used by ``step``/``scale_model_input``/``add_noise`` read metadata only (dtype,
layout, device): no device sync, no ``.item()``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
SIGMA_INTERPOLATIONS = ("linear", "log")

FLAGS = (
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "discard_penultimate_sigma",
    "quantize_timesteps",
    "round_karras_timesteps",
)
"""The constructor's boolean flags: each accepts ``bool`` or ``numpy.bool_`` only."""

SIGMA_RANGE = (2.0**-63, 2.0**63)
"""Allowed non-zero sigmas, about 1.1e-19 .. 9.2e18: ``sigma**2`` is a normal float32 (2**-126 .. 2**126)."""

MAX_TRAIN_TIMESTEPS = 100_000
"""Largest ``num_train_timesteps``: the constructor builds a full-length schedule (about 2 s and 50 MB here)."""

TENSOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Dtypes ``step``, ``scale_model_input`` and ``add_noise`` compute in (float8 has no arithmetic)."""

_STEP_DTYPES = frozenset(TENSOR_DTYPES)


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened to ``limit`` characters (a 400-digit int must not flood a message)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not replace the error we are raising
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 5] + "[...]"


def choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` must be one of ``allowed`` (a string: ``1 == True`` must not pass as a name)."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {show(value)}")
    return value


def _scalar(name: str, value: Any) -> Any:
    """A 0-d or one-element torch tensor as its Python number; anything else unchanged."""
    if not isinstance(value, torch.Tensor):
        return value
    if value.numel() != 1 or value.dim() != 0:
        raise TypeError(f"{name} must be a number or a 0-d tensor; got a tensor of shape {tuple(value.shape)}")
    if value.is_meta or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name} must be a real number; got a {value.dtype} tensor on {value.device}")
    return value.detach().cpu().item()


def integer(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` must be an integer (not a bool) in ``[low, high]``; NumPy and 0-d tensor integers too."""
    value = _scalar(name, value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {show(value)}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bound}; got {show(value)}")
    return value


def real(
    name: str,
    value: Any,
    low: float | None = None,
    *,
    strict: bool = False,
    optional: bool = False,
    below: float | None = None,
) -> Any:
    """``value`` must be a finite real number (``None`` too when ``optional``), above ``low`` and below ``below``.

    NumPy scalars, 0-d tensors and ``Fraction`` are accepted and returned as ``float``.
    """
    if value is None and optional:
        return None
    value = _scalar(name, value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite real number; got {show(value)}")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        number = math.inf
    if not math.isfinite(number):
        raise TypeError(f"{name} must be a finite real number; got {show(value)}")
    if low is not None and (number < low or (strict and number == low)):
        raise ValueError(f"{name} must be {'greater than' if strict else 'at least'} {low}; got {show(value)}")
    if below is not None and number >= below:
        raise ValueError(f"{name} must be less than {below}; got {show(value)}")
    return number


def flag(name: str, value: Any) -> bool:
    """A boolean flag: ``bool`` or ``numpy.bool_`` (the string ``"False"`` must not mean True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {show(value)}")
    return bool(value)


def device(value: Any, *, values: bool = False) -> torch.device | None:
    """A device that exists here (``None`` stays ``None``); ``ValueError`` naming ``device`` otherwise.

    An unavailable CUDA/MPS device is refused before anything is built. ``meta`` is accepted (the
    tests use it as a CPU stand-in for CUDA placement); pass ``values=True`` where data is needed.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, torch.device, int)):
        raise TypeError(f"device must be a str, torch.device or None; got {type(value).__name__} {show(value)}")
    try:
        target = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"device must name a torch device ('cpu', 'cuda', 'cuda:1', ...); got {show(value)}") from None
    if target.type == "meta" and values:
        raise ValueError("device must hold values; got 'meta' (meta tensors have no data)")
    if target.type in ("cpu", "meta"):
        return target
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {show(value)} is not available: torch.cuda.is_available() is False")
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {show(value)} is not available: {torch.cuda.device_count()} CUDA device(s) here")
    if target.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {show(value)} is not available: torch.backends.mps.is_available() is False")
    try:
        torch.empty(0, device=target)
    except Exception as error:  # RuntimeError or AssertionError, depending on the backend and build
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"device {show(value)} is not available here ({show(reason, 80)})") from None
    return target


def array(name: str, value: Any) -> np.ndarray:
    """Real numbers (a sequence, array or tensor) as a float64 array; ``TypeError`` naming ``name`` otherwise.

    Floating-point tensors of any dtype (bfloat16 included) and ``requires_grad`` tensors are
    converted; meta, sparse, nested and complex tensors, complex, string and bool values are refused.
    """
    if isinstance(value, torch.Tensor):
        if value.is_meta or value.layout != torch.strided or value.is_nested:
            raise TypeError(f"{name} must be a tensor with values; got a {value.layout} tensor on {value.device}")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers; got a {value.dtype} tensor")
        return value.detach().to("cpu", torch.float64).numpy().copy()
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of real numbers; got {show(value)}")
    try:
        raw = np.asarray(value)
    except Exception:  # anything NumPy cannot read (ragged, too deep, tensors needing grad or on meta, ...)
        raise TypeError(f"{name} must be a sequence of real numbers; got {show(value)}") from None
    if raw.dtype.kind == "O":
        flat = raw.reshape(-1)
        if not all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in flat):
            raise TypeError(f"{name} must be a sequence of real numbers; got {show(value)}")
        try:
            return np.array([float(v) for v in flat], dtype=np.float64).reshape(raw.shape)
        except OverflowError:
            raise ValueError(f"{name} must hold finite numbers; got {show(value)}") from None
    if raw.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a sequence of real numbers; got {raw.dtype} values {show(value)}")
    return raw.astype(np.float64)


def trained_betas(value: Any, num_train_timesteps: int) -> np.ndarray:
    """Trained betas: ``num_train_timesteps`` values in the open interval (0, 1)."""
    betas = array("trained_betas", value)
    if betas.shape != (num_train_timesteps,):
        raise ValueError(
            f"trained_betas must hold num_train_timesteps={num_train_timesteps} values; got shape {betas.shape}"
        )
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("trained_betas must lie in the open interval (0, 1)")
    return betas


def _sigma_range_text() -> str:
    return f"[{SIGMA_RANGE[0]:.3g}, {SIGMA_RANGE[1]:.3g}]"


def custom_sigmas(sigmas: Any) -> np.ndarray:
    """Custom sigmas: at least two, positive and strictly decreasing, the final one at least 0."""
    array_ = array("sigmas", sigmas)
    if array_.ndim != 1 or len(array_) < 2:
        raise ValueError(f"sigmas must be a 1-D sequence of at least 2 values (the last is final); got {array_.shape}")
    if not np.all(np.isfinite(array_)) or np.any(array_[:-1] <= 0) or array_[-1] < 0:
        raise ValueError("sigmas must be finite and positive (the final one may be 0)")
    if np.any(np.diff(array_) >= 0):
        raise ValueError("sigmas must be strictly decreasing")
    positive = array_[array_ > 0]
    if np.any(positive < SIGMA_RANGE[0]) or np.any(positive > SIGMA_RANGE[1]):
        raise ValueError(f"sigmas must lie in {_sigma_range_text()} (the final one may be 0); got {show(sigmas)}")
    return array_


def custom_timesteps(timesteps: Any, num_train_timesteps: int) -> np.ndarray:
    """Custom timesteps: strictly decreasing values within ``[0, num_train_timesteps - 1]``."""
    array_ = array("timesteps", timesteps)
    if array_.ndim != 1 or len(array_) < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence; got shape {array_.shape}")
    if not np.all(np.isfinite(array_)) or np.any(array_ < 0) or np.any(array_ > num_train_timesteps - 1):
        raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}]")
    if np.any(np.diff(array_) >= 0):
        raise ValueError("timesteps must be strictly decreasing")
    return array_


def sigma_bound(name: str, value: float | None) -> float | None:
    """``sigma_min`` / ``sigma_max``: ``None`` or a number in ``SIGMA_RANGE``."""
    value = real(name, value, 0.0, strict=True, optional=True)
    if value is not None and not SIGMA_RANGE[0] <= value <= SIGMA_RANGE[1]:
        raise ValueError(f"{name} must lie in {_sigma_range_text()}; got {value}")
    return value


def family_bounds(family: str, low: float, high: float, given_low: bool, given_high: bool, steps: int) -> None:
    """The effective bounds of a sigma family must be increasing, also when one comes from the schedule.

    A bound not given is an end of the spaced schedule of ``steps`` steps, so a configuration can
    be valid at one step count and not at another.
    """
    if low < high:
        return
    where = {True: "given", False: f"from the schedule of num_inference_steps={steps}"}
    raise ValueError(
        f"sigma_min must be smaller than sigma_max for the {family} sigmas; got sigma_min={low:.6g} "
        f"({where[given_low]}) and sigma_max={high:.6g} ({where[given_high]})"
    )


def training_sigmas(log_sigmas: torch.Tensor, source: str, betas: torch.Tensor | None = None) -> None:
    """The training sigma table must be finite and within ``SIGMA_RANGE`` (``source`` names the betas).

    The float32 ``betas`` must lie in (0, 1) too: a beta that rounds to 0 or 1 in float32 is refused.
    """
    if betas is not None and not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"{source} give float32 betas outside the open interval (0, 1)")
    sigmas = log_sigmas.exp()
    ok = torch.isfinite(log_sigmas) & (sigmas >= SIGMA_RANGE[0]) & (sigmas <= SIGMA_RANGE[1])
    if not bool(ok.all()):
        raise ValueError(
            f"{source} give training sigmas outside {_sigma_range_text()} (float32 alphas_cumprod reaches 0 "
            "or stays 1): choose betas whose cumulative product stays strictly between 0 and 1"
        )


def finite_tables(**named: torch.Tensor) -> None:
    """Every table built by ``set_timesteps`` must be finite (the last line of defence, before assigning)."""
    for name, table in named.items():
        finite = np.isfinite(table.numpy()).all() if table.is_cpu else bool(torch.isfinite(table).all())
        if not finite:
            raise ValueError(f"set_timesteps would build a non-finite {name} table; the configuration is out of range")


def tensor(name: str, value: Any) -> torch.Tensor:
    """A dense floating-point tensor torch can step: float16/bfloat16/float32/float64, strided.

    Reads metadata only (no device sync): safe on the hot path. Meta tensors pass: a loop on them
    only checks shapes and devices (they stand in for CUDA tensors in the CPU tests).
    """
    if (
        isinstance(value, torch.Tensor)
        and value.dtype in _STEP_DTYPES
        and value.layout is torch.strided
        and not value.is_nested
    ):
        return value  # the hot path: four attribute reads
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got {value.dtype}")
    if value.dtype not in TENSOR_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {value.dtype}")
    if value.is_nested or value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor; got {'nested' if value.is_nested else value.layout}")
    return value


def generator(value: Any) -> torch.Generator | None:
    """``None`` or a ``torch.Generator``."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(value).__name__}")
    return value


def timestep_tensor(name: str, value: Any, *, values: bool = False) -> torch.Tensor:
    """A dense tensor of real timesteps (integer or float16/bfloat16/float32/float64); not meta if ``values``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if values and value.is_meta:
        raise TypeError(f"{name} must hold values; got a meta tensor")
    if value.is_nested or value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor; got a {value.layout} tensor")
    if (
        value.dtype == torch.bool
        or value.is_complex()
        or (value.is_floating_point() and value.dtype not in TENSOR_DTYPES)
    ):
        raise TypeError(f"{name} must hold integers or float16/bfloat16/float32/float64 values; got {value.dtype}")
    return value


def step_inputs(model_output: Any, sample: Any, generator_: Any, stored: torch.Tensor | None = None) -> None:
    """``step``'s tensors and generator: steppable, same shape, same device (metadata only).

    ``stored`` is the sample kept by the first-order call: the second-order call's must match it.
    """
    tensor("model_output", model_output)
    tensor("sample", sample)
    if model_output.shape != sample.shape:
        raise ValueError(f"model_output shape {tuple(model_output.shape)} != sample shape {tuple(sample.shape)}")
    if model_output.device != sample.device:
        raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
    if stored is not None and (stored.shape != sample.shape or stored.device != sample.device):
        raise ValueError(
            f"sample ({tuple(sample.shape)} on {sample.device}) must match the first-order call's sample "
            f"({tuple(stored.shape)} on {stored.device})"
        )
    generator(generator_)


def add_noise_inputs(original_samples: Any, noise: Any, timesteps: Any) -> None:
    """``add_noise``'s tensors: one timestep for all or one per batch item; noise broadcasts to the samples."""
    tensor("original_samples", original_samples)
    tensor("noise", noise)
    timestep_tensor("timesteps", timesteps)
    if original_samples.dim() < 1:
        raise ValueError("original_samples must have a batch dimension; got a 0-d tensor")
    batch, count = original_samples.shape[0], timesteps.numel()
    if count not in (1, batch):
        raise ValueError(f"timesteps must hold 1 value or one per batch item ({batch}); got {count}")
    if noise.device != original_samples.device:
        raise ValueError(f"noise is on {noise.device} but original_samples is on {original_samples.device}")
    try:
        shape = torch.broadcast_shapes(original_samples.shape, noise.shape)
    except RuntimeError:
        shape = None
    if shape != original_samples.shape:
        raise ValueError(
            f"noise shape {tuple(noise.shape)} must broadcast to original_samples shape {tuple(original_samples.shape)}"
        )
