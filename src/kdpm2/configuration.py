"""Configuration handling that behaves as diffusers' ``ConfigMixin``, without importing diffusers.

A scheduler's constructor arguments are its config: readable as ``scheduler.config.name`` or
``scheduler.config["name"]`` (and, deprecated as in diffusers, ``scheduler.name`` with a
``FutureWarning``), saved as ``scheduler_config.json`` in diffusers' format, and loaded back by
``from_config`` / ``from_pretrained`` (ours or diffusers'). The rules are diffusers' 0.42.1 ones:

1. The constructor records its arguments, then ``_use_default_values``: the arguments the caller
   did not give. ``from_config`` drops those keys, so a value that was only a default takes the
   new class's default (``EDMEulerScheduler.from_config(ours.config)`` keeps its own sigmas).
2. ``extract_init_dict`` splits a config into constructor arguments, unused keys and "hidden"
   keys; keys that a compatible diffusers class knows are kept in the config, silently (when
   diffusers is imported; it is never imported for this).
3. Saved files leave out ``_use_default_values`` and record ``_class_name`` and
   ``_diffusers_version`` (in the config too, as diffusers does when it serialises).

Where diffusers lets bad input through, we do not: a config file must be UTF-8 JSON holding an
object, keys must be strings, and ``register_to_config`` re-validates constructor arguments.
The errors for unreadable files are both ``ValueError`` and ``OSError`` (diffusers raises
``EnvironmentError``), so code written for either keeps working.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from kdpm2 import hub

logger = logging.getLogger("kdpm2")

CONFIG_NAME = "scheduler_config.json"
"""File name of a saved scheduler config, as diffusers names it."""

DIFFUSERS_FORMAT_VERSION = "0.42.1"
"""The diffusers release whose config format and behaviour we reproduce."""

HUB_KWARGS = hub.DOWNLOAD_OPTIONS
"""Download options ``load_config`` accepts: passed to ``huggingface_hub`` for a Hub id, unused for a local path."""

NOT_SAVED = ("_ignore_files", "_use_default_values", "_pre_quantization_dtype")
"""Config keys diffusers keeps in memory but never writes to a file."""


class ConfigFileError(ValueError, OSError):
    """A config file or object that cannot be a config: a ``ValueError``, and an ``OSError`` as in diffusers."""


class NotADirectoryConfigError(ValueError, AssertionError):
    """``save_config`` was given a file: a ``ValueError``, and the ``AssertionError`` diffusers raises."""


class FrozenDict(OrderedDict[str, Any]):
    """An immutable ordered dict whose keys are also attributes, like diffusers' FrozenDict.

    Every mutating method raises ``TypeError`` (diffusers raises a bare ``Exception`` for the
    same calls), so a config cannot change behind the scheduler's back.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # keys are also instance attributes, as diffusers sets them: ``config.name`` is then a plain
        # attribute read (``__getattr__`` runs only for a missing name); method names stay methods
        attributes = self.__dict__
        for key, value in self.items():
            if isinstance(key, str) and not hasattr(FrozenDict, key):
                attributes[key] = value
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

    def _refuse(self, method: str) -> Any:
        raise TypeError(f"config is frozen; cannot use {method}")

    def pop(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("pop")

    def popitem(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("popitem")

    def clear(self) -> None:
        self._refuse("clear")

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("update")

    def setdefault(self, *args: Any, **kwargs: Any) -> Any:
        return self._refuse("setdefault")

    def move_to_end(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("move_to_end")

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]
        return self._refuse("|=")

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
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _string_keys(config: Mapping[Any, Any], where: str) -> None:
    """Every key of a config must be a string (diffusers fails later with an AttributeError)."""
    for key in config:
        if not isinstance(key, str):
            raise TypeError(f"{where} keys must be strings; got {key!r} ({type(key).__name__})")


def _read_json_object(path: str) -> dict[str, Any]:
    """The JSON object in ``path``; any other content is a ``ConfigFileError`` naming the file."""
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigFileError(f"config file {path!r} is not valid UTF-8: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigFileError(
            f"config file {path!r} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    except RecursionError:
        raise ConfigFileError(f"config file {path!r} is not a config: its JSON is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path!r} must hold a JSON object; got a JSON {type(data).__name__}")
    return data


def _records_config(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a constructor so the config also records private keys and ``_use_default_values``.

    As diffusers' ``register_to_config`` decorator: keyword arguments starting with ``_`` go to
    the config, not the constructor; the arguments not given are listed (in signature order) under
    ``_use_default_values``, with the ``_unset_when_none`` arguments left at ``None``.
    """
    names = [
        name
        for name, p in inspect.signature(init).parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]

    @functools.wraps(init)
    def recording_init(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        public = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        init(self, *args, **public)
        given = set(names[: len(args)]) | set(public)
        config = dict(self._internal_dict)
        unset = set(getattr(self, "_unset_when_none", ()))
        defaults = [n for n in names if n not in given or (n in unset and config.get(n) is None)]
        recorded = {**private, **config}
        if defaults:
            recorded["_use_default_values"] = defaults
        self._internal_dict = FrozenDict(recorded)
        _expose_config(type(self), recorded)

    recording_init._records_config = True  # type: ignore[attr-defined]
    return recording_init


class _ConfigAttribute:
    """``scheduler.<key>``: a config key read as an attribute, deprecated as in diffusers (``FutureWarning``).

    diffusers does this with ``__getattr__``; a class with ``__getattr__`` loses CPython's
    attribute specialisation, so that every ``self.x`` on the hot path costs about three times as
    much. One non-data descriptor per config key instead: an instance attribute of the same name
    still wins, a class attribute (method, property) is never shadowed (``_expose_config``), and an
    instance whose config lacks the key raises diffusers' ``AttributeError``.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        name = self.name
        if instance is None:
            raise AttributeError(f"type object '{getattr(owner, '__name__', '?')}' has no attribute '{name}'")
        kind = type(instance).__name__
        config = instance.__dict__.get("_internal_dict")
        if config is not None and name in config:
            warnings.warn(
                f"Accessing config attribute `{name}` directly via '{kind}' object attribute is deprecated. "
                f"Please access '{name}' over '{kind}'s config object instead, e.g. 'scheduler.config.{name}'.",
                FutureWarning,
                stacklevel=2,
            )
            return config[name]
        raise AttributeError(f"'{kind}' object has no attribute '{name}'")


def _expose_config(cls: type, keys: Any) -> None:
    """Make each config key in ``keys`` readable as a (deprecated) attribute of ``cls``'s instances.

    Names that ``cls`` or a base already defines (methods, properties, class attributes) keep their
    meaning, as with diffusers' ``__getattr__``, which only runs when the normal lookup fails.
    """
    for name in keys:
        if (
            isinstance(name, str)
            and name.isidentifier()
            and not name.startswith("__")
            and not any(name in k.__dict__ for k in cls.__mro__)
        ):
            setattr(cls, name, _ConfigAttribute(name))


class ConfigMixin:
    """Stores constructor arguments as a frozen config and (de)serialises it like diffusers.

    It has no ``__getattr__`` (see ``_ConfigAttribute``): config keys read as attributes through
    one descriptor per key, installed on the class when a config holding the key is recorded.
    """

    config_name = CONFIG_NAME
    ignore_for_config: ClassVar[list[str]] = []
    has_compatibles = True
    _compatibles: ClassVar[list[str]] = []
    _deprecated_kwargs: ClassVar[list[str]] = []
    _unset_when_none: ClassVar[tuple[str, ...]] = ()
    """Arguments whose ``None`` means "not set": recorded as defaults and not written to files."""
    _internal_dict: FrozenDict

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_config", False):
            cls.__init__ = _records_config(init)  # type: ignore[method-assign]
        _expose_config(cls, cls._init_parameters())

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or replace config entries (diffusers pipelines call this to patch configs).

        New values of constructor arguments are validated by building a scheduler from the merged
        config: an invalid one raises that constructor's error and leaves the config unchanged.
        """
        kwargs.pop("kwargs", None)
        _string_keys(kwargs, "register_to_config")
        current = self.__dict__.get("_internal_dict")
        _expose_config(type(self), kwargs)
        if current is None:
            self._internal_dict = FrozenDict(kwargs)
            return
        merged = {**current, **kwargs}
        params = self._init_parameters()
        changed = [k for k in kwargs if k in params]
        if changed:
            probe = type(self)(**{k: merged[k] for k in params if k in merged})
            merged.update({k: probe.config[k] for k in changed})
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
    def _get_compatibles(cls) -> list[type]:
        """The diffusers classes named in ``_compatibles`` (and our name), if diffusers is imported.

        diffusers is not imported for this (it takes seconds): without it, the only difference is
        that keys of its classes are logged as unexpected instead of kept silently.
        """
        diffusers = sys.modules.get("diffusers")
        if diffusers is None:
            return []
        names = [cls.__name__] + [n for n in cls._compatibles if n != cls.__name__]
        return [getattr(diffusers, n) for n in names if hasattr(diffusers, n)]

    @classmethod
    def extract_init_dict(
        cls, config_dict: Mapping[str, Any], **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Split a config into constructor arguments, unused keys and hidden keys, as diffusers does.

        Keys listed in ``_use_default_values`` are dropped (the defaults of this class apply);
        keyword arguments override the config; keys that only a compatible class or the config's
        ``_class_name`` class knows are dropped silently; other unknown keys are logged.
        """
        if not isinstance(config_dict, Mapping):
            raise TypeError(f"config must be a dict or a scheduler config, got {type(config_dict).__name__}")
        _string_keys(config_dict, "config")
        used_defaults = config_dict.get("_use_default_values", [])
        config = {k: v for k, v in config_dict.items() if k not in used_defaults and k != "_use_default_values"}
        original = dict(config)
        expected = set(cls._init_parameters()) - set(cls.ignore_for_config)
        own = set(inspect.signature(cls.__init__).parameters)
        if cls.has_compatibles:
            compatible_keys: set[str] = set()
            for other in cls._get_compatibles():
                compatible_keys |= set(inspect.signature(other).parameters) | {"self"}
            config = {k: v for k, v in config.items() if k not in compatible_keys - own}
        origin = config.pop("_class_name", cls.__name__)
        if isinstance(origin, str):
            if origin != cls.__name__:
                source = getattr(sys.modules.get("diffusers"), origin, None)
                if source is not None:
                    foreign = set(inspect.signature(source.__init__).parameters) - expected
                    config = {k: v for k, v in config.items() if k not in foreign}
        elif not isinstance(origin, (list, tuple)):
            raise ValueError(
                "Make sure that the `_class_name` is of type string or list of string (for custom pipelines)."
            )
        config = {k: v for k, v in config.items() if not k.startswith("_") and k != "quantization_config"}
        init: dict[str, Any] = {}
        for key in cls._init_parameters():
            if key not in expected:
                continue
            if key in kwargs:
                config.pop(key, None)
                init[key] = kwargs.pop(key)
            elif key in config:
                init[key] = config.pop(key)
        if config:
            logger.warning(
                f"The config attributes {config} were passed to {cls.__name__}, but are not expected and will be "
                f"ignored. Please verify your {cls.config_name} configuration file."
            )
        missing = expected - set(init)
        if missing:
            logger.info(f"{missing} was not found in config. Values will be initialized to default values.")
        unused = {**config, **kwargs}
        hidden = {k: v for k, v in original.items() if k not in init}
        return init, unused, hidden

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs: Any
    ) -> Any:
        """Build a scheduler from a config (ours, diffusers', or a plain dict), as diffusers does.

        Keyword arguments override the config; keys of other classes are kept in the new config
        (so it loads back into them) and returned with ``return_unused_kwargs=True``.
        """
        if "pretrained_model_name_or_path" in kwargs:
            config = kwargs.pop("pretrained_model_name_or_path")
        if config is None:
            raise ValueError("Please make sure to provide a config as the first positional argument.")
        if isinstance(config, (str, os.PathLike)):
            warnings.warn(
                "It is deprecated to pass a pretrained model name or path to `from_config`. If you were trying to "
                f"load a scheduler, please use {cls}.from_pretrained(...) instead. Otherwise, please make sure to "
                "pass a configuration dictionary instead. This functionality will be removed in v1.0.0.",
                FutureWarning,
                stacklevel=2,
            )
            config, kwargs = cls.load_config(config, return_unused_kwargs=True, **kwargs)
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict or a scheduler config, got {type(config).__name__}")
        init, unused, hidden = cls.extract_init_dict(config, **kwargs)
        if "dtype" in unused:
            init["dtype"] = unused.pop("dtype")
        for name in cls._deprecated_kwargs:
            if name in unused:
                init[name] = unused.pop(name)
        scheduler = cls(**init)
        if "_class_name" in hidden:
            hidden["_class_name"] = cls.__name__
        scheduler.register_to_config(**hidden)
        unused = {**unused, **hidden}
        if return_unused_kwargs:
            return scheduler, unused
        return scheduler

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        return_unused_kwargs: bool = False,
        return_commit_hash: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Read ``scheduler_config.json`` from a local directory or file, or from a Hugging Face Hub model id.

        As diffusers: a directory's ``subfolder`` is tried first, then the directory itself; any
        other string is a Hub id (``"stabilityai/stable-diffusion-xl-base-1.0"``), resolved
        through ``huggingface_hub`` when it is installed (its cache first; ``revision``,
        ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` are passed on, and
        ``HF_HUB_OFFLINE=1`` keeps it off the network). The remaining keyword arguments come back
        with ``return_unused_kwargs``; ``return_commit_hash`` adds the commit of a file from the
        Hub cache (``None`` for a local path).
        """
        options = {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}
        subfolder = kwargs.pop("subfolder", None)
        path = os.fspath(pretrained_model_name_or_path)
        if not isinstance(path, str):
            raise TypeError(f"pretrained_model_name_or_path must be a path; got {type(path).__name__}")
        if os.path.isfile(path):
            config_file = path
        elif os.path.isdir(path):
            nested = os.path.join(path, subfolder, cls.config_name) if subfolder is not None else None
            if nested is not None and os.path.isfile(nested):
                config_file = nested
            elif os.path.isfile(os.path.join(path, cls.config_name)):
                config_file = os.path.join(path, cls.config_name)
            else:
                raise OSError(f"Error no file named {cls.config_name} found in directory {path}.")
        elif os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1:
            raise OSError(
                f"{path!r} is not a local file or directory (nor a Hugging Face Hub id, which reads 'name' or 'org/name')"
            )
        else:
            config_file = hub.download(path, cls.config_name, subfolder, options)
        config = _read_json_object(config_file)
        outputs: tuple[Any, ...] = (config,)
        if return_unused_kwargs:
            outputs += (kwargs,)
        if return_commit_hash:
            outputs += (hub.commit_hash(config_file),)
        return outputs if len(outputs) > 1 else config

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        return_unused_kwargs: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Load a scheduler from a directory saved by ``save_pretrained`` (here or in diffusers) or a Hub id.

        ``KDPM2DiscreteScheduler.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0",
        subfolder="scheduler")`` reads that repository's scheduler config through
        ``huggingface_hub`` (see ``load_config`` for the download options).
        """
        config, kwargs, _ = cls.load_config(
            pretrained_model_name_or_path,
            subfolder=subfolder,
            return_unused_kwargs=True,
            return_commit_hash=True,
            **kwargs,
        )
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def _saved_dict(self) -> dict[str, Any]:
        """What a saved file holds: the config with the class name and format version, minus unsaved keys."""
        unset = set(self._unset_when_none)
        data = {
            k: _jsonable(v) for k, v in self.config.items() if k not in NOT_SAVED and not (k in unset and v is None)
        }
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return data

    def to_json_string(self) -> str:
        """The config as diffusers writes it: sorted keys, class name and format version.

        As in diffusers, serialising records ``_class_name`` and ``_diffusers_version`` in the
        config itself, so a saved and reloaded scheduler has the same config as the saved one.
        """
        data = self._saved_dict()
        self._internal_dict = FrozenDict(
            {**self.config, "_class_name": data["_class_name"], "_diffusers_version": data["_diffusers_version"]}
        )
        _expose_config(type(self), ("_class_name", "_diffusers_version"))
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str | os.PathLike[str]) -> None:
        """Write ``to_json_string`` to ``json_file_path``."""
        with open(json_file_path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self._saved_dict(), indent=2, sort_keys=True)}\n"

    def save_config(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write ``scheduler_config.json`` into ``save_directory`` (created if needed)."""
        if push_to_hub:
            raise ValueError("push_to_hub is not supported: kdpm2 saves to local directories only")
        directory = os.fspath(save_directory)
        if os.path.isfile(directory):
            raise NotADirectoryConfigError(f"Provided path ({directory}) should be a directory, not a file")
        os.makedirs(directory, exist_ok=True)
        self.to_json_file(os.path.join(directory, self.config_name))
        logger.info(f"Configuration saved in {os.path.join(directory, self.config_name)}")

    def save_pretrained(self, save_directory: str | os.PathLike[str], push_to_hub: bool = False, **kwargs: Any) -> None:
        """Same as ``save_config``, the name pipelines call."""
        self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
