"""KDPM2AncestralDiscreteScheduler as a class: the shared core, noise sources, bad input, presets, CLI, compile.

Numbers are checked against ``AncestralReference`` (float64) or k-diffusion; the class is a thin
shell over the core it shares with ``KDPM2DiscreteScheduler``, so this file checks what the shell
adds: ``eta``/``s_noise``, where the noise comes from, the Euler steps of a binding clamp, and that
a rejected call changes nothing.
"""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import numpy as np
import pytest
import torch

from kdpm2 import (
    KDPM2AncestralDiscreteScheduler,
    KDPM2AncestralDiscreteSchedulerOutput,
    KDPM2DiscreteScheduler,
    cli,
    presets,
)
from kdpm2.scheduler import _KDPM2Core
from kdpm2_spec import AncestralReference

A = KDPM2AncestralDiscreteScheduler


def fresh(n: int = 5, **config: Any) -> KDPM2AncestralDiscreteScheduler:
    s = A(**config)
    s.set_timesteps(n)
    return s


def state(s: KDPM2AncestralDiscreteScheduler) -> tuple[Any, ...]:
    sample = None if s.sample is None else s.sample.clone()
    return (s.step_index, s.begin_index, sample is None, sample, s.timesteps.clone(), dict(s.config))


def same_state(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return a[:3] == b[:3] and (a[3] is None or torch.equal(a[3], b[3])) and torch.equal(a[4], b[4]) and a[5] == b[5]


# -- the class ---------------------------------------------------------------------------------------


def test_two_classes_one_core() -> None:
    """Neither class is the other's subclass (pipelines and the gate tell them apart); both are the core's."""
    s = A()
    assert not isinstance(s, KDPM2DiscreteScheduler)
    assert not isinstance(KDPM2DiscreteScheduler(), A)
    assert isinstance(s, _KDPM2Core) and issubclass(KDPM2DiscreteScheduler, _KDPM2Core)
    assert A.order == 2 and A.__name__ == "KDPM2AncestralDiscreteScheduler"
    # the schedule is the core's: eta = 0 gives DPM2's tables of calls
    for config in ({}, {"use_karras_sigmas": True, "discard_penultimate_sigma": True}, {"quantize_timesteps": True}):
        ours, dpm2 = fresh(9, eta=0.0, **config), KDPM2DiscreteScheduler(**config)
        dpm2.set_timesteps(9)
        assert torch.equal(ours.timesteps, dpm2.timesteps), config
        assert float(ours.init_noise_sigma) == float(dpm2.init_noise_sigma)


def test_public_tables_are_finite_float32_in_diffusers_layout() -> None:
    s = fresh(4, beta_schedule="squaredcos_cap_v2")
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
        table = getattr(s, name)
        assert table.dtype == torch.float32 and len(table) == 2 * 4 + 2, name
        assert bool(torch.isfinite(table).all()), name
    ref = AncestralReference(beta_schedule="squaredcos_cap_v2")
    ref.set_timesteps(4)
    for name in ("sigmas", "sigmas_interpol", "sigmas_up", "sigmas_down"):
        np.testing.assert_allclose(getattr(s, name).numpy(), getattr(ref, name), rtol=2e-7, err_msg=name)
    np.testing.assert_allclose(s.timesteps.numpy(), ref.timesteps, rtol=2e-7)


def test_output_types_and_tuple() -> None:
    s = fresh()
    x = torch.ones(1, 2, 2, 2)
    out = s.step(x * 0.1, s.timesteps[0], x)
    assert isinstance(out, KDPM2AncestralDiscreteSchedulerOutput)
    assert set(out.keys()) == {"prev_sample", "pred_original_sample"}
    prev, x0 = s.step(
        x * 0.1, s.timesteps[1], out.prev_sample, generator=torch.Generator().manual_seed(0), return_dict=False
    )
    assert prev.shape == x0.shape == x.shape


def test_config_round_trip(tmp_path) -> None:
    s = A.from_preset("a1111/karras", eta=0.7, s_noise=0.9)
    s.save_pretrained(tmp_path)
    back = A.from_pretrained(tmp_path)
    assert back.config.eta == 0.7 and back.config.s_noise == 0.9 and back.config.preset == "a1111/karras"
    assert (
        json.loads((tmp_path / "scheduler_config.json").read_text())["_class_name"] == "KDPM2AncestralDiscreteScheduler"
    )
    clone = pickle.loads(pickle.dumps(s))
    clone.set_timesteps(7)
    s.set_timesteps(7)
    assert torch.equal(clone.timesteps, s.timesteps) and torch.equal(copy.deepcopy(s).sigmas_up, s.sigmas_up)


# -- noise ---------------------------------------------------------------------------------------------


def _loop(s: KDPM2AncestralDiscreteScheduler, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    sample = x * s.init_noise_sigma
    for t in s.timesteps:
        sample = s.step(0.3 * s.scale_model_input(sample, t), t, sample, **kwargs).prev_sample
    return sample


def test_noise_sources_agree() -> None:
    """The same unit noise through ``noise=``, ``noise_sampler`` and a generator gives the same sample."""
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    n = 6
    draws = torch.Generator().manual_seed(5)
    noises = [torch.randn(2, 4, 4, 4, generator=draws) for _ in range(n - 1)]
    by_generator = _loop(fresh(n), x, generator=torch.Generator().manual_seed(5))
    s = fresh(n)
    it = iter(noises)
    s.noise_sampler = lambda sigma, sigma_next: next(it)
    by_sampler = _loop(s, x)
    s, it2 = fresh(n), iter(noises)
    sample = x * s.init_noise_sigma
    for t in s.timesteps:
        noise = None if s.state_in_first_order else next(it2)
        sample = s.step(0.3 * s.scale_model_input(sample, t), t, sample, noise=noise).prev_sample
    assert torch.equal(by_generator, by_sampler) and torch.equal(by_sampler, sample)


def test_noise_is_added_with_s_noise_sigma_up() -> None:
    """A second-order call adds exactly ``s_noise * sigma_up * noise`` to its noise-free result."""
    s = fresh(5, s_noise=0.5, eta=0.8)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mid = s.step(0.2 * x, s.timesteps[0], x).prev_sample
    twin = copy.deepcopy(s)
    z = torch.randn_like(x)
    with_noise = s.step(0.1 * mid, s.timesteps[1], mid, noise=z).prev_sample
    without = twin.step(0.1 * mid, twin.timesteps[1], mid, noise=torch.zeros_like(z)).prev_sample
    up = s.step_levels[0].sigma_up
    torch.testing.assert_close(with_noise - without, 0.5 * up * z, rtol=1e-12, atol=1e-12)


def test_noise_sampler_gets_each_steps_sigmas() -> None:
    s = fresh(4, use_karras_sigmas=True)
    seen: list[tuple[float, float]] = []

    def sampler(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        assert sigma.dim() == 0 and sigma.dtype == torch.float32
        seen.append((float(sigma), float(sigma_next)))
        return torch.zeros(1, 2, 2, 2)

    s.noise_sampler = sampler
    _loop(s, torch.ones(1, 2, 2, 2))
    levels = s.step_levels
    want = [
        (float(np.float32(lv.sigma)), float(np.float32(lv.sigma_next))) for lv in levels if lv.sigma_mid is not None
    ]
    assert seen == want
    with pytest.raises(TypeError, match="noise_sampler must be callable"):
        s.noise_sampler = 3  # type: ignore[assignment]


def test_draws_even_when_eta_is_zero() -> None:
    """As diffusers and k-diffusion, each second-order call draws, even when it adds nothing (same stream for any eta)."""
    g = torch.Generator().manual_seed(3)
    out = _loop(fresh(5, eta=0.0), torch.ones(1, 2, 2, 2), generator=g)
    twin = torch.Generator().manual_seed(3)
    for _ in range(4):
        torch.randn(1, 2, 2, 2, generator=twin)
    assert torch.equal(g.get_state(), twin.get_state())
    dpm2 = KDPM2DiscreteScheduler()
    dpm2.set_timesteps(5)
    torch.testing.assert_close(out, _loop(dpm2, torch.ones(1, 2, 2, 2)), rtol=1e-6, atol=1e-6)


# -- the clamp ------------------------------------------------------------------------------------------


def test_binding_clamp_makes_euler_steps_as_k_diffusion() -> None:
    """eta > 1: where the clamp binds the step is one Euler call to 0 with no noise; the loop equals k-diffusion's."""
    from k_diffusion import sampling

    s = fresh(8, eta=1.3, beta_schedule="scaled_linear")
    levels = s.step_levels
    euler = [i for i, lv in enumerate(levels[:-1]) if lv.sigma_mid is None]
    assert euler, "expected the clamp to bind somewhere at eta=1.3"
    assert all(levels[i].sigma_down == 0 and levels[i].sigma_up == levels[i].sigma_next for i in euler)
    assert len(s.timesteps) == sum(1 if lv.sigma_mid is None else 2 for lv in levels)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    draws = torch.Generator().manual_seed(9)
    noises = [torch.randn(1, 4, 4, 4, dtype=torch.float64, generator=draws) for _ in range(8)]
    sigmas = torch.tensor([lv.sigma for lv in levels] + [0.0], dtype=torch.float64)
    it = iter(noises)
    expected = sampling.sample_dpm_2_ancestral(
        lambda x_, sig: x_ - 0.3 * x_ * sig.reshape(-1, 1, 1, 1) / (sig.reshape(-1, 1, 1, 1) ** 2 + 1) ** 0.5,
        x * float(sigmas[0]),
        sigmas,
        eta=1.3,
        disable=True,
        noise_sampler=lambda a, b: next(it),
    )
    it2 = iter(noises)
    s.noise_sampler = lambda a, b: next(it2)
    got = _loop(s, x)
    # k-diffusion's float64 sqrt(s_next^2 - sigma_up^2) loses digits near the clamp (2e-8 here); ours does not
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert s.state_in_first_order is False  # after the last (Euler) call the sample is kept, as diffusers does


def test_eta_change_after_set_timesteps_is_refused() -> None:
    s = fresh(5)
    s.register_to_config(eta=0.5)
    x = torch.ones(1, 2, 2, 2)
    before = state(s)
    with pytest.raises(ValueError, match="eta changed"):
        s.step(x, s.timesteps[0], x)
    assert same_state(before, state(s))
    s.set_timesteps(5)
    s.step(x, s.timesteps[0], x)
    assert s.step_levels[0].sigma_up == pytest.approx(
        0.5 * s.step_levels[0].sigma_next * (1 - (s.step_levels[0].sigma_next / s.step_levels[0].sigma) ** 2) ** 0.5
    )


# -- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eta": -0.1}, ValueError, "eta must be at least 0"),
        ({"eta": float("nan")}, TypeError, "eta must be a finite real number"),
        ({"eta": "1"}, TypeError, "eta must be a finite real number"),
        ({"s_noise": -1.0}, ValueError, "s_noise must be at least 0"),
        ({"s_churn": 1.0}, TypeError, "s_churn"),
        ({"preset": "comfyui/normal"}, ValueError, "reproduces LDM's 'linear' betas"),
        ({"beta_schedule": "cosine"}, ValueError, "beta_schedule must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        A(**kwargs)


def _second_order_ready() -> tuple[KDPM2AncestralDiscreteScheduler, torch.Tensor, Any]:
    s = fresh(5)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    y = s.step(0.3 * x, s.timesteps[0], x).prev_sample
    return s, y, s.timesteps[1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"noise": torch.ones(2, 4, 4)}, ValueError, "noise shape"),
        ({"noise": torch.ones(2, 4, 4, 4, dtype=torch.int64)}, TypeError, "noise must be a floating-point tensor"),
        ({"noise": [1.0]}, TypeError, "noise must be a torch.Tensor"),
        ({"noise": torch.ones(2, 4, 4, 4, device="meta")}, ValueError, "noise is on meta"),
        ({"generator": [torch.Generator()] * 3}, ValueError, "one generator per batch item"),
        ({"generator": [torch.Generator(), 1]}, TypeError, "torch.Generator objects only"),
        ({"generator": "seed"}, TypeError, "generator must be a torch.Generator"),
        ({"generator": []}, TypeError, "generator"),
    ],
)
def test_bad_step_arguments_change_nothing(kwargs: dict[str, Any], error: type, match: str) -> None:
    """A rejected call raises a named error and leaves the scheduler, the generators and the inputs as they were."""
    s, y, t = _second_order_ready()
    keep_y = y.clone()
    g = torch.Generator().manual_seed(1)
    g_state = g.get_state()
    before = state(s)
    with pytest.raises(error, match=match):
        s.step(0.3 * y, t, y, **kwargs)
    assert same_state(before, state(s)) and torch.equal(y, keep_y) and torch.equal(g.get_state(), g_state)
    s.step(0.3 * y, t, y, generator=g)  # and the call then works


def test_noise_on_a_first_order_call_is_refused() -> None:
    s = fresh()
    x = torch.ones(1, 2, 2, 2)
    before = state(s)
    with pytest.raises(ValueError, match="first-order call, which adds no noise"):
        s.step(x, s.timesteps[0], x, noise=torch.ones_like(x))
    assert same_state(before, state(s))


def test_noise_sampler_result_is_checked() -> None:
    s, y, t = _second_order_ready()
    s.noise_sampler = lambda a, b: torch.ones(3)
    before = state(s)
    with pytest.raises(ValueError, match="noise_sampler's result shape"):
        s.step(0.3 * y, t, y)
    assert same_state(before, state(s))


def test_inputs_are_not_modified() -> None:
    s, y, t = _second_order_ready()
    model_output, noise = 0.3 * y, torch.randn_like(y)
    copies = (y.clone(), model_output.clone(), noise.clone())
    s.step(model_output, t, y, noise=noise)
    assert all(torch.equal(a, b) for a, b in zip((y, model_output, noise), copies, strict=True))


def test_a_cuda_generator_for_cpu_tensors_is_refused() -> None:
    s, y, t = _second_order_ready()

    class FakeCuda(torch.Generator):
        @property
        def device(self) -> torch.device:  # type: ignore[override]
            return torch.device("cuda")

    with pytest.raises(ValueError, match="cannot draw noise for a cpu tensor from a cuda generator"):
        s.step(0.3 * y, t, y, generator=FakeCuda())


# -- presets and CLI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", presets.NAMES)
def test_presets_build_the_ancestral_sampler(name: str) -> None:
    """Every preset name builds DPM2 a on the DPM2 preset's schedule (both front-ends use one schedule for both)."""
    s = A.from_preset(name)
    dpm2 = KDPM2DiscreteScheduler.from_preset(name)
    s.set_timesteps(12)
    dpm2.set_timesteps(12)
    assert [lv.sigma for lv in s.step_levels] == dpm2.sigmas[0:24:2].double().tolist()
    assert torch.equal(s.timesteps[0::2], dpm2.timesteps[0::2])  # the main calls' timesteps
    assert float(s.init_noise_sigma) == float(dpm2.init_noise_sigma)
    assert s.config.preset == name and s.config.eta == 1.0 and s.config.s_noise == 1.0


def test_presets_leave_eta_and_s_noise_free() -> None:
    s = A.from_preset("a1111/automatic", eta=0.6, s_noise=1.01)
    assert (s.config.eta, s.config.s_noise) == (0.6, 1.01)
    with pytest.raises(ValueError, match="contradicts preset"):
        A.from_preset("comfyui/karras", use_karras_sigmas=False)
    with pytest.raises(ValueError, match=r"KDPM2AncestralDiscreteScheduler\.from_preset"):
        A(preset="comfyui/karras")


def test_a1111_automatic_is_karras() -> None:
    """A1111 1.10.1 lists DPM2 a with scheduler 'karras': Automatic runs the Karras schedule (parity README)."""
    a, k = A.from_preset("a1111/automatic"), A.from_preset("a1111/karras")
    a.set_timesteps(20)
    k.set_timesteps(20)
    assert torch.equal(a.timesteps, k.timesteps) and torch.equal(a.sigmas, k.sigmas)


def test_cli_prints_ancestral_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schedule", "--sampler", "dpm2a", "--steps", "3", "--preset", "comfyui/karras", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    s = A.from_preset("comfyui/karras")
    s.set_timesteps(3)
    assert data["sampler"] == "dpm2a" and data["timesteps"] == s.timesteps.tolist()
    assert [row["sigma_up"] for row in data["calls"] if row["order"] == 2] == [lv.sigma_up for lv in s.step_levels[:-1]]
    assert cli.main(["schedule", "--sampler", "dpm2a", "--steps", "4", "--eta", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "sigma_down" in text and "eta 0.5" in text and len(text.splitlines()) == 2 + 7
    assert cli.main(["schedule", "--sampler", "dpm2a", "--steps", "4", "--s-churn", "1"]) == 2
    assert "--s-churn is an option of --sampler dpm2" in capsys.readouterr().err
    assert cli.main(["schedule", "--steps", "4", "--eta", "1"]) == 2
    assert "--eta is an option of --sampler dpm2a" in capsys.readouterr().err


# -- compile -----------------------------------------------------------------------------------------------


def test_compiled_loop_equals_eager() -> None:
    """Under ``torch.compile`` (aot_eager) the device-counter path gives the eager loop's samples."""
    torch._dynamo.reset()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    draws = torch.Generator().manual_seed(1)
    noises = [torch.randn(1, 2, 4, 4, generator=draws) for _ in range(5)]

    def run(s: KDPM2AncestralDiscreteScheduler, call: Any) -> torch.Tensor:
        sample, it = x * s.init_noise_sigma, iter(noises)
        for t in s.timesteps:
            noise = None if s.state_in_first_order else next(it)
            sample = call(s, sample, t, noise)
        return sample

    def call(s: Any, sample: torch.Tensor, t: torch.Tensor, noise: Any) -> torch.Tensor:
        return s.step(0.3 * s.scale_model_input(sample, t), t, sample, noise=noise, return_dict=False)[0]

    eager = run(fresh(6), call)
    compiled = torch.compile(call, backend="aot_eager")
    try:
        got = run(fresh(6), compiled)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got, eager, rtol=1e-6, atol=1e-6)
    s = fresh(6, eta=1.4)
    s._step_counter = torch.zeros((), dtype=torch.int64)  # the device counter a compiled call leaves
    with pytest.raises(NotImplementedError, match="Euler steps before the last"):
        s.step(x, s.timesteps[0], x)
