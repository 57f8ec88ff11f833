"""kdpm2_spec: the executable specification of the KDPM2 (DPM-Solver-2) diffusion scheduler.

``Reference`` is a readable NumPy float64 model of diffusers' ``KDPM2DiscreteScheduler`` API;
``invariants`` holds the relations any correct implementation satisfies. ``AncestralReference``
and ``ancestral_invariants`` do the same for the ancestral variant (DPM2 a).
"""

from kdpm2_spec import ancestral_invariants, invariants, schedule
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
