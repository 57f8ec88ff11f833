"""kdpm2: an exact, fast KDPM2 (DPM-Solver-2) diffusion scheduler for PyTorch.

``KDPM2DiscreteScheduler`` is a drop-in for ``diffusers.KDPM2DiscreteScheduler`` and
``KDPM2AncestralDiscreteScheduler`` (DPM2 a) for ``diffusers.KDPM2AncestralDiscreteScheduler``; the executable
specification it is tested against ships as ``kdpm2_spec``.
"""

from kdpm2.ancestral import KDPM2AncestralDiscreteScheduler, KDPM2AncestralDiscreteSchedulerOutput
from kdpm2.scheduler import KDPM2DiscreteScheduler, KDPM2DiscreteSchedulerOutput

__version__ = "0.2.0.dev0"
"""The package version, the one source: pyproject.toml reads it, docs/changelog.md has its section."""
__all__ = [
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2AncestralDiscreteSchedulerOutput",
    "KDPM2DiscreteScheduler",
    "KDPM2DiscreteSchedulerOutput",
    "__version__",
]
