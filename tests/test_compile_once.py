"""A compiled step compiles once per order, not once per call, and computes what eager does.

``torch.compile`` of a function calling ``step`` used to guard on the host step index and on
the Python-float coefficients, so every call of a loop recompiled (and ``fullgraph=True`` hit
the recompile limit at the 9th call). The coefficients now come from a per-call table built by
``set_timesteps``, indexed by a device step counter: the graphs are the first call, a
second-order call and a first-order call, for the whole loop and for every later loop.

Graphs are counted with a backend that counts and hands over to ``aot_eager`` (cheap) or to
inductor (one small test: inductor on CPU is slow to compile).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from helpers_kernel import calls, exact, inputs, ulp
from kdpm2 import KDPM2DiscreteScheduler, functional
from kdpm2_spec import Reference

SHAPE = (1, 2, 4, 4)
STEPS = 25
MAX_GRAPHS = 3
CHURN = {"s_churn": 0.8, "s_tmin": 0.3, "s_tmax": 8.0}
"""Churn on part of the schedule only, so that both noisy and noise-free second-order calls run."""


def model(x: torch.Tensor) -> torch.Tensor:
    """A one-op stand-in for a denoiser."""
    return 0.3 * x + 0.05


class Counting:
    """A ``torch.compile`` backend that counts the graphs it is given and compiles them with ``inner``."""

    def __init__(self, inner: str = "aot_eager") -> None:
        self.graphs = 0
        self.inner = inner

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.graphs += 1
        if self.inner == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        from torch._dynamo.backends.debugging import aot_eager

        return aot_eager(gm, example_inputs)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def call_of(s: KDPM2DiscreteScheduler) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One model call of a pipeline: scale the input, run the model, step."""

    def call(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return s.step(model(s.scale_model_input(x, t)), t, x, return_dict=False)  # type: ignore[return-value]

    return call


def run_loop(s: KDPM2DiscreteScheduler, call: Callable[..., Any], x: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """``call`` over every timestep; returns each call's ``(prev, x0)`` flattened."""
    torch.manual_seed(seed)
    out = []
    for t in s.timesteps:
        x, x0 = call(x, t)
        out += [x, x0]
    return out


def start(s: KDPM2DiscreteScheduler, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(SHAPE, generator=g, dtype=torch.float64).to(dtype) * s.init_noise_sigma.to(dtype)


def reference_loop(config: dict[str, Any], x: torch.Tensor, seed: int = 0) -> list[np.ndarray]:
    """The spec's loop with the noise our step draws (one ``torch.randn`` per second-order call)."""
    ref = Reference(**config)
    ref.set_timesteps(STEPS)
    ref.set_begin_index(0)
    torch.manual_seed(seed)
    a = x.numpy()
    out = []
    for t in ref.timesteps:
        noise = None
        if config.get("s_churn", 0) > 0 and not ref.state_in_first_order:
            noise = torch.randn(SHAPE, dtype=torch.float64).numpy()
        m = 0.3 * ref.scale_model_input(a, t) + 0.05
        a, x0 = ref.step(m, t, a, noise=noise)
        out += [a, x0]
    return out


@pytest.mark.parametrize("churn", [False, True], ids=["plain", "churn"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_compiled_loop_makes_at_most_three_graphs_and_follows_the_reference(prediction_type, churn) -> None:
    """A 25-step loop, fullgraph, float64: at most 3 graphs; every call equals the spec's (rtol 1e-9)."""
    config = {"prediction_type": prediction_type, **(CHURN if churn else {})}
    s = KDPM2DiscreteScheduler(**config)
    s.set_timesteps(STEPS)
    s.set_begin_index(0)
    backend = Counting()
    x = start(s, torch.float64)
    got = run_loop(s, torch.compile(call_of(s), backend=backend, fullgraph=True), x)
    assert backend.graphs <= MAX_GRAPHS, f"{backend.graphs} graphs for {len(s.timesteps)} calls [{config}]"
    assert s.step_index == len(s.timesteps)
    want = reference_loop(config, x)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        err = np.abs(a.numpy() - b).max() / max(np.abs(b).max(), 1e-30)
        assert err <= 1e-9, f"call {i // 2} {'x0' if i % 2 else 'prev'}: relative error {err:.3g} [{config}]"

    # a second loop on the same scheduler reuses the graphs
    s.set_timesteps(STEPS)
    s.set_begin_index(0)
    run_loop(s, torch.compile(call_of(s), backend=backend, fullgraph=True), x)
    assert backend.graphs <= MAX_GRAPHS, f"a second loop compiled again: {backend.graphs} graphs [{config}]"


def test_the_issue_reproducer_compiles_at_most_three_graphs() -> None:
    """``lambda x, t: s.step(0.1 * x, t, x, return_dict=False)[0]`` with fullgraph (failed at the 9th call)."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(10)
    s.set_begin_index(0)
    backend = Counting()
    f = torch.compile(lambda x, t: s.step(0.1 * x, t, x, return_dict=False)[0], backend=backend, fullgraph=True)
    x = torch.randn(SHAPE)
    for t in s.timesteps:
        x = f(x, t)
    assert backend.graphs <= MAX_GRAPHS
    assert torch.isfinite(x).all()


def test_inductor_loop_with_churn_equals_eager() -> None:
    """Inductor, float32, epsilon with churn: at most 3 graphs and every call equal to eager.

    Inductor draws its own random numbers unless ``fallback_random`` is set; with it, the noise
    is eager's ``torch.randn`` and the results must agree to float32 rounding.
    """
    config = {"prediction_type": "epsilon", **CHURN}
    eager = KDPM2DiscreteScheduler(**config)
    eager.set_timesteps(STEPS)
    eager.set_begin_index(0)
    x = start(eager, torch.float32)
    want = run_loop(eager, call_of(eager), x)

    s = KDPM2DiscreteScheduler(**config)
    s.set_timesteps(STEPS)
    s.set_begin_index(0)
    backend = Counting("inductor")
    with torch._inductor.config.patch(fallback_random=True):
        got = run_loop(s, torch.compile(call_of(s), backend=backend, fullgraph=True), x)
    assert backend.graphs <= MAX_GRAPHS
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6, msg=lambda m, i=i: f"call {i // 2}: {m}")


def test_eager_calls_after_a_compiled_one_continue_the_loop() -> None:
    """Compiled first calls, eager rest: same loop as all-eager; step_index and add_noise follow."""
    x = start(KDPM2DiscreteScheduler(), torch.float64)
    eager = KDPM2DiscreteScheduler()
    eager.set_timesteps(6)
    eager.set_begin_index(0)
    want = run_loop(eager, call_of(eager), x)

    s = KDPM2DiscreteScheduler()
    s.set_timesteps(6)
    s.set_begin_index(0)
    compiled = torch.compile(call_of(s), backend=Counting(), fullgraph=True)
    got: list[torch.Tensor] = []
    y = x
    reference = KDPM2DiscreteScheduler()
    reference.set_timesteps(6)
    reference.set_begin_index(0)
    for i, t in enumerate(s.timesteps):
        y, x0 = (compiled if i < 3 else call_of(s))(y, t)
        got += [y, x0]
        reference.step(model(reference.scale_model_input(y, t)), t, y)  # host-index twin for the state
        assert s.step_index == reference.step_index == i + 1
        assert s.state_in_first_order == reference.state_in_first_order
        noise = torch.ones(SHAPE, dtype=torch.float64)
        if s.step_index < len(s.timesteps):
            torch.testing.assert_close(s.add_noise(x, noise, t), reference.add_noise(x, noise, t), rtol=0, atol=0)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_inductor_loop_is_sync_free_makes_three_graphs_and_equals_eager(dtype) -> None:
    """On CUDA: inductor fullgraph loop, at most 3 graphs, no host sync after warm-up, equal to eager."""
    eager = KDPM2DiscreteScheduler()
    eager.set_timesteps(STEPS, device="cuda")
    eager.set_begin_index(0)
    x = start(eager, dtype).cuda()
    want = run_loop(eager, call_of(eager), x)

    s = KDPM2DiscreteScheduler()
    backend = Counting("inductor")
    compiled = torch.compile(call_of(s), backend=backend, fullgraph=True)
    for sync_mode in ("default", "error"):  # the first loop compiles, the second must not sync
        s.set_timesteps(STEPS, device="cuda")
        s.set_begin_index(0)
        torch.cuda.set_sync_debug_mode(sync_mode)
        try:
            got = run_loop(s, compiled, x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert backend.graphs <= MAX_GRAPHS
    tol = {"rtol": 2e-6, "atol": 2e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, i=i: f"call {i // 2}: {m}")


def test_compiled_loop_without_begin_index_finds_the_first_index_on_the_device() -> None:
    """No ``set_begin_index``: the first traced call locates its timestep on the device (no host read)."""
    eager = KDPM2DiscreteScheduler(prediction_type="v_prediction")
    eager.set_timesteps(8)
    x = start(eager, torch.float64)
    want = run_loop(eager, call_of(eager), x)
    s = KDPM2DiscreteScheduler(prediction_type="v_prediction")
    s.set_timesteps(8)
    backend = Counting()
    got = run_loop(s, torch.compile(call_of(s), backend=backend, fullgraph=True), x)
    assert backend.graphs <= MAX_GRAPHS
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    s.set_timesteps(8)
    with pytest.raises(RuntimeError, match="not in the schedule"):
        torch.compile(call_of(s), backend=Counting(), fullgraph=True)(x, torch.tensor(0.5))


@pytest.mark.parametrize(("name", "c", "stored", "noise"), calls(), ids=[k[0] for k in calls()])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_row_step_rounds_once_from_float32(name, c, stored, noise, dtype) -> None:
    """``apply_step_row`` (coefficients in a tensor): half within one ulp of float64, float32 to 1e-6."""
    args = inputs((3, 4, 5), dtype, stored, noise)
    row = torch.tensor([*c, 1.0], dtype=torch.float64)
    got = functional.apply_step_row(row, (True,) * 6, *args)
    want, size = exact(c, *args), exact(c, *args, magnitude=True)
    for g, w, m in zip(got, want, size, strict=True):
        assert g.dtype == dtype
        err = (g.double() - w).abs()
        bound = ulp(w, dtype) if dtype != torch.float32 else 1e-6 * (m + 1e-30)
        assert bool((err <= bound).all()), f"{name} {dtype}: max error {float(err.max()):.3g}"


def test_call_tables_leave_out_terms_zero_at_every_call() -> None:
    """epsilon: a second-order call never reads the sample for ``prev``; sample prediction: x0 is the output."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(5)
    assert s._calls.live[functional.SECOND] == (True, False, True, False, True, True)
    s = KDPM2DiscreteScheduler(prediction_type="sample")
    s.set_timesteps(5)
    assert not s._calls.live[functional.FIRST][4] and s._calls.live[functional.FIRST][5]


def test_a_config_rewritten_after_set_timesteps_is_used_by_the_next_step() -> None:
    """``register_to_config(prediction_type=...)`` after ``set_timesteps`` (diffusers reads the config per call)."""
    patched, fresh = KDPM2DiscreteScheduler(), KDPM2DiscreteScheduler(prediction_type="v_prediction")
    for s in (patched, fresh):
        s.set_timesteps(6)
    patched.register_to_config(prediction_type="v_prediction")
    x = start(fresh, torch.float64)
    for a, b in zip(run_loop(patched, call_of(patched), x), run_loop(fresh, call_of(fresh), x), strict=True):
        assert torch.equal(a, b)
