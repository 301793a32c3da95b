"""Keep bench/bench_startup.py runnable: every command it times works, the report reads right."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_startup.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_startup", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_timed_command_succeeds(tmp_path: Path) -> None:
    bench = _load()
    table = bench.commands(tmp_path)
    for name in (bench.FLOOR, bench.HMAC_FLOOR, bench.METADATA_FLOOR, bench.VERSION, bench.SIGN):
        assert name in table
    for name, command in table.items():
        if "pytest" not in name:  # the two pytest rows take a second each; run below
            bench.check(name, command)
    assert bench._importtime_us() > 0


def test_the_report_has_a_row_per_command_and_a_verdict_per_target(tmp_path: Path) -> None:
    bench = _load()
    names = list(bench.commands(tmp_path))
    rows = [
        bench.Row(name, 0.01 * (i + 1), float(i + 1), 0.005 * (i + 1), i + 1.0, [0.01 * (i + 1)])
        for i, name in enumerate(names)
    ]
    result = bench.Result(rows, 1234.0)
    text = bench.table(result)
    assert all(f"| {name} |" in text for name in names)
    assert "pytest plugin (on minus off):" in text
    assert "importing it after pytest:" in text
    assert "1.2 ms cumulative" in text
    verdicts = bench.verdicts(result)
    assert [line.split(":")[0] for line in verdicts] == [bench.VERSION, bench.SIGN]
    assert all(re.search(r"\(target <= 2\.0x\): (met|MISSED); ", line) for line in verdicts)
