"""Keep bench/bench_serve.py honest: its ``distinct`` load really is distinct, signed callbacks."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from runflow_callbacks import Verifier, parse_callback

if TYPE_CHECKING:
    from types import ModuleType

    import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # bench_serve imports bench_middleware
    return importlib.import_module("bench_serve")


def test_the_distinct_pool_holds_signed_callbacks_of_distinct_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = _load(monkeypatch)
    pool = tmp_path / "pool.txt"
    bench.distinct_pool(pool, 50)
    verifier = Verifier([bench.SECRET])
    batch_ids = set()
    for line in pool.read_bytes().splitlines():
        signature, body = line.split(b"\t", 1)
        assert len(body) == bench.BODY_BYTES
        verifier.verify(body, signature.decode())
        batch_ids.add(parse_callback(body).subject_id)
    assert len(batch_ids) == 50
    script = bench.DISTINCT_LUA.format(pool=pool)
    assert str(pool) in script
    assert "{" in script  # the Lua tables survived str.format
