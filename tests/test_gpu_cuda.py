"""The CUDA fast path: fused Triton step, no host syncs, CUDA-graph capture, torch.compile.

Every test here needs a CUDA GPU (``-m cuda`` selects them; they skip without one).
"""

from __future__ import annotations

import pytest
import torch

from helpers_kernel import calls, exact, inputs, ulp
from kdpm2 import KDPM2DiscreteScheduler, functional, triton_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPE = (2, 4, 32, 32)


CALLS = calls()


def model(x: torch.Tensor) -> torch.Tensor:
    return x * 0.25


# -- the kernel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (3, 4, 33, 17), (16, 16, 128, 128)], ids=str)
@pytest.mark.parametrize(("name", "c", "stored", "noise"), CALLS, ids=[k[0] for k in CALLS])
def test_kernel_float32_matches_plain_torch(name, c, stored, noise, shape) -> None:
    args = inputs(shape, torch.float32, stored, noise, device="cuda")
    assert triton_step.supports(*args)
    got = triton_step.apply_step(c, *args)
    want = functional.apply_step(c, *args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6, msg=lambda m: f"[{name}] {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("name", "c", "stored", "noise"), CALLS, ids=[k[0] for k in CALLS])
def test_kernel_half_within_one_ulp(name, c, stored, noise, dtype) -> None:
    args = inputs((3, 4, 33, 17), dtype, stored, noise, device="cuda", seed=1)
    got = triton_step.apply_step(c, *args)
    for label, g, w in zip(("prev", "x0"), got, exact(c, *args), strict=True):
        assert g.dtype == dtype
        error, bound = (g.double() - w).abs(), ulp(w, dtype)
        assert bool((error <= bound).all()), f"{label} [{name}, {dtype}] beyond 1 ulp of float64"


def test_supports_rules() -> None:
    x = torch.randn(4, 8, device="cuda")
    assert triton_step.supports(x, x, None, None)
    assert triton_step.supports(x.half(), x.half(), x.half(), x.half())
    assert not triton_step.supports(x.double(), x.double(), None, None)  # float64: plain torch
    assert not triton_step.supports(x, x.half(), None, None)
    assert not triton_step.supports(x.t(), x.t(), None, None)  # not contiguous
    assert not triton_step.supports(x, x.reshape(8, 4), None, None)
    assert not triton_step.supports(x.cpu(), x.cpu(), None, None)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prediction_type", functional.PREDICTION_TYPES)
def test_cuda_loop_matches_cpu_loop(prediction_type, dtype) -> None:
    """The whole loop on CUDA (fused kernel) against the CPU loop (torch path) on the same inputs."""
    out = {}
    for device in ("cpu", "cuda"):
        s = KDPM2DiscreteScheduler(prediction_type=prediction_type)
        s.set_timesteps(10, device=device)
        x = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma).to(device, dtype)
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t)), t, x).prev_sample
        out[device] = x.float().cpu()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out["cuda"], out["cpu"], rtol=tol, atol=tol)


# -- no host syncs ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("churn", [0.0, 0.5])
def test_loop_is_sync_free(dtype, churn) -> None:
    """set_timesteps, add_noise, scale_model_input, model, step: no host sync with begin_index unset."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = torch.randn(SHAPE, device="cuda", dtype=dtype, generator=g)
    noise = torch.randn(SHAPE, device="cuda", dtype=dtype, generator=g)
    s = KDPM2DiscreteScheduler(s_churn=churn)
    s.set_timesteps(1, device="cuda")
    s.step(model(s.scale_model_input(x0, s.timesteps[0])), s.timesteps[0], x0)  # compile the kernels first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        s.set_timesteps(10, device="cuda")
        x = s.add_noise(x0, noise, s.timesteps[0])  # begin_index unset: per-timestep lookup on the device
        x = s.add_noise(x, noise, s.timesteps[:1].expand(SHAPE[0]))
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t)), t, x, generator=g).prev_sample
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(x.isfinite().all())


# -- CUDA graphs --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_cuda_graph_of_whole_loop_matches_eager(dtype, prediction_type) -> None:
    """Capture scale_model_input, model and step for all calls in one graph; replay equals eager."""
    steps = 12
    start = torch.randn(SHAPE, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0)).to(dtype)

    def loop(s, x):
        s.set_begin_index(0)
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t)), t, x).prev_sample
        return x

    s = KDPM2DiscreteScheduler(prediction_type=prediction_type)
    s.set_timesteps(steps, device="cuda")
    eager = loop(s, start.clone())

    static_in = start.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream (compiles every kernel variant)
        s.set_timesteps(steps, device="cuda")
        loop(s, static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    s.set_timesteps(steps, device="cuda")
    with torch.cuda.graph(graph):
        static_out = loop(s, static_in)
    static_in.copy_(start)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager)
    static_in.copy_(start * 0.5)
    graph.replay()
    s2 = KDPM2DiscreteScheduler(prediction_type=prediction_type)
    s2.set_timesteps(steps, device="cuda")
    again = loop(s2, start * 0.5)
    assert torch.equal(static_out, again)


# -- torch.compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("second_order", [False, True])
def test_compiled_step_uses_the_fused_op_without_graph_break(dtype, second_order) -> None:
    """fullgraph compile (inductor) of one step on CUDA traces the triton_op; matches eager."""
    x = torch.randn(SHAPE, device="cuda", dtype=dtype)
    e = torch.randn(SHAPE, device="cuda", dtype=dtype)
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        s = KDPM2DiscreteScheduler()
        s.set_timesteps(10, device="cuda")
        s.set_begin_index(0)
        t = s.timesteps[0]
        if second_order:
            s.step(e, t, x)
            t = s.timesteps[1]

        def one(e, t, x, s=s):
            return s.step(e, t, x, return_dict=False)

        if compiled:
            explanation = torch._dynamo.explain(one)(e, t, x)
            assert explanation.graph_break_count == 0, explanation.break_reasons
            torch._dynamo.reset()
            s.set_timesteps(10, device="cuda")
            s.set_begin_index(0)
            if second_order:
                s.step(e, s.timesteps[0], x)
            results.append(torch.compile(one, fullgraph=True)(e, t, x))
        else:
            results.append(one(e, t, x))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()
