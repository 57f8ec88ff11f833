"""Draw ``docs/images/schedules.png``: the sigma of every step for each schedule, against step.

Run from the repository root (needs matplotlib, and scipy for the beta schedule):

    PYTHONPATH=src:spec python docs/scripts/schedules_figure.py

The left panel has diffusers' options (Stable Diffusion's ``scaled_linear`` training schedule,
25 steps); the right one adds the options that reproduce AUTOMATIC1111 and ComfyUI
(``sigma_interpolation="log"``, ``discard_penultimate_sigma=True``; see the Parity page). The
sigmas come from ``kdpm2.KDPM2DiscreteScheduler`` itself, and the PNG carries no date or version
metadata, so running the script again gives the same file.
"""

from __future__ import annotations

import pathlib

from matplotlib import rc_context
from matplotlib.figure import Figure

from kdpm2 import KDPM2DiscreteScheduler

STEPS = 25
OUT = pathlib.Path(__file__).resolve().parents[1] / "images" / "schedules.png"
BASE = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
}
FAMILIES = {
    "default (linspace timesteps)": {},
    "Karras (rho = 7)": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta (0.6, 0.6)": {"use_beta_sigmas": True},
}
FRONT_ENDS = {"sigma_interpolation": "log", "discard_penultimate_sigma": True}


def step_sigmas(**config: object) -> list[float]:
    """The sigma at the start of each step and the final one: sigma_0 > ... > sigma_n."""
    scheduler = KDPM2DiscreteScheduler(**BASE, **config)
    scheduler.set_timesteps(STEPS)
    sigmas = (
        scheduler.sigmas.tolist()
    )  # per call: s0, s1, s1, s2, s2, ..., then the final 0
    return [sigmas[0], *sigmas[1::2]][: STEPS + 1]


def schedules() -> dict[str, dict[str, list[float]]]:
    """Panel title -> curve label -> step sigmas."""
    return {
        "diffusers' options": {
            name: step_sigmas(**config) for name, config in FAMILIES.items()
        },
        "with the A1111 / ComfyUI options": {
            name: step_sigmas(**config, **FRONT_ENDS)
            for name, config in FAMILIES.items()
        },
    }


def main() -> None:
    with rc_context({"font.size": 12, "svg.hashsalt": "kdpm2"}):
        figure = Figure(figsize=(11, 4.6), layout="constrained")
        axes = figure.subplots(1, 2, sharey=True)
        for ax, (title, curves) in zip(axes, schedules().items(), strict=True):
            for (name, sigmas), marker in zip(
                curves.items(), "os^D", strict=True
            ):
                shown = [
                    (i, s) for i, s in enumerate(sigmas) if s > 0
                ]  # the final 0 is off a log axis
                ax.plot(
                    *zip(*shown, strict=True),
                    marker=marker,
                    ms=4,
                    lw=1.2,
                    label=name,
                )
            ax.set_yscale("log")
            ax.set_title(f"{title}, {STEPS} steps")
            ax.set_xlabel("step i (the last step goes to sigma = 0, not drawn)")
            ax.grid(True, which="major", alpha=0.3)
        axes[0].set_ylabel("sigma_i")
        axes[0].legend(loc="lower left")
        figure.savefig(OUT, dpi=110, metadata={"Software": None})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
