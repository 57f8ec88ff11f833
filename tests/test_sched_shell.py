"""The stateful shell, call by call against ``Reference``: outputs, state, dtypes, churn noise, add_noise.

Each test is small and fast: together with the pure-function tests they are the selection that
scores the shell's mutants (``nox -s mutation``).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from kdpm2 import KDPM2DiscreteScheduler, functional, triton_step
from kdpm2.scheduler import KDPM2DiscreteSchedulerOutput, _apply
from kdpm2_spec import Reference


def pair(steps: int = 4, **config) -> tuple[KDPM2DiscreteScheduler, Reference]:
    """Ours and the reference, both with ``set_timesteps(steps)``."""
    ours, ref = KDPM2DiscreteScheduler(**config), Reference(**config)
    ours.set_timesteps(steps)
    ref.set_timesteps(steps)
    return ours, ref


def tensors(shape=(2, 3), seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


# -- the output object ------------------------------------------------------------------------


def test_output_indexes_like_diffusers_base_output() -> None:
    """Integer, slice and key access, ``to_tuple``, ``keys``, iteration and length (None fields left out)."""
    a, b = torch.zeros(1), torch.ones(1)
    full = KDPM2DiscreteSchedulerOutput(prev_sample=a, pred_original_sample=b)
    assert full[0] is a and full[1] is b and full[-1] is b
    assert full[0:2] == (a, b)
    assert full["prev_sample"] is a and full["pred_original_sample"] is b
    assert full.to_tuple() == (a, b)
    assert list(full.keys()) == ["prev_sample", "pred_original_sample"]
    assert list(full) == ["prev_sample", "pred_original_sample"]
    assert len(full) == 2
    half = KDPM2DiscreteSchedulerOutput(prev_sample=a)
    assert half.to_tuple() == (a,) and list(half.keys()) == ["prev_sample"] and len(half) == 1
    assert list(half) == ["prev_sample"] and half.pred_original_sample is None
    with pytest.raises(KeyError):  # a None field is not in the mapping, as in diffusers' BaseOutput
        half["pred_original_sample"]
    with pytest.raises(IndexError):
        half[1]


def test_step_returns_the_same_values_with_and_without_return_dict() -> None:
    """``return_dict=False`` gives the tuple ``(prev_sample, pred_original_sample)`` of the dict form."""
    x, eps = tensors()
    one, two = KDPM2DiscreteScheduler(), KDPM2DiscreteScheduler()
    for s in (one, two):
        s.set_timesteps(3)
    for t in one.timesteps[:3]:
        out = one.step(eps, t, x)
        prev, x0 = two.step(eps, t, x, return_dict=False)
        assert isinstance(out, KDPM2DiscreteSchedulerOutput)
        assert torch.equal(out.prev_sample, prev) and torch.equal(out.pred_original_sample, x0)
        x = prev


# -- state and schedule-derived attributes ---------------------------------------------------


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("family", [None, "karras"])
def test_init_noise_sigma_and_len_equal_reference(spacing: str, family: str | None) -> None:
    """``init_noise_sigma`` (with the ``leading`` rule) and ``len()`` as the spec has them."""
    config = {"timestep_spacing": spacing, "num_train_timesteps": 500}
    if family:
        config[f"use_{family}_sigmas"] = True
    ours, ref = pair(7, **config)
    assert ours.init_noise_sigma.dtype == torch.float32
    assert float(ours.init_noise_sigma) == pytest.approx(ref.init_noise_sigma, rel=1e-6)
    assert len(ours) == len(ref) == 500


def test_state_properties_follow_the_calls() -> None:
    """``step_index``, ``begin_index``, ``state_in_first_order`` and ``sample`` through a loop."""
    ours, ref = pair(3)
    x, eps = tensors()
    assert ours.step_index is None and ours.begin_index is None and ours.state_in_first_order
    ours.set_begin_index(2)
    ref.set_begin_index(2)
    assert ours.begin_index == 2 and ours.step_index is None
    for k, t in enumerate(ours.timesteps[2:].tolist()):
        assert ours.state_in_first_order == ref.state_in_first_order == (k % 2 == 0)
        ours.scale_model_input(x, t)
        ref.scale_model_input(x.numpy(), t)
        assert ours.step_index == ref.step_index == 2 + k
        ours.step(eps, t, x)
        ref.step(eps.numpy(), t, x.numpy())
        assert ours.step_index == ref.step_index == 3 + k
        last = 3 + k == len(ours.timesteps)
        # the last call keeps no sample (it would hold the loop's autograd graph); the spec's does
        assert (ours.sample is None) == (ref.state_in_first_order or last)
        assert ours.state_in_first_order == ref.state_in_first_order
        if ours.sample is not None:
            assert ours.sample is x, "the stored sample is the caller's tensor, not a copy"
    ours.set_timesteps(3)
    assert ours.step_index is None and ours.begin_index is None and ours.sample is None


def test_set_begin_index_bounds_and_default() -> None:
    """``set_begin_index()`` is 0; the last call's index is allowed, one past it is not."""
    ours, _ = pair(3)
    ours.set_begin_index()
    assert ours.begin_index == 0
    ours.set_begin_index(len(ours.timesteps) - 1)
    assert ours.begin_index == len(ours.timesteps) - 1
    with pytest.raises(ValueError, match=r"begin_index must be between 0 and 4; got 5"):
        ours.set_begin_index(5)


def test_compatibles_without_diffusers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without diffusers ``compatibles`` is empty; with it, the classes named in ``_compatibles``."""
    ours = KDPM2DiscreteScheduler()
    diffusers = pytest.importorskip("diffusers")
    found = ours.compatibles
    assert [c.__name__ for c in found] == [n for n in ours._compatibles if hasattr(diffusers, n)]
    assert diffusers.KDPM2DiscreteScheduler in found and len(found) >= 10
    monkeypatch.setitem(sys.modules, "diffusers", None)
    assert ours.compatibles == []


def test_index_for_timestep_with_a_given_schedule() -> None:
    """With ``schedule_timesteps`` the rule runs on that table: first match, or the second if repeated."""
    ours = KDPM2DiscreteScheduler()
    table = torch.tensor([9.0, 7.0, 7.0, 5.0, 3.0, 3.0, 1.0], dtype=torch.float64)
    ref = Reference()
    for value in (9.0, 7.0, 5.0, 3.0, 1.0):
        want = ref.index_for_timestep(value, table.numpy())
        assert ours.index_for_timestep(value, table) == want
        assert ours.index_for_timestep(torch.tensor(value), table) == want
    assert ours.index_for_timestep(7.0, table) == 2 and ours.index_for_timestep(3.0, table) == 5
    with pytest.raises(ValueError, match="not in the schedule"):
        ours.index_for_timestep(4.0, table)


@pytest.mark.parametrize("family", [None, "karras", "exponential"])
def test_index_for_timestep_views_values_and_floats_agree(family: str | None) -> None:
    """A view of ``timesteps``, a fresh tensor of the value and a Python float find the same index."""
    config = {f"use_{family}_sigmas": True} if family else {}
    ours, ref = pair(50, **config)
    for k in range(len(ours.timesteps)):
        view = ours.timesteps[k]
        value = float(view)
        want = ref.index_for_timestep(float(ref.timesteps[k]))
        assert ours.index_for_timestep(view) == want
        assert ours.index_for_timestep(torch.tensor(value, dtype=ours.timesteps.dtype)) == want
        assert ours.index_for_timestep(value) == want


# -- the calls against the reference ---------------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_scale_model_input_and_step_equal_reference(prediction: str) -> None:
    """Every call of a float64 loop, model input and both outputs, equals the spec's to 1e-12."""
    ours, ref = pair(4, prediction_type=prediction, num_train_timesteps=800, beta_schedule="scaled_linear")
    x, _ = tensors(seed=3)
    x = x * float(ours.init_noise_sigma)
    xr = x.numpy().copy()
    for t in ours.timesteps.tolist():
        scaled = ours.scale_model_input(x, t)
        scaled_ref = ref.scale_model_input(xr, t)
        np.testing.assert_allclose(scaled.numpy(), scaled_ref, rtol=1e-12)
        model = 0.3 * scaled + 0.1
        out = ours.step(model, t, x)
        want = ref.step(model.numpy(), t, xr)
        np.testing.assert_allclose(out.prev_sample.numpy(), want.prev_sample, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out.pred_original_sample.numpy(), want.pred_original_sample, rtol=1e-12)
        x, xr = out.prev_sample, want.prev_sample
    with pytest.raises(ValueError, match=r"^the schedule has 7 calls and all have run; call set_timesteps again$"):
        ours.scale_model_input(x, 0.0)


def test_mixed_dtypes_promote_and_the_stored_sample_follows() -> None:
    """float32 sample with a float64 model output computes in float64; a float16 second call reads the stored float32 sample."""
    ours, ref = pair(3)
    x, eps = tensors(dtype=torch.float32)
    t0, t1 = ours.timesteps[:2].tolist()
    out = ours.step(eps.double(), t0, x)
    assert out.prev_sample.dtype == torch.float64 and out.pred_original_sample.dtype == torch.float64
    want = ref.step(eps.double().numpy(), t0, x.double().numpy())
    np.testing.assert_allclose(out.prev_sample.numpy(), want.prev_sample, rtol=1e-12)
    second = out.prev_sample.to(torch.float16)
    out2 = ours.step(eps.to(torch.float16), t1, second)
    assert out2.prev_sample.dtype == torch.float16
    want2 = ref.step(eps.to(torch.float16).double().numpy(), t1, second.double().numpy())
    np.testing.assert_allclose(out2.prev_sample.double().numpy(), want2.prev_sample, rtol=2e-3, atol=2e-3)


def test_step_index_is_found_from_the_first_timestep() -> None:
    """Without a begin index the first call locates its timestep (here the third call's)."""
    ours, ref = pair(4)
    x, eps = tensors()
    t = ours.timesteps[2]
    ours.step(eps, t, x)
    ref.step(eps.numpy(), float(t), x.numpy())
    assert ours.step_index == ref.step_index == 3


# -- churn noise -----------------------------------------------------------------------------


@pytest.mark.parametrize("s_noise", [1.0, 0.5])
def test_churn_noise_comes_from_the_generator(s_noise: float) -> None:
    """The second-order call adds ``s_noise * sqrt(hat^2 - sigma^2) * randn(generator)`` as the spec."""
    config = {"s_churn": 2.0, "s_noise": s_noise, "num_train_timesteps": 1000}
    ours, ref = pair(4, **config)
    x, eps = tensors(shape=(3, 2), seed=5)
    xr = x.numpy().copy()
    seeds = iter(range(100, 200))
    for k, t in enumerate(ours.timesteps.tolist()):
        seed = next(seeds)
        out = ours.step(eps, t, x, generator=torch.Generator().manual_seed(seed))
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype).numpy()
        want = ref.step(eps.numpy(), t, xr, noise=noise if k % 2 == 1 else None)
        np.testing.assert_allclose(out.prev_sample.numpy(), want.prev_sample, rtol=1e-12, atol=1e-12)
        x, xr = out.prev_sample, want.prev_sample


def test_churn_without_generator_is_random_and_the_last_call_adds_none() -> None:
    """Without a generator two runs differ; the final second-order call never adds noise."""
    runs = []
    for _ in range(2):
        ours, _ = pair(2, s_churn=2.0)
        x, eps = tensors()
        outs = [ours.step(eps, t, x).prev_sample for t in ours.timesteps.tolist()[:2]]
        runs.append(outs[1])
    assert not torch.equal(runs[0], runs[1])
    ours, ref = pair(1, s_churn=2.0)
    x, eps = tensors()
    out = ours.step(eps, ours.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    want = ref.step(eps.numpy(), float(ref.timesteps[0]), x.numpy())
    np.testing.assert_allclose(out.prev_sample.numpy(), want.prev_sample, rtol=1e-12)


# -- add_noise -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_add_noise_looks_up_each_timestep(dtype: torch.dtype) -> None:
    """Training use (no begin index): one sigma per batch item from the spec's lookup, in the sample dtype."""
    ours, ref = pair(5, use_karras_sigmas=True)
    x, n = tensors(shape=(4, 2, 3), seed=2, dtype=dtype)
    picks = [0, 3, 3, 8]
    views = ours.timesteps[picks]
    values = torch.tensor(views.tolist(), dtype=ours.timesteps.dtype)
    want = ref.add_noise(x.double().numpy(), n.double().numpy(), ref.timesteps[picks])
    tolerance = {torch.float16: 2e-3, torch.float32: 1e-5}.get(dtype, 1e-12)
    for timesteps in (views, values):
        got = ours.add_noise(x, n, timesteps)
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_allclose(got.double().numpy(), want, rtol=tolerance)
    got = ours.add_noise(x, n, ours.timesteps[2:6])
    want = ref.add_noise(x.double().numpy(), n.double().numpy(), ref.timesteps[2:6])
    np.testing.assert_allclose(got.double().numpy(), want, rtol=tolerance)


def test_add_noise_with_one_timestep_for_the_batch() -> None:
    """A 0-d tensor, a Python int and a float each apply their sigma to every batch item."""
    ours, ref = pair(4)
    x, n = tensors(shape=(3, 2))
    t = ours.timesteps[2]
    want = ref.add_noise(x.numpy(), n.numpy(), np.full(3, float(t)))
    np.testing.assert_allclose(ours.add_noise(x, n, t).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(ours.add_noise(x, n, t.reshape(1)).numpy(), want, rtol=1e-6)
    integer = KDPM2DiscreteScheduler(timestep_spacing="leading")
    integer.set_timesteps(4)
    ref_int = Reference(timestep_spacing="leading")
    ref_int.set_timesteps(4)
    value = int(integer.timesteps[0])
    want = ref_int.add_noise(x.numpy(), n.numpy(), np.array([float(value)]))
    np.testing.assert_allclose(integer.add_noise(x, n, value).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(integer.add_noise(x, n, float(value)).numpy(), want, rtol=1e-6)


def test_add_noise_at_begin_index_then_at_step_index() -> None:
    """With a begin index the sigma is the begin index's until the first call, then the step index's."""
    ours, ref = pair(4)
    x, n = tensors(shape=(2, 3))
    anything = ours.timesteps[[0, 0]]
    for s in (ours, ref):
        s.set_begin_index(3)
    want = ref.add_noise(x.numpy(), n.numpy(), anything.numpy())
    np.testing.assert_allclose(ours.add_noise(x, n, anything).numpy(), want, rtol=1e-6)
    torch.testing.assert_close(ours.add_noise(x, n, anything), x + float(ours.sigmas[3]) * n)
    t = ours.timesteps[3]
    ours.step(n, t, x)
    ref.step(n.numpy(), float(t), x.numpy())
    want = ref.add_noise(x.numpy(), n.numpy(), anything.numpy())
    np.testing.assert_allclose(ours.add_noise(x, n, anything).numpy(), want, rtol=1e-6)
    torch.testing.assert_close(ours.add_noise(x, n, anything), x + float(ours.sigmas[4]) * n)


def test_add_noise_errors_name_the_argument_and_the_values() -> None:
    """A non-tensor timestep list is a TypeError; values not in the schedule are listed in the ValueError."""
    ours, _ = pair(4)
    x, n = tensors()
    with pytest.raises(TypeError, match=r"^timesteps must be a torch.Tensor; got list$"):
        ours.add_noise(x, n, [1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^noise must be a torch.Tensor"):
        ours.add_noise(x, n.numpy(), ours.timesteps[:2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^original_samples must be a floating-point tensor"):
        ours.add_noise(x.long(), n, ours.timesteps[:2])
    bad = torch.tensor([float(ours.timesteps[0]), 1.5], dtype=ours.timesteps.dtype)
    with pytest.raises(ValueError, match=r"^timesteps \[1\.5\] are not in the schedule \(see scheduler.timesteps\)$"):
        ours.add_noise(x, n, bad)


def test_add_noise_reuses_and_separates_device_tables() -> None:
    """The per-(device, dtype) sigma table is built once and kept apart per dtype."""
    ours, _ = pair(4)
    values = torch.tensor(ours.timesteps[[1, 2]].tolist(), dtype=ours.timesteps.dtype)
    for dtype in (torch.float32, torch.float64, torch.float32):
        x, n = tensors(dtype=dtype)
        got = ours.add_noise(x, n, values)
        sigma = torch.tensor([float(ours.sigmas[1]), float(ours.sigmas[2])], dtype=torch.float64)
        torch.testing.assert_close(got, x + (sigma.to(dtype)[:, None] * n))
    assert set(ours._device_sigmas) == {(torch.device("cpu"), torch.float32), (torch.device("cpu"), torch.float64)}
    assert ours._device_sigmas[(torch.device("cpu"), torch.float64)].tolist() == [float(v) for v in ours._host_sigmas]


# -- dispatch to the fused kernel ------------------------------------------------------------


class FakeCuda:
    """Tensor metadata as a CUDA tensor would report it (``supports`` reads nothing else)."""

    def __init__(self, like: torch.Tensor, dtype=None, shape=None, device="cuda:0", contiguous=True) -> None:
        self.is_cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self.dtype = dtype or like.dtype
        self.shape = torch.Size(shape) if shape is not None else like.shape
        self._contiguous = contiguous

    def is_contiguous(self) -> bool:
        return self._contiguous

    def numel(self) -> int:
        return math.prod(self.shape)


@pytest.mark.parametrize("dtype", triton_step.DTYPES)
def test_supports_reads_dtype_shape_device_and_layout(dtype: torch.dtype) -> None:
    """The kernel takes matching contiguous CUDA tensors of one kernel dtype, nothing else."""
    pytest.importorskip("triton")
    base = torch.empty(2, 3)
    x = FakeCuda(base, dtype=dtype)
    assert triton_step.supports(x, FakeCuda(base, dtype=dtype))
    assert triton_step.supports(
        x, FakeCuda(base, dtype=dtype), FakeCuda(base, dtype=dtype), FakeCuda(base, dtype=dtype)
    )
    assert triton_step.supports(x, FakeCuda(base, dtype=dtype), None, FakeCuda(base, dtype=dtype))
    other = torch.float64 if dtype != torch.float64 else torch.float32
    assert not triton_step.supports(FakeCuda(base, dtype=torch.float64), FakeCuda(base, dtype=torch.float64))
    for bad in (
        FakeCuda(base, dtype=other),
        FakeCuda(base, dtype=dtype, shape=(3, 2)),
        FakeCuda(base, dtype=dtype, device="cuda:1"),
        FakeCuda(base, dtype=dtype, contiguous=False),
    ):
        assert not triton_step.supports(x, bad), vars(bad)
        assert not triton_step.supports(x, FakeCuda(base, dtype=dtype), bad), vars(bad)
        assert not triton_step.supports(x, FakeCuda(base, dtype=dtype), None, bad), vars(bad)
    assert not triton_step.supports(FakeCuda(base, dtype=dtype, contiguous=False), FakeCuda(base, dtype=dtype))
    one = torch.empty(1)
    assert triton_step.supports(FakeCuda(one, dtype=dtype), FakeCuda(one, dtype=dtype)), "one element is enough"
    empty = torch.empty(0, 3)
    assert not triton_step.supports(FakeCuda(empty, dtype=dtype), FakeCuda(empty, dtype=dtype))
    assert not triton_step.supports(
        FakeCuda(base, dtype=dtype, device="cpu"), FakeCuda(base, dtype=dtype, device="cpu")
    )


def test_apply_dispatches_cuda_tensors_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA tensors the kernel supports go to it; the rest (and every CPU tensor) to the torch path."""
    calls: list[str] = []
    verdict = {"ok": True}
    monkeypatch.setattr(triton_step, "supports", lambda *a: calls.append(a) or verdict["ok"])
    monkeypatch.setattr(triton_step, "apply_step", lambda *a: ("fused", a))
    monkeypatch.setattr(functional, "apply_step", lambda *a: ("plain", a))
    c = functional.first_order(3.0, 1.5, "epsilon")
    x, m, s, z = (FakeCuda(torch.empty(2)) for _ in range(4))
    assert _apply(c, x, m, s, z) == ("fused", (c, x, m, s, z))  # type: ignore[arg-type]
    verdict["ok"] = False
    assert _apply(c, x, m, None, None) == ("plain", (c, x, m, None, None))  # type: ignore[arg-type]
    assert calls == [(x, m, s, z), (x, m, None, None)]
    cpu = torch.zeros(2)
    assert _apply(c, cpu, cpu, cpu, None)[0] == "plain"
    assert len(calls) == 2, "CPU tensors never ask the kernel"


def test_kernel_flags_name_the_live_terms() -> None:
    """A term is compiled in when its input is present and its coefficient is not 0."""
    c = functional.Coefficients(stored=0.5, sample=0.0, model=-1.5, noise=0.25, x0_sample=1.0, x0_model=0.0)
    s = torch.zeros(1)
    assert triton_step._flags(c, s, s) == {
        "PREV_STORED": True,
        "PREV_SAMPLE": False,
        "PREV_MODEL": True,
        "PREV_NOISE": True,
        "X0_SAMPLE": True,
        "X0_MODEL": False,
    }
    flags = triton_step._flags(c, None, None)
    assert not flags["PREV_STORED"] and not flags["PREV_NOISE"]
    zero = functional.Coefficients(stored=0.0, sample=2.0, model=0.0, noise=0.0, x0_sample=0.0, x0_model=3.0)
    assert triton_step._flags(zero, s, s) == {
        "PREV_STORED": False,
        "PREV_SAMPLE": True,
        "PREV_MODEL": False,
        "PREV_NOISE": False,
        "X0_SAMPLE": False,
        "X0_MODEL": True,
    }


# -- lookups in the schedule's dtype, errors naming the value ----------------------------------


def test_given_schedule_is_searched_in_its_own_dtype() -> None:
    """A Python float is rounded to the given table's dtype before the search (as diffusers' ``==``)."""
    ours = KDPM2DiscreteScheduler()
    table = torch.tensor([900.1, 500.3, 100.7], dtype=torch.float32)
    assert ours.index_for_timestep(500.3, table) == 1
    with pytest.raises(ValueError, match=r"^timestep 500\.4 is not in the schedule \(see scheduler.timesteps\)$"):
        ours.index_for_timestep(500.4, table)


def test_own_schedule_is_searched_in_its_dtype() -> None:
    """Custom float timesteps are kept in float32: a Python float finds its float32 entry."""
    ours = KDPM2DiscreteScheduler()
    ours.set_timesteps(timesteps=[900.3, 500.7, 100.1])
    assert ours.timesteps.dtype == torch.float32
    assert ours.index_for_timestep(500.7) == 2  # main timesteps sit at the even calls: 0, 2, 4
    with pytest.raises(ValueError, match=r"^timestep 123\.25 is not in the schedule \(see scheduler.timesteps\)$"):
        ours.index_for_timestep(123.25)
    with pytest.raises(ValueError, match=r"^timestep tensor\(123\.2500\) is not in the schedule"):
        ours.index_for_timestep(torch.tensor(123.25))


def test_scale_model_input_names_its_argument() -> None:
    """A non-tensor sample is a TypeError naming ``sample``."""
    ours, _ = pair(3)
    with pytest.raises(TypeError, match=r"^sample must be a torch.Tensor; got ndarray$"):
        ours.scale_model_input(np.zeros(3), ours.timesteps[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("batch", [1, 3])
def test_add_noise_one_timestep_keeps_the_batch(batch: int) -> None:
    """With a begin index, one timestep gives one sigma for the whole batch: the output has the input's shape."""
    ours, _ = pair(3)
    ours.set_begin_index(1)
    x, n = tensors(shape=(batch, 2))
    for t in (ours.timesteps[1], ours.timesteps[1:2]):
        got = ours.add_noise(x, n, t)
        assert got.shape == x.shape
        torch.testing.assert_close(got, x + float(ours.sigmas[1]) * n)


# -- results stay on the input's device ------------------------------------------------------
# The meta device stands in for CUDA on a CPU-only machine: a table or noise left on the CPU
# cannot be combined with meta tensors, exactly as it could not with CUDA tensors.


@pytest.mark.parametrize("churn", [0.0, 2.0])
def test_step_and_add_noise_keep_the_sample_device(churn: float) -> None:
    """Every output of a loop on "meta" tensors is on "meta", churn noise from a CPU generator included."""
    ours = KDPM2DiscreteScheduler(s_churn=churn)
    ours.set_timesteps(3, device="meta")
    x = torch.empty(2, 3, device="meta")
    for t in ours.timesteps:
        generator = torch.Generator().manual_seed(0) if churn else None
        out = ours.step(torch.empty_like(x), t, ours.scale_model_input(x, t), generator=generator)
        assert out.prev_sample.device.type == out.pred_original_sample.device.type == "meta"
        x = out.prev_sample
    assert ours.add_noise(x, x, ours.timesteps[[0, 1]]).device.type == "meta"
    ours.set_begin_index(0)
    assert ours.add_noise(x, x, ours.timesteps[[0, 1]]).device.type == "meta"


def test_churn_noise_from_a_cpu_generator_is_moved_to_the_sample() -> None:
    """Noise is drawn on the generator's device, then moved: a CPU generator serves a "meta" sample."""
    from kdpm2.scheduler import _randn

    like = torch.empty(4, 2, dtype=torch.float16, device="meta")
    noise = _randn(like, torch.Generator().manual_seed(1))
    assert noise.device.type == "meta" and noise.dtype == torch.float16 and noise.shape == like.shape
    cpu = _randn(torch.empty(4, 2, dtype=torch.float64), torch.Generator().manual_seed(1))
    torch.testing.assert_close(cpu, torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))


# -- what step and set_timesteps refuse, and what they leave alone --------------------------


def test_step_names_the_bad_argument() -> None:
    """Non-tensor inputs to ``step`` are TypeErrors naming ``model_output`` or ``sample``."""
    ours, _ = pair(3)
    x, _ = tensors()
    t = ours.timesteps[0]
    with pytest.raises(TypeError, match=r"^model_output must be a torch.Tensor; got ndarray$"):
        ours.step(x.numpy(), t, x)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^sample must be a floating-point tensor; got torch.int64$"):
        ours.step(x, t, x.long())


def test_set_timesteps_checks_num_train_timesteps_and_sources() -> None:
    """``num_train_timesteps`` may be passed when it equals the config's; exactly one schedule source."""
    ours = KDPM2DiscreteScheduler(num_train_timesteps=500)
    ours.set_timesteps(4, num_train_timesteps=500)
    assert ours.num_inference_steps == 4
    with pytest.raises(ValueError, match=r"^num_train_timesteps must equal the config's 500; got 1000$"):
        ours.set_timesteps(4, num_train_timesteps=1000)
    with pytest.raises(ValueError, match=r"^pass exactly one of num_inference_steps, timesteps and sigmas$"):
        ours.set_timesteps()


@pytest.mark.parametrize("final", [0.0, 0.5])
@pytest.mark.parametrize("s_churn", [0.0, 2.0])
def test_generator_is_drawn_only_for_churn(s_churn: float, final: float) -> None:
    """Without churn, and on the final call, ``step`` draws nothing: the generator is left untouched.

    With a final sigma above 0 the last call is a second-order one, which must not churn either.
    """
    ours = KDPM2DiscreteScheduler(s_churn=s_churn)
    ours.set_timesteps(sigmas=[10.0, 3.0, 1.0, final])
    assert len(ours.timesteps) == (5 if final == 0 else 6)
    x, eps = tensors()
    generator = torch.Generator().manual_seed(7)
    last = len(ours.timesteps) - 1
    for k, t in enumerate(ours.timesteps):
        before = generator.get_state()
        x = ours.step(eps, t, x, generator=generator).prev_sample
        drew = not torch.equal(before, generator.get_state())
        assert drew == (s_churn > 0 and k % 2 == 1 and k < last), f"call {k}"


@pytest.mark.parametrize("churn", [0.0, 1.5])
def test_custom_sigmas_quantized_and_churned_equal_reference(churn: float) -> None:
    """``quantize_timesteps`` applies to custom sigmas and to churned sigmas, as in the spec."""
    config = {"quantize_timesteps": True, "s_churn": churn, "s_tmin": 0.5, "s_tmax": 8.0}
    ours, ref = KDPM2DiscreteScheduler(**config), Reference(**config)
    sigmas = [14.6, 7.3, 2.1, 0.9, 0.2, 0.0]
    ours.set_timesteps(sigmas=sigmas)
    ref.set_timesteps(sigmas=sigmas)
    np.testing.assert_array_equal(ours.timesteps.numpy(), ref.timesteps)
    assert ours.timesteps.numpy().tolist() == np.round(ours.timesteps.numpy()).tolist(), "quantized to integers"
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas, rtol=1e-6)


def test_unchurned_steps_keep_their_timesteps() -> None:
    """Outside the churn window a step keeps its spaced timestep (no sigma -> timestep round trip)."""
    config = {"s_churn": 1.5, "s_tmin": 0.5, "s_tmax": 8.0}
    ours, ref = pair(10, **config)
    plain, _ = pair(10)
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps, rtol=1e-6)
    main = plain.sigmas[:-2:2]  # the unchurned sigma of each step
    keep = (main < 0.5) | (main > 8.0)
    assert bool(keep.any()) and not bool(keep.all())
    assert torch.equal(ours.timesteps[::2][keep], plain.timesteps[::2][keep])


def test_discarding_the_penultimate_sigma_allows_one_step_fewer() -> None:
    """With ``discard_penultimate_sigma`` the longest schedule is ``num_train_timesteps - 1`` steps."""
    ours = KDPM2DiscreteScheduler(num_train_timesteps=100, discard_penultimate_sigma=True)
    ours.set_timesteps(99)
    assert ours.num_inference_steps == 99
    with pytest.raises(ValueError, match=r"^num_inference_steps must be between 1 and 99; got 100$"):
        ours.set_timesteps(100)
    plain = KDPM2DiscreteScheduler(num_train_timesteps=100)
    plain.set_timesteps(100)
    with pytest.raises(ValueError, match=r"^num_inference_steps must be between 1 and 100; got 101$"):
        plain.set_timesteps(101)


def test_custom_timesteps_with_a_sigma_family_message() -> None:
    """Custom timesteps cannot follow a sigma family; the message says to pass sigmas."""
    with pytest.raises(
        ValueError, match=r"^timesteps cannot be combined with use_karras/exponential/beta_sigmas; pass sigmas$"
    ):
        KDPM2DiscreteScheduler(use_exponential_sigmas=True).set_timesteps(timesteps=[900, 100])


def test_set_timesteps_puts_the_public_tables_on_the_device() -> None:
    """``timesteps``, ``sigmas_interpol`` and ``log_sigmas`` go to ``device`` in diffusers' dtypes; ``sigmas`` stays on the CPU."""
    ours = KDPM2DiscreteScheduler()
    ours.set_timesteps(3, device="meta")
    assert ours.timesteps.device.type == ours.sigmas_interpol.device.type == ours.log_sigmas.device.type == "meta"
    assert ours.sigmas.device.type == "cpu"
    assert ours.timesteps.dtype == ours.sigmas_interpol.dtype == ours.log_sigmas.dtype == torch.float32
    karras = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    karras.set_timesteps(3, device=torch.device("meta"))
    assert karras.timesteps.device.type == "meta" and karras.timesteps.dtype == torch.float64


def test_available_says_whether_triton_imports() -> None:
    """``available()`` is True exactly when Triton can be imported."""
    import importlib.util

    assert triton_step.available() == (importlib.util.find_spec("triton") is not None)


def test_half_sample_with_float32_model_output_computes_in_float32() -> None:
    """A float16 sample with a float32 model output gives float32 outputs (torch's promotion), as the spec's values."""
    ours, ref = pair(3)
    x, eps = tensors(dtype=torch.float32)
    half = x.to(torch.float16)
    t = ours.timesteps[0]
    out = ours.step(eps, t, half)
    assert out.prev_sample.dtype == out.pred_original_sample.dtype == torch.float32
    want = ref.step(eps.double().numpy(), float(t), half.double().numpy())
    np.testing.assert_allclose(out.prev_sample.double().numpy(), want.prev_sample, rtol=1e-6, atol=1e-6)
