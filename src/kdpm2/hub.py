"""Resolve a Hugging Face Hub model id to a local config file, as diffusers' ``load_config`` does.

``from_pretrained("stabilityai/stable-diffusion-xl-base-1.0", subfolder="scheduler")`` names a
file in a Hub repository. When ``huggingface_hub`` is installed it is asked for that file: it
answers from its cache (``HF_HUB_CACHE``, ``cache_dir=``; ``HF_HUB_OFFLINE=1`` or
``local_files_only=True`` never touch the network) or downloads it, with the ``revision``,
``token`` and other options passed through unchanged. ``huggingface_hub`` is optional: kdpm2
needs it only for Hub ids, and says so when it is missing.

Every failure is an ``OSError`` (diffusers raises ``EnvironmentError``, the same class) whose
message names the repository and what to do.
"""

from __future__ import annotations

import inspect
import os
import re
from typing import Any

DOWNLOAD_OPTIONS = (
    "cache_dir",
    "local_dir",
    "local_dir_use_symlinks",
    "force_download",
    "proxies",
    "token",
    "local_files_only",
    "revision",
    "mirror",
    "user_agent",
)
"""The download options of diffusers' ``load_config``; those ``hf_hub_download`` accepts are passed on."""

COMMIT_IN_PATH = re.compile(r"snapshots[\\/]([0-9a-f]{40})[\\/]")
"""A Hub cache path ``.../snapshots/<commit>/...``: the commit a cached file belongs to."""


def commit_hash(path: str) -> str | None:
    """The commit of a file in a Hub cache (``snapshots/<40 hex digits>/``), else ``None``, as diffusers."""
    match = COMMIT_IN_PATH.search(os.fspath(path))
    return match.group(1) if match else None


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def download(repo_id: str, filename: str, subfolder: str | None, options: dict[str, Any]) -> str:
    """The local path of ``subfolder/filename`` in the Hub repository ``repo_id``.

    ``options`` are diffusers' download options (``DOWNLOAD_OPTIONS``); those that the installed
    ``huggingface_hub.hf_hub_download`` does not take (``proxies`` and ``local_dir_use_symlinks``
    left it in version 1.0, ``mirror`` never was one) are dropped.
    """
    hub = _hub()
    if hub is None:
        raise OSError(
            f"{repo_id!r} is not a local file or directory, and loading it from the Hugging Face Hub needs "
            "huggingface_hub: `pip install huggingface_hub`, or pass the path of a directory that holds "
            f"{filename}"
        )
    from huggingface_hub import constants
    from huggingface_hub import utils as errors  # the error classes, in every version since 0.23

    accepted = inspect.signature(hub.hf_hub_download).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    passed = {k: v for k, v in options.items() if (k in accepted or takes_any) and k != "mirror" and v is not None}
    if "user_agent" in accepted or takes_any:
        agent = options.get("user_agent")
        passed["user_agent"] = {**(agent if isinstance(agent, dict) else {}), "file_type": "config"}
    if "library_name" in accepted:
        passed.setdefault("library_name", "kdpm2")
    revision = options.get("revision")
    where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        return str(hub.hf_hub_download(repo_id, filename, subfolder=subfolder or None, **passed))
    except errors.RepositoryNotFoundError:
        raise OSError(
            f"{repo_id!r} is not a local directory and not a model id on the Hugging Face Hub; for a private "
            "repository pass `token=` or log in with `hf auth login`"
        ) from None
    except errors.RevisionNotFoundError:
        raise OSError(f"revision {revision!r} (a branch, tag or commit) does not exist in {repo_id!r}") from None
    except errors.LocalEntryNotFoundError:
        offline = bool(options.get("local_files_only")) or constants.HF_HUB_OFFLINE
        cause = (
            "the Hub is not consulted (HF_HUB_OFFLINE=1 or local_files_only=True)"
            if offline
            else "the Hub could not be reached"
        )
        raise OSError(
            f"{_in(subfolder, filename)} of {where} is not in the Hugging Face cache "
            f"({options.get('cache_dir') or constants.HF_HUB_CACHE}) and {cause}: download it once online "
            f"(`hf download {repo_id} {_in(subfolder, filename)}`), or pass a local directory"
        ) from None
    except errors.EntryNotFoundError:
        raise OSError(f"{where} has no file {_in(subfolder, filename)}") from None
    except errors.HfHubHTTPError as error:
        raise OSError(
            f"could not load {_in(subfolder, filename)} of {where} from the Hugging Face Hub: {error}"
        ) from None
    except errors.HFValidationError as error:
        raise OSError(f"{repo_id!r} is not a local file or directory, nor a valid Hub model id: {error}") from None


def _in(subfolder: str | None, filename: str) -> str:
    return f"{subfolder}/{filename}" if subfolder else filename
