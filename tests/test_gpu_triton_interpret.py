"""The fused Triton kernel's arithmetic, checked on CPU with Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so the kernel cases run in a child
pytest process (``test_kernel_under_interpreter``) and skip in the parent. On a GPU machine the
same comparisons run on CUDA in ``test_gpu_cuda.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers_kernel import calls, exact, inputs, ulp
from kdpm2 import functional

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRET, reason="runs in the TRITON_INTERPRET=1 child process")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1,), (3, 4, 33, 17), (2, 1024)]  # one element, a ragged last block, exactly two blocks


CALLS = calls() if INTERPRET else []  # empty in the parent: one skip per test instead of one per case


def launch(c: functional.Coefficients, x, m, s, z):
    from kdpm2 import triton_step

    return triton_step._launch(triton_step._step_kernel, x, m, s, z, *c)


def test_kernel_under_interpreter() -> None:
    """Run this file's kernel cases in a child pytest with TRITON_INTERPRET=1."""
    if INTERPRET:
        pytest.skip("already in the interpreter process")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"interpreter run failed:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    assert " passed" in result.stdout and "failed" not in result.stdout, result.stdout[-2000:]


@interpreted
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize(("name", "c", "stored", "noise"), CALLS, ids=[k[0] for k in CALLS])
def test_float32_matches_plain_torch(name, c, stored, noise, shape) -> None:
    """float32: the kernel agrees with ``functional.apply_step`` to float32 rounding."""
    args = inputs(shape, torch.float32, stored, noise)
    got = launch(c, *args)
    want = functional.apply_step(c, args[0], args[1], args[2], args[3])
    for label, g, w in zip(("prev_sample", "pred_original_sample"), got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=lambda m, label=label: f"{label} [{name}]: {m}")


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("name", "c", "stored", "noise"), CALLS, ids=[k[0] for k in CALLS])
def test_half_within_one_ulp_of_float64(name, c, stored, noise, dtype) -> None:
    """float16/bfloat16: each output is within 1 ulp of the float64 result on the same inputs.

    Triton's interpreter truncates float32 -> bfloat16 (numpy has no bfloat16; compiled kernels
    round to nearest even), so there the bfloat16 bound also allows float32 rounding of the terms.
    The strict bound for both dtypes runs on CUDA (``test_gpu_cuda.py``).
    """
    args = inputs((3, 4, 33, 17), dtype, stored, noise, seed=1)
    got = launch(c, *args)
    want = exact(c, *args)
    scale = exact(c, *args, magnitude=True)
    plain = functional.apply_step(c, args[0], args[1], args[2], args[3])
    truncating = dtype == torch.bfloat16
    for label, g, w, p, size in zip(("prev_sample", "pred_original_sample"), got, want, plain, scale, strict=True):
        assert g.dtype == dtype
        error = (g.double() - w).abs()
        bound = ulp(w, dtype) + (size * 2.0**-21 if truncating else 0.0)
        worst = int((error / bound).argmax())
        assert bool((error <= bound).all()), (
            f"{label} [{name}, {dtype}]: error {error.flatten()[worst]:.3g} > 1 ulp {bound.flatten()[worst]:.3g}"
        )
        plain_error = (p.double() - w).abs()
        assert bool((plain_error <= ulp(w, dtype)).all()), f"plain torch {label} [{name}, {dtype}] off by > 1 ulp"


@interpreted
def test_zero_coefficients_skip_nonfinite_inputs() -> None:
    """A term with coefficient 0 is not read into the sum: inf there stays out (as the torch path)."""
    c = functional.second_order(3.0, 1.7, 1.1, "epsilon")  # c.sample == 0
    assert c.sample == 0.0
    x, m, s, _ = inputs((64,), torch.float32, True, False)
    x[5] = float("inf")
    got = launch(c, x, m, s, None)
    want = functional.apply_step(c, x, m, s, None)
    assert bool(got[0].isfinite().all())
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6, equal_nan=True)


@interpreted
def test_outputs_are_fresh_tensors() -> None:
    """The kernel writes new tensors and leaves its inputs untouched."""
    c = functional.second_order(3.0, 1.7, 1.1, "v_prediction", churn=0.4)
    args = inputs((3, 5), torch.float16, True, True)
    before = [a.clone() for a in args]
    prev, x0 = launch(c, *args)
    assert prev.data_ptr() != x0.data_ptr()
    assert all(prev.data_ptr() != a.data_ptr() for a in args)
    assert all(torch.equal(a, b) for a, b in zip(args, before, strict=True))


@interpreted
@pytest.mark.parametrize(("name", "c", "stored", "noise"), CALLS, ids=[k[0] for k in CALLS])
def test_apply_step_launches_the_kernel_once(name, c, stored, noise) -> None:
    """``triton_step.apply_step`` (the scheduler's entry) gives the kernel's outputs for every kind of call."""
    from kdpm2 import triton_step

    args = inputs((2, 1024), torch.float32, stored, noise, seed=2)
    got = triton_step.apply_step(c, *args)
    want = functional.apply_step(c, args[0], args[1], args[2], args[3])
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and g.shape == (2, 1024)
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")  # float32 sums


@interpreted
@pytest.mark.parametrize("zero", ["stored", "sample", "model", "noise", "x0_sample", "x0_model"])
def test_each_zero_coefficient_leaves_its_input_out(zero: str) -> None:
    """A term whose coefficient is 0 is not read: inf in that input does not reach either output."""
    values = {"stored": 0.5, "sample": -0.75, "model": 1.25, "noise": 0.3, "x0_sample": 1.1, "x0_model": -0.4}
    c = functional.Coefficients(**{**values, zero: 0.0})
    x, m, s, z = inputs((64,), torch.float32, True, True)
    poisoned = {"stored": s, "noise": z}.get(zero)
    if poisoned is not None:
        poisoned[3] = float("inf")
        got = launch(c, x, m, s, z)
        want = functional.apply_step(c, x, m, s, z)
        for g, w in zip(got, want, strict=True):
            assert bool(g.isfinite().all())
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
        return
    # sample and model feed both outputs: poison only the output whose coefficient is 0
    target = x if zero in ("sample", "x0_sample") else m
    target[3] = float("inf")
    got = launch(c, x, m, s, z)
    want = functional.apply_step(c, x, m, s, z)
    output = 0 if zero in ("sample", "model") else 1
    assert bool(got[output].isfinite().all()), f"inf leaked through the zero {zero} coefficient"
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, equal_nan=True)


@interpreted
def test_apply_step_uses_the_custom_op_only_while_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager calls launch the kernel directly; under ``torch.compile`` they go through ``kdpm2::fused_step``."""
    from kdpm2 import triton_step

    real = triton_step._fused_op
    if real is None:
        pytest.skip("torch.library.triton_op is not available")
    seen: list[tuple] = []

    def spy(*args):
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(triton_step, "_fused_op", spy)
    c = functional.second_order(3.0, 1.7, 1.1, "v_prediction", churn=0.4)
    args = inputs((2, 1024), torch.float32, True, True, seed=4)
    eager = triton_step.apply_step(c, *args)
    assert seen == []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    traced = triton_step.apply_step(c, *args)
    assert len(seen) == 1 and seen[0][:4] == tuple(args)
    assert seen[0][4:] == (c.stored, c.sample, c.model, c.noise, c.x0_sample, c.x0_model)
    for g, w in zip(traced, eager, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
