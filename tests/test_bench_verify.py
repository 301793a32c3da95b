"""Keep bench/bench_verify.py runnable: its core on a tiny body, every row present."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_verify.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_verify", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_bench_core_runs_on_a_tiny_body() -> None:
    bench = _load()
    assert len(bench.batch_body(2048)) == 2048
    rows = bench.measure({"2 KiB": 2048}, repeat=1, round_ms=1.0)
    names = [row.name for row in rows]
    assert names[:4] == ["floor", "verify", "incremental (64 KiB chunks)", "verify + parse"]
    assert {"standardwebhooks", "svix", "stripe"} <= set(names)
    assert rows[0].ratio == 1.0
    table = bench.table(rows)
    assert table.count("\n") == len(rows) + 1
    assert any(line.startswith("2 KiB: verify is") for line in bench.verdicts(rows))
