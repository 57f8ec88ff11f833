"""The drop-in contract, side by side with diffusers: compatibles, ConfigMixin, outputs.

Every check builds diffusers' own ``KDPM2DiscreteScheduler`` (or another diffusers class) from
the same input and compares what code written for diffusers can observe: configs, recorded
defaults, loaded files, warnings, errors and the step output's mapping protocol. Our extra
arguments (``EXTRA``) are the only keys allowed to differ, and only where diffusers has no key.
"""

from __future__ import annotations

import inspect
import json
import logging
import pathlib
import tempfile
import warnings
from collections import OrderedDict
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteSchedulerOutput as TheirOutput
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kdpm2 import KDPM2DiscreteScheduler as K
from kdpm2 import KDPM2DiscreteSchedulerOutput
from kdpm2_spec import strategies as ks

D = diffusers.KDPM2DiscreteScheduler
THEIR_ARGS = frozenset(inspect.signature(D.__init__).parameters) - {"self"}
OUR_ARGS = frozenset(inspect.signature(K.__init__).parameters) - {"self"}
EXTRA = OUR_ARGS - THEIR_ARGS
"""Our arguments diffusers' KDPM2 lacks (sigma bounds, A1111/ComfyUI options, churn)."""

our_configs = ks.configs(ks.supported_args(K))
"""Random valid configs over every argument of ours (each left out half the time)."""


def theirs_of(config: dict[str, Any]) -> dict[str, Any]:
    """The part of one of our configs that diffusers' KDPM2 understands."""
    return {k: v for k, v in config.items() if k in THEIR_ARGS}


_THEIR_CONFIGS: dict[str, Any] = {}


def their_config(config: dict[str, Any]) -> Any:
    """``diffusers.KDPM2DiscreteScheduler(**config).config``, built once per config (its constructor is slow)."""
    key = repr(sorted(config.items()))
    if key not in _THEIR_CONFIGS:
        _THEIR_CONFIGS[key] = quiet(D, **config).config
    return _THEIR_CONFIGS[key]


def init_args(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def short_loop(scheduler: Any, calls: int = 3) -> torch.Tensor:
    """The first calls of a 10-step loop with a stand-in model (seeded noise where a step draws any)."""
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64) * float(scheduler.init_noise_sigma)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps[:calls]:
        x = scheduler.scale_model_input(sample, t)
        extra = {"generator": torch.Generator().manual_seed(1)} if takes_generator else {}
        sample = scheduler.step(0.5 * x, t, sample, **extra).prev_sample
    return sample


def explicit(config: Any) -> dict[str, Any]:
    """The public keys of a config that were given, not defaults (``_use_default_values`` removed)."""
    defaults = set(config.get("_use_default_values", []))
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in defaults}


def same_value(a: Any, b: Any) -> bool:
    return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))


def quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with diffusers' and our config loggers silenced (unknown-key warnings are expected)."""
    loggers = [logging.getLogger("kdpm2"), logging.getLogger("diffusers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# -- 1. compatible schedulers -----------------------------------------------------------------


def test_compatibles_are_diffusers_list() -> None:
    """``compatibles`` resolves the same class names as diffusers' KDPM2 (its Karras family)."""
    assert {c.__name__ for c in K().compatibles} == {c.__name__ for c in D().compatibles}


COMPATIBLES = tuple(K().compatibles)
STOCHASTIC = ("DPMSolverSDEScheduler",)
"""Compatible classes whose loop draws noise of its own (a Brownian tree): compared by config only."""


def check_built_from_ours(cls: type, config: dict[str, Any]) -> None:
    """``cls.from_config(ours.config)`` equals ``cls`` built from diffusers' KDPM2 config of the same
    diffusers-known arguments plus our sigma bounds when set: diffusers' classes read
    ``config.sigma_min``/``sigma_max`` (arguments or, in KDPM2, Heun, LMS..., ``hasattr`` keys) with
    our meaning. Our other keys change nothing. Both loop; deterministic loops agree exactly."""
    ours = K(**config)
    bounds = {k: config[k] for k in ("sigma_min", "sigma_max") if config.get(k) is not None}
    try:
        expected = quiet(cls.from_config, {**their_config(theirs_of(config)), **bounds})
    except Exception as error:  # only what diffusers' own config loads is compared
        with pytest.raises(type(error)):
            quiet(cls.from_config, ours.config)
        return
    got = quiet(cls.from_config, ours.config)
    assert type(got) is cls
    for key in init_args(cls):
        assert same_value(got.config[key], expected.config[key]), (
            f"{cls.__name__}.from_config(ours.config).config[{key!r}]={got.config[key]!r}, "
            f"but should be {expected.config[key]!r} [K(**{config!r})]"
        )
    a, b = quiet(short_loop, got), quiet(short_loop, expected)
    assert bool(torch.isfinite(a).all()), f"{cls.__name__} loop is not finite [K(**{config!r})]"
    if cls.__name__ not in STOCHASTIC:
        assert torch.equal(a, b), f"{cls.__name__} loops differ [K(**{config!r})]"


@pytest.mark.parametrize("cls", COMPATIBLES, ids=lambda c: c.__name__)
def test_every_compatible_builds_from_the_default_config(cls: type) -> None:
    check_built_from_ours(cls, {})


@settings(max_examples=max(1, settings.default.max_examples // 5), suppress_health_check=list(HealthCheck))
@given(cls=st.sampled_from(COMPATIBLES), config=our_configs)
@example(cls=diffusers.EDMEulerScheduler, config={"sigma_min": None, "sigma_max": None, "s_tmax": None})  # bug
@example(cls=diffusers.EulerDiscreteScheduler, config={"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 14.6})
@example(cls=diffusers.UniPCMultistepScheduler, config={"sigma_interpolation": "log", "s_churn": 0.5})
def test_compatibles_build_from_random_configs(cls: type, config: dict[str, Any]) -> None:
    """Any valid config of ours loads into a compatible class as diffusers' KDPM2 config would."""
    check_built_from_ours(cls, config)


THEIR_CONFIGS = (
    {},
    {
        "num_train_timesteps": 200,  # short: diffusers' KDPM2 constructor loops over every training step
        "beta_schedule": "scaled_linear",
        "timestep_spacing": "leading",
        "steps_offset": 1,
        "prediction_type": "v_prediction",
    },
)


@pytest.mark.parametrize("config", THEIR_CONFIGS, ids=["default", "sd-like"])
@pytest.mark.parametrize("cls", COMPATIBLES, ids=lambda c: c.__name__)
def test_ours_builds_from_every_compatible_config(cls: type, config: dict[str, Any]) -> None:
    """Ours builds from each compatible class's config exactly as diffusers' KDPM2 does."""
    accepted = {k: v for k, v in config.items() if k in init_args(cls)}
    other = quiet(cls, **accepted)
    ours, our_unused = quiet(K.from_config, other.config, return_unused_kwargs=True)
    theirs, their_unused = quiet(D.from_config, other.config, return_unused_kwargs=True)
    for key in THEIR_ARGS:
        assert same_value(ours.config[key], theirs.config[key]), (
            f"K.from_config({cls.__name__}.config)[{key!r}]={ours.config[key]!r}, but diffusers gives "
            f"{theirs.config[key]!r} [{cls.__name__}(**{accepted!r})]"
        )
    assert set(ours.config["_use_default_values"]) - EXTRA == set(theirs.config.get("_use_default_values", []))
    assert {k: v for k, v in our_unused.items() if k not in EXTRA} == {
        k: v for k, v in their_unused.items() if k not in EXTRA
    }


def test_edm_euler_keeps_its_own_sigma_defaults() -> None:
    """The reported failure: EDMEuler's sigma bounds are its defaults, not our ``None`` (unset)."""
    edm = diffusers.EDMEulerScheduler.from_config(K().config)
    assert edm.config.sigma_min == 0.002 and edm.config.sigma_max == 80.0
    given_none = K(sigma_min=None, sigma_max=None)  # given, but None still means "not set"
    assert quiet(diffusers.EDMEulerScheduler.from_config, given_none.config).config.sigma_max == 80.0
    with tempfile.TemporaryDirectory() as directory:
        K().save_pretrained(directory)
        assert quiet(diffusers.EDMEulerScheduler.from_pretrained, directory).config.sigma_min == 0.002


# -- 2. ConfigMixin -------------------------------------------------------------------------------


def test_deprecated_kwargs_as_diffusers_checks_them() -> None:
    """``_deprecated_kwargs`` exists; with no ``**kwargs`` in ``__init__`` it must be empty (diffusers' rule)."""
    has_kwargs = "kwargs" in inspect.signature(K.__init__).parameters
    assert K._deprecated_kwargs == D._deprecated_kwargs == [] and not has_kwargs
    assert K.ignore_for_config == D.ignore_for_config == [] and K.has_compatibles and D.has_compatibles


@settings(max_examples=max(1, settings.default.max_examples // 5))
@given(config=ks.configs(ks.DIFFUSERS_ARGS))
@example(config={})
@example(config={"timestep_spacing": "linspace"})  # a default value, given explicitly
def test_use_default_values_recorded_as_diffusers(config: dict[str, Any]) -> None:
    """The names of the arguments not given, as diffusers records them (ours also lists our unset extras)."""
    ours, theirs = K(**config), quiet(D, **config)
    assert set(ours.config["_use_default_values"]) - EXTRA == set(theirs.config["_use_default_values"])
    assert set(ours.config["_use_default_values"]) & EXTRA == EXTRA  # none of ours was given
    assert list(ours.config)[-1] == "_use_default_values"


def test_from_config_honours_use_default_values_like_diffusers() -> None:
    """A value that was only a default takes the new class's default (diffusers' DDIM -> Euler example)."""
    ddim = diffusers.DDIMScheduler()  # its default spacing is "leading"
    ours, theirs = quiet(K.from_config, ddim.config), quiet(D.from_config, ddim.config)
    assert ours.config.timestep_spacing == theirs.config.timestep_spacing == "linspace"
    pinned = quiet(K.from_config, ddim.config, timestep_spacing="trailing")
    assert quiet(diffusers.LMSDiscreteScheduler.from_config, pinned.config).config.timestep_spacing == "trailing"
    euler = quiet(diffusers.EulerDiscreteScheduler.from_config, K(steps_offset=1).config)
    assert euler.config.steps_offset == 1 and euler.config.timestep_spacing == "linspace"


def test_config_keys_read_as_attributes_with_diffusers_warning() -> None:
    """``scheduler.<key>`` warns exactly as diffusers (FutureWarning); other names raise its AttributeError."""
    messages = []
    for cls in (K, D):
        s = quiet(cls)
        s.dummy_attribute = 5
        s.register_to_config(test_attribute=5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert s.dummy_attribute == 5 and callable(s.save_pretrained)
        with pytest.warns(FutureWarning) as record:
            assert s.test_attribute == 5 and s.beta_start == 0.00085
        messages.append([str(w.message) for w in record])
        with pytest.raises(AttributeError) as error:
            s.does_not_exist  # noqa: B018
        assert str(error.value) == "'KDPM2DiscreteScheduler' object has no attribute 'does_not_exist'"
    assert messages[0] == messages[1]
    assert not hasattr(K(), "keys")  # a FrozenDict method is not a config key (diffusers: KeyError)


def test_from_pretrained_subfolder_overrides_and_unused(tmp_path: pathlib.Path) -> None:
    """``subfolder`` (with diffusers' fallback to the root), keyword overrides and ``return_unused_kwargs``."""
    K(beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1).save_pretrained(tmp_path / "scheduler")
    calls = [
        ((tmp_path,), {"subfolder": "scheduler", "beta_end": 0.02, "zeta": 1, "return_unused_kwargs": True}),
        ((tmp_path / "scheduler",), {"subfolder": "missing", "cache_dir": "x", "local_files_only": True}),
        ((tmp_path / "scheduler" / "scheduler_config.json",), {"return_unused_kwargs": True}),
    ]
    for args, kwargs in calls:
        ours, theirs = quiet(K.from_pretrained, *args, **kwargs), quiet(D.from_pretrained, *args, **kwargs)
        if kwargs.get("return_unused_kwargs"):
            (ours, our_unused), (theirs, their_unused) = ours, theirs
            assert our_unused == {k: v for k, v in their_unused.items() if k not in EXTRA}
        assert {k: ours.config[k] for k in THEIR_ARGS} == {k: theirs.config[k] for k in THEIR_ARGS}
        assert ours.config["_class_name"] == theirs.config["_class_name"] == "KDPM2DiscreteScheduler"
    with pytest.raises(OSError, match=r"Error no file named scheduler_config\.json found in directory"):
        K.from_pretrained(tmp_path, subfolder="missing")
    with pytest.raises(OSError, match=r"scheduler_config\.json"):
        D.from_pretrained(tmp_path, subfolder="missing")


def test_save_pretrained_writes_diffusers_keys(tmp_path: pathlib.Path) -> None:
    """Same keys and values as diffusers' file, plus our extras; the config then records the class name."""
    config = {"beta_schedule": "scaled_linear", "use_karras_sigmas": True, "trained_betas": None}
    ours, theirs = K(**config), D(**config)
    ours.save_pretrained(tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    a = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    b = json.loads((tmp_path / "theirs" / "scheduler_config.json").read_text())
    assert {k: v for k, v in a.items() if k not in EXTRA} == b
    assert set(a) - set(b) == EXTRA - {"sigma_min", "sigma_max", "s_tmax"}  # unset bounds are not written
    for s in (ours, theirs):
        assert s.config["_class_name"] == "KDPM2DiscreteScheduler"
        assert s.config["_diffusers_version"] == b["_diffusers_version"]
    assert K.load_config(tmp_path / "ours") == a
    assert quiet(D.load_config, tmp_path / "ours") == a
    file = tmp_path / "ours" / "scheduler_config.json"
    for s in (ours, theirs):
        with pytest.raises(AssertionError, match="should be a directory, not a file"):
            s.save_config(file)
    assert json.loads(file.read_text()) == a


def test_load_config_returns_as_diffusers(tmp_path: pathlib.Path) -> None:
    """``return_unused_kwargs`` and ``return_commit_hash`` add tuple members as diffusers' (no hub: hash None)."""
    K().save_config(tmp_path)
    for kwargs in ({}, {"return_unused_kwargs": True, "zeta": 2}, {"return_commit_hash": True}):
        ours, theirs = K.load_config(tmp_path, **kwargs), D.load_config(tmp_path, **kwargs)
        assert type(ours) is type(theirs)
        if isinstance(ours, tuple):
            assert len(ours) == len(theirs) and ours[1:] == theirs[1:]


@settings(max_examples=max(1, settings.default.max_examples // 2))
@given(
    config=st.dictionaries(
        st.sampled_from(sorted(OUR_ARGS | {"clip_sample", "zeta", "_class_name", "_diffusers_version", "_x"})),
        st.sampled_from([0, 1, 0.5, "linear", None, True]),
    ),
    overrides=st.dictionaries(st.sampled_from(["beta_end", "steps_offset", "other", "sigma_min"]), st.integers(0, 2)),
)
@example(config={"_class_name": "EulerDiscreteScheduler", "interpolation_type": "linear"}, overrides={})
def test_extract_init_dict_as_diffusers(config: dict[str, Any], overrides: dict[str, Any]) -> None:
    """The three dicts equal diffusers' KDPM2's, once our extra keys are moved from unknown to known."""
    try:
        t_init, t_unused, t_hidden = quiet(D.extract_init_dict, config, **dict(overrides))
    except Exception as error:  # a non-string _class_name: the same error
        with pytest.raises(type(error), match="_class_name"):
            quiet(K.extract_init_dict, config, **dict(overrides))
        return
    init, unused, hidden = quiet(K.extract_init_dict, config, **dict(overrides))
    assert {k: v for k, v in init.items() if k not in EXTRA} == t_init
    given = {**config, **overrides}
    assert {k: v for k, v in init.items() if k in EXTRA} == {k: v for k, v in given.items() if k in EXTRA}
    assert unused == {k: v for k, v in t_unused.items() if k not in EXTRA}
    assert hidden == {k: v for k, v in t_hidden.items() if k not in EXTRA}


def test_unexpected_key_warning_text_is_diffusers(caplog: pytest.LogCaptureFixture) -> None:
    """The log line for unknown keys is diffusers' text (only the logger differs: ``kdpm2``)."""
    with caplog.at_level(logging.WARNING):
        K.from_config({"unexpected": True})
        D.from_config({"unexpected": True})
    texts = [r.getMessage() for r in caplog.records if "unexpected" in r.getMessage()]
    assert len(texts) == 2 and texts[0] == texts[1]


# -- 3. the step output -----------------------------------------------------------------------


def step_outputs() -> tuple[Any, Any]:
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(4))
    pair = []
    for cls in (K, D):
        s = cls()
        s.set_timesteps(4)
        pair.append(s.step(0.3 * x, s.timesteps[0], x))
    return pair[0], pair[1]


def test_step_output_is_an_ordered_mapping_like_base_output() -> None:
    """keys/values/items, iteration, ``out[key]``, ``out[0]``, slices, ``to_tuple()`` and dict equality."""
    ours, theirs = step_outputs()
    assert isinstance(ours, OrderedDict) and isinstance(ours, KDPM2DiscreteSchedulerOutput)
    assert list(ours.keys()) == list(theirs.keys()) == ["prev_sample", "pred_original_sample"]
    assert [type(v) for v in ours.values()] == [type(v) for v in theirs.values()]
    assert list(ours) == list(theirs) and len(ours) == len(theirs) == 2
    assert ours[0] is ours["prev_sample"] is ours.prev_sample and ours[-1] is ours.pred_original_sample
    assert ours[0:1] == (ours.prev_sample,) and ours.to_tuple() == tuple(ours.values())
    assert ours == dict(ours.items()) and dict(ours.items()) == ours and ours == OrderedDict(ours.items())
    for a, b in zip(ours.to_tuple(), theirs.to_tuple(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    prev, x0 = ours.to_tuple()  # unpacking, as pipelines do with return_dict=False
    assert prev is ours.prev_sample and x0 is ours.pred_original_sample


def test_step_output_refuses_what_base_output_refuses() -> None:
    """No deletion, pop, popitem, update, setdefault or clear; setting a field updates the mapping."""
    ours, theirs = step_outputs()
    for out in (ours, theirs):
        for call in (
            lambda o: o.__delitem__("prev_sample"),
            lambda o: o.pop("prev_sample"),
            lambda o: o.setdefault("a", 1),
            lambda o: o.update(a=1),
        ):
            with pytest.raises(Exception, match=r"(?i)cannot"):  # diffusers: a bare Exception; ours: TypeError
                call(out)
    for call in (lambda o: o.popitem(), lambda o: o.clear()):
        with pytest.raises(TypeError):
            call(ours)
    replacement = torch.zeros(1)
    ours.prev_sample = replacement
    assert ours["prev_sample"] is replacement and ours[0] is replacement
    half, their_half = KDPM2DiscreteSchedulerOutput(prev_sample=replacement), TheirOutput(prev_sample=replacement)
    assert list(half) == list(their_half) == ["prev_sample"] and half.to_tuple() == their_half.to_tuple()
    with pytest.raises(KeyError):
        half["pred_original_sample"]
    with pytest.raises(KeyError):
        their_half["pred_original_sample"]


def test_step_output_copies_and_flattens() -> None:
    """Pickle/deepcopy round trips and torch pytree flattening work as for diffusers' outputs."""
    import copy
    import pickle

    import torch.utils._pytree as pytree

    ours, _ = step_outputs()
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is type(ours) and list(clone) == list(ours)
        assert all(torch.equal(a, b) for a, b in zip(clone.values(), ours.values(), strict=True))
    leaves, spec = pytree.tree_flatten(ours)
    assert len(leaves) == 2 and leaves[0] is ours.prev_sample
    again = pytree.tree_unflatten(leaves, spec)
    assert type(again) is type(ours) and again.prev_sample is ours.prev_sample


# -- 4. the deliberate deviations (docs/migration.md) ------------------------------------------------


def test_trained_betas_of_the_wrong_length_keep_raising() -> None:
    """diffusers accepts 2 betas for 1100 training steps (its own test does); we name both numbers."""
    theirs = D(num_train_timesteps=1100, trained_betas=np.array([0.1, 0.3]))
    assert len(theirs.betas) == 2
    with pytest.raises(ValueError, match=r"num_train_timesteps=1100 values; got shape \(2,\)"):
        K(num_train_timesteps=1100, trained_betas=np.array([0.1, 0.3]))


def test_float32_loops_differ_from_diffusers_by_float32_rounding_only() -> None:
    """diffusers' own image-to-image loop (its test_full_loop_with_noise): the sums agree to 1e-6 relative."""
    n = 4 * 3 * 8 * 8
    sample0 = (torch.arange(n).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)
    noise = (torch.arange(n).flip(-1).reshape(3, 8, 8, 4) / n).permute(3, 0, 1, 2)
    sums = []
    for cls in (K, D):
        s = cls(num_train_timesteps=1100, beta_start=0.0001, beta_end=0.02)
        s.set_timesteps(10)
        timesteps = s.timesteps[8 * s.order :]
        sample = s.add_noise(sample0 * s.init_noise_sigma, noise, timesteps[:1])
        for t in timesteps:  # as diffusers' test: the scaled sample goes to step
            sample = s.scale_model_input(sample, t)
            sample = s.step(sample * t / (t + 1), t, sample).prev_sample
        sums.append(float(sample.abs().sum()))
    assert sums[1] == pytest.approx(70408.4062, abs=1e-2)  # diffusers' own expected value
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)
