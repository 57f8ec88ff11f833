"""The fused CUDA step: one Triton kernel reads each input once and writes both outputs once.

A call computes, per element and in float32 registers,

    prev = c_stored * stored + c_sample * sample + c_model * model_output (+ c_noise * noise)
    x0   = a * sample + b * model_output

and rounds each result once to the input dtype (float16, bfloat16 or float32). The coefficients
are kernel scalar arguments, so nothing is read back from the device and a CUDA graph captured
around a whole loop bakes in each call's own coefficients. Terms whose coefficient is exactly 0
are left out (as in ``kdpm2.functional.apply_step``, so a non-finite value in an unused input
does not leak into the result); which terms are live is a compile-time flag of the kernel.

Under ``torch.compile`` the launch goes through a ``torch.library.triton_op`` so dynamo traces it
without a graph break; eager calls launch the kernel directly (no dispatcher overhead).
"""

from __future__ import annotations

from typing import Any

import torch

from kdpm2.functional import Coefficients

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with CUDA builds of torch
    triton = None

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
"""Dtypes the kernel reads and writes; float64 and the rest take the plain torch path."""

BLOCK = 1024
"""Elements per Triton program (one pass, no reduction: memory-bound, so a pointwise default)."""

NUM_WARPS = 4
"""Warps per program."""


def available() -> bool:
    """Whether Triton is importable."""
    return triton is not None


def supports(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> bool:
    """True for contiguous CUDA tensors of one kernel dtype and one shape, with Triton importable."""
    if triton is None or not sample.is_cuda or sample.dtype not in DTYPES:
        return False
    for t in (sample, model_output, stored, noise):
        if t is None:
            continue
        if t.device != sample.device or t.dtype != sample.dtype or t.shape != sample.shape:
            return False
        if not t.is_contiguous():
            return False
    return sample.numel() > 0


if triton is not None:

    @triton.jit
    def _step_kernel(
        sample_ptr,
        model_ptr,
        stored_ptr,
        noise_ptr,
        prev_ptr,
        x0_ptr,
        n,
        c_stored,
        c_sample,
        c_model,
        c_noise,
        a,
        b,
        PREV_STORED: tl.constexpr,
        PREV_SAMPLE: tl.constexpr,
        PREV_MODEL: tl.constexpr,
        PREV_NOISE: tl.constexpr,
        X0_SAMPLE: tl.constexpr,
        X0_MODEL: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One block of ``prev`` and ``x0``; each input is loaded once, each output stored once."""
        offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        x = tl.load(sample_ptr + offsets, mask=mask).to(tl.float32)
        m = tl.load(model_ptr + offsets, mask=mask).to(tl.float32)
        prev = tl.zeros([BLOCK], dtype=tl.float32)
        if PREV_STORED:
            prev = tl.load(stored_ptr + offsets, mask=mask).to(tl.float32) * c_stored
        if PREV_SAMPLE:
            prev = prev + x * c_sample
        if PREV_MODEL:
            prev = prev + m * c_model
        if PREV_NOISE:
            prev = prev + tl.load(noise_ptr + offsets, mask=mask).to(tl.float32) * c_noise
        x0 = tl.zeros([BLOCK], dtype=tl.float32)
        if X0_SAMPLE:
            x0 = x0 + x * a
        if X0_MODEL:
            x0 = x0 + m * b
        tl.store(prev_ptr + offsets, prev.to(prev_ptr.dtype.element_ty), mask=mask)
        tl.store(x0_ptr + offsets, x0.to(x0_ptr.dtype.element_ty), mask=mask)


def _flags(c: Coefficients, stored: torch.Tensor | None, noise: torch.Tensor | None) -> dict[str, bool]:
    """Which terms are live: present and with a non-zero coefficient."""
    return {
        "PREV_STORED": stored is not None and c.stored != 0.0,
        "PREV_SAMPLE": c.sample != 0.0,
        "PREV_MODEL": c.model != 0.0,
        "PREV_NOISE": noise is not None and c.noise != 0.0,
        "X0_SAMPLE": c.x0_sample != 0.0,
        "X0_MODEL": c.x0_model != 0.0,
    }


def _launch(
    kernel: Any,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None,
    noise: torch.Tensor | None,
    c_stored: float,
    c_sample: float,
    c_model: float,
    c_noise: float,
    a: float,
    b: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate both outputs and run ``kernel`` once over all elements (no host sync).

    ``kernel`` is ``_step_kernel`` (eager; also on CPU tensors under ``TRITON_INTERPRET=1``) or
    ``wrap_triton(_step_kernel)`` inside the ``triton_op``.
    """
    prev = torch.empty_like(sample)
    x0 = torch.empty_like(sample)
    n = sample.numel()
    flags = _flags(Coefficients(c_stored, c_sample, c_model, c_noise, a, b), stored, noise)
    kernel[(triton.cdiv(n, BLOCK),)](
        sample,
        model_output,
        stored if stored is not None else sample,  # unused pointer when the flag is off
        noise if noise is not None else sample,
        prev,
        x0,
        n,
        c_stored,
        c_sample,
        c_model,
        c_noise,
        a,
        b,
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
        **flags,
    )
    return prev, x0


def _register_op() -> Any:
    """``kdpm2::fused_step`` as a ``triton_op`` (torch >= 2.6), so ``torch.compile`` can trace the kernel."""
    library = getattr(torch, "library", None)
    if triton is None or not hasattr(library, "triton_op"):
        return None
    from torch.library import triton_op, wrap_triton

    @triton_op("kdpm2::fused_step", mutates_args=())
    def fused_step(
        sample: torch.Tensor,
        model_output: torch.Tensor,
        stored: torch.Tensor | None,
        noise: torch.Tensor | None,
        c_stored: float,
        c_sample: float,
        c_model: float,
        c_noise: float,
        a: float,
        b: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _launch(
            wrap_triton(_step_kernel), sample, model_output, stored, noise, c_stored, c_sample, c_model, c_noise, a, b
        )

    return fused_step


_fused_op = _register_op()


def apply_step(
    coefficients: Coefficients,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, pred_original_sample)`` with one kernel launch; needs ``supports(...)``."""
    c = coefficients
    args = (c.stored, c.sample, c.model, c.noise, c.x0_sample, c.x0_model)
    if _fused_op is not None and torch.compiler.is_compiling():
        return _fused_op(sample, model_output, stored, noise, *args)
    return _launch(_step_kernel, sample, model_output, stored, noise, *args)
