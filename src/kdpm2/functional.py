"""The step as pure functions: per-call coefficients on the host, one linear combination on the device.

Every KDPM2 call is linear in its tensors. With ``a, b`` from the prediction type,
``x0 = a * sample + b * model_output``, and the update is

    prev = c_stored * stored + c_sample * sample
           + c_model * model_output (+ c_noise * noise)

with float64 coefficients computed on the host from the schedule (no device sync). The combination
is one fused kernel on CUDA (``kdpm2.triton_step``) and a few torch ops elsewhere; both compute
in at least float32 and round once to the sample's dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""Supported model parameterisations: noise, velocity (Salimans & Ho 2022) or the clean sample."""


def denoiser_coefficients(sigma: float, prediction_type: str) -> tuple[float, float]:
    """``(a, b)`` with ``x0 = a * sample + b * model_output`` at noise level ``sigma``."""
    if prediction_type == "epsilon":
        return 1.0, -sigma
    if prediction_type == "v_prediction":
        return 1.0 / (sigma * sigma + 1.0), -sigma / math.sqrt(sigma * sigma + 1.0)
    if prediction_type == "sample":
        return 0.0, 1.0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


class Coefficients(NamedTuple):
    """Coefficients of one call: ``prev`` and ``x0`` as combinations of the call's tensors."""

    stored: float
    sample: float
    model: float
    noise: float
    x0_sample: float
    x0_model: float


def first_order(sigma: float, sigma_mid: float, prediction_type: str) -> Coefficients:
    """Euler move from ``sigma`` to the midpoint (to 0 on the last step): ``x + d (m - sigma)``."""
    a, b = denoiser_coefficients(sigma, prediction_type)
    r = (sigma_mid - sigma) / sigma  # x + (x - x0) r
    return Coefficients(0.0, 1.0 + r * (1.0 - a), -r * b, 0.0, a, b)


def second_order(
    sigma: float, sigma_mid: float, sigma_next: float, prediction_type: str, churn: float = 0.0
) -> Coefficients:
    """DPM-Solver-2 update of the stored sample with the midpoint slope: ``x + d_m (s_next - sigma)``.

    ``churn`` is the standard deviation of the noise that lifts the result to the next step's level.
    """
    a, b = denoiser_coefficients(sigma_mid, prediction_type)
    q = (sigma_next - sigma) / sigma_mid  # stored + (x_m - x0_m) q
    return Coefficients(1.0, q * (1.0 - a), -q * b, churn, a, b)


_UPCAST = (torch.float16, torch.bfloat16)
"""Dtypes combined in float32 and rounded once at the end."""


class Sum(NamedTuple):
    """A planned ``sum(c * t)``: start from input ``first`` times ``scale``, then add ``rest`` in order.

    Inputs are numbered as ``apply_step`` takes them: 0 sample, 1 model output, 2 stored, 3 noise.
    """

    first: int
    scale: float
    rest: tuple[tuple[int, float], ...]


def plan_sum(terms: list[tuple[float, int]]) -> Sum | None:
    """The plan of ``sum(c * input_i)`` over ``(c, i)`` terms; ``None`` when every coefficient is 0.

    Zero coefficients are skipped; the first term with coefficient 1 starts the sum (no multiply),
    the others follow in order.
    """
    live = [(c, i) for c, i in terms if c != 0.0]
    if not live:
        return None
    first = next((j for j, (c, _) in enumerate(live) if c == 1.0), 0)
    c0, i0 = live.pop(first)
    return Sum(i0, c0, tuple((i, c) for c, i in live))


def plan_step(coefficients: Coefficients, stored: bool, noise: bool) -> tuple[Sum | None, Sum | None]:
    """Plans of ``prev`` and ``x0`` for one call, given which optional inputs it has."""
    c = coefficients
    prev_terms = [(c.sample, 0), (c.model, 1)]
    if stored:
        prev_terms.append((c.stored, 2))
    if noise:
        prev_terms.append((c.noise, 3))
    return plan_sum(prev_terms), plan_sum([(c.x0_sample, 0), (c.x0_model, 1)])


def run_sum(plan: Sum | None, inputs: tuple[torch.Tensor | None, ...], like: torch.Tensor) -> torch.Tensor:
    """A planned sum in at least float32, rounded once to ``like.dtype``; one ``add`` per later term.

    Only float16/bfloat16 inputs are converted; a lone unit term is cloned, so the result is
    never an input.
    """
    if plan is None:
        return torch.zeros_like(like)
    dtype = like.dtype
    upcast = dtype in _UPCAST
    t0: torch.Tensor = inputs[plan.first]  # type: ignore[assignment]
    if upcast:
        t0 = t0.float()
    c0, rest = plan.scale, plan.rest
    if c0 != 1.0:
        acc = t0 * c0
    elif rest or upcast:
        acc = t0  # a later add or the final rounding makes the result a new tensor
    else:
        acc = t0.clone()
    fresh = c0 != 1.0 or upcast  # acc is ours: accumulate in place (fewer allocations, same values)
    for i, c in rest:
        if fresh:
            acc.add_(inputs[i], alpha=c)  # type: ignore[arg-type]  # type promotion reads half as float32
        else:
            acc, fresh = torch.add(acc, inputs[i], alpha=c), True  # type: ignore[arg-type]
    return acc.to(dtype) if upcast else acc


def run_step(
    plans: tuple[Sum | None, Sum | None],
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, pred_original_sample)`` from the plans of ``plan_step``."""
    inputs = (sample, model_output, stored, noise)
    return run_sum(plans[0], inputs, sample), run_sum(plans[1], inputs, sample)


def apply_step(
    coefficients: Coefficients,
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prev_sample, pred_original_sample)`` of one call with plain torch ops (any device)."""
    plans = plan_step(coefficients, stored is not None, noise is not None)
    return run_step(plans, sample, model_output, stored, noise)


# -- per-call tables: the coefficients of every call, for the host and for a device counter -----

FIRST, SECOND = 0, 1
"""Row blocks of ``CallTables``: a call made in first order (no stored sample) or second order."""


class CallTables(NamedTuple):
    """Every call's coefficients, computed once per schedule, for both orders a call can take.

    ``coefficients[order][k]`` is call ``k``'s ``Coefficients`` in that order (second order
    at ``k = 0`` cannot happen and is all zeros); ``scales[order][k]`` is the model-input divisor
    ``sqrt(sigma^2 + 1)``; ``live[order]`` says which of the six coefficients are non-zero at some
    call, so that a traced step leaves out the terms that are zero at every call. Computed once,
    these spare each eager call its coefficient math and term planning.
    """

    coefficients: tuple[list[Coefficients], list[Coefficients]]
    scales: tuple[list[float], list[float]]
    live: tuple[tuple[bool, ...], tuple[bool, ...]]
    noise: list[bool]
    """``noise[k]``: a second-order call ``k`` draws churn noise (``s_churn > 0`` and a call follows)."""
    churn: bool
    """``s_churn > 0``: a second-order call counted on the device always draws noise (unused at the end)."""
    plans: tuple[dict[int, tuple[Sum | None, Sum | None]], dict[int, tuple[Sum | None, Sum | None]]]
    """``plan_step`` of the calls planned so far, per order (filled by ``plan``)."""

    def plan(self, order: int, k: int) -> tuple[Sum | None, Sum | None]:
        """``plan_step`` of call ``k`` in ``order`` for the eager torch path, planned on first use.

        Planning every call up front made ``set_timesteps(1000)`` (which the constructor runs)
        spend most of its time on plans that a loop of a few steps never reads.
        """
        found = self.plans[order].get(k)
        if found is None:
            second = order == SECOND
            found = plan_step(self.coefficients[order][k], second, second and self.noise[k])
            self.plans[order][k] = found
        return found

    def as_tensor(self) -> torch.Tensor:
        """``(2, num_calls, 7)`` float64: the six coefficients, then the scale, per order and call."""
        rows = [
            [[*c, s] for c, s in zip(cs, ss, strict=True)]
            for cs, ss in zip(self.coefficients, self.scales, strict=True)
        ]
        return torch.tensor(rows, dtype=torch.float64)


def call_tables(
    sigmas: list[float],
    sigmas_interpol: list[float],
    num_calls: int,
    prediction_type: str,
    s_churn: float = 0.0,
    s_noise: float = 1.0,
) -> CallTables:
    """Coefficients and input scales of calls ``0 .. num_calls - 1`` from the interleaved host tables.

    A first-order call ``k`` moves from ``sigmas[k]`` to ``sigmas_interpol[k + 1]``; a
    second-order call ``k`` moves the stored sample from ``sigmas[k - 1]`` to ``sigmas[k]`` with
    the slope at ``sigmas_interpol[k]``, plus churn noise lifting it to ``sigmas[k + 1]`` when
    ``s_churn > 0`` and a call follows. These are the values ``step`` would compute per call.
    """
    zero = Coefficients(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    first = [first_order(sigmas[k], sigmas_interpol[k + 1], prediction_type) for k in range(num_calls)]
    second = [zero]
    for k in range(1, num_calls):
        churn = 0.0
        if s_churn > 0 and k + 1 < num_calls:
            churn = s_noise * math.sqrt(max(sigmas[k + 1] ** 2 - sigmas[k] ** 2, 0.0))
        second.append(second_order(sigmas[k - 1], sigmas_interpol[k], sigmas[k], prediction_type, churn))
    scales = (
        [math.sqrt(sigmas[k] * sigmas[k] + 1.0) for k in range(num_calls)],
        [math.sqrt(sigmas_interpol[k] * sigmas_interpol[k] + 1.0) for k in range(num_calls)],
    )
    live = tuple(tuple(any(c[i] != 0.0 for c in cs) for i in range(6)) for cs in (first, second))
    noise = [s_churn > 0 and 0 < k < num_calls - 1 for k in range(num_calls)]
    return CallTables((first, second), scales, (live[0], live[1]), noise, s_churn > 0, ({}, {}))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a step computes in: float32 for half precision and float32, else ``dtype``."""
    return torch.float32 if dtype in _UPCAST else dtype


def apply_step_row(
    row: torch.Tensor,
    live: tuple[bool, ...],
    sample: torch.Tensor,
    model_output: torch.Tensor,
    stored: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``apply_step`` with the coefficients in a device tensor ``row`` (no host value read).

    ``row`` holds the six coefficients (a row of ``CallTables.as_tensor``); terms whose
    coefficient is zero at every call (``live``) are left out, the others are multiplied in the
    compute dtype (at least float32) and the sum is rounded once to ``sample.dtype``. Because no
    coefficient is a Python number, a traced call is the same graph for every call of one order.
    """
    dtype = compute_dtype(sample.dtype)
    c = row.to(device=sample.device, dtype=dtype)
    x, m = sample.to(dtype), model_output.to(dtype)
    inputs = (stored, x, m, noise)
    prev = None
    for i in (1, 2, 0, 3):  # sample, model, stored, noise: the order apply_step sums in
        t = inputs[i]
        if live[i] and t is not None:
            term = c[i] * t.to(dtype)
            prev = term if prev is None else prev + term
    x0 = None
    for i, t in ((4, x), (5, m)):
        if live[i]:
            x0 = c[i] * t if x0 is None else x0 + c[i] * t
    prev = torch.zeros_like(x) if prev is None else prev
    x0 = torch.zeros_like(x) if x0 is None else x0
    return prev.to(sample.dtype), x0.to(sample.dtype)
