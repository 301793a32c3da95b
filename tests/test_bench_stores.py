"""Keep bench/bench_stores.py runnable: a tiny run on the embedded backends, every row present."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import bench_stores


def test_bench_stores_runs_on_memory_and_sqlite() -> None:
    bench = bench_stores
    rows, notes = bench.measure(("memory", "sqlite"), callbacks=5, concurrency=[1, 3], repeat=1)
    assert notes == []
    assert [(row.backend, row.concurrency, row.what) for row in rows[:3]] == [
        ("memory", 1, "record+claim+complete"),
        ("memory", 1, "handle (sync)"),
        ("memory", 1, "duplicate"),
    ]
    assert len(rows) == 12
    assert all(row.per_second > 0 for row in rows)
    assert bench.table(rows).count("\n") == len(rows) + 1
