"""Quantized timesteps (ComfyUI, k-diffusion ``quantize=True``): the nearest training timestep, by search.

``tables.nearest_index`` must pick exactly what k-diffusion's ``DiscreteSchedule.sigma_to_t``
picks (``argmin`` of the log-sigma distance: the first index on a tie) without its
``len(grid) x len(values)`` matrix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from kdpm2 import KDPM2DiscreteScheduler, tables

external = pytest.importorskip("k_diffusion.external")

grids = st.lists(st.sampled_from([-3.0, -1.5, -1.0, 0.0, 0.25, 0.5, 2.0, 3.0]), min_size=2, max_size=12).map(sorted)
"""Non-decreasing log-sigma grids with repeats (float32 alphas_cumprod can stall) and exact midpoints."""

probes = st.lists(
    st.one_of(st.sampled_from([-4.0, -3.0, -1.25, -0.5, 0.125, 0.375, 1.25, 2.5, 3.5]), st.floats(-5, 5)),
    min_size=1,
    max_size=8,
)
"""Log-sigmas to look up: on grid points, at midpoints between them (ties), outside the grid."""


def k_diffusion_indices(log_grid: torch.Tensor, log_values: torch.Tensor) -> torch.Tensor:
    schedule = external.DiscreteSchedule(log_grid.exp(), quantize=True)
    schedule.log_sigmas = log_grid  # the very grid we search: exp/log must not round it
    return schedule.sigma_to_t(log_values.exp(), quantize=True).reshape(-1)


@given(grid=grids, values=probes)
@example(grid=[0.0, 0.0, 1.0, 1.0], values=[0.5, 1.5, -1.0])  # ties between repeated entries
@example(grid=[0.0, 1.0, 2.0], values=[0.5, 1.5])  # exact midpoints: the lower index
def test_nearest_index_is_k_diffusions_quantize(grid, values):
    log_grid = torch.tensor(grid, dtype=torch.float64)
    log_values = torch.tensor(values, dtype=torch.float64)
    ours = tables.nearest_index(log_values, log_grid)
    # compare on the log values k-diffusion itself computes (log(exp(v)) may differ from v by an ulp)
    theirs = k_diffusion_indices(log_grid, log_values)
    ours_on_theirs = tables.nearest_index(log_values.exp().log(), log_grid)
    assert torch.equal(ours_on_theirs, theirs), f"nearest_index({values}, {grid}) = {ours.tolist()}"
    brute = (log_values[:, None] - log_grid[None, :]).abs().argmin(dim=1)
    assert torch.equal(ours, brute), f"nearest_index({values}, {grid}) = {ours.tolist()}, argmin {brute.tolist()}"


@pytest.mark.parametrize("kwargs", [{}, {"use_karras_sigmas": True}, {"beta_schedule": "squaredcos_cap_v2"}])
def test_quantized_schedule_timesteps_match_k_diffusion(kwargs):
    """The midpoint calls' timesteps are k-diffusion's ``sigma_to_t(quantize=True)`` of the float64 midpoints."""
    n = 25
    s = KDPM2DiscreteScheduler(quantize_timesteps=True, **kwargs)
    s.set_timesteps(n)
    mids = torch.tensor(s._host_interpol[1 : 2 * n - 1 : 2], dtype=torch.float64)  # the float64 midpoints
    schedule = external.DiscreteSchedule(s.alphas_cumprod.double().reciprocal().sub(1).sqrt(), quantize=True)
    want = schedule.sigma_to_t(mids, quantize=True).double()
    got = s.timesteps[1::2].double()
    assert torch.equal(got, want), f"quantized midpoint timesteps {got.tolist()} != k-diffusion's {want.tolist()}"


def test_nearest_index_needs_no_matrix():
    """200000 look-ups on a 100000-entry grid: the old matrix held 2e10 doubles (160 GB)."""
    grid = torch.linspace(-4, 3, 100_000, dtype=torch.float64)
    values = torch.linspace(-5, 4, 200_000, dtype=torch.float64)
    found = tables.nearest_index(values, grid)
    step = float(grid[1] - grid[0])
    expected = ((values - grid[0]) / step).round().clamp(0, len(grid) - 1).long()
    assert int((found - expected).abs().max()) <= 1  # the closed form, up to rounding at exact halves
    assert np.all(np.diff(found.numpy()) >= 0)
