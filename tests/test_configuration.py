"""``kdpm2.configuration`` without diffusers: the frozen config, (de)serialisation and error messages.

The round trips with diffusers itself are in ``test_sched_config.py``; these are the fast checks of
each method's contract (diffusers' behaviour where it has one).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2.configuration import CONFIG_NAME, DIFFUSERS_FORMAT_VERSION, FrozenDict

# -- FrozenDict ------------------------------------------------------------------------------


def test_frozen_dict_reads_as_keys_and_attributes() -> None:
    """Keys read as items and attributes, in insertion order; a missing name is an AttributeError naming it."""
    d = FrozenDict([("b", 1), ("a", [2])])
    assert list(d) == ["b", "a"] and d.b == 1 and d["a"] == [2]
    with pytest.raises(AttributeError, match=r"^config has no attribute 'zeta'$"):
        d.zeta  # noqa: B018
    assert not hasattr(d, "zeta")


def test_frozen_dict_refuses_every_change() -> None:
    """Setting an attribute or item, deleting, and the mutating dict methods all raise."""
    d = FrozenDict(a=1)
    with pytest.raises(AttributeError, match=r"^config is frozen; cannot set 'a'$"):
        d.a = 2
    with pytest.raises(TypeError, match=r"^config is frozen; cannot set 'b'$"):
        d["b"] = 2
    with pytest.raises(TypeError, match=r"^config is frozen; cannot delete 'a'$"):
        del d["a"]
    with pytest.raises(TypeError):
        d.update(c=3)
    with pytest.raises(TypeError):
        d.setdefault("c", 3)
    assert dict(d) == {"a": 1}


def test_frozen_dict_deepcopy_keeps_shared_values_shared() -> None:
    """Like ``copy.deepcopy`` of a dict: a value referenced twice is copied once (the memo is passed on)."""
    shared = [1.0, 2.0]
    d = FrozenDict(a=shared, b=shared)
    clone = copy.deepcopy(d)
    assert clone["a"] is clone["b"] and clone["a"] is not shared


def test_frozen_dict_copies_stay_frozen_and_equal() -> None:
    """Pickle and deepcopy give an equal, ordered, still frozen dict whose values are copies."""
    d = FrozenDict([("z", [1, 2]), ("y", "text")])
    for clone in (pickle.loads(pickle.dumps(d)), copy.deepcopy(d)):
        assert type(clone) is FrozenDict and list(clone.items()) == list(d.items())
        assert clone["z"] is not d["z"]
        with pytest.raises(TypeError):
            clone["z"] = 0


# -- config of a scheduler -------------------------------------------------------------------


def test_config_holds_every_constructor_argument() -> None:
    """``config`` has each constructor argument, given or default, then the defaults' names (diffusers)."""
    s = KDPM2DiscreteScheduler(beta_schedule="scaled_linear", steps_offset=1)
    params = KDPM2DiscreteScheduler._init_parameters()
    assert list(s.config) == [*params, "_use_default_values"]
    assert s.config._use_default_values == [k for k in params if k not in ("beta_schedule", "steps_offset")]
    assert s.config.beta_schedule == "scaled_linear" and s.config["steps_offset"] == 1
    assert all(s.config[k] == p.default for k, p in params.items() if k not in ("beta_schedule", "steps_offset"))
    given = KDPM2DiscreteScheduler(**{k: p.default for k, p in params.items()})
    assert given.config._use_default_values == ["sigma_min", "sigma_max", "s_tmax"]  # None means "not set"


def test_register_to_config_adds_and_replaces() -> None:
    """Pipelines patch configs this way: new keys are added, existing ones replaced, the rest kept."""
    s = KDPM2DiscreteScheduler()
    before = dict(s.config)
    s.register_to_config(steps_offset=1, _extra="x")
    assert s.config.steps_offset == 1 and s.config._extra == "x"
    assert {k: v for k, v in s.config.items() if k not in ("steps_offset", "_extra")} == {
        k: v for k, v in before.items() if k != "steps_offset"
    }
    assert isinstance(s.config, FrozenDict)


def test_extract_init_dict_splits_known_and_unknown_keys() -> None:
    """Private keys are dropped, keyword arguments override, unknown keys come back separately (3-tuple)."""
    init, unused, hidden = KDPM2DiscreteScheduler.extract_init_dict(
        {"_class_name": "X", "beta_end": 0.02, "zeta": True, "steps_offset": 0}, steps_offset=1, other=3
    )
    assert init == {"beta_end": 0.02, "steps_offset": 1}
    assert unused == {"zeta": True, "other": 3}
    assert hidden == {"_class_name": "X", "zeta": True}


def test_from_config_defaults_overrides_and_unused(caplog: pytest.LogCaptureFixture) -> None:
    """``from_config()`` needs a config; unknown keys are logged (diffusers' text) and optionally returned."""
    with pytest.raises(ValueError, match=r"^Please make sure to provide a config as the first positional argument\.$"):
        KDPM2DiscreteScheduler.from_config()
    config = {"beta_end": 0.02, "zeta": 1, "alpha": 2, "_diffusers_version": "0.1"}
    with caplog.at_level(logging.WARNING, logger="kdpm2"):
        s = KDPM2DiscreteScheduler.from_config(config, steps_offset=1)
    assert s.config.beta_end == 0.02 and s.config.steps_offset == 1
    assert [r.getMessage() for r in caplog.records] == [
        "The config attributes {'zeta': 1, 'alpha': 2} were passed to KDPM2DiscreteScheduler, "
        "but are not expected and will be ignored. Please verify your scheduler_config.json configuration file."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kdpm2"):
        s, unused = KDPM2DiscreteScheduler.from_config(s.config, return_unused_kwargs=True)
    assert unused == {"zeta": 1, "alpha": 2, "_diffusers_version": "0.1"}  # kept for other classes
    assert len(caplog.records) == 1 and s.config.steps_offset == 1  # the kept keys are reported again
    with pytest.raises(TypeError, match=r"^config must be a dict or a scheduler config, got list$"):
        KDPM2DiscreteScheduler.from_config([("beta_end", 0.02)])  # type: ignore[arg-type]


def test_to_json_string_is_diffusers_format() -> None:
    """Sorted keys, two-space indent, a final newline, the class name and format version; arrays as lists."""
    betas = np.linspace(1e-4, 0.02, 10)
    s = KDPM2DiscreteScheduler(num_train_timesteps=10, trained_betas=betas)
    text = s.to_json_string()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert data["_class_name"] == "KDPM2DiscreteScheduler"
    assert data["_diffusers_version"] == DIFFUSERS_FORMAT_VERSION
    assert data["trained_betas"] == betas.tolist()
    unset = KDPM2DiscreteScheduler._unset_when_none
    public = {k: v for k, v in s.config.items() if not k.startswith("_") and not (k in unset and v is None)}
    assert {k: v for k, v in data.items() if not k.startswith("_")} == json.loads(json.dumps(public))
    s.register_to_config(_private=1, where=pathlib.PurePosixPath("a/b"), table=torch.tensor([1.5, 2.5]))
    s.register_to_config(count=np.int64(3), name="text")
    data = json.loads(s.to_json_string())
    assert data["_private"] == 1 and "_use_default_values" not in data and data["where"] == "a/b"
    assert data["table"] == [1.5, 2.5] and data["count"] == 3 and data["name"] == "text"


def test_save_and_load_round_trip(tmp_path: pathlib.Path) -> None:
    """``save_pretrained`` writes ``scheduler_config.json`` (creating directories); every loader reads it back."""
    s = KDPM2DiscreteScheduler(use_karras_sigmas=True, beta_end=0.02, s_churn=0.5)
    target = tmp_path / "new" / "scheduler"
    s.save_pretrained(target)
    path = target / CONFIG_NAME
    assert CONFIG_NAME == "scheduler_config.json" and path.read_text() == s.to_json_string()
    s.save_config(os.fspath(target))
    assert path.read_text() == s.to_json_string()
    for loaded in (
        KDPM2DiscreteScheduler.from_pretrained(target),
        KDPM2DiscreteScheduler.from_pretrained(tmp_path / "new", subfolder="scheduler"),
        KDPM2DiscreteScheduler.from_config(KDPM2DiscreteScheduler.load_config(path)),
    ):  # a file keeps no _use_default_values, and no unset (None) sigma bounds: those are recorded again
        assert dict(loaded.config) == {**s.config, "_use_default_values": ["sigma_min", "sigma_max", "s_tmax"]}
    again = KDPM2DiscreteScheduler.from_pretrained(target, beta_end=0.015)
    assert again.config.beta_end == 0.015 and again.config.use_karras_sigmas
    assert KDPM2DiscreteScheduler.load_config(target, subfolder="") == json.loads(path.read_text())


def test_save_and_load_errors(tmp_path: pathlib.Path) -> None:
    """No hub, no file as a directory, and a missing config names the path it looked at."""
    s = KDPM2DiscreteScheduler()
    with pytest.raises(ValueError, match=r"^push_to_hub is not supported: kdpm2 saves to local directories only$"):
        s.save_config(tmp_path, push_to_hub=True)
    with pytest.raises(ValueError, match=r"^push_to_hub is not supported"):
        s.save_pretrained(tmp_path, push_to_hub=True)
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(ValueError, match=r"should be a directory, not a file$"):
        s.save_pretrained(file)
    with pytest.raises(AssertionError):  # what diffusers raises
        s.save_pretrained(file)
    assert not (tmp_path / CONFIG_NAME).exists()
    with pytest.raises(OSError, match=r"^'.*/nothing' is not a local file or directory \(nor a Hugging Face Hub id"):
        KDPM2DiscreteScheduler.from_pretrained(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match=r"^Error no file named scheduler_config.json found in directory .*/empty\.$"):
        KDPM2DiscreteScheduler.load_config(empty, subfolder="nothing")


def test_no_class_in_the_scheduler_mro_defines_getattr() -> None:
    """A ``__getattr__`` anywhere in the MRO turns off CPython's attribute specialisation on the hot path.

    Config keys still read as attributes (with diffusers' FutureWarning) through one descriptor per
    key; instance attributes win over them, class attributes are never shadowed.
    """
    import warnings

    from kdpm2 import KDPM2DiscreteScheduler

    assert not any("__getattr__" in vars(k) for k in KDPM2DiscreteScheduler.__mro__)
    s = KDPM2DiscreteScheduler()
    s.register_to_config(brand_new_key=3)
    with pytest.warns(FutureWarning, match="brand_new_key"):
        assert s.brand_new_key == 3
    with pytest.raises(AttributeError, match="'KDPM2DiscreteScheduler' object has no attribute 'brand_new_key'"):
        KDPM2DiscreteScheduler().brand_new_key  # noqa: B018  # another instance without the key
    s.brand_new_key = 4  # an instance attribute shadows the config key, as with diffusers' __getattr__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert s.brand_new_key == 4 and callable(s.set_timesteps) and s.order == 2
    assert s.config.num_train_timesteps == 1000 and "keys" not in vars(s.config)
