"""Config files and objects under bad input (issue 11, item 9): clear errors, nothing changed.

A config file must be UTF-8 JSON holding an object; anything else is a ``ConfigFileError`` (a
``ValueError`` and, as diffusers raises, an ``OSError``) naming the file. Config keys must be
strings. The frozen config refuses every mutating method, and ``register_to_config`` accepts a
constructor argument only if the constructor would.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import warnings
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kdpm2 import KDPM2DiscreteScheduler as K
from kdpm2.configuration import CONFIG_NAME, ConfigFileError

ARGS = tuple(K._init_parameters())


def loop(scheduler: K, steps: int = 4) -> torch.Tensor:
    """A short deterministic loop with a stand-in model: the final sample."""
    scheduler.set_timesteps(steps)
    sample = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(1, 3, 2, 2) * float(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        sample = scheduler.step(0.3 * scheduler.scale_model_input(sample, t), t, sample).prev_sample
    return sample


def write(directory: pathlib.Path, content: bytes) -> pathlib.Path:
    path = directory / CONFIG_NAME
    path.write_bytes(content)
    return path


# -- files ------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)


@given(value=json_values.filter(lambda v: not isinstance(v, dict)))
@example(value=[["beta_end", 0.02], ["steps_offset", 1]])  # a list of pairs loaded silently as a dict
@example(value=None)
def test_a_file_that_is_not_a_json_object_is_refused(value: Any) -> None:
    """Arrays (a list of pairs too), strings, numbers, booleans and null: one error naming the file."""
    with tempfile.TemporaryDirectory() as directory:
        path = write(pathlib.Path(directory), json.dumps(value).encode())
        for load in (K.load_config, K.from_pretrained):
            with pytest.raises(ConfigFileError, match=rf"^config file '{path}' must hold a JSON object; got a JSON"):
                load(directory)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "its JSON is nested too deeply"),  # RecursionError before
        ('{"timestep_spacing": "trailing"}'.encode("utf-16"), "is not valid UTF-8"),
        (b'{"beta_end": 0.02,, }', r"is not valid JSON: Expecting property name enclosed in double quotes at line 1"),
        (b'{"beta_end": 0.02', "is not valid JSON: Expecting ',' delimiter at line 1 column 18"),
        (b"", "is not valid JSON: Expecting value at line 1 column 1"),
        (b'{"a": "\xff"}', "is not valid UTF-8"),
    ],
    ids=["deep", "utf-16", "double-comma", "truncated", "empty", "bad-byte"],
)
def test_unreadable_files_name_the_file(tmp_path: pathlib.Path, content: bytes, why: str) -> None:
    """Each is a ValueError and an OSError (diffusers' EnvironmentError) whose message names the file."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigFileError, match=why) as error:
        K.from_pretrained(tmp_path)
    assert isinstance(error.value, ValueError) and isinstance(error.value, OSError)
    assert str(path) in str(error.value) and len(str(error.value)) < 300


def test_a_path_given_to_from_config_loads_with_diffusers_warning(tmp_path: pathlib.Path) -> None:
    """diffusers still accepts a path in ``from_config`` (deprecated, with a FutureWarning); so do we."""
    K(steps_offset=1).save_config(tmp_path)
    with pytest.warns(FutureWarning, match="It is deprecated to pass a pretrained model name or path"):
        assert K.from_config(tmp_path).config.steps_offset == 1
    with pytest.raises(TypeError, match=r"^config must be a dict or a scheduler config, got list$"):
        K.from_config([("beta_end", 0.02)])  # type: ignore[arg-type]


# -- config objects ---------------------------------------------------------------------------------


@given(
    config=st.dictionaries(
        st.one_of(st.integers(), st.none(), st.tuples(st.text(max_size=2)), st.binary(max_size=2)),
        st.integers(),
        min_size=1,
        max_size=3,
    )
)
@example(config={1: 2})  # AttributeError ('int' object has no attribute 'startswith') before
def test_non_string_keys_are_a_type_error(config: dict[Any, Any]) -> None:
    """``from_config`` and ``extract_init_dict`` name the offending key."""
    bad = next(iter(config))
    for call in (K.from_config, K.extract_init_dict):
        with pytest.raises(TypeError, match=r"^config keys must be strings; got "):
            call(config)
    with pytest.raises(TypeError, match=type(bad).__name__):
        K.from_config(config)


MUTATIONS = {
    "pop": lambda c: c.pop("beta_end"),
    "pop-default": lambda c: c.pop("nothing", None),
    "popitem": lambda c: c.popitem(),
    "clear": lambda c: c.clear(),
    "update": lambda c: c.update(beta_end=0.5),
    "update-empty": lambda c: c.update(),
    "setdefault": lambda c: c.setdefault("zeta", 1),
    "move_to_end": lambda c: c.move_to_end("beta_end"),
    "ior": lambda c: c.__ior__({"beta_end": 0.5}),
    "setitem": lambda c: c.__setitem__("beta_end", 0.5),
    "delitem": lambda c: c.__delitem__("beta_end"),
}


@pytest.mark.parametrize("mutate", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_frozen_config_refuses_every_mutation(mutate: Any) -> None:
    """A TypeError, the config as it was, and the next loop as a fresh scheduler's (``clear`` broke it)."""
    s = K(use_karras_sigmas=True)
    before = list(s.config.items())
    with pytest.raises(TypeError, match="config is frozen"):
        mutate(s.config)
    assert list(s.config.items()) == before
    assert torch.equal(loop(s), loop(K(use_karras_sigmas=True)))


BAD_VALUES = st.sampled_from(
    ["bogus", "", None, -1, 0, 0.0, -0.5, 1.5, 2, float("nan"), float("inf"), True, [0.1], "linear", 10**6]
)


@settings(max_examples=max(10, settings.default.max_examples * 2))
@given(key=st.sampled_from(ARGS), value=BAD_VALUES)
@example(key="timestep_spacing", value="bogus")  # was stored, then silently meant "trailing"
@example(key="beta_schedule", value="cosine")
@example(key="prediction_type", value="sample")  # a valid change
def test_register_to_config_accepts_only_what_the_constructor_accepts(key: str, value: Any) -> None:
    """The constructor's verdict on the merged config: its error and an unchanged scheduler, or its value."""
    s = K()
    before = list(s.config.items())
    merged = {k: v for k, v in s.config.items() if k in ARGS} | {key: value}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = K(**merged)
    except Exception as error:  # whatever the constructor raises, the same is raised here
        with pytest.raises(type(error)):
            s.register_to_config(**{key: value})
        assert list(s.config.items()) == before, f"register_to_config({key}={value!r}) changed the config"
        assert torch.equal(loop(s), loop(K()))
        return
    s.register_to_config(**{key: value})
    assert repr(s.config[key]) == repr(probe.config[key])  # repr: NaN equals NaN
    assert [k for k, _ in s.config.items()] == [k for k, _ in before]


def test_bogus_spacing_is_refused_by_name() -> None:
    """The reported case: a ValueError naming the argument and its allowed values."""
    s = K()
    with pytest.raises(ValueError, match=r"^timestep_spacing must be one of 'linspace', 'leading', 'trailing'"):
        s.register_to_config(timestep_spacing="bogus")
    assert s.config.timestep_spacing == "linspace"
    s.register_to_config(timestep_spacing="trailing", _private=1)
    assert s.config.timestep_spacing == "trailing" and s.config["_private"] == 1
    reference = K(timestep_spacing="trailing")
    assert torch.equal(loop(s), loop(reference))
