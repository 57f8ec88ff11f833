"""Configuration handling compatible with diffusers' ``ConfigMixin``, without diffusers.

A scheduler's constructor arguments are its config: readable as ``scheduler.config.name`` or
``scheduler.config["name"]``, saved as ``scheduler_config.json`` in diffusers' format, and
loaded back by ``from_config`` / ``from_pretrained`` (ours or diffusers').
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import OrderedDict
from typing import Any

import numpy as np

logger = logging.getLogger("kdpm2")

CONFIG_NAME = "scheduler_config.json"
"""File name of a saved scheduler config, as diffusers names it."""

DIFFUSERS_FORMAT_VERSION = "0.42.1"
"""The diffusers release whose config format and behaviour we reproduce."""


class FrozenDict(OrderedDict[str, Any]):
    """An immutable ordered dict whose keys are also attributes, like diffusers' FrozenDict."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__frozen = True

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_FrozenDict__frozen", False):
            raise AttributeError(f"config is frozen; cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __setitem__(self, name: str, value: Any) -> None:
        if getattr(self, "_FrozenDict__frozen", False):
            raise TypeError(f"config is frozen; cannot set {name!r}")
        super().__setitem__(name, value)

    def __delitem__(self, name: str) -> None:
        raise TypeError(f"config is frozen; cannot delete {name!r}")

    def __reduce__(self) -> Any:
        return (FrozenDict, (list(self.items()),))

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict:
        import copy

        return FrozenDict((k, copy.deepcopy(v, memo)) for k, v in self.items())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class ConfigMixin:
    """Stores constructor arguments as a frozen config and (de)serialises it like diffusers."""

    config_name = CONFIG_NAME
    _internal_dict: FrozenDict

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or replace config entries (diffusers pipelines call this to patch configs)."""
        merged = dict(getattr(self, "_internal_dict", {}))
        merged.update(kwargs)
        self._internal_dict = FrozenDict(merged)

    @property
    def config(self) -> FrozenDict:
        """The constructor arguments as a frozen dict with attribute access."""
        return self._internal_dict

    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        params = inspect.signature(cls.__init__).parameters
        return {k: p for k, p in params.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}

    @classmethod
    def extract_init_dict(cls, config: dict[str, Any], **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split a config into our constructor arguments and the keys we do not know."""
        params = cls._init_parameters()
        merged = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        merged.update(kwargs)
        init = {k: v for k, v in merged.items() if k in params}
        unused = {k: v for k, v in merged.items() if k not in params}
        return init, unused

    @classmethod
    def from_config(
        cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> Any:
        """Build a scheduler from a config (ours, diffusers', or a plain dict); unknown keys are ignored."""
        if config is None:
            config = {}
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict or a scheduler config, got {type(config).__name__}")
        init, unused = cls.extract_init_dict(config, **kwargs)
        if unused:
            logger.warning(
                "The config attributes %s were passed to %s, but are not expected and will be ignored.",
                sorted(unused),
                cls.__name__,
            )
        scheduler = cls(**init)
        if return_unused_kwargs:
            return scheduler, unused
        return scheduler

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike[str], subfolder: str | None = None) -> dict:
        """Read ``scheduler_config.json`` from a local directory (or a path to the file itself)."""
        path = os.fspath(pretrained_model_name_or_path)
        if subfolder:
            path = os.path.join(path, subfolder)
        if os.path.isdir(path):
            path = os.path.join(path, cls.config_name)
        if not os.path.isfile(path):
            raise OSError(f"no {cls.config_name} found at {path!r} (only local directories are supported)")
        with open(path, encoding="utf-8") as handle:
            return dict(json.load(handle))

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], subfolder: str | None = None, **kwargs: Any
    ) -> Any:
        """Load a scheduler saved by ``save_pretrained`` here or in diffusers (local directories)."""
        return cls.from_config(cls.load_config(pretrained_model_name_or_path, subfolder=subfolder), **kwargs)

    def to_json_string(self) -> str:
        """The config as diffusers writes it: sorted keys, class name and format version."""
        data = {k: _jsonable(v) for k, v in self.config.items() if not k.startswith("_")}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``scheduler_config.json`` into ``save_directory`` (created if needed)."""
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: kdpm2 saves to local directories only")
        directory = os.fspath(save_directory)
        if os.path.isfile(directory):
            raise ValueError(f"save_directory ({directory!r}) must be a directory, not a file")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self.config_name), "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Same as :meth:`save_config`, the name pipelines call."""
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
