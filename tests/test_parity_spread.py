"""The parity figures' measured CPU spread: the tolerances are the measurement, and the measurement holds up.

``tests/parity/spread.json`` is written by ``docs/scripts/parity_spread.py`` (kdpm2 and upstream
under every oneMKL branch and ATen capability one machine reaches). The tolerances of the parity
tests (``helpers_parity``) must be its numbers, docs/parity.md must show them, and the file must
say what the tests assume: that upstream on the recording machine's path gives the figures bit for
bit, that kdpm2 computes upstream's values on every path, and that the only timesteps that move
are one-off near-ties.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import helpers_parity as hp

ROOT = Path(__file__).resolve().parents[1]
CAPABILITIES = ("default", "avx2", "avx512")


def measured(section: str, frontend: str, field: str, who: str) -> tuple[float, ...]:
    """The worst distance per ATen capability (or the log sigma spread of an integer timestep)."""
    data = hp.spread()[section][frontend][field]
    if data["unit"] == "integer":
        return tuple(data["log_spread_by_aten"][a] for a in CAPABILITIES)
    return tuple(data["by_aten"][a][who] for a in CAPABILITIES)


@pytest.mark.parametrize(
    ("section", "table", "who"), [("dpm2", hp.DPM2, "ours"), ("ancestral", hp.ANCESTRAL, "upstream")]
)
def test_tolerances_are_the_measured_spread(section: str, table: dict[str, dict[str, hp.Spread]], who: str) -> None:
    for frontend, fields in hp.spread()[section].items():
        assert set(table[frontend]) == set(fields), f"{section}/{frontend}: a field without a tolerance, or one extra"
        for field, tolerance in table[frontend].items():
            assert tuple(tolerance) == measured(section, frontend, field, who), (
                f"{section}/{frontend}/{field}: {tolerance} is not the measured spread; copy it from tests/parity/spread.json"
            )


def render_module() -> Any:
    spec = importlib.util.spec_from_file_location("parity_spread", ROOT / "docs" / "scripts" / "parity_spread.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_show_the_measurement() -> None:
    module = render_module()
    text = module.PAGE.read_text(encoding="utf-8")
    assert module.render(text, hp.spread()) == text, (
        "regenerate: PYTHONPATH=src:spec:tests python docs/scripts/parity_spread.py --render"
    )


def test_the_recording_machines_paths_reproduce_the_figures() -> None:
    """The measurement's upstream code is upstream's: some path gives each recorded file bit for bit."""
    paths = hp.spread()["paths"]
    for figures in ("comfyui", "a1111", "ancestral"):
        assert any(path["reproduces"][figures] for path in paths), f"no code path reproduces {figures}.json"
    # comfyui.json and a1111.json: the AMD EPYC machine, ATen AVX2; ancestral.json: Intel, oneMKL AVX-512
    assert all(p["aten"] == "avx2" for p in paths if p["reproduces"]["comfyui"])
    assert all("AVX-512" in p["mkl_branch"] for p in paths if p["reproduces"]["ancestral"])


def test_kdpm2_computes_upstreams_values_on_every_path() -> None:
    """Sigmas, midpoints, timesteps, tables and noise factor: kdpm2 equals upstream on each code path.

    The input scale is computed in float64 and rounded (upstream: float32), hence its own line.
    """
    for frontend, fields in hp.spread()["dpm2"].items():
        for name, field in fields.items():
            if field["unit"] == "integer":
                assert field["ours"] == field["upstream"], f"{frontend} timesteps move differently from upstream's"
            elif name in ("c_in", "c_in_divisors"):
                assert field["ours_vs_upstream"] <= 2, f"{frontend}/{name}"
            else:
                assert field["ours_vs_upstream"] == 0, f"{frontend}/{name}: kdpm2 differs from upstream on some path"


def test_what_is_exact_is_measured_exact() -> None:
    """ComfyUI's float64-built table and its `simple` schedule: the same float32 values on every path."""
    comfyui = hp.spread()["dpm2"]["comfyui"]
    for name in ("train_sigmas", "train_log_sigmas"):
        assert comfyui[name]["ours"] == comfyui[name]["upstream_spread"] == 0, name
    assert all(v == {"ours": 0, "upstream": 0} for v in comfyui["sigmas"]["by_rule"]["simple"].values())


@pytest.mark.parametrize(("section", "frontend"), [("dpm2", "comfyui"), ("ancestral", "comfyui")])
def test_timesteps_move_only_at_near_ties(section: str, frontend: str) -> None:
    """Every timestep that moved on some path moved by one, to the neighbour, within the log spread of a tie."""
    field = hp.spread()[section][frontend]["timestep"]
    for who in ("ours", "upstream"):
        for flip in field.get(who, []):
            assert abs(flip["got"] - flip["recorded"]) == 1 and flip["to_neighbour"], flip
            assert flip["margin"] <= field["log_spread"], flip
    assert 0 < field["calls_within_log_spread"] < field["calls"] / 10


def test_the_thread_count_changes_nothing() -> None:
    assert hp.spread()["measured"]["threads_change_nothing"] is True


def test_a_missing_figure_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone without tests/parity cannot verify the presets: an error, never a skip."""
    monkeypatch.setattr(hp, "PARITY_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"comfyui\.json is missing"):
        hp._load("comfyui.json")


def test_the_figures_are_the_recorded_files() -> None:
    """The three files as recorded (no float rewritten): sizes, and a few values checked by hand."""
    sizes = {name: (hp.PARITY_DIR / file).stat().st_size for name, file in hp.FIGURES.items()}
    assert sizes == {"comfyui": 181157, "a1111": 118335, "ancestral": 600486}
    comfyui, a1111 = hp.figures("comfyui"), hp.figures("a1111")
    assert a1111["train_sigmas"][0] == 0.02916753478348255  # the example
    assert comfyui["cases"][0]["init_noise_scale"] == 14.648812294006348
    assert len(comfyui["cases"]) == 60 and len(a1111["cases"]) == 36 and len(hp.figures("ancestral")["cases"]) == 28


one = np.float32(1.0)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1.0, float(np.nextafter(one, np.float32(2))), 1),
        (0.0, -0.0, 0),
        (float(np.nextafter(np.float32(0), one)), -float(np.nextafter(np.float32(0), one)), 2),
        (-1.0, float(np.nextafter(-one, np.float32(-2))), 1),
        (1.0, 1.0 + 2**-30, 0),  # rounds to the same float32
        (2.0, float(np.nextafter(np.float32(2), np.float32(0))), 1),  # across a binade
    ],
)
def test_ulps(a: float, b: float, expected: int) -> None:
    assert hp.max_ulps([a], [b]) == expected == hp.max_ulps([b], [a])


def test_scaled_ulps_counts_the_largest_entrys_ulps() -> None:
    big = 3.0
    step = float(np.spacing(np.float32(big)))
    assert hp.scaled_ulps([big, 1e-9 + 2 * step], [big, 1e-9]) == 2
    assert hp.max_ulps([1e-9 + 2 * step], [1e-9]) > 10**6


def test_tie_margin() -> None:
    table = [math.log(v) for v in (1.0, 2.0, 4.0)]
    other, margin = hp.tie_margin(math.sqrt(2.0) * 1.000001, table, 0)
    assert other == 1 and margin == pytest.approx(math.log(1.000001))
    assert hp.tie_margin(1.0, table, 0) == (0, 0.0)  # on the table's end: no neighbour below
    error = hp.timestep_error("comfyui", 1.0, 0.0, math.sqrt(2.0), table, 1e-6)
    assert error is None, error
    assert hp.timestep_error("comfyui", 1.0, 0.0, 1.1, table, 1e-6) is not None
    assert hp.timestep_error("comfyui", 2.0, 0.0, math.sqrt(2.0), table, 1e-6) is not None


def test_spread_here_takes_this_cpus_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    spread = hp.Spread(9, 2, 3)
    for capability, expected in (("AVX512", 3), ("AVX2", 2), ("DEFAULT", 9), ("SVE256", 9)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert spread.here() == expected


def test_every_file_reads_as_json() -> None:
    for file in (*hp.FIGURES.values(), hp.SPREAD_FILE):
        json.loads((hp.PARITY_DIR / file).read_text(encoding="utf-8"))
