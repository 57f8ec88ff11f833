"""The demo: sample a 2-D Gaussian mixture whose exact denoiser is known, and measure the error.

1. The data are a mixture of ``K`` Gaussians ``N(mu_k, s_k^2 I)`` with weights ``pi_k``. Its ideal
   denoiser has a closed form (``Mixture.denoise``), so no network and no weights are needed.
2. A reference solution of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` is
   computed with classical RK4 in float64, in the variable ``log sigma`` (``reference_solve``).
3. Our scheduler (and k-diffusion's ``sample_dpm_2`` and diffusers' scheduler, when installed)
   samples the same noise on the same Karras sigmas at several step counts.
4. The error is the RMS distance to the reference at ``sigma_min``, the last non-zero sigma. The
   final call is an Euler step from ``sigma_min`` to 0, which is the map ``x -> D(x, sigma_min)``
   in every KDPM2 sampler; it adds an error that does not shrink with the step count, so it is
   left out of the comparison (it is the same for all samplers).

Everything runs in float64 on CUDA when present, else on the CPU; only torch and numpy are needed
(matplotlib for the figure).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from kdpm2.scheduler import KDPM2DiscreteScheduler

STEP_COUNTS = (8, 16, 32, 64, 128)
"""Default numbers of inference steps (``2n - 1`` model calls each)."""

REFERENCE_STEPS = 400
"""RK4 steps (in log sigma, four denoiser calls each) of the reference solve."""

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]
T = TypeVar("T")


# -- the data and its exact denoiser ----------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A 2-D Gaussian mixture: ``K`` components ``N(means[k], stds[k]^2 I)`` with ``weights[k]``."""

    means: torch.Tensor  # (K, 2)
    stds: torch.Tensor  # (K,)
    weights: torch.Tensor  # (K,), summing to 1

    @classmethod
    def ring(cls, components: int = 8, radius: float = 1.0, std: float = 0.2, device: str = "cpu") -> Mixture:
        """``components`` equal Gaussians evenly spaced on a circle."""
        angle = torch.arange(components, dtype=torch.float64) * (2 * math.pi / components)
        means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
        stds = torch.full((components,), std, dtype=torch.float64)
        weights = torch.full((components,), 1.0 / components, dtype=torch.float64)
        return cls(means.to(device), stds.to(device), weights.to(device))

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """The ideal denoiser ``E[x0 | x0 + sigma n = x]`` for points ``x`` of shape ``(N, 2)``.

        ``E[x0 | x] = sum_k w_k(x) (s_k^2 x + sigma^2 mu_k) / (s_k^2 + sigma^2)``, with posterior
        weights ``w_k(x)`` proportional to ``pi_k N(x; mu_k, (s_k^2 + sigma^2) I)``.
        """
        var = self.stds**2 + sigma**2  # (K,) variance of x in each component
        squared_distance = (x * x).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means**2).sum(1)
        log_w = self.weights.log() - var.log() - squared_distance / (2 * var)  # 2-D: det = var^2
        w = (log_w - log_w.amax(1, keepdim=True)).exp()
        w = w / w.sum(1, keepdim=True)
        return x * (w * (self.stds**2 / var)).sum(1, keepdim=True) + (w * (sigma**2 / var)) @ self.means

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` draws from the mixture (for comparison with the sampled points)."""
        k = torch.multinomial(self.weights.cpu(), count, replacement=True, generator=generator)
        noise = torch.randn(count, 2, generator=generator, dtype=torch.float64)
        return (self.means.cpu()[k] + self.stds.cpu()[k, None] * noise).to(self.means.device)


# -- the reference solution ------------------------------------------------------------------


def reference_solve(
    denoise: Denoiser, x: torch.Tensor, sigma_start: float, sigma_end: float, steps: int = REFERENCE_STEPS
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """RK4 on ``dx/du = x - D(x, e^u)`` (``u = log sigma``) from ``sigma_start`` to ``sigma_end``.

    Returns the end point and the path (every step) of the first 48 points.
    """

    def slope(x: torch.Tensor, u: float) -> torch.Tensor:
        return x - denoise(x, math.exp(u))

    u, h = math.log(sigma_start), (math.log(sigma_end) - math.log(sigma_start)) / steps
    path = [x[:48].clone()]
    for _ in progress(range(steps), "reference ODE solve (RK4)", steps):
        k1 = slope(x, u)
        k2 = slope(x + h / 2 * k1, u + h / 2)
        k3 = slope(x + h / 2 * k2, u + h / 2)
        k4 = slope(x + h * k3, u + h)
        x, u = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), u + h
        path.append(x[:48].clone())
    return x, path


# -- the samplers ----------------------------------------------------------------------------


def scheduler_loop(scheduler: Any, denoise: Denoiser, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Sample with a diffusers-style KDPM2 scheduler on which ``set_timesteps`` has run.

    Returns the final sample, the sample before the last call (at ``sigma_min``) and the first 48
    points after each full step.
    """
    timesteps = scheduler.timesteps
    before_last, path = x, [x[:48].clone()]
    for k, t in enumerate(timesteps):
        scheduler.scale_model_input(x, t)  # the exact denoiser takes x itself; this sets step_index
        table = scheduler.sigmas if scheduler.state_in_first_order else scheduler.sigmas_interpol
        sigma = float(table[scheduler.step_index])
        if k == len(timesteps) - 1:
            before_last = x
        epsilon = (x - denoise(x, sigma)) / sigma  # the model output of an epsilon-prediction model
        x = scheduler.step(epsilon, t, x).prev_sample
        if k % 2 == 1 or k == len(timesteps) - 1:
            path.append(x[:48].clone())
    return x, before_last, path


def training_sigma_range() -> tuple[float, float]:
    """``(sigma_min, sigma_max)`` of the default training schedule (1000 linear betas), in float64."""
    alphas_cumprod = KDPM2DiscreteScheduler().alphas_cumprod.to(torch.float64)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
    return float(sigmas[0]), float(sigmas[-1])


def karras_sigmas(steps: int) -> torch.Tensor:
    """Karras et al. (2022) eq. (5), rho = 7, over the training range, then 0: ``steps + 1`` sigmas.

    These are the sigmas of ``use_karras_sigmas=True`` in diffusers and in our scheduler.
    """
    sigma_min, sigma_max = training_sigma_range()
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / 7), sigma_max ** (1 / 7)
    return torch.cat([(hi + ramp * (lo - hi)) ** 7, torch.zeros(1, dtype=torch.float64)])


Sampler = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor, list]]
"""``sample(steps, x_start)``: final sample, sample at ``sigma_min`` and a few points' path."""


def kdpm2_sampler(denoise: Denoiser, step_counts: tuple[int, ...]) -> Sampler:
    """Our scheduler on the Karras sigmas; each run calls ``set_timesteps`` and loops."""
    scheduler = KDPM2DiscreteScheduler()
    tables = {steps: karras_sigmas(steps) for steps in (2, *step_counts)}

    def sample(steps: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        scheduler.set_timesteps(sigmas=tables[steps], device=x.device)
        return scheduler_loop(scheduler, denoise, x)

    return sample


def diffusers_sampler(denoise: Denoiser, step_counts: tuple[int, ...]) -> Sampler:
    """diffusers' ``KDPM2DiscreteScheduler`` with ``use_karras_sigmas=True`` (the same sigmas, in float32)."""
    import diffusers

    scheduler: Any = diffusers.KDPM2DiscreteScheduler(use_karras_sigmas=True)

    def sample(steps: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        scheduler.set_timesteps(steps, device=x.device)
        return scheduler_loop(scheduler, denoise, x)

    return sample


def k_diffusion_sampler(denoise: Denoiser, step_counts: tuple[int, ...]) -> Sampler:
    """k-diffusion's ``sample_dpm_2`` on the Karras sigmas."""
    from k_diffusion.sampling import sample_dpm_2

    tables = {steps: karras_sigmas(steps) for steps in (2, *step_counts)}

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(x, float(sigma.reshape(-1)[0]))

    def sample(steps: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list]:
        seen: dict[int, torch.Tensor] = {}
        sigmas = tables[steps].to(x.device)
        final = sample_dpm_2(model, x, sigmas, callback=lambda info: seen.update({info["i"]: info["x"]}), disable=True)
        return final, seen[steps - 1], []

    return sample


def available_samplers(
    denoise: Denoiser, step_counts: tuple[int, ...], compare: bool
) -> tuple[dict[str, Sampler], list[str]]:
    """Our sampler, plus k-diffusion's and diffusers' when installed (and ``compare``)."""
    samplers = {"kdpm2": kdpm2_sampler(denoise, step_counts)}
    missing = []
    if compare:
        with warnings.catch_warnings():  # k-diffusion imports CLIP, which imports pkg_resources
            warnings.simplefilter("ignore")
            for name, make in (("k-diffusion", k_diffusion_sampler), ("diffusers", diffusers_sampler)):
                try:
                    samplers[name] = make(denoise, step_counts)
                except ImportError:
                    missing.append(f"{name} is not installed: skipped")
                except Exception as error:  # installed but broken in this environment
                    missing.append(f"{name} could not be imported ({type(error).__name__}: {error}): skipped")
    return samplers, missing


# -- the demo --------------------------------------------------------------------------------


@dataclass
class Result:
    """Errors and times of every sampler at every step count, and what the figure needs."""

    step_counts: tuple[int, ...]
    device: str
    errors: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    from_kdpm2: dict[str, list[float]] = field(default_factory=dict)
    """Per other sampler and step count: RMS distance of its state at ``sigma_min`` from kdpm2's."""
    missing: list[str] = field(default_factory=list)
    reference_accuracy: float = 0.0
    reference_path: list[torch.Tensor] = field(default_factory=list)
    kdpm2_path: list[torch.Tensor] = field(default_factory=list)
    samples: torch.Tensor | None = None
    data: torch.Tensor | None = None
    sigma_max: float = 0.0
    sigma_min: float = 0.0

    def calls(self, steps: int) -> int:
        """Model calls of ``steps`` KDPM2 steps ending at sigma 0."""
        return 2 * steps - 1

    def order(self, sampler: str = "kdpm2") -> float:
        """Minus the least-squares slope of log error against log step count."""
        return float(-np.polyfit(np.log(self.step_counts), np.log(self.errors[sampler]), 1)[0])


def run(
    step_counts: Iterable[int] = STEP_COUNTS,
    points: int = 2000,
    seed: int = 0,
    device: str | None = None,
    compare: bool = True,
) -> Result:
    """Sample the mixture at each step count with each sampler and measure error and time."""
    step_counts = tuple(sorted(set(step_counts)))
    if not step_counts or step_counts[0] < 2:
        raise ValueError(
            f"step counts must be at least 2 (the last non-zero sigma is then sigma_min); got {step_counts}"
        )
    device = choose_device(device)
    data = Mixture.ring(device=device)
    sigma_min, sigma_max = training_sigma_range()  # the Karras sigmas' ends, for every step count
    generator = torch.Generator().manual_seed(seed)
    x_start = (sigma_max * torch.randn(points, 2, generator=generator, dtype=torch.float64)).to(device)

    exact, path = reference_solve(data.denoise, x_start, sigma_max, sigma_min)
    coarse, _ = reference_solve(data.denoise, x_start, sigma_max, sigma_min, REFERENCE_STEPS // 2)
    result = Result(step_counts, device, reference_accuracy=float(_rms(coarse - exact)) / 15)  # Richardson
    result.reference_path, result.sigma_max, result.sigma_min = path, sigma_max, sigma_min
    result.data = data.sample(points, generator)

    samplers, result.missing = available_samplers(data.denoise, step_counts, compare)
    for sample in samplers.values():  # warm up: first calls pay one-off costs
        sample(2, x_start[:8])
    jobs = [(name, steps) for name in samplers for steps in step_counts]
    ours: dict[int, torch.Tensor] = {}
    for name, steps in progress(jobs, "sampling", len(jobs)):
        start = time.perf_counter()
        final, before_last, trajectory = samplers[name](steps, x_start)
        if x_start.is_cuda:
            torch.cuda.synchronize()
        result.seconds.setdefault(name, []).append(time.perf_counter() - start)
        result.errors.setdefault(name, []).append(float(_rms(before_last - exact)))
        if name == "kdpm2":
            ours[steps] = before_last
        else:
            result.from_kdpm2.setdefault(name, []).append(float(_rms(before_last - ours[steps])))
        if name == "kdpm2" and steps == step_counts[0]:
            result.kdpm2_path = trajectory
        if name == "kdpm2" and steps == step_counts[-1]:
            result.samples = final
    return result


def record(result: Result) -> dict[str, Any]:
    """The numbers of a run as JSON-ready data: what the docs' tables are generated from.

    Step counts and model calls, and per sampler its errors, its seconds per loop and (for the
    others) its RMS distance from kdpm2; the fitted order, the reference's accuracy, the device
    and the Karras sigma range.
    """
    return {
        "step_counts": list(result.step_counts),
        "calls": [result.calls(steps) for steps in result.step_counts],
        "errors": {name: list(values) for name, values in result.errors.items()},
        "seconds": {name: list(values) for name, values in result.seconds.items()},
        "from_kdpm2": {name: list(values) for name, values in result.from_kdpm2.items()},
        "order": result.order() if len(result.step_counts) >= 2 else None,
        "reference_accuracy": result.reference_accuracy,
        "device": result.device,
        "sigma_max": result.sigma_max,
        "sigma_min": result.sigma_min,
        "missing": list(result.missing),
    }


def choose_device(device: str | None) -> str:
    """``device``, checked; by default CUDA when present, else the CPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available")
    return device


def _rms(difference: torch.Tensor) -> torch.Tensor:
    """Root mean square of the Euclidean distances of the rows."""
    return difference.square().sum(1).mean().sqrt()


def format_table(result: Result) -> str:
    """The table of step counts, model calls, errors and times of every sampler."""
    names = list(result.errors)
    header = f"{'steps':>5} {'calls':>5}" + "".join(f" {name + ' error':>17} {'seconds':>8}" for name in names)
    lines = [header]
    for i, steps in enumerate(result.step_counts):
        row = f"{steps:>5} {result.calls(steps):>5}"
        for name in names:
            row += f" {result.errors[name][i]:>17.3e} {result.seconds[name][i]:>8.4f}"
        lines.append(row)
    return "\n".join(lines)


def report(result: Result) -> str:
    """What the demo prints: the setting, the table and the fitted order."""
    lines = [
        f"2-D mixture of 8 Gaussians, exact denoiser, float64 on {result.device}; Karras sigmas "
        f"{result.sigma_max:.4g} .. {result.sigma_min:.4g}, then 0.",
        f"error: RMS distance at sigma_min to the ODE solution by RK4 in log sigma ({REFERENCE_STEPS} steps, "
        f"accurate to about {result.reference_accuracy:.0e}); the final Euler call to 0 is the same in all samplers.",
        "seconds: set_timesteps and the sampling loop, exact denoiser included.",
        "",
        format_table(result),
        "",
    ]
    if len(result.step_counts) >= 2:
        lines.append(f"order fitted from the kdpm2 errors: {result.order():.2f} (DPM-Solver-2 is second order)")
    lines.extend(result.missing)
    return "\n".join(lines)


def plot(result: Result, path: str) -> None:
    """Write a PNG: samples, trajectories and error against step count (log-log, slope -2 line)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    figure = Figure(figsize=(10.5, 3.8), layout="constrained")  # text readable when a page shrinks it
    samples, trajectories, errors = figure.subplots(1, 3)

    assert result.samples is not None and result.data is not None
    data, final = result.data.cpu().numpy(), result.samples.cpu().numpy()
    samples.scatter(data[:, 0], data[:, 1], s=2, alpha=0.4, color="gray", label="data")
    samples.scatter(final[:, 0], final[:, 1], s=2, alpha=0.6, label=f"kdpm2, {result.step_counts[-1]} steps")
    samples.set(title="samples", aspect="equal")
    samples.legend(loc="upper left", markerscale=4, fontsize="small")

    def scaled(path: list[torch.Tensor], sigmas: np.ndarray) -> np.ndarray:
        states = torch.stack(path)[:, :24].cpu().numpy()  # (levels, points, 2)
        return states / np.sqrt(sigmas**2 + 1)[:, None, None]

    fine = np.exp(np.linspace(math.log(result.sigma_max), math.log(result.sigma_min), len(result.reference_path)))
    exact = scaled(result.reference_path, fine)
    trajectories.plot(exact[:, :, 0], exact[:, :, 1], color="gray", lw=1)
    coarse = scaled(result.kdpm2_path, karras_sigmas(result.step_counts[0]).numpy())
    trajectories.plot(coarse[:, :, 0], coarse[:, :, 1], "o-", color="C0", lw=0.6, ms=2.5)
    trajectories.set(
        title=rf"paths of $x/\sqrt{{1+\sigma^2}}$: exact (gray), kdpm2 {result.step_counts[0]} steps", aspect="equal"
    )

    steps = np.array(result.step_counts, dtype=float)
    errors.loglog(steps, result.errors["kdpm2"], "o-", ms=6, label="kdpm2: error vs exact")
    anchor = result.errors["kdpm2"][-1] / 2
    errors.loglog(steps, anchor * (steps / steps[-1]) ** -2.0, "k-", lw=0.8, label="slope -2")
    # The other samplers' errors would lie on kdpm2's curve: show how far their samples are from
    # kdpm2's instead (0, identical to the last bit, is drawn at the bottom of the axis).
    floor = 1e-17
    for (name, values), style in zip(result.from_kdpm2.items(), ("s--", "^:"), strict=False):
        errors.loglog(steps, np.maximum(values, floor), style, ms=4, label=f"{name} - kdpm2")
    errors.set(title=r"RMS at $\sigma_{min}$", xlabel="steps", ylabel="RMS distance", xticks=steps)
    errors.xaxis.set_major_formatter(ScalarFormatter())
    errors.xaxis.set_minor_formatter(NullFormatter())
    errors.legend(fontsize="small")
    figure.savefig(path, dpi=160)


def progress(items: Iterable[T], label: str, total: int) -> Iterator[T]:
    """Yield ``items``, drawing a progress line on stderr once a second has passed."""
    start, drawn = time.perf_counter(), 0.0
    for i, item in enumerate(items):
        yield item
        now = time.perf_counter()
        if now - start > 1.0 and (now - drawn > 0.1 or i + 1 == total):
            print(f"\r{label}: {i + 1}/{total} ({now - start:.1f} s)", end="", file=sys.stderr, flush=True)
            drawn = now
    if drawn:
        print(file=sys.stderr, flush=True)


def main(
    step_counts: Iterable[int] = STEP_COUNTS,
    out: str | None = ".",
    points: int = 2000,
    seed: int = 0,
    device: str | None = None,
    compare: bool = True,
) -> Result:
    """Run the demo, print its report and write ``kdpm2-demo.png`` into ``out`` (unless ``None``)."""
    threads = torch.get_num_threads()
    if torch.device(choose_device(device)).type == "cpu":
        torch.set_num_threads(1)  # tensors of a few thousand numbers: threads cost more than they save
    try:
        result = run(step_counts, points=points, seed=seed, device=device, compare=compare)
    finally:
        torch.set_num_threads(threads)
    print(report(result))
    if out is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed: no figure (pip install matplotlib)")
        else:
            os.makedirs(out, exist_ok=True)
            path = os.path.join(out, "kdpm2-demo.png")
            plot(result, path)
            print(f"wrote {path}")
    return result
