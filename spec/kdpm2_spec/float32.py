"""A model of a correct float32-table implementation: the reference with its tables rounded to float32.

diffusers keeps ``sigmas`` and ``sigmas_interpol`` as float32 tensors and computes every
coefficient of ``step`` from their entries; it is right, but not exact. ``Float32TablesReference``
is the reference doing the same: after ``set_timesteps`` its per-call tables are float32 arrays
(each entry the float32 rounding of the reference's), and ``step`` reads them. It defines what the
``float32 tables`` level must accept (``kdpm2_spec.levels``): the conformance suite passes it at
that level in every property, and the largest errors it shows are the level's measured figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kdpm2_spec.reference import Reference


class Float32TablesReference(Reference):
    """``Reference`` whose ``sigmas`` and ``sigmas_interpol`` are float32 arrays, read by ``step``."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self.sigmas = self.sigmas.astype(np.float32)
        self.sigmas_interpol = self.sigmas_interpol.astype(np.float32)
