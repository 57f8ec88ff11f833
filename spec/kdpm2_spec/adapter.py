"""How the checks talk to a scheduler: create it, and move arrays in and out of it.

An implementation under test needs an object with three methods (see ``Adapter``). The
reference itself uses ``NumpyAdapter``; torch schedulers use ``TorchAdapter``, which
imports torch only when it is created, so that the spec itself never needs torch.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import types
from typing import Any, Protocol

import numpy as np

from kdpm2_spec.catalog import DTYPE_NAMES


class Adapter(Protocol):
    """What a check needs to drive a scheduler class with NumPy data."""

    def create(self, **config: Any) -> Any:
        """A new scheduler built with these constructor arguments."""

    def tensor(self, array: np.ndarray) -> Any:
        """The scheduler's native array for a NumPy array."""

    def array(self, value: Any) -> np.ndarray:
        """A float64 NumPy copy of a native array (or scalar)."""


class NoiseSource:
    """The churn noise of one loop: what ``step`` is given, and the same draws for the reference.

    A NumPy scheduler takes each draw as ``step(..., noise=...)``. A torch scheduler draws from the
    ``generator`` given to ``step`` (at the end of each full step, for the next one); ``draw``
    takes the same values from a twin generator seeded alike.
    """

    def __init__(self, seed: int, torch: Any = None, dtype: Any = None) -> None:
        self.torch, self.dtype = torch, dtype
        if torch is None:
            self.rng = np.random.default_rng(seed)
        else:
            self.generator = torch.Generator().manual_seed(seed)
            self.twin = torch.Generator().manual_seed(seed)

    def draw(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next standard normal draw (the caller's first one included)."""
        if self.torch is None:
            return self.rng.standard_normal(shape)
        self.torch.randn(shape, generator=self.generator, dtype=self.dtype)  # keep both streams in step
        return self.torch.randn(shape, generator=self.twin, dtype=self.dtype).double().numpy()

    def step_draw(self, shape: tuple[int, ...]) -> np.ndarray:
        """The draw ``step`` makes next (a torch scheduler draws it itself; here it comes from the twin)."""
        if self.torch is None:
            return self.rng.standard_normal(shape)
        return self.torch.randn(shape, generator=self.twin, dtype=self.dtype).double().numpy()

    def step_kwargs(self, noise: np.ndarray | None) -> dict[str, Any]:
        """Extra ``step`` arguments: the generator (torch) or the drawn ``noise`` (NumPy)."""
        if self.torch is None:
            return {} if noise is None else {"noise": noise}
        return {"generator": self.generator}


class NumpyAdapter:
    """Adapter for schedulers that work on NumPy arrays, such as ``Reference``."""

    def __init__(self, cls: Any = None) -> None:
        from kdpm2_spec.reference import Reference

        self.cls = Reference if cls is None else cls
        self.dtype_name = "float64"

    def create(self, **config: Any) -> Any:
        return self.cls(**config)

    def tensor(self, array: np.ndarray) -> Any:
        return np.array(array, dtype=np.float64)

    def array(self, value: Any) -> np.ndarray:
        return np.array(value, dtype=np.float64)

    def noise(self, seed: int) -> NoiseSource:
        """Churn noise passed explicitly to ``step(..., noise=...)``."""
        return NoiseSource(seed)


class TorchAdapter:
    """Adapter for diffusers-style torch schedulers; tensors live on ``device`` in ``dtype``.

    ``device`` is any torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``...); every
    scheduler it creates gets ``set_timesteps(..., device=device)`` unless the call names one
    (or ``set_timesteps`` has no ``device`` argument).
    """

    def __init__(self, cls: Any, device: str = "cpu", dtype: str = "float64") -> None:
        self.torch = importlib.import_module("torch")
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        try:
            self.torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device must be a torch device string such as 'cpu' or 'cuda', got {device!r}") from error
        self.cls, self.device, self.dtype = cls, str(device), getattr(self.torch, dtype)
        self.dtype_name = dtype
        self._built: dict[str, Any] = {}
        self._timed: dict[str, dict[str, Any]] = {}

    def with_dtype(self, dtype: str) -> TorchAdapter:
        """The same adapter with tensors in ``dtype`` (``float32``, ``float16``, ``bfloat16``...)."""
        return TorchAdapter(self.cls, self.device, dtype)

    def noise(self, seed: int) -> NoiseSource:
        """Churn noise drawn by the scheduler from a ``torch.Generator`` seeded with ``seed``."""
        return NoiseSource(seed, self.torch, self.dtype)

    def create(self, **config: Any) -> Any:
        """A new scheduler: a copy of a cached one built alike (diffusers' constructor takes 0.1 s).

        Its first ``set_timesteps`` call is a copy too when a fresh scheduler of the same
        configuration was already given the same call (diffusers' ``set_timesteps`` is a Python
        loop, and the properties ask each configuration the same thing): the state that call left
        is copied onto the new scheduler. Every later call runs the class's own ``set_timesteps``.
        """
        key = repr(sorted(config.items()))
        if key not in self._built:
            if len(self._built) > 512:
                self._built.clear()
                self._timed.clear()
            self._built[key] = self.cls(**config)
        scheduler = copy.deepcopy(self._built[key])
        device = self.device if self.device != "cpu" and "device" in self._set_timesteps_args() else None
        _first_call_cached(scheduler, key, self._timed, device)
        return scheduler

    def _set_timesteps_args(self) -> frozenset[str]:
        try:
            return frozenset(inspect.signature(self.cls.set_timesteps).parameters)
        except (TypeError, ValueError):
            return frozenset()

    def tensor(self, array: np.ndarray) -> Any:
        return self.torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)

    def array(self, value: Any) -> np.ndarray:
        if isinstance(value, self.torch.Tensor):
            value = value.detach().to("cpu", self.torch.float64).numpy()
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], self.torch.Tensor):
            value = [float(v) for v in value]
        return np.array(value, dtype=np.float64)


def _first_call_cached(scheduler: Any, key: str, cache: dict[str, dict[str, Any]], device: str | None) -> None:
    """Make the first ``set_timesteps`` call of a new ``scheduler`` reuse the state an identical first call left.

    The state after a fresh scheduler's first ``set_timesteps(args)`` depends only on its
    configuration and ``args``; it is stored once (a deep copy of the instance's attributes) and
    copied onto later fresh schedulers. ``device`` (when not ``None``) is passed to every call
    that names none. A bound method, not a closure over the scheduler, so that a deep copy of
    the scheduler stays bound to the copy.
    """
    if not hasattr(scheduler, "__dict__"):
        return

    def set_timesteps(self: Any, *args: Any, **kwargs: Any) -> Any:
        if device is not None:
            kwargs.setdefault("device", device)
        first = "_kdpm2_spec_used" not in vars(self)
        call = f"{key}|{args!r}|{sorted(kwargs.items())!r}"
        if first and call in cache:
            self.__dict__.update(copy.deepcopy(cache[call]))
            self.__dict__["_kdpm2_spec_used"] = True
            return None
        self.__dict__["_kdpm2_spec_used"] = True
        result = type(self).set_timesteps(self, *args, **kwargs)
        if first:
            state = {k: v for k, v in vars(self).items() if k not in ("set_timesteps", "_kdpm2_spec_used")}
            cache[call] = copy.deepcopy(state)
        return result

    scheduler.set_timesteps = types.MethodType(set_timesteps, scheduler)
