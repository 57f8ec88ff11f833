"""Levels of numerical strictness: no property fails a correct float32-table implementation, and exact ones meet ``exact``.

``Float32TablesReference`` (the reference with float32 per-call tables, read by ``step``, as
diffusers computes) passes every property at the ``float32 tables`` level, and the errors it shows
stay well inside the level's tolerances (``levels.FLOAT32_TABLES_MEASURED``); kdpm2 meets ``exact``.
"""

from __future__ import annotations

import pytest

from kdpm2_spec import conformance, levels
from kdpm2_spec.float32 import Float32TablesReference


def test_the_levels_are_ordered_and_named_alike_everywhere() -> None:
    from kdpm2_spec import pytest_plugin
    from kdpm2_spec.__main__ import LEVEL_NAMES

    assert tuple(levels.LEVELS) == LEVEL_NAMES == pytest_plugin.LEVELS
    assert all(levels.LEVELS["exact"][k] < levels.LEVELS["float32 tables"][k] for k in levels.LEVELS["exact"])
    assert levels.met({"loop": 1e-13}) == "exact" and levels.met({"loop": 1e-9}) == "float32 tables"
    assert levels.met({"loop": 1e-3}) is None and levels.stricter("exact", "float32 tables")


def test_a_float32_table_implementation_passes_every_property_at_its_level() -> None:
    report = conformance.run(Float32TablesReference, profile="ci")
    assert report.ok, str(report)
    assert report.level == "float32 tables", report.summary()
    errors = {k: max(r.errors.get(k, 0.0) for r in report.results) for k in ("loop", "churn", "relation")}
    for kind, ratio in errors.items():
        assert levels.LEVELS["exact"][kind] < ratio <= levels.FLOAT32_TABLES_MEASURED[kind] * 4, (kind, ratio)
        assert levels.FLOAT32_TABLES_MEASURED[kind] * 10 <= levels.LEVELS["float32 tables"][kind]


@pytest.mark.parametrize("name", ["sampling_loop", "custom_sigmas", "exact_denoiser"])
def test_the_exact_level_rejects_float32_tables(name: str) -> None:
    report = conformance.run(Float32TablesReference, profile="dev", only=[name], level="exact", shrink=False, seed=1)
    assert report[name].status == "fail", str(report)
