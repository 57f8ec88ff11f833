"""Beyond diffusers, checked against the spec's ``Reference``: x0 prediction, custom schedules, bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import Reference

RTOL = 1e-9  # float64 loops: ours and the reference compute the same formulas in a different order


def model(x: np.ndarray | torch.Tensor, t: float) -> np.ndarray | torch.Tensor:
    """A stand-in model; it sees the timestep in float32 on both sides (ours are float32 tables)."""
    return 0.3 * x + 0.1 * float(np.sin(np.float32(t)))


def loops(
    config: dict, seed: int = 0, begin: bool = False, **set_kwargs
) -> tuple[torch.Tensor, np.ndarray, KDPM2DiscreteScheduler, Reference]:
    ours, ref = KDPM2DiscreteScheduler(**config), Reference(**config)
    ours.set_timesteps(**set_kwargs)
    ref.set_timesteps(**set_kwargs)
    if begin:
        ours.set_begin_index(0)
        ref.set_begin_index(0)
    x = np.random.default_rng(seed).standard_normal((1, 2, 3, 3))
    start = float(ours.init_noise_sigma)  # float32, as diffusers'; both loops start from the same sample
    a, b = torch.from_numpy(x) * start, x * start
    assert ours.timesteps.shape == ref.timesteps.shape
    for t_ours, t_ref in zip(ours.timesteps, ref.timesteps, strict=True):
        a = ours.step(model(ours.scale_model_input(a, t_ours), t_ours), t_ours, a).prev_sample
        b = ref.step(model(ref.scale_model_input(b, t_ref), t_ref), t_ref, b).prev_sample
    return a, b, ours, ref


def assert_loop_equal(a: torch.Tensor, b: np.ndarray, what: str) -> None:
    err = np.abs(a.numpy() - b).max() / max(np.abs(b).max(), 1e-30)
    assert err <= RTOL, f"{what}: relative error {err:.3g}"


@pytest.mark.parametrize("family", [None, "karras", "exponential"])
@pytest.mark.parametrize("n", [1, 2, 10])
def test_sample_prediction(family, n):
    """``prediction_type="sample"`` (diffusers raises NotImplementedError) follows the reference."""
    config = {"prediction_type": "sample", "beta_schedule": "scaled_linear"}
    if family:
        config[f"use_{family}_sigmas"] = True
    a, b, *_ = loops(config, num_inference_steps=n)
    assert_loop_equal(a, b, f"sample prediction, {family}, n={n}")


def test_sample_prediction_exact_model_recovers_x0():
    """An exact x0-model: the first-order Euler step to 0 returns x0 exactly."""
    s = KDPM2DiscreteScheduler(prediction_type="sample")
    s.set_timesteps(1)
    x0 = torch.full((1, 1, 2, 2), 0.25, dtype=torch.float64)
    out = s.step(x0, s.timesteps[0], x0 + 3.0)
    assert torch.equal(out.pred_original_sample, x0)
    torch.testing.assert_close(out.prev_sample, x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "sigmas", [[14.6, 6.0, 2.0, 0.5, 0.0], [14.6, 1.0, 0.03], np.array([80.0, 3.0, 0.0]), torch.tensor([5.0, 0.1])]
)
def test_custom_sigmas_vs_reference(sigmas):
    # sigma 80 is above the model's 14.6: its timestep and its midpoint's are both 999, and
    # diffusers' lookup rule (second match) would skip a call; a begin index avoids the lookup
    a, b, ours, ref = loops({"beta_schedule": "scaled_linear"}, sigmas=sigmas, begin=True)
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps, rtol=1e-6)
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas, rtol=1e-6)
    assert ours.num_inference_steps == len(sigmas) - 1
    assert_loop_equal(a, b, f"sigmas={sigmas}")


@pytest.mark.parametrize("timesteps", [[999, 750, 500, 250, 0], [950.5, 400.25, 17.0], [999]])
@pytest.mark.parametrize("interpolation", ["linear", "log"])
def test_custom_timesteps_vs_reference(timesteps, interpolation):
    a, b, ours, ref = loops({"sigma_interpolation": interpolation}, timesteps=timesteps)
    np.testing.assert_allclose(ours.timesteps.numpy()[0::2], np.asarray(timesteps, dtype=np.float32), rtol=0)
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps, rtol=1e-6)
    assert_loop_equal(a, b, f"timesteps={timesteps}")


def test_custom_timesteps_match_integer_schedule():
    """Custom timesteps equal to the linspace ones reproduce ``set_timesteps(n)`` (diffusers parity)."""
    s = KDPM2DiscreteScheduler(timestep_spacing="leading", steps_offset=1)
    s.set_timesteps(5)
    expected = (s.timesteps.clone(), s.sigmas.clone())
    s.set_timesteps(timesteps=s.timesteps[0::2].tolist())
    assert torch.equal(s.timesteps, expected[0]) and torch.equal(s.sigmas, expected[1])


def test_retrieve_timesteps_with_custom_schedules():
    """diffusers' ``retrieve_timesteps`` (the pipelines' entry) accepts our scheduler for both."""
    s = KDPM2DiscreteScheduler(beta_schedule="scaled_linear")
    timesteps, count = retrieve_timesteps(s, sigmas=[14.6, 3.0, 0.7, 0.0], device="cpu")
    assert count == len(timesteps) == 5 and torch.equal(timesteps, s.timesteps)
    timesteps, count = retrieve_timesteps(s, timesteps=[999, 600, 300], device="cpu")
    assert count == len(timesteps) == 5 and float(timesteps[0]) == 999
    timesteps, count = retrieve_timesteps(s, num_inference_steps=4, device="cpu")
    assert count == 4 and len(timesteps) == 7


@pytest.mark.parametrize("family", ["karras", "exponential", "beta"])
def test_sigma_bounds(family):
    """``sigma_min``/``sigma_max`` bound the family (diffusers takes the spaced schedule's ends)."""
    config = {f"use_{family}_sigmas": True, "sigma_min": 0.1, "sigma_max": 20.0}
    a, b, ours, _ = loops(config, num_inference_steps=6)
    main = ours.sigmas[0:-2:2]
    torch.testing.assert_close(main[0], torch.tensor(20.0), rtol=1e-7, atol=0)
    torch.testing.assert_close(ours.sigmas[-4], torch.tensor(0.1), rtol=1e-6, atol=0)
    assert_loop_equal(a, b, f"{family} bounds")
    only_min = KDPM2DiscreteScheduler(**{f"use_{family}_sigmas": True, "sigma_min": 0.5})
    only_min.set_timesteps(6)
    default = KDPM2DiscreteScheduler(**{f"use_{family}_sigmas": True})
    default.set_timesteps(6)
    assert float(only_min.sigmas[0]) == float(default.sigmas[0]) and float(only_min.sigmas[-4]) == pytest.approx(0.5)


# -- random configurations against the reference -------------------------------------------

CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        "beta_schedule": st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2"]),
        "prediction_type": st.sampled_from(["epsilon", "v_prediction", "sample"]),
        "timestep_spacing": st.sampled_from(["linspace", "leading", "trailing"]),
        "steps_offset": st.integers(0, 1),
        "sigma_interpolation": st.sampled_from(["linear", "log"]),
        "discard_penultimate_sigma": st.booleans(),
        "quantize_timesteps": st.booleans(),
        "s_churn": st.sampled_from([0.0, 0.0, 0.7]),
        "use_karras_sigmas": st.booleans(),
    },
)
STEPS = st.integers(1, 30)


@settings(max_examples=40, deadline=None)
@example(config={"use_karras_sigmas": True, "quantize_timesteps": True, "discard_penultimate_sigma": True}, n=1)
@example(config={"timestep_spacing": "trailing"}, n=61)
@given(config=CONFIGS, n=STEPS)
def test_random_config_tables_vs_reference(config, n):
    ours, ref = KDPM2DiscreteScheduler(**config), Reference(**config)
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    call = f"[set_timesteps({n}) with {config}]"
    np.testing.assert_allclose(ours.timesteps.numpy(), ref.timesteps, rtol=1e-6, atol=1e-5, err_msg=call)
    np.testing.assert_allclose(ours.sigmas.numpy(), ref.sigmas, rtol=1e-6, err_msg=call)
    np.testing.assert_allclose(ours.sigmas_interpol.numpy(), ref.sigmas_interpol, rtol=1e-6, err_msg=call)
    np.testing.assert_allclose(float(ours.init_noise_sigma), ref.init_noise_sigma, rtol=1e-6, err_msg=call)
    for name in ("timesteps", "sigmas", "sigmas_interpol"):
        assert torch.isfinite(getattr(ours, name)).all(), f"{name} {call}"
    assert len(ours.timesteps) == 2 * n - 1, call


@settings(max_examples=25, deadline=None)
@given(config=CONFIGS.filter(lambda c: not c.get("s_churn")), n=st.integers(1, 8))
def test_random_config_loops_vs_reference(config, n):
    # a begin index: quantized or cosine-Karras schedules can repeat the first timestep (lookup skips)
    a, b, *_ = loops(config, num_inference_steps=n, begin=True)
    assert_loop_equal(a, b, f"loop [set_timesteps({n}) with {config}]")
