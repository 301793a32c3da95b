"""Keep bench/bench_middleware.py runnable: every app answers a signed 200, the memory bodies
are the callbacks they claim to be, and the tables come out whole."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from runflow_callbacks import parse_callback

if TYPE_CHECKING:
    from types import ModuleType

    import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench_middleware imports bench_verify's shapes
    return importlib.import_module("bench_middleware")


def test_in_process_drives_every_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    # in_process() refuses (SystemExit) a configuration that does not answer 200.
    best = bench.in_process(calls=3, rounds=1)
    assert set(best) == {"bare", "middleware", "receiver"}
    assert all(micros > 0 for micros in best.values())
    table = bench.in_process_table(bench.in_process_rounds(calls=2, rounds=2))
    assert table.count("\n") == 4


def test_the_middleware_context_app_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    assert asyncio.run(bench._driver()(bench.build_app("middleware_context"))) == 200


def test_memory_bodies_are_distinct_callbacks_of_every_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bench = _load(monkeypatch)
    for shape in bench.shape_names():
        bodies = bench.Bodies.of(shape, 8192)
        assert len(bodies.big) == 8192
        sent = (bodies.warm_up, bodies.big, bodies.second)
        # Three callbacks of three batches (or runs): a store records each anew.
        assert len({parse_callback(body).subject_id for body in sent}) == 3, shape


def test_the_tables_come_out_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch)
    runs = {
        config: [bench.Run(rps=1000.0 - index, cpu_us=100.0 + index) for _ in range(3)]
        for index, config in enumerate(bench.CONFIGS)
    }
    throughput = bench.throughput_table(runs)
    assert throughput.count("\n") == len(bench.CONFIGS) + 1
    assert "| bare | 1000 |" in throughput
    shapes = ("short", "run")
    results = bench.MemoryResults(
        first={(config, shape): [1.2] for config in bench.MEMORY_CONFIGS for shape in shapes},
        second={(config, shape): [1.3] for config in bench.MEMORY_CONFIGS for shape in shapes},
        oversize={
            "receiver": {
                "oversize_status": "413",
                "oversize_seconds": 0.001,
                "oversize_growth_bytes": 0,
            }
        },
        sizes=dict.fromkeys(shapes, 100),
    )
    memory = bench.memory_tables(results)
    assert memory.count("| met |") == len(bench.MEMORY_CONFIGS) - 1
    assert "| receiver | 413 | 1.0 ms | 0 KiB |" in memory
