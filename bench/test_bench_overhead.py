"""Host overhead of one ``step`` call: 1-element tensors, so the Python around the ops is the time.

A round is one first-order and one second-order call (``calls_per_round = 2``), epsilon, float32,
as in ``test_bench_step.py`` but with tensors of one element: the tensor work is a few
nanoseconds, and what remains is validation, coefficient math, dispatch and output construction.
``floor`` is the two ``torch.add`` calls a step cannot do without (``prev`` and ``x0``), timed the
same way: the overhead of a step is its time over that floor. On CUDA the same Python runs before
each launch, so this is the per-call cost a GPU loop pays on the host.
"""

from __future__ import annotations

import pytest
import torch

from conftest import DEVICES, IMPLS
from test_bench_step import step_pair


def floor_pair(device: str):
    """Two calls of the two ops a step needs at the least (``prev`` and ``x0`` from two inputs)."""
    x = torch.randn(1, device=device)
    e = torch.randn(1, device=device)

    def run():
        y = torch.add(x, e, alpha=-0.5)
        torch.add(x, e, alpha=-1.5)
        z = torch.add(y, e, alpha=-0.25)
        torch.add(y, e, alpha=-1.25)
        return z

    return run


@pytest.mark.parametrize("impl", [*IMPLS, "floor"])
@pytest.mark.parametrize("device", DEVICES)
def test_step_overhead(bench, device, impl) -> None:
    run = floor_pair(device) if impl == "floor" else step_pair(impl, device, torch.float32, (1,), "epsilon")
    b = bench(f"overhead {device} step 1-element float32", impl, device, dtype="float32", shape="1", calls_per_round=2)
    b(run)
