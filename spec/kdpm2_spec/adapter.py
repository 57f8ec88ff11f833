"""How the checks talk to a scheduler: create it, and move arrays in and out of it.

An implementation under test needs an object with three methods (see :class:`Adapter`). The
reference itself uses :class:`NumpyAdapter`; torch schedulers use :class:`TorchAdapter`, which
imports torch only when it is created, so that the spec itself never needs torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np


class Adapter(Protocol):
    """What a check needs to drive a scheduler class with NumPy data."""

    def create(self, **config: Any) -> Any:
        """A new scheduler built with these constructor arguments."""

    def tensor(self, array: np.ndarray) -> Any:
        """The scheduler's native array for a NumPy array."""

    def array(self, value: Any) -> np.ndarray:
        """A float64 NumPy copy of a native array (or scalar)."""


class NumpyAdapter:
    """Adapter for schedulers that work on NumPy arrays, such as :class:`Reference`."""

    def __init__(self, cls: Any = None) -> None:
        from kdpm2_spec.reference import Reference

        self.cls = Reference if cls is None else cls

    def create(self, **config: Any) -> Any:
        return self.cls(**config)

    def tensor(self, array: np.ndarray) -> Any:
        return np.array(array, dtype=np.float64)

    def array(self, value: Any) -> np.ndarray:
        return np.array(value, dtype=np.float64)


class TorchAdapter:
    """Adapter for diffusers-style torch schedulers; tensors live on ``device`` in ``dtype``."""

    def __init__(self, cls: Any, device: str = "cpu", dtype: str = "float64") -> None:
        self.torch = importlib.import_module("torch")
        self.cls, self.device, self.dtype = cls, device, getattr(self.torch, dtype)

    def create(self, **config: Any) -> Any:
        return self.cls(**config)

    def tensor(self, array: np.ndarray) -> Any:
        return self.torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)

    def array(self, value: Any) -> np.ndarray:
        if isinstance(value, self.torch.Tensor):
            value = value.detach().to("cpu", self.torch.float64).numpy()
        return np.array(value, dtype=np.float64)
