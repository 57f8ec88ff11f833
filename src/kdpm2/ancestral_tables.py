"""The ancestral (DPM2 a) schedule as pure functions: each step's noise split, calls and coefficients.

k-diffusion's ``sample_dpm_2_ancestral`` splits a step ``s_i -> s_{i+1}`` into a deterministic
DPM-Solver-2 descent to ``sigma_down`` and fresh noise of standard deviation ``sigma_up``
(``get_ancestral_step``)::

    sigma_up   = min(s_{i+1}, eta * sqrt(s_{i+1}^2 (s_i^2 - s_{i+1}^2) / s_i^2))
    sigma_down = sqrt(s_{i+1}^2 - sigma_up^2)

so that ``sigma_down^2 + sigma_up^2 = s_{i+1}^2``. The first call evaluates the model at ``s_i``
and moves to the midpoint ``sqrt(s_i sigma_down)``; the second evaluates it there, moves the stored
sample from ``s_i`` to ``sigma_down`` with the midpoint's slope and adds ``s_noise sigma_up``
times unit noise, all in one linear combination (``functional.second_order`` with its noise term).
Where ``sigma_down`` is 0 (the last step to sigma 0, or wherever the clamp ``min(s_{i+1}, ...)``
binds, which takes ``eta > 1``) the step is one Euler call to 0 and, as in k-diffusion, adds no
noise.

``split`` computes the two levels in float64 on the host, rearranged so that no difference of
nearly equal squares is taken (diffusers computes ``s_{i+1}^2 - sigma_up^2`` in float32, which
goes negative and gives NaN, diffusers #14213); ``frontend_split`` repeats k-diffusion's float32
arithmetic for the presets, so that every call's sigma equals the front-end's bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from kdpm2 import functional

F64 = torch.float64
F32 = torch.float32


class Split(NamedTuple):
    """Per step ``i = 0 .. n - 1``: where the step descends to, the noise it adds, and its midpoint."""

    down: torch.Tensor  # sigma_down, 0 for an Euler step
    up: torch.Tensor  # sigma_up, the standard deviation of the added noise (before s_noise)
    mids: torch.Tensor  # the second call's sigma, sqrt(s_i sigma_down); 0 for an Euler step


def split(sigmas: torch.Tensor, eta: float) -> Split:
    """``sigma_down``, ``sigma_up`` and the midpoint of each step of ``sigmas`` (float64, final value included).

    ``sigma_up = min(s_{i+1}, eta s_{i+1} sqrt((s_i - s_{i+1})(s_i + s_{i+1})) / s_i)`` and, where
    the clamp does not bind, ``sigma_down = s_{i+1} sqrt((1 - eta)(1 + eta) + (eta r)^2)`` with
    ``r = s_{i+1} / s_i``: k-diffusion's expressions rearranged so that no difference of nearly
    equal numbers is rounded (at ``eta = 1``, ``sigma_down`` is ``s_{i+1} r = s_{i+1}^2 / s_i``).
    Where the clamp binds ``sigma_down`` is 0.
    """
    # NumPy: the same correctly rounded float64 operations as torch, at a fraction of the call cost
    values = sigmas.to(F64).numpy()
    s, following = values[:-1], values[1:]
    if eta == 0:  # k-diffusion: no noise, DPM-Solver-2 to the next sigma
        down, up = following.copy(), np.zeros_like(following)
    else:
        r = following / s
        up = np.minimum(following, eta * following * np.sqrt((s - following) * (s + following)) / s)
        radicand = np.maximum((1 - eta) * (1 + eta) + (eta * r) ** 2, 0.0)
        down = np.where(up < following, following * np.sqrt(radicand), 0.0)
    return Split(torch.from_numpy(down), torch.from_numpy(up), torch.from_numpy(np.sqrt(s * down)))


def frontend_split(sigmas: torch.Tensor, eta: float) -> Split:
    """``split`` with k-diffusion's float32 operations, in its order (float32 values as float64).

    ``get_ancestral_step`` on float32 sigmas, then ``sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()``
    for the midpoint, as ``sample_dpm_2_ancestral`` computes them for ComfyUI and AUTOMATIC1111.
    """
    s, following = sigmas[:-1].to(F32), sigmas[1:].to(F32)
    if eta == 0:
        down, up = following.clone(), torch.zeros_like(following)
    else:
        raw = eta * (following**2 * (s**2 - following**2) / s**2) ** 0.5
        up = torch.where(raw < following, raw, following)  # Python's min(following, raw)
        down = (following**2 - up**2) ** 0.5
    positive = down > 0
    mids = s.log().lerp(down.clamp(min=torch.finfo(F32).tiny).log(), 0.5).exp()
    mids = torch.where(positive, mids, torch.zeros_like(mids))
    return Split(down.to(F64), up.to(F64), mids.to(F64))


class Tables(NamedTuple):
    """The per-call tables of an ancestral schedule, in diffusers' layout.

    ``sigmas``, ``sigmas_interpol``, ``sigmas_up`` and ``sigmas_down`` hold, at the index of a
    first-order call, its step's ``s_i``, midpoint, ``sigma_up`` and ``sigma_down``, and at the
    index of a second-order call those of the step after it (diffusers' ``repeat_interleave``);
    the final sigma's entries (``s_n``, then zeros) close each table. A second-order call ``k``
    therefore reads entry ``k - 1``, as diffusers' ``step`` does. ``timesteps`` has one entry
    per model call: ``t(s_i)`` for a first call, ``t(midpoint)`` for a second.
    """

    sigmas: torch.Tensor
    sigmas_interpol: torch.Tensor
    timesteps: torch.Tensor
    num_steps: int
    sigmas_up: torch.Tensor
    sigmas_down: torch.Tensor
    main_sigmas: torch.Tensor  # s_0 .. s_n
    split: Split
    second: list[bool]  # per call: a second-order call (it adds noise)
    eta: float  # the eta the split was made with
    euler_inside: bool  # a step before the last makes one call (its sigma_down is 0)


def layout(
    main_sigmas: torch.Tensor, levels: Split, timesteps: torch.Tensor, mid_timesteps: torch.Tensor, eta: float
) -> Tables:
    """The per-call tables of ``n`` steps: main sigmas ``s_0..s_n``, their split and both timesteps (``n`` each).

    A step whose ``sigma_down`` is 0 makes one call (Euler to 0), any other two.
    """
    n = len(main_sigmas) - 1
    sigmas = main_sigmas.to(F64)
    values, mids, up, down = sigmas.numpy(), levels.mids.numpy(), levels.up.numpy(), levels.down.numpy()
    # row i: what a first-order call of step i reads; row n closes the tables at the final sigma
    rows = np.stack([values, np.append(mids, 0.0), np.append(up, 0.0), np.append(down, 0.0)], 1)
    two = down > 0
    counts = 1 + two.astype(np.int64)
    step_of_call = np.repeat(np.arange(n), counts)
    second = np.zeros(len(step_of_call), dtype=bool)
    second[(np.cumsum(counts) - counts)[two] + 1] = True  # the call after a two-call step's first
    row_of_call = step_of_call + second  # a second-order call holds the next step's row
    trailing = np.full(3 if values[-1] == 0 else 2, n)
    columns = torch.from_numpy(np.ascontiguousarray(rows[np.concatenate([row_of_call, trailing])].T))
    mid_t, main_t = mid_timesteps.to(F64).numpy(), timesteps.to(F64).numpy()
    call_timesteps = torch.from_numpy(np.where(second, mid_t[step_of_call], main_t[step_of_call]))
    return Tables(
        columns[0],
        columns[1],
        call_timesteps,
        n,
        columns[2],
        columns[3],
        sigmas,
        levels,
        second.tolist(),
        eta,
        bool((~two[:-1]).any()),
    )


def call_tables(built: Tables, prediction_type: str, s_noise: float) -> functional.CallTables:
    """Every call's coefficients in both orders, read from the tables as diffusers' ``step`` reads them.

    First order at call ``k``: from ``sigmas[k]`` to ``sigmas_interpol[k]`` (0 for an Euler step).
    Second order at call ``k``: the stored sample from ``sigmas[k - 1]`` to ``sigmas_down[k - 1]``
    with the slope at ``sigmas_interpol[k - 1]``, plus ``s_noise * sigmas_up[k - 1]`` times the
    noise. A second order that cannot follow the call before it (the first call, or one after an
    Euler step) is all zeros. The values are ``functional.first_order``'s and ``second_order``'s
    bit for bit (the same float64 operations in the same order, on arrays), in the column layout
    of ``functional.CallTables``.
    """
    n = len(built.timesteps)
    s, m = built.sigmas.numpy()[: n + 1], built.sigmas_interpol.numpy()[: n + 1]
    up, down = built.sigmas_up.numpy(), built.sigmas_down.numpy()
    columns = np.zeros((2, 7, n))
    first, second = columns[functional.FIRST], columns[functional.SECOND]
    sigma, mid = s[:n], m[:n]
    a, b = functional.denoiser_arrays(sigma, prediction_type)
    r = (mid - sigma) / sigma
    first[1] = 1.0 + r * (1.0 - a)
    first[2] = -r * b
    first[4], first[5] = a, b
    first[6] = np.sqrt(sigma * sigma + 1.0)
    second[6, 0] = 1.0
    levels = np.zeros((2, n))  # the noise levels of each call's inputs and result
    levels[functional.FIRST] = np.maximum(sigma, mid)
    if n > 1:
        start, mid2, end = s[: n - 1], m[: n - 1], down[: n - 1]
        second[6, 1:] = np.sqrt(mid2 * mid2 + 1.0)
        follows = mid2 > 0  # call k - 1 is a first-order call with a midpoint, so call k is its second
        safe = np.where(follows, mid2, 1.0)
        a2, b2 = functional.denoiser_arrays(safe, prediction_type)
        q = (end - start) / safe
        for row, value in ((0, 1.0), (1, q * (1.0 - a2)), (2, -q * b2), (3, s_noise * up[: n - 1]), (4, a2), (5, b2)):
            second[row, 1:] = np.where(follows, value, 0.0)
        levels[functional.SECOND, 1:] = np.where(follows, np.maximum(np.maximum(start, mid2), s[1:n]), 0.0)
    return functional.CallTables(columns, True, levels, prediction_type == "epsilon", built.second)
