"""Keep bench/bench_middleware.py's in-process mode runnable: every app answers a signed 200."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_in_process_drives_every_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    bench = importlib.import_module("bench_middleware")
    # in_process() refuses (SystemExit) a configuration that does not answer 200.
    best = bench.in_process(calls=3, rounds=1)
    assert set(best) == {"bare", "middleware", "receiver"}
    assert all(micros > 0 for micros in best.values())
