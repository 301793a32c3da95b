"""Keep bench/bench_backends.py runnable: its tables, and a tiny before/after run on Redis."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_backends

from runflow_callbacks.stores import postgres, redis
from servers import unavailable


def _earlier(tmp_path: Path) -> Path:
    """A directory of store modules to load as ``before``: here, copies of today's."""
    for module in (postgres, redis):
        assert module.__file__ is not None
        shutil.copy(module.__file__, tmp_path)
    return tmp_path


def test_the_tables_show_every_row_and_the_ratio() -> None:
    samples = {
        "before": [bench_backends.Sample(100.0, 400.0, 100.0, None)] * 3,
        "after": [bench_backends.Sample(200.0, 200.0, 50.0, 16.0)] * 3,
    }
    rows = [bench_backends.Row("redis", "fast", level, samples) for level in (1, 16)]
    table = bench_backends.in_process_table(rows)
    assert table.count("\n") == 3
    assert "| redis | fast | 16 | **100** (100, 100, 100) | **200** (200, 200, 200) | 2.00x |" in (
        table
    )
    assert "400 → 200 | 100 → 50 | 16.0 |" in table


def test_the_serve_table_gives_ratios_per_round() -> None:
    from bench_middleware import Run

    results = [
        bench_backends.Measured(
            config, Run(rps=rps * (1 + index), cpu_us=100.0), store, wrapped=False
        )
        for index in range(3)
        for config, rps, store in (
            ("receiver (no store)", 3000.0, None),
            ("serve redis fast, before", 1000.0, 50.0),
            ("serve redis fast, after", 1500.0, 40.0),
        )
    ]
    table = bench_backends.serve_table(results).splitlines()
    assert len(table) == 5
    before, after = table[3], table[4]
    assert before.startswith("| serve redis fast, before | 2,000 | 1000, 2000, 3000 | 0.33 | - |")
    assert after.startswith("| serve redis fast, after | 3,000 | 1500, 3000, 4500 | 0.50 | 1.50x |")
    assert after.endswith("| 100 | 40 |")


@pytest.mark.redis
@pytest.mark.redis
def test_a_tiny_before_and_after_run_on_redis(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server", "not on PATH")
    found = bench_backends.versions(_earlier(tmp_path))
    assert [version.name for version in found] == ["before", "after"]
    with bench_backends.store_server("redis", "fast") as server:
        rows = bench_backends.measure_in_process(
            server, found, callbacks=8, concurrency=[1, 4], rounds=1
        )
    assert [(row.concurrency, len(row.samples["after"])) for row in rows] == [(1, 1), (4, 1)]
    for row in rows:
        for sample in (*row.samples["before"], *row.samples["after"]):
            assert sample.per_second > 0
    # Both copies batch (they are today's modules), and four tasks share batches.
    assert (rows[1].samples["after"][0].mean_batch or 0) > 1
