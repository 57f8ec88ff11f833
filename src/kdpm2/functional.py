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
from array import array
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
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

PREV_COLUMNS = (1, 2, 0, 3)
"""The ``Coefficients`` field of each ``prev`` input (0 sample, 1 model output, 2 stored, 3 noise)."""

X0_COLUMNS = (4, 5)
"""The ``Coefficients`` field of each ``pred_original_sample`` input (0 sample, 1 model output)."""


def _structure(code: int) -> tuple[int, tuple[int, ...]] | None:
    """``(first, rest)`` input indices of a sum code (``sum_codes``); ``None``: no live term."""
    mask, first = code & 15, code >> 4 & 3
    if not mask:
        return None
    return first, tuple(i for i in range(4) if mask >> i & 1 and i != first)


SUM_STRUCTURES = tuple(_structure(code) for code in range(128))
"""Every sum code's structure, so that a call reads its plan instead of building one."""


def sum_codes(coefficients: np.ndarray) -> np.ndarray:
    """``plan_sum``'s structure for many sums at once: ``coefficients[i, ...]`` multiplies input ``i``.

    The code is the mask of non-zero coefficients, plus (shifted by 4) the input that starts the
    sum: the first with coefficient 1, else the first non-zero one, as ``plan_sum`` chooses; bit 6
    says that the starting coefficient is 1 (the sum needs no multiply).
    """
    live = coefficients != 0.0
    unit = coefficients == 1.0
    has_unit = unit.any(axis=0)
    first = np.where(has_unit, unit.argmax(axis=0), live.argmax(axis=0))
    weights = (1 << np.arange(len(coefficients))).reshape((-1,) + (1,) * (coefficients.ndim - 1))
    return (live * weights).sum(axis=0) | (first << 4) | (has_unit << 6)


def code_of(plan: Sum | None) -> int:
    """The sum code of a plan (the inverse of ``SUM_STRUCTURES``), for tests and diagnostics."""
    if plan is None:
        return 0
    mask = 1 << plan.first
    for i, _ in plan.rest:
        mask |= 1 << i
    return mask | plan.first << 4 | (plan.scale == 1.0) << 6


def run_coded(
    code: int, coefficients: tuple[float, ...], inputs: tuple[torch.Tensor | None, ...], like: torch.Tensor
) -> torch.Tensor:
    """``run_sum`` of the plan that a sum code describes, with ``coefficients`` by input index."""
    structure = SUM_STRUCTURES[code]
    if structure is None:
        return run_sum(None, inputs, like)
    first, rest = structure
    return run_sum(Sum(first, coefficients[first], tuple((i, coefficients[i]) for i in rest)), inputs, like)


_UNIT = 1 << 6
TWO_TERMS = (3 | 0 << 4 | _UNIT) << 7 | (3 | 0 << 4 | _UNIT), (6 | 2 << 4 | _UNIT) << 7 | (3 | 0 << 4 | _UNIT)
"""Per order, the call kind (``prev`` code << 7 | ``x0`` code) of the common step: two ``torch.add``.

First order: ``prev = sample + c * model_output``; second order: ``prev = stored + c * model_output``;
both: ``x0 = sample + b * model_output`` (epsilon prediction, no churn: every call but a few).
"""


def _doubles(values: np.ndarray) -> array[float]:
    """A float64 column as ``array('d')``: one copy, floats on indexing."""
    return array("d", np.ascontiguousarray(values, dtype=np.float64).tobytes())


class Lane(NamedTuple):
    """What an eager call of one order reads, as flat float columns indexed by the call."""

    model: array[float]
    """``Coefficients.model`` (the ``prev`` coefficient of the model output) for epsilon
    prediction, 0 elsewhere. A call with non-zero ``model`` and ``x0_model`` is the common one:
    ``prev`` and ``x0`` are each one ``torch.add`` (``TWO_TERMS``)."""
    x0_model: array[float]
    """``Coefficients.x0_model``."""
    noise: array[float]
    """``Coefficients.noise``: in a common call, ``prev`` adds the noise times this (when non-zero)."""
    scales: array[float]
    """The model-input divisor ``sqrt(sigma^2 + 1)``."""


class CallTables:
    """Every call's coefficients, computed once per schedule, for both orders a call can take.

    ``columns[order, j]`` holds field ``j`` of every call in that order: the six ``Coefficients``,
    then the model-input divisor ``sqrt(sigma^2 + 1)``, as float64 (second order at ``k = 0``
    cannot happen and is all zeros). ``table`` is the same memory as ``(2, num_calls, 7)`` rows.
    ``live[order]`` says which of the six coefficients are non-zero at some call, so that a
    traced step leaves out the terms that are zero at every call. ``lanes`` hold the columns an
    eager call reads; ``kinds`` (made on first use) each call's sum codes (``sum_codes``), from
    which a call reads its plan instead of building one. Nothing here is a per-call Python object:
    ``set_timesteps(1000)`` makes a few arrays.

    ``second`` (per call: a second-order call, one that follows a first-order call of its step)
    is given where steps do not simply alternate two calls (an ancestral schedule, whose Euler
    steps make one call); every such call then draws noise. Without it every call after a
    first-order one is second order, and ``churn`` says whether they draw noise.
    """

    __slots__ = (
        "_kinds",
        "_levels",
        "_live",
        "_peak",
        "_peaks",
        "churn",
        "columns",
        "epsilon",
        "follows",
        "lanes",
        "num_calls",
        "second",
        "table",
    )

    def __init__(
        self,
        columns: np.ndarray,
        churn: bool,
        levels: np.ndarray | None = None,
        epsilon: bool = False,
        second: list[bool] | None = None,
    ) -> None:
        self.columns = columns
        self.table = columns.transpose(0, 2, 1)
        self.epsilon = epsilon
        """Epsilon prediction: the calls' structure that ``lane`` relies on (see there)."""
        self.num_calls = int(columns.shape[2])
        self.churn = churn
        """A second-order call counted on the device always draws noise (``s_churn > 0``; an ancestral
        schedule). Unused at the end."""
        self.second = second
        n = self.num_calls
        self.follows: list[bool] = [True] * (n - 1) + [False] if second is None else [*second[1:], False]
        """``follows[k]``: a second-order call follows a first-order call ``k``, which stores its sample."""
        self._levels = levels
        self._kinds: np.ndarray | None = None
        self._peaks: np.ndarray | None = None
        # made here, not on first use: a traced (compiled) call reads them, and tracing NumPy breaks graphs
        largest = np.abs(columns[:, :6]).max(axis=2, initial=0.0)
        nonzero = (largest != 0.0).tolist()
        self._live = (tuple(nonzero[0]), tuple(nonzero[1]))
        peak = float(largest.max())
        self._peak = peak if levels is None else max(peak, float(levels.max(initial=0.0)))
        self.lanes: list[Lane] = [self._lane(FIRST), self._lane(SECOND)]
        """What an eager call of each order reads (``Lane``)."""

    @property
    def kinds(self) -> np.ndarray:
        """``(2, num_calls)`` call kinds: the ``prev`` sum code << 7 | the ``x0`` sum code (``sum_codes``)."""
        if self._kinds is None:
            columns = self.columns
            prev = sum_codes(columns[:, PREV_COLUMNS].transpose(1, 0, 2))
            self._kinds = prev << 7 | sum_codes(columns[:, X0_COLUMNS].transpose(1, 0, 2))
        return self._kinds

    @property
    def live(self) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """Per order, which of the six coefficients are non-zero at some call (a traced step's terms)."""
        return self._live

    @property
    def peaks(self) -> np.ndarray:
        """Per order and call, the largest noise level or coefficient magnitude: what a dtype's range must hold."""
        if self._peaks is None:
            peaks = np.abs(self.columns[:, :6]).max(axis=1)
            self._peaks = peaks if self._levels is None else np.maximum(peaks, self._levels)
        return self._peaks

    @property
    def peak(self) -> float:
        """The largest of ``peaks``."""
        return self._peak

    def noise(self, k: int) -> bool:
        """A second-order call ``k`` draws noise: every one of an ancestral schedule; with churn, one a call follows."""
        if self.second is not None:
            return self.second[k]
        return self.churn and 0 < k < self.num_calls - 1

    def step_starts(self) -> list[int] | None:
        """The positions of the steps' first calls where they are not the even positions (``second`` given)."""
        if self.second is None:
            return None
        return [k for k, is_second in enumerate(self.second) if not is_second]

    def coefficients(self, order: int, k: int) -> Coefficients:
        """Call ``k``'s coefficients in ``order``."""
        return Coefficients(*self.columns[order, :6, k].tolist())

    def lane(self, order: int) -> Lane:
        """The columns an eager call of ``order`` reads (``Lane``)."""
        return self.lanes[order]

    def _lane(self, order: int) -> Lane:
        """``array('d')`` columns: one copy of the float64 values whatever the length (a list would
        make one Python float per call up front), read as floats like a list."""
        columns = self.columns[order]
        # epsilon prediction makes each call's sums TWO_TERMS wherever both coefficients are
        # non-zero: the sample's prev coefficient is exactly 1 (first order) or 0 beside the
        # stored sample's 1 (second order), and the sample's x0 coefficient is 1
        model = _doubles(columns[2]) if self.epsilon else array("d", bytes(8 * self.num_calls))
        if order == SECOND and len(model):
            model[0] = 0.0  # there is no second-order call 0
        return Lane(model, _doubles(columns[5]), _doubles(columns[3]), _doubles(columns[6]))

    def run(self, order: int, k: int, inputs: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prev_sample, pred_original_sample)`` of call ``k`` with plain torch ops (``run_step``'s values)."""
        row = self.columns[order, :, k].tolist()
        kind = int(self.kinds[order, k])
        like = inputs[0]
        assert like is not None
        prev = run_coded(kind >> 7, tuple(row[c] for c in PREV_COLUMNS), inputs, like)
        x0 = run_coded(kind & 127, (row[4], row[5]), inputs, like)
        return prev, x0

    def as_tensor(self) -> torch.Tensor:
        """``(2, num_calls, 7)`` float64: the six coefficients, then the scale, per order and call (a view)."""
        return torch.from_numpy(self.table)


def call_tables(
    sigmas: Sequence[float] | np.ndarray,
    sigmas_interpol: Sequence[float] | np.ndarray,
    num_calls: int,
    prediction_type: str,
    s_churn: float = 0.0,
    s_noise: float = 1.0,
) -> CallTables:
    """Coefficients and input scales of calls ``0 .. num_calls - 1`` from the interleaved host tables.

    A first-order call ``k`` moves from ``sigmas[k]`` to ``sigmas_interpol[k + 1]``; a
    second-order call ``k`` moves the stored sample from ``sigmas[k - 1]`` to ``sigmas[k]`` with
    the slope at ``sigmas_interpol[k]``, plus churn noise lifting it to ``sigmas[k + 1]`` when
    ``s_churn > 0`` and a call follows. The values are ``first_order``'s and ``second_order``'s,
    bit for bit: the same float64 operations in the same order, on arrays.
    """
    s = np.asarray(sigmas, dtype=np.float64)
    m = np.asarray(sigmas_interpol, dtype=np.float64)
    n = num_calls
    columns = np.zeros((2, 7, n))
    first, second = columns[FIRST], columns[SECOND]
    sigma, mid = s[:n], m[1 : n + 1]
    a, b = denoiser_arrays(sigma, prediction_type)
    r = (mid - sigma) / sigma
    first[1] = 1.0 + r * (1.0 - a)
    first[2] = -r * b
    first[4], first[5] = a, b
    first[6] = np.sqrt(sigma * sigma + 1.0)
    if n > 1:
        start, mid2, end = s[: n - 1], m[1:n], s[1:n]
        a2, b2 = denoiser_arrays(mid2, prediction_type)
        q = (end - start) / mid2
        second[0, 1:] = 1.0
        second[1, 1:] = q * (1.0 - a2)
        second[2, 1:] = -q * b2
        second[4, 1:], second[5, 1:] = a2, b2
        if s_churn > 0:  # rare: the scalar formula keeps ``x ** 2`` (pow) exactly as ``second_order`` is fed
            sv = s.tolist()
            for k in range(1, n - 1):
                second[3, k] = s_noise * math.sqrt(max(sv[k + 1] ** 2 - sv[k] ** 2, 0.0))
    second[6] = np.sqrt(m[:n] * m[:n] + 1.0)
    levels = np.zeros((2, n))  # the noise levels of each call's inputs and result
    levels[FIRST] = np.maximum(sigma, mid)
    if n > 1:
        levels[SECOND, 1:] = np.maximum(np.maximum(start, mid2), end)
    return CallTables(columns, s_churn > 0, levels, prediction_type == "epsilon")


def denoiser_arrays(sigma: np.ndarray, prediction_type: str) -> tuple[np.ndarray | float, np.ndarray | float]:
    """``denoiser_coefficients`` on an array of sigmas (the same operations)."""
    if prediction_type == "epsilon":
        return 1.0, -sigma
    if prediction_type == "v_prediction":
        return 1.0 / (sigma * sigma + 1.0), -sigma / np.sqrt(sigma * sigma + 1.0)
    if prediction_type == "sample":
        return 0.0, 1.0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


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
