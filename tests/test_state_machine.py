"""Random legal (and some illegal) call orders on our scheduler and the reference, compared after every rule."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2_spec import invariants
from kdpm2_spec import strategies as ks
from kdpm2_spec.adapter import TorchAdapter
from kdpm2_spec.conformance import _close, stand_in_model
from kdpm2_spec.reference import Reference, model_output_for

ADAPTER = TorchAdapter(KDPM2DiscreteScheduler)
RTOL = 1e-12
SHAPE = (2, 3)


class SchedulerMachine(RuleBasedStateMachine):
    """The implementation and the reference receive the same calls; their states must agree."""

    @initialize(config=ks.configs(ks.supported_args(KDPM2DiscreteScheduler), churn=False), steps=st.integers(1, 12))
    def build(self, config: dict, steps: int) -> None:
        self.config, self.log = config, [f"KDPM2DiscreteScheduler(**{config!r})"]
        self.ref, self.impl = Reference(**config), KDPM2DiscreteScheduler(**config)
        self.set_timesteps(steps)

    def where(self) -> str:
        return "; ".join(self.log[-6:])

    @property
    def calls(self) -> int:
        return len(self.ref.timesteps)

    @property
    def finished(self) -> bool:
        return self.ref.step_index is not None and self.ref.step_index >= self.calls

    def next_call(self) -> int:
        if self.ref.step_index is not None:
            return self.ref.step_index
        return self.ref.begin_index if self.ref.begin_index is not None else 0

    @rule(steps=st.integers(1, 12))
    def set_timesteps(self, steps: int) -> None:
        self.steps = steps
        self.log.append(f"set_timesteps({steps})")
        self.ref.set_timesteps(steps)
        self.impl.set_timesteps(steps)
        self.x = np.random.default_rng(steps).standard_normal(SHAPE) * self.ref.init_noise_sigma
        self.x_impl = ADAPTER.tensor(self.x)

    @precondition(lambda self: self.ref.step_index is None)
    @rule(data=st.data())
    def set_begin_index(self, data: st.DataObject) -> None:
        begin = data.draw(st.integers(0, self.calls - 1), label="begin")
        self.log.append(f"set_begin_index({begin})")
        self.ref.set_begin_index(begin)
        self.impl.set_begin_index(begin)

    @rule(bad=st.sampled_from([-1, 0, 1]))
    def set_begin_index_out_of_range(self, bad: int) -> None:
        index = bad if bad < 0 else self.calls + bad
        for sched in (self.ref, self.impl):
            with pytest.raises(ValueError, match="begin_index"):
                sched.set_begin_index(index)

    @precondition(lambda self: not self.finished)
    @rule()
    def scale_model_input(self) -> None:
        k = self.next_call()
        self.log.append(f"scale_model_input(x, timesteps[{k}])")
        want = self.ref.scale_model_input(self.x, self.ref.timesteps[k])
        got = self.impl.scale_model_input(self.x_impl, self.impl.timesteps[k])
        _close(self.where(), "scale_model_input", want, ADAPTER.array(got), RTOL, float(np.abs(self.x).max()))

    @precondition(
        lambda self: not self.finished and (self.ref.step_index is not None or self.ref.begin_index is not None)
    )
    @rule(strength=ks.model_strengths)
    def step(self, strength: float) -> None:
        k = self.next_call()
        self.log.append(f"step(out, timesteps[{k}], x)")
        if self.ref.step_index is None:
            self.ref.scale_model_input(self.x, self.ref.timesteps[k])  # sets step_index (begin_index)
            self.impl.scale_model_input(self.x_impl, self.impl.timesteps[k])
        sigma = self.ref.current_sigma
        prediction = self.config.get("prediction_type", "epsilon")
        out = model_output_for(stand_in_model(self.x, sigma, strength), self.x, sigma, prediction)
        want = self.ref.step(out, self.ref.timesteps[k], self.x)
        got = self.impl.step(ADAPTER.tensor(out), self.impl.timesteps[k], self.x_impl)
        scale = max(float(np.abs(self.x).max()), sigma * float(np.abs(out).max()), 1.0)
        _close(self.where(), "prev_sample", want.prev_sample, ADAPTER.array(got.prev_sample), RTOL, scale)
        self.x, self.x_impl = want.prev_sample, got.prev_sample

    @precondition(lambda self: self.finished)
    @rule()
    def step_past_the_end(self) -> None:
        for sched, x in ((self.ref, self.x), (self.impl, self.x_impl)):
            out = x * 0
            with pytest.raises(ValueError, match="past the end"):
                sched.step(out, sched.timesteps[-1], x)

    @precondition(lambda self: self.ref.begin_index is not None)
    @rule()
    def add_noise(self) -> None:
        k = self.next_call()
        self.log.append(f"add_noise(x0, eps, timesteps[{k}:{k + 1}])")
        rng = np.random.default_rng(k)
        x0, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
        want = self.ref.add_noise(x0, eps, self.ref.timesteps[k : k + 1])
        got = self.impl.add_noise(ADAPTER.tensor(x0), ADAPTER.tensor(eps), self.impl.timesteps[k : k + 1])
        _close(self.where(), "add_noise", want, ADAPTER.array(got), RTOL, float(np.abs(want).max()))

    @precondition(lambda self: self.ref.step_index is None)
    @rule()
    def save_and_reload(self) -> None:
        self.log.append("save_config + from_pretrained + set_timesteps")
        with tempfile.TemporaryDirectory() as directory:
            self.impl.save_config(directory)
            self.impl = KDPM2DiscreteScheduler.from_pretrained(directory)
        begin = self.ref.begin_index
        self.ref.set_timesteps(self.steps)
        self.impl.set_timesteps(self.steps)
        if begin is not None:
            self.ref.set_begin_index(begin)
            self.impl.set_begin_index(begin)

    @invariant()
    def same_state(self) -> None:
        assert self.impl.step_index == self.ref.step_index, (
            f"step_index {self.impl.step_index} != {self.ref.step_index} [{self.where()}]"
        )
        assert self.impl.begin_index == self.ref.begin_index, f"begin_index [{self.where()}]"
        assert self.impl.state_in_first_order == self.ref.state_in_first_order, f"state_in_first_order [{self.where()}]"
        _close(self.where(), "timesteps", self.ref.timesteps, ADAPTER.array(self.impl.timesteps), 1e-6)

    @invariant()
    def spec_invariants(self) -> None:
        invariants.check_interleaved_layout(self.impl, ADAPTER)
        invariants.check_sigmas_decreasing(self.impl, ADAPTER)


SchedulerMachine.TestCase.settings = __import__("hypothesis").settings(stateful_step_count=25)
TestSchedulerMachine = SchedulerMachine.TestCase
