"""Test-wide settings: Hypothesis profiles and the ``cuda`` marker.

Profiles ``ci`` (default), ``dev`` and ``thorough`` live in ``kdpm2_spec.strategies`` and are
chosen by ``HYPOTHESIS_PROFILE``; ``--hypothesis-profile`` overrides.
"""

from __future__ import annotations

import pytest

from kdpm2_spec.strategies import register_profiles

register_profiles()  # the one place the profiles are defined


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` when torch sees no CUDA device (torch is imported only then)."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in cuda_items:
        item.add_marker(skip)
