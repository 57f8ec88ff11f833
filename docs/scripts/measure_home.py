"""Measure the numbers quoted on the home page: set_timesteps and one step call, ours vs diffusers.

Run with ``python docs/scripts/measure_home.py``; prints a Markdown table (best of several runs).
"""

from __future__ import annotations

import platform
import time
import warnings

import torch

import kdpm2


def best_of(function, repeats: int = 7, number: int = 1) -> float:
    """Smallest mean time of ``number`` calls over ``repeats`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            function()
        times.append((time.perf_counter() - start) / number)
    return min(times)


def step_call(cls, shape: tuple[int, ...]) -> float:
    """Mean seconds of one ``step`` call over a 25-step loop (49 calls), model output given."""
    scheduler = cls()
    sample = torch.randn(shape)
    output = torch.randn(shape)

    def loop() -> None:
        scheduler.set_timesteps(25)
        scheduler.set_begin_index(0)
        x = sample
        for t in scheduler.timesteps:
            x = scheduler.step(output, t, x).prev_sample

    calls = 49
    return (
        best_of(loop, repeats=5) / calls
        - best_of(lambda: scheduler.set_timesteps(25), repeats=5) / calls
    )


def main() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import diffusers
    torch.set_num_threads(1)
    ours, theirs = (
        kdpm2.KDPM2DiscreteScheduler(),
        diffusers.KDPM2DiscreteScheduler(),
    )
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, diffusers {diffusers.__version__}, 1 thread"
    )
    print("| measurement | kdpm2 | diffusers | ratio |")
    print("|---|---|---|---|")
    for n in (1000, 25):
        a = best_of(lambda n=n: ours.set_timesteps(n), number=3)
        b = best_of(lambda n=n: theirs.set_timesteps(n), number=3)
        print(
            f"| `set_timesteps({n})` | {a * 1e3:.2f} ms | {b * 1e3:.2f} ms | {b / a:.0f}x |"
        )
    for shape in ((1, 4, 64, 64), (4, 4, 128, 128)):
        a = step_call(kdpm2.KDPM2DiscreteScheduler, shape)
        b = step_call(diffusers.KDPM2DiscreteScheduler, shape)
        name = "x".join(map(str, shape))
        print(
            f"| one `step` call, {name} fp32 | {a * 1e6:.0f} us | {b * 1e6:.0f} us | {b / a:.1f}x |"
        )


if __name__ == "__main__":
    main()
