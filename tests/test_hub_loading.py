"""``from_pretrained`` / ``load_config`` with a Hugging Face Hub model id, offline.

Each test builds the layout ``huggingface_hub`` keeps in its cache (``models--org--name/`` with
``refs/<branch or tag>`` holding a commit, ``snapshots/<commit>/...`` linking to ``blobs/``) in a
temporary folder, so no test reaches the network: the in-process tests also switch
``huggingface_hub`` to offline mode, and the ``HF_HUB_OFFLINE`` test runs in a subprocess with the
variable set, as a user would. The config is the scheduler config of Stable Diffusion XL base 1.0
as published (an ``EulerDiscreteScheduler`` config); diffusers reading the same cache is the oracle.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from kdpm2 import KDPM2DiscreteScheduler
from kdpm2 import hub as kdpm2_hub

huggingface_hub = pytest.importorskip("huggingface_hub")
hub_constants = pytest.importorskip("huggingface_hub.constants")

ROOT = Path(__file__).resolve().parents[1]
REPO = "stabilityai/stable-diffusion-xl-base-1.0"
MAIN = "462165984030d82259a11f4367a4eed129e94a7b"
TAGGED = "76d28af79639c28a79fa5c6c6468febd3490a37e"
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def cache_file(cache: Path, repo: str, commit: str, relative: str, content: bytes) -> Path:
    """Put ``content`` in a Hub cache as huggingface_hub does: a blob, and a snapshot entry linking to it."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    entry = folder / "snapshots" / commit / relative
    entry.parent.mkdir(parents=True, exist_ok=True)
    try:
        entry.symlink_to(os.path.relpath(blob, entry.parent))
    except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies too
        entry.write_bytes(content)
    return entry


def set_ref(cache: Path, repo: str, ref: str, commit: str) -> None:
    path = cache / ("models--" + repo.replace("/", "--")) / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(commit)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hub cache with SDXL's scheduler config on ``main`` and a different one under the tag ``v0.9``."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    root = tmp_path / "hub"
    cache_file(root, REPO, MAIN, "scheduler/scheduler_config.json", json.dumps(SDXL_SCHEDULER).encode())
    set_ref(root, REPO, "main", MAIN)
    older = {**SDXL_SCHEDULER, "timestep_spacing": "trailing", "steps_offset": 0}
    cache_file(root, REPO, TAGGED, "scheduler/scheduler_config.json", json.dumps(older).encode())
    set_ref(root, REPO, "v0.9", TAGGED)
    return root


def test_hub_id_loads_from_the_cache(cache: Path) -> None:
    """The diffusers idiom gives the scheduler of that config: SDXL's betas and leading spacing."""
    scheduler = KDPM2DiscreteScheduler.from_pretrained(REPO, subfolder="scheduler", cache_dir=cache)
    expected = KDPM2DiscreteScheduler.from_config(SDXL_SCHEDULER)
    assert dict(scheduler.config) == dict(expected.config)
    assert scheduler.config.beta_end == 0.012 and scheduler.config.timestep_spacing == "leading"
    assert scheduler.config.steps_offset == 1


def test_revision_picks_the_snapshot_and_the_commit_comes_back(cache: Path) -> None:
    """``revision`` as a branch, a tag or a commit resolves through ``refs/``; the commit is returned."""
    for revision, commit, spacing in (
        (None, MAIN, "leading"),
        ("v0.9", TAGGED, "trailing"),
        (TAGGED, TAGGED, "trailing"),
    ):
        config, unused, found = KDPM2DiscreteScheduler.load_config(
            REPO,
            subfolder="scheduler",
            cache_dir=cache,
            revision=revision,
            return_unused_kwargs=True,
            return_commit_hash=True,
            extra=1,
        )
        assert (found, config["timestep_spacing"], unused) == (commit, spacing, {"extra": 1})


def test_agrees_with_diffusers_on_the_same_cache(cache: Path) -> None:
    """diffusers' own ``load_config`` reads the same file and commit from the same cache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diffusers = pytest.importorskip("diffusers")
    for revision in (None, "v0.9"):
        kwargs = {"subfolder": "scheduler", "cache_dir": cache, "revision": revision, "return_commit_hash": True}
        with warnings.catch_warnings():  # diffusers passes huggingface_hub a deprecated option
            warnings.simplefilter("ignore")
            theirs = diffusers.KDPM2DiscreteScheduler.load_config(REPO, return_unused_kwargs=True, **kwargs)
        ours = KDPM2DiscreteScheduler.load_config(REPO, return_unused_kwargs=True, **kwargs)
        assert ours == theirs


def test_local_files_only_and_offline_fail_clearly_when_not_cached(cache: Path) -> None:
    """A file that is not cached is an OSError naming the repository, the cache and the way out."""
    with pytest.raises(OSError, match=r"'stabilityai/other' is not in the Hugging Face cache .*HF_HUB_OFFLINE=1"):
        KDPM2DiscreteScheduler.from_pretrained("stabilityai/other", subfolder="scheduler", cache_dir=cache)
    with pytest.raises(OSError, match=r"at revision 'v2' is not in the Hugging Face cache"):
        KDPM2DiscreteScheduler.from_pretrained(REPO, subfolder="scheduler", cache_dir=cache, revision="v2")
    with pytest.raises(OSError, match=r"unet/scheduler_config.json of 'stabilityai/.*' is not in the"):
        KDPM2DiscreteScheduler.from_pretrained(REPO, subfolder="unet", cache_dir=cache, local_files_only=True)
    with pytest.raises(OSError, match=r"'bad id!/x' is not a local file or directory, nor a valid Hub model id"):
        KDPM2DiscreteScheduler.load_config("bad id!/x", cache_dir=cache)


def test_download_options_reach_huggingface_hub_unchanged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """token, revision, cache_dir, force_download and local_files_only are passed on as given."""
    seen: dict = {}
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(SDXL_SCHEDULER))

    def fake(repo_id: str, filename: str, **kwargs: object) -> str:
        seen.update(kwargs, repo_id=repo_id, filename=filename)
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    KDPM2DiscreteScheduler.from_pretrained(
        REPO,
        subfolder="scheduler",
        token="hf_secret",
        revision="v0.9",
        cache_dir=str(tmp_path),
        force_download=True,
        local_files_only=False,
        mirror="ignored",
    )
    assert seen["repo_id"] == REPO and seen["filename"] == "scheduler_config.json"
    assert seen["subfolder"] == "scheduler" and seen["token"] == "hf_secret"
    assert (seen["revision"], seen["cache_dir"], seen["force_download"]) == ("v0.9", str(tmp_path), True)
    assert seen["local_files_only"] is False and "mirror" not in seen


def test_without_huggingface_hub_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """kdpm2 needs huggingface_hub only for Hub ids; without it a Hub id is a clear OSError."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(OSError, match=r"needs huggingface_hub: `pip install huggingface_hub`"):
        KDPM2DiscreteScheduler.from_pretrained(REPO, subfolder="scheduler")


def test_commit_hash_is_read_from_a_snapshot_path_only() -> None:
    assert kdpm2_hub.commit_hash(f"/c/models--a--b/snapshots/{MAIN}/scheduler/x.json") == MAIN
    assert kdpm2_hub.commit_hash("/home/me/snapshots/main/x.json") is None


def test_hf_hub_offline_environment_in_a_fresh_process(cache: Path) -> None:
    """As a user runs it: ``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` set, no keyword arguments."""
    code = (
        "from kdpm2 import KDPM2DiscreteScheduler as K\n"
        f"s = K.from_pretrained({REPO!r}, subfolder='scheduler')\n"
        "print(s.config.beta_end, s.config.timestep_spacing)\n"
        "try:\n"
        "    K.from_pretrained('stabilityai/missing', subfolder='scheduler')\n"
        "except OSError as e:\n"
        "    print('OSError', e)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "spec"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.splitlines()
    assert first == "0.012 leading"
    assert second.startswith("OSError scheduler/scheduler_config.json of 'stabilityai/missing' is not in the")
    assert "HF_HUB_OFFLINE=1" in second
