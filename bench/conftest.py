"""Shared pieces of the benchmarks: devices, the CUDA-synchronising clock, schedulers, labels.

Every benchmark puts ``kdpm2`` and its ``diffusers`` baseline (and k-diffusion where it applies)
in one ``benchmark.group`` and records the inputs of the ratio in ``benchmark.extra_info``;
``bench/report.py`` turns the saved JSON into tables and plots.

On CUDA the benchmark clock synchronises the device before reading the host clock, so a timed
round of N calls covers the work of all N (and the launch overhead is amortised, not hidden).
``KDPM2_BENCH_THREADS`` sets ``torch.set_num_threads`` for CPU runs (recorded in extra_info).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

THREADS = os.environ.get("KDPM2_BENCH_THREADS")
if THREADS:
    torch.set_num_threads(int(THREADS))

HAS_CUDA = torch.cuda.is_available()
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
]
IMPLS = ["kdpm2", "diffusers"]


def cuda_clock() -> float:
    """``time.perf_counter`` after the device has finished everything queued so far."""
    torch.cuda.synchronize()
    return time.perf_counter()


def make_scheduler(impl: str, **config: Any) -> Any:
    """Our scheduler or diffusers' with the same config."""
    if impl == "kdpm2":
        from kdpm2 import KDPM2DiscreteScheduler
    else:
        from diffusers import KDPM2DiscreteScheduler
    return KDPM2DiscreteScheduler(**config)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


@pytest.fixture
def bench(benchmark: Any, request: Any) -> Callable[..., Any]:
    """``bench(group, impl, device, **info)``: set the group, extra_info and the clock; returns benchmark."""

    def setup(group: str, impl: str, device: str, **info: Any) -> Any:
        benchmark.group = group
        benchmark.extra_info.update(
            impl=impl,
            device=device,
            device_name=device_name(device),
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            **info,
        )
        if device == "cuda":
            benchmark._timer = cuda_clock  # pytest-benchmark's clock: sync, then read the host clock
        return benchmark

    return setup
