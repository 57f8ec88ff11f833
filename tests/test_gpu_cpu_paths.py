"""The GPU fast path's host-side contracts, checked on CPU: dispatch, no host reads, compile.

On CPU the plain torch path runs; what is checked here is what the CUDA path relies on: the
dispatch rule, that a loop fed timesteps taken from ``scheduler.timesteps`` reads nothing back
from tensors (no ``bool``/``item``/``tolist``: each would be a device sync on CUDA), and that
``torch.compile(fullgraph=True)`` traces a ``step`` call without a graph break.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from kdpm2 import KDPM2DiscreteScheduler, functional, triton_step
from kdpm2.scheduler import _apply, _to_device

SHAPE = (2, 4, 8, 8)


def model(x: torch.Tensor) -> torch.Tensor:
    """A one-op stand-in for a denoiser."""
    return x * 0.25


def noisy(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


@contextlib.contextmanager
def no_host_reads():
    """Make every tensor -> host read raise (on CUDA each one is a sync)."""

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"Tensor.{name} read a tensor back to the host")

        return method

    names = ["__bool__", "item", "tolist", "__float__", "__int__", "__index__", "nonzero", "numpy"]
    saved = {n: getattr(torch.Tensor, n) for n in names}
    try:
        for n in names:
            setattr(torch.Tensor, n, refuse(n))
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


def run_loop(scheduler: KDPM2DiscreteScheduler, feed, seed: int = 0) -> list[torch.Tensor]:
    """A denoising loop; ``feed(scheduler, i)`` gives the timestep passed to the scheduler."""
    x, _ = noisy(seed)
    x = x * scheduler.init_noise_sigma
    out = []
    for i in range(len(scheduler.timesteps)):
        t = feed(scheduler, i)
        eps = model(scheduler.scale_model_input(x, t))
        x, x0 = scheduler.step(eps, t, x, return_dict=False)
        out += [x, x0]
    return out


def test_supports_is_false_on_cpu() -> None:
    """The fused kernel is for CUDA tensors only; CPU calls take the plain torch path."""
    x, m = noisy()
    assert not triton_step.supports(x, m, None, None)
    assert not triton_step.supports(x, m, x, m)
    c = functional.second_order(3.0, 1.7, 1.1, "epsilon")
    got = _apply(c, x, m, x, None)
    want = functional.apply_step(c, x, m, x, None)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_fused_op_is_registered_for_compile() -> None:
    """With Triton and ``torch.library.triton_op``, the kernel is a custom op dynamo can trace."""
    pytest.importorskip("triton")
    if not hasattr(torch.library, "triton_op"):
        pytest.skip("torch < 2.6 has no torch.library.triton_op")
    assert triton_step._fused_op is not None
    assert hasattr(torch.ops.kdpm2, "fused_step")


def test_to_device_on_cpu_is_a_plain_conversion() -> None:
    table = torch.linspace(0, 1, 7, dtype=torch.float64)
    got = _to_device(table, None, torch.float32)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.equal(got, table.float())
    assert _to_device(table, "cpu", torch.float64) is table


@pytest.mark.parametrize("prediction_type", functional.PREDICTION_TYPES)
def test_loop_from_views_values_and_begin_index_agree(prediction_type: str) -> None:
    """Views of ``timesteps`` (offset lookup), their float values and a begin index give one result."""
    results = []
    for feed, begin in [
        (lambda s, i: s.timesteps[i], False),
        (lambda s, i: float(s.timesteps[i]), False),
        (lambda s, i: s.timesteps[i].clone(), False),
        (lambda s, i: s.timesteps[i], True),
    ]:
        s = KDPM2DiscreteScheduler(prediction_type=prediction_type)
        s.set_timesteps(8)
        if begin:
            s.set_begin_index(0)
        results.append(run_loop(s, feed))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


@pytest.mark.parametrize("churn", [0.0, 0.5])
def test_loop_with_views_reads_nothing_back(churn: float) -> None:
    """scale_model_input, step and add_noise with views of ``timesteps``: no tensor is read on the host."""
    s = KDPM2DiscreteScheduler(s_churn=churn)
    s.set_timesteps(6)
    x, noise = noisy()
    g = torch.Generator().manual_seed(3)
    with no_host_reads():
        x = s.add_noise(x, noise, s.timesteps[0])  # begin_index unset: per-timestep lookup
        x = s.add_noise(x, noise, s.timesteps[2:3].expand(SHAPE[0]))
        for i in range(len(s.timesteps)):
            t = s.timesteps[i]
            eps = model(s.scale_model_input(x, t))
            x = s.step(eps, t, x, generator=g).prev_sample
    assert bool(x.isfinite().all())


def test_add_noise_view_and_value_lookups_agree() -> None:
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(10)
    x, noise = noisy()
    for k in (0, 3, 4, len(s.timesteps) - 1):
        view = s.add_noise(x, noise, s.timesteps[k])
        value = s.add_noise(x, noise, s.timesteps[k].clone())
        batch = s.add_noise(x, noise, s.timesteps[[k, k]])
        assert torch.equal(view, value) and torch.equal(view, batch), f"add_noise at timesteps[{k}]"


def test_add_noise_rejects_unknown_values_but_not_views() -> None:
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(10)
    x, noise = noisy()
    with pytest.raises(ValueError, match="not in the schedule"):
        s.add_noise(x, noise, torch.tensor([0.123]))


def compiled_step_cases():
    """(name, prepare) pairs: each leaves a scheduler and returns the timestep of the next call."""

    def begin(s, x, e):
        s.set_begin_index(0)
        return s.timesteps[0]

    def after_first(s, x, e):
        s.step(e, s.timesteps[0], x)
        return s.timesteps[1]

    def value(s, x, e):
        return float(s.timesteps[0])

    return [("begin_index", begin), ("second_order", after_first), ("float_timestep", value)]


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize(("name", "prepare"), compiled_step_cases(), ids=[c[0] for c in compiled_step_cases()])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_compiles_without_graph_break(name, prepare, prediction_type, backend) -> None:
    """``torch.compile(fullgraph=True)`` of one step call succeeds and matches eager (CPU: torch path)."""
    x, e = noisy()
    results = []
    for compiled in (False, True):
        torch._dynamo.reset()
        s = KDPM2DiscreteScheduler(prediction_type=prediction_type)
        s.set_timesteps(10)
        t = prepare(s, x, e)

        def one(e, t, x, s=s):
            return s.step(e, t, x, return_dict=False)

        fn = torch.compile(one, fullgraph=True, backend=backend) if compiled else one
        results.append((fn(e, t, x), s.step_index, s.state_in_first_order))
    (eager, k0, first0), (comp, k1, first1) = results
    assert (k0, first0) == (k1, first1), f"scheduler state after compiled step [{name}]"
    for a, b in zip(eager, comp, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch._dynamo.reset()


def test_step_trace_has_one_graph() -> None:
    """``torch._dynamo.explain``: one graph, no break, for a step with the index known."""
    x, e = noisy()
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(10)
    s.set_begin_index(0)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(lambda e, t, x: s.step(e, t, x, return_dict=False))(e, s.timesteps[0], x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


def test_no_host_reads_guard_catches_value_lookups() -> None:
    """The guard above is live: a timestep that is not a view is compared on the host."""
    s = KDPM2DiscreteScheduler()
    s.set_timesteps(6)
    x, noise = noisy()
    with no_host_reads(), pytest.raises(AssertionError, match="read a tensor back"):
        s.add_noise(x, noise, s.timesteps[1].clone())
