"""``kdpm2 schedule --sampler dpm2a``: the per-call table of ``KDPM2AncestralDiscreteScheduler``.

A DPM2 a step calls the model at ``sigma``, then at the midpoint toward ``sigma_down``, and adds
``sigma_up`` (times ``s_noise``) of fresh noise; a step whose ``sigma_down`` is 0 is one Euler
call. Each row is one model call; the second call of a step also shows where the step descends
(``sigma_down``) and the noise it adds (``sigma_up``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
from typing import Any

SAMPLERS = ("dpm2", "dpm2a")
"""``--sampler`` values: ``KDPM2DiscreteScheduler`` and ``KDPM2AncestralDiscreteScheduler``."""


def _classes() -> dict[str, Any]:
    from kdpm2.ancestral import KDPM2AncestralDiscreteScheduler
    from kdpm2.scheduler import KDPM2DiscreteScheduler

    return {"dpm2": KDPM2DiscreteScheduler, "dpm2a": KDPM2AncestralDiscreteScheduler}


def parameters() -> dict[str, tuple[inspect.Parameter, str | None]]:
    """Every constructor argument of both classes (DPM2's order first), with the sampler it belongs to alone."""
    dpm2, dpm2a = (cls._init_parameters() for cls in _classes().values())
    out: dict[str, tuple[inspect.Parameter, str | None]] = {}
    for name, parameter in {**dpm2, **dpm2a}.items():
        only = None if name in dpm2 and name in dpm2a else "dpm2" if name in dpm2 else "dpm2a"
        out[name] = (dpm2.get(name, parameter), only)
    return out


def refuse_foreign(args: argparse.Namespace, sampler: str) -> None:
    """``ValueError`` naming an option given that ``sampler``'s class does not take."""
    own = _classes()[sampler]._init_parameters()
    for name, (_, only) in parameters().items():
        if name in args and name not in own:
            raise ValueError(f"--{name.replace('_', '-')} is an option of --sampler {only}, not of --sampler {sampler}")


def run(args: argparse.Namespace) -> int:
    """``kdpm2 schedule --sampler dpm2a``: build the scheduler (or its preset) and print its calls."""
    refuse_foreign(args, "dpm2a")
    cls = _classes()["dpm2a"]
    config = {name: getattr(args, name) for name in cls._init_parameters() if name in args}
    preset = config.pop("preset", None)
    scheduler = cls.from_preset(preset, None, **config) if preset is not None else cls(**config)
    scheduler.set_timesteps(args.steps, sigmas=args.sigmas, timesteps=args.timesteps)
    print(json.dumps(schedule_json(scheduler), indent=2, allow_nan=False) if args.json else schedule_table(scheduler))
    return 0


def calls(scheduler: Any) -> list[dict[str, Any]]:
    """One row per model call: index, order, timestep, sigma of the model input, sigma moved to, the step's split.

    ``to_sigma`` is where the deterministic part takes the sample: the midpoint (or 0 for an Euler
    step) after a first call, ``sigma_down`` after a second, before the noise lifts it to
    ``sigma_next``.
    """
    timesteps = scheduler.timesteps.tolist()
    rows: list[dict[str, Any]] = []
    k = 0
    for i, level in enumerate(scheduler.step_levels):
        euler = level.sigma_mid is None
        rows.append(
            {
                "call": k,
                "order": 1,
                "step": i,
                "timestep": timesteps[k],
                "sigma": level.sigma,
                "to_sigma": 0.0 if euler else level.sigma_mid,
                "sigma_next": level.sigma_next,
                "sigma_down": level.sigma_down,
                "sigma_up": level.sigma_up,
            }
        )
        k += 1
        if not euler:
            rows.append({**rows[-1], "call": k, "order": 2, "timestep": timesteps[k], "sigma": level.sigma_mid})
            rows[-1]["to_sigma"] = level.sigma_down
            k += 1
    return rows


def schedule_json(scheduler: Any) -> dict[str, Any]:
    """The tables as the scheduler holds them, per-step levels, its config and the per-call rows."""
    return {
        "sampler": "dpm2a",
        "num_inference_steps": scheduler.num_inference_steps,
        "init_noise_sigma": float(scheduler.init_noise_sigma),
        "timesteps": scheduler.timesteps.tolist(),
        "sigmas": scheduler.sigmas.tolist(),
        "sigmas_interpol": scheduler.sigmas_interpol.tolist(),
        "sigmas_up": scheduler.sigmas_up.tolist(),
        "sigmas_down": scheduler.sigmas_down.tolist(),
        "steps": [level._asdict() for level in scheduler.step_levels],
        "calls": [{**row, "c_in": 1 / math.sqrt(row["sigma"] ** 2 + 1)} for row in calls(scheduler)],
        "config": dict(scheduler.config),
    }


def schedule_table(scheduler: Any) -> str:
    """The per-call table, after a line on the schedule's size, initial noise and preset."""
    rows = calls(scheduler)
    preset = scheduler.config.preset
    digits = 9 if preset is not None else 6
    head = f"DPM2 a{f' (preset {preset})' if preset else ''}: {scheduler.num_inference_steps} steps, "
    head += f"{len(rows)} model calls, eta {scheduler.config.eta:g}, s_noise {scheduler.config.s_noise:g}, "
    head += f"initial noise = unit noise x {float(scheduler.init_noise_sigma):.{digits}g}"
    width = digits + 6
    names = ("timestep", "sigma", "to sigma", "sigma_down", "sigma_up")
    lines = [head, f"{'call':>4} {'order':>5} " + " ".join(f"{name:>{width}}" for name in names)]
    for row in rows:
        values = [row["timestep"], row["sigma"], row["to_sigma"]]
        split = [row["sigma_down"], row["sigma_up"]] if row["order"] == 2 or row["to_sigma"] == 0 else None
        cells = [f"{v:>{width}.{digits}g}" for v in values]
        cells += [f"{v:>{width}.{digits}g}" for v in split] if split is not None else [f"{'':>{width}}"] * 2
        lines.append(f"{row['call']:>4} {row['order']:>5} " + " ".join(cells).rstrip())
    return "\n".join(lines)
