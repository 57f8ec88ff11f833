"""A whole 25-step loop (49 model calls) with a one-op stand-in model.

Ours and diffusers run scale_model_input, the model and step per call, with ``set_begin_index(0)``
as pipelines do (set in the untimed setup together with ``set_timesteps``); k-diffusion's
``sample_dpm_2`` runs on the same main sigmas with a one-op denoiser. ``loop+set_timesteps``
times the same loop with ``set_timesteps(25)`` inside the round, as a pipeline pays it, against
``floor``: the loop's bare torch ops (per call one division and two adds, and the model). On
CUDA a second group replays the loop captured in one CUDA graph (diffusers captured the same way
where it can be, else run eagerly; ``mode`` in extra_info says which).
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, IMPLS, make_scheduler

STEPS = 25
SHAPE = (1, 4, 64, 64)


def model(x: torch.Tensor) -> torch.Tensor:
    """The stand-in denoiser: one elementwise op."""
    return x * 0.25


def scheduler_loop(s, x):
    for t in s.timesteps:
        x = s.step(model(s.scale_model_input(x, t)), t, x).prev_sample
    return x


def prepared(impl: str, device: str):
    s = make_scheduler(impl)
    x = torch.randn(SHAPE, generator=torch.Generator(device=device).manual_seed(0), device=device)

    def setup():
        s.set_timesteps(STEPS, device=device)
        s.set_begin_index(0)
        return (s, x * s.init_noise_sigma), {}

    return setup


@pytest.mark.parametrize("impl", [*IMPLS, "k-diffusion"])
@pytest.mark.parametrize("device", DEVICES)
def test_loop(bench, device, impl) -> None:
    b = bench(f"loop {device} {STEPS} steps 1x4x64x64", impl, device, steps=STEPS, calls_per_round=2 * STEPS - 1)
    if impl == "k-diffusion":
        from k_diffusion.sampling import sample_dpm_2

        ours = make_scheduler("kdpm2")
        ours.set_timesteps(STEPS, device=device)
        sigmas = torch.unique_consecutive(ours.sigmas).to(device)  # s_0 .. s_{n-1}, 0
        x = torch.randn(SHAPE, generator=torch.Generator(device=device).manual_seed(0), device=device) * sigmas[0]
        b.pedantic(lambda: sample_dpm_2(lambda y, sigma: model(y), x, sigmas, disable=True), rounds=20, warmup_rounds=2)
        return
    b.pedantic(scheduler_loop, setup=prepared(impl, device), rounds=30, warmup_rounds=2)


def full_loop(impl: str, device: str):
    """A round: ``set_timesteps(25)``, ``set_begin_index(0)`` and the loop (``floor``: its bare torch ops)."""
    x0 = torch.randn(SHAPE, generator=torch.Generator(device=device).manual_seed(0), device=device)
    if impl == "floor":

        def floor():
            x = x0 * 14.6
            for _ in range(2 * STEPS - 1):
                m = model(x.div(3.0))
                torch.add(x, m, alpha=-0.5)
                x = torch.add(x, m, alpha=-1.5)
            return x

        return floor
    s = make_scheduler(impl)

    def run():
        s.set_timesteps(STEPS, device=device)
        s.set_begin_index(0)
        return scheduler_loop(s, x0 * s.init_noise_sigma)

    return run


@pytest.mark.parametrize("impl", [*IMPLS, "floor"])
@pytest.mark.parametrize("device", DEVICES)
def test_loop_with_set_timesteps(bench, device, impl) -> None:
    b = bench(f"loop+set_timesteps {device} {STEPS} steps 1x4x64x64", impl, device, steps=STEPS, calls_per_round=1)
    b(full_loop(impl, device))


def captured_loop(impl: str):
    """The loop captured in one CUDA graph: (replay, mode), or eager where capture fails."""
    s = make_scheduler(impl)
    static = torch.randn(SHAPE, device="cuda")

    def fresh():
        s.set_timesteps(STEPS, device="cuda")
        s.set_begin_index(0)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fresh()
        scheduler_loop(s, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        fresh()
        with torch.cuda.graph(graph):
            scheduler_loop(s, static)
    except Exception:  # diffusers: host reads inside the loop can break capture
        torch.cuda.synchronize()

        def eager():
            fresh()
            scheduler_loop(s, static)

        return eager, "eager"
    return graph.replay, "graph"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", IMPLS)
def test_loop_cuda_graph(bench, impl) -> None:
    run, mode = captured_loop(impl)
    b = bench(
        f"loop-graph cuda {STEPS} steps 1x4x64x64", impl, "cuda", steps=STEPS, mode=mode, calls_per_round=2 * STEPS - 1
    )
    b(run)
