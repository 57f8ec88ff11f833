"""kdpm2_spec: the executable specification of the KDPM2 (DPM-Solver-2) diffusion scheduler.

``Reference`` is a readable NumPy float64 model of diffusers' ``KDPM2DiscreteScheduler`` API;
``invariants`` holds the relations any correct implementation satisfies. ``AncestralReference``
and ``ancestral_invariants`` do the same for the ancestral variant (DPM2 a).

``ancestral_invariants`` (and the gate) need Hypothesis, the ``spec`` extra; it is imported on first
use, so that ``import kdpm2_spec`` works without it and the gate can say what is missing.
"""

from typing import Any

from kdpm2_spec import invariants, schedule
from kdpm2_spec.adapter import Adapter, NumpyAdapter, TorchAdapter
from kdpm2_spec.ancestral import AncestralReference, ancestral_step
from kdpm2_spec.gaussian import Gaussian, convergence_order
from kdpm2_spec.reference import PREDICTION_TYPES, Reference, StepOutput, denoise, model_output_for

__all__ = [
    "PREDICTION_TYPES",
    "Adapter",
    "AncestralReference",
    "Gaussian",
    "NumpyAdapter",
    "Reference",
    "StepOutput",
    "TorchAdapter",
    "ancestral_invariants",
    "ancestral_step",
    "convergence_order",
    "denoise",
    "invariants",
    "model_output_for",
    "schedule",
]


def __getattr__(name: str) -> Any:
    if name == "ancestral_invariants":  # needs Hypothesis: imported on first use
        import importlib

        return importlib.import_module("kdpm2_spec.ancestral_invariants")
    raise AttributeError(f"module 'kdpm2_spec' has no attribute {name!r}")
