"""What each conformance property compares, to what tolerance and why; the dtypes it runs in.

A run drives the implementation with tensors in one dtype (``--dtype``, default float64).
Properties whose tolerance only makes sense in float64 (or float32) say so in ``DTYPES`` and
are reported ``unsupported`` in any other dtype; the sampling loops that run in every dtype are
compared within the larger of their own tolerance and ``DTYPE_RTOL`` of the run's dtype.
``docs/ci.md`` prints this table; a test keeps it in step with ``conformance.PROPERTIES``.
"""

from __future__ import annotations

DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")
"""The tensor dtypes a run can drive an implementation with."""

DTYPE_RTOL: dict[str, float] = {"float64": 0.0, "float32": 1e-5, "float16": 4e-3, "bfloat16": 3e-2}
"""Tolerance floor of loop comparisons per dtype, relative to the largest operand.

float64 adds nothing (each property's own tolerance applies); float32 is 1e-5, as
``conformance.FLOAT32_RTOL``. float16 and bfloat16 are about four units of their rounding
(2^-10 and 2^-7 relative): the caller hands the scheduler a sample and a model output rounded
to the dtype at every call, so the difference to the float64 reference is input rounding, not
arithmetic. kdpm2 passes at 2e-3 and 1.5e-2 and fails at 1e-3 and 8e-3 (``ci`` profile,
2026-12-01): the floors leave it a factor of 2.
"""

DTYPES: dict[str, tuple[str, ...]] = {
    "index_for_timestep": ("float64", "float32", "float16"),
    "scale_model_input": ("float64", "float32"),
    "exact_denoiser": ("float64",),
    "custom_sigmas": ("float64",),
    "custom_timesteps": ("float64",),
    "churn": ("float64",),
    "convergence_order": ("float64",),
    # the ancestral family (``ancestral_family``): its loops compare within float32 rounding
    # (``ancestral_invariants.LOOP_RTOL``), the exact one within float64's; its table checks read
    # tables that do not depend on the samples' dtype, so they run in every dtype
    "ancestral_matches_reference": ("float64", "float32"),
    "ancestral_matches_reference_exact": ("float64",),
    "ancestral_eta_zero_is_dpm2": ("float64", "float32"),
    "ancestral_noise_statistics": ("float64", "float32"),
    "ancestral_same_seeds": ("float64", "float32"),
    "ancestral_batch_independent": ("float64", "float32"),
}
"""Properties that run only in some dtypes (all others run in every dtype of ``DTYPE_NAMES``)."""

LEVEL = (
    "the run's numerical level (`exact` 1e-12, `float32 tables` 1e-6; churned loops 1e-4) relative to the largest "
    "operand, per unit of the schedule's amplification"
)
"""How the float64 loop properties compare (see ``kdpm2_spec.levels``)."""

TOLERANCES: dict[str, str] = {
    "tables_finite": "exact: no NaN or infinity anywhere, unread entries included (a NaN leaks into any reduction).",
    "sigmas_decreasing": "exact comparisons: strict decrease is what makes each step move towards the data.",
    "interleaved_layout": "exact: lengths and repeated entries are copies, not computations.",
    "timesteps_range": "exact: a timestep outside `[0, T - 1]` or a rising one indexes the model's embedding wrongly.",
    "midpoints_geometric": "1e-9 relative (1e-6 for float32 tables): one `exp`/`log` pair rounds the mean.",
    "index_for_timestep": "exact: an index is right or wrong; not bfloat16, whose probe of an absent timestep "
    "(the largest + 0.5) rounds onto a timestep.",
    "scale_model_input": "1e-6 relative: one division; needs float32 or float64 inputs to hold it.",
    "step_alternates": "exact: the order and `step_index` are counters.",
    "step_alternates_from_begin": "exact: the order and `step_index` are counters, from any full step.",
    "timestep_of_sigma": "the timesteps of the sigma within 4e-7 relative (a float32 table's rounding), plus 1e-3, "
    "plus 0.5 where the timestep is an integer (diffusers rounds the main Karras timesteps).",
    "exact_denoiser": "the run's level for relations (`exact` 1e-9, `float32 tables` 1e-6) relative to the operands, "
    "per unit of amplification: the exact denoiser makes every step exact, so only rounding remains; float64 only.",
    "reference_sigmas": "1e-6 relative to the largest sigma: public tables are float32 (diffusers' and ours).",
    "reference_sigmas_interpol": "1e-6 relative to the largest sigma, every entry (the first included).",
    "reference_timesteps": "1e-6 relative to the largest timestep; diffusers' rounded main Karras timesteps are "
    "their own finding.",
    "reference_init_noise_sigma": "1e-6 relative: one entry of a float32 table, or its `sqrt(s^2 + 1)`.",
    "sampling_loop": LEVEL + " (float64), or the dtype's floor.",
    "add_noise_mid_loop": "as `sampling_loop`, each `add_noise` and each step.",
    "set_timesteps_again": "as `sampling_loop`: a reused scheduler must sample as a fresh one.",
    "prediction_sample": "as `sampling_loop`.",
    "custom_sigmas": LEVEL + " (the sigmas are given, nothing is interpolated); float64 only.",
    "custom_timesteps": LEVEL + " (the training sigma at each timestep is a table lookup); float64 only.",
    "churn": LEVEL + ", given the same noise draws; float64 only.",
    "float32_loop": "1e-5 relative to the largest value: float32 arithmetic with a well-conditioned model.",
    "low_precision_step": "one float16/bfloat16 ulp of the exact float64 step: round once, in float32 registers.",
    "illegal_calls": "exact: the call must raise `ValueError`.",
    "save_reload": "exact: a reloaded scheduler builds bit-identical tables.",
    "convergence_order": "the fitted order is 2 +- 0.25 (DPM-Solver-2 is second order); float64 only, so that "
    "rounding does not flatten the error curve at 64 steps.",
}
"""Each property's tolerance and the reason for it, by property name (in run order)."""


def dtypes_of(name: str) -> tuple[str, ...]:
    """The dtypes property ``name`` runs in."""
    return DTYPES.get(name, DTYPE_NAMES)
