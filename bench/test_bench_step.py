"""One ``step`` call: ours against diffusers per prediction type, dtype and latent shape.

``test_step``: a round is one first-order and one second-order call from the middle of a 25-step
schedule (``calls_per_round = 2`` in extra_info); diffusers supports no
``prediction_type="sample"``, so that type has no baseline and is not timed here. On CUDA the
16x16x128x128 float32 case also reports bandwidth: bytes moved per call over time, against a
measured ``copy_`` bandwidth.

``test_step_in_a_loop``: a round is a real 25-step loop of ``step`` calls (49 calls, every call
index once, as a pipeline makes them; ``set_timesteps``, ``set_begin_index`` and the list of
views that iterating ``timesteps`` yields are made in the untimed setup), so per-call work done
on first use is timed too. ``floor`` is the two ``torch.add`` a call cannot do without, on the
same tensors.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, IMPLS, cuda_clock, make_scheduler

SHAPES = [(1, 4, 64, 64), (1, 4, 128, 128), (16, 16, 128, 128)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PREDICTION_TYPES = ["epsilon", "v_prediction"]
K = 10  # a first-order call index in the middle of the schedule


def label(shape) -> str:
    return "x".join(map(str, shape))


def step_pair(impl: str, device: str, dtype: torch.dtype, shape, prediction_type: str):
    """A function running calls K and K+1 (first and second order) of a 25-step schedule."""
    s = make_scheduler(impl, prediction_type=prediction_type)
    s.set_timesteps(25, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device).to(dtype)
    e = torch.randn(shape, generator=g, device=device).to(dtype)
    t0, t1 = s.timesteps[K], s.timesteps[K + 1]

    def run():
        s._step_index = K
        s.sample = None
        y = s.step(e, t0, x).prev_sample
        return s.step(e, t1, y).prev_sample

    return run


def skip_slow(device: str, dtype: torch.dtype, shape) -> None:
    if device == "cpu" and (dtype != torch.float32 or shape[0] > 1):
        pytest.skip("CPU runs float32 and the two small shapes (half precision on CPU is slow and not a target)")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=label)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_step(bench, device, prediction_type, dtype, shape, impl) -> None:
    skip_slow(device, dtype, shape)
    run = step_pair(impl, device, dtype, shape, prediction_type)
    dt = str(dtype).removeprefix("torch.")
    b = bench(
        f"step {device} {prediction_type} {dt} {label(shape)}",
        impl,
        device,
        dtype=dt,
        shape=label(shape),
        prediction_type=prediction_type,
        calls_per_round=2,
    )
    b(run)


LOOP_STEPS = 25


def step_loop(impl: str, device: str, shape, prediction_type: str = "epsilon"):
    """``(run, setup)`` for ``benchmark.pedantic``: a loop of ``step`` calls over a fresh 25-step schedule."""
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.randn(shape, generator=g, device=device)
    e = torch.randn(shape, generator=g, device=device)
    if impl == "floor":

        def floor(x, _):
            for _ in range(2 * LOOP_STEPS - 1):
                torch.add(x, e, alpha=-0.5)
                x = torch.add(x, e, alpha=-1.5)
            return x

        return floor, lambda: ((x0, None), {})
    s = make_scheduler(impl, prediction_type=prediction_type)

    def setup():
        s.set_timesteps(LOOP_STEPS, device=device)
        s.set_begin_index(0)
        return (x0, list(s.timesteps)), {}  # the views iterating s.timesteps yields, made untimed

    def loop(x, timesteps):
        for t in timesteps:
            x = s.step(e, t, x).prev_sample
        return x

    return loop, setup


@pytest.mark.parametrize("impl", [*IMPLS, "floor"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("device", DEVICES)
def test_step_in_a_loop(bench, device, prediction_type, impl) -> None:
    if impl == "floor" and prediction_type != "epsilon":
        pytest.skip("one floor: the two adds of an epsilon call")
    shape = (1, 4, 64, 64)
    run, setup = step_loop(impl, device, shape, prediction_type)
    b = bench(
        f"step-loop {device} {prediction_type} float32 {label(shape)}",
        impl,
        device,
        dtype="float32",
        shape=label(shape),
        prediction_type=prediction_type,
        calls_per_round=2 * LOOP_STEPS - 1,
    )
    b.pedantic(run, setup=setup, rounds=40, warmup_rounds=3)


def copy_bandwidth(n: int, dtype: torch.dtype, repeats: int = 50) -> float:
    """Bytes per second of ``dst.copy_(src)`` (read + write) for ``n`` elements on CUDA."""
    src = torch.randn(n, device="cuda").to(dtype)
    dst = torch.empty_like(src)
    for _ in range(5):
        dst.copy_(src)
    start = cuda_clock()
    for _ in range(repeats):
        dst.copy_(src)
    seconds = (cuda_clock() - start) / repeats
    return 2 * n * src.element_size() / seconds


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", IMPLS)
def test_step_bandwidth(bench, impl) -> None:
    """16x16x128x128 float32: a first+second order pair moves 4 + 5 tensors of N elements at best."""
    shape, dtype = (16, 16, 128, 128), torch.float32
    n = 16 * 16 * 128 * 128
    bytes_per_round = (4 + 5) * n * 4  # first: read x, m; write prev, x0. second: + read stored
    run = step_pair(impl, "cuda", dtype, shape, "epsilon")
    b = bench(
        "bandwidth cuda epsilon float32 16x16x128x128",
        impl,
        "cuda",
        dtype="float32",
        shape=label(shape),
        calls_per_round=2,
        bytes_per_round=bytes_per_round,
        copy_bandwidth_Bps=copy_bandwidth(n, dtype),
    )
    b(run)
    mean = b.stats.stats.mean
    b.extra_info["achieved_Bps"] = bytes_per_round / mean
    b.extra_info["fraction_of_copy"] = b.extra_info["achieved_Bps"] / b.extra_info["copy_bandwidth_Bps"]
