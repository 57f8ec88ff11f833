"""The fused CUDA step: one Triton kernel reads each input once and writes both outputs once.

Placeholder until the kernel lands: ``supports`` is False, so the plain torch path runs.
"""

from __future__ import annotations

from typing import Any

import torch

from kdpm2.functional import Coefficients


def supports(*tensors: Any) -> bool:
    """Whether the fused kernel can run on these tensors."""
    return False


def apply_step(
    coefficients: Coefficients,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    raise NotImplementedError
