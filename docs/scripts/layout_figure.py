"""Draw ``docs/images/layout.png``: the interleaved per-call layout of a 4-step KDPM2 schedule.

Run from the repository root: ``python docs/scripts/layout_figure.py`` (needs matplotlib).
"""

from __future__ import annotations

import math
import pathlib

from matplotlib.figure import Figure

from kdpm2 import KDPM2DiscreteScheduler

STEPS = 4
OUT = pathlib.Path(__file__).resolve().parents[1] / "images" / "layout.png"


def main() -> None:
    scheduler = KDPM2DiscreteScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(STEPS)
    sigmas, interpol = (
        scheduler.sigmas.tolist(),
        scheduler.sigmas_interpol.tolist(),
    )
    timesteps = scheduler.timesteps.tolist()
    calls = len(timesteps)
    zero = sigmas[-4] / 6  # where sigma = 0 is drawn on the log axis

    def level(s: float) -> float:
        return s if s > 0 else zero

    figure = Figure(figsize=(10, 4.6), layout="constrained")
    ax = figure.subplots()
    ax.set_yscale("log")
    for k in range(calls):
        first = k % 2 == 0
        sigma = sigmas[k] if first else interpol[k]
        i = k // 2
        name = rf"$s_{i}$" if first else rf"$m_{i + 1}$"
        ax.plot(
            k,
            sigma,
            "o" if first else "s",
            color="C0" if first else "C1",
            ms=9,
            zorder=3,
        )
        ax.annotate(
            f"{name}\nt={timesteps[k]:.4g}",
            (k, sigma),
            textcoords="offset points",
            xytext=(0, 11),
            ha="center",
            fontsize=9,
        )
        if first:  # Euler to the midpoint (or to 0 on the last call)
            target = interpol[k + 1]
            ax.annotate(
                "",
                (k + 1, level(target)),
                (k, sigma),
                arrowprops={
                    "arrowstyle": "->",
                    "ls": "--",
                    "color": "C0",
                    "shrinkA": 6,
                    "shrinkB": 6,
                },
            )
        else:  # DPM-2: the stored sample at s_i moves to s_{i+1} with the midpoint's slope
            ax.annotate(
                "",
                (k + 1, sigmas[k]),
                (k - 1, sigmas[k - 1]),
                arrowprops={
                    "arrowstyle": "->",
                    "color": "C1",
                    "connectionstyle": "arc3,rad=0.25",
                    "shrinkA": 6,
                    "shrinkB": 6,
                },
            )
    ax.plot(calls, zero, "o", color="gray", ms=7)
    ax.annotate(
        r"$\sigma = 0$",
        (calls, zero),
        textcoords="offset points",
        xytext=(0, 10),
        ha="center",
        fontsize=9,
    )
    ax.plot(
        [],
        [],
        "o",
        color="C0",
        label="first-order call: model at $s_i$, Euler move to $m_{i+1}$ (dashed)",
    )
    ax.plot(
        [],
        [],
        "s",
        color="C1",
        label="second-order call: model at $m_{i+1}$, stored sample moves $s_i \\to s_{i+1}$",
    )
    ax.set_xticks(
        range(calls + 1), [f"call {k}" for k in range(calls)] + ["output"]
    )
    ax.set_ylim(zero / 2, sigmas[0] * 4)
    ax.set_ylabel(r"$\sigma$ (log scale)")
    ax.set_title(
        f"KDPM2, {STEPS} steps (Karras sigmas): {calls} model calls; timesteps = [t_0, u_1, t_1, u_2, t_2, u_3, t_3]",
        fontsize=10,
    )
    ax.legend(loc="lower left", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    assert math.isclose(
        interpol[1], math.sqrt(sigmas[0] * sigmas[1]), rel_tol=1e-6
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(OUT, dpi=100)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
