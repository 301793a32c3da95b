"""The README's main job: the receiver demo, end to end on SQLite."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from runflow_callbacks.demo import run

if TYPE_CHECKING:
    from pathlib import Path


def test_the_demo_handles_every_batch_exactly_once(tmp_path: Path) -> None:
    out = io.StringIO()
    assert run(batches=4, workdir=tmp_path, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "4/4 delivered" in text
    assert "-> 401 signature_mismatch" in text
    assert "3 callbacks exhausted all 5 attempts" in text
    assert "'recovered': 3" in text
    assert "duplicates ignored    3" in text
    assert "rejected              2" in text
    assert "OK: 10 batches, 10 handler runs (0 repeated, 0 lost)" in text
    assert "whsec_" not in text  # the demo's secret never reaches the output
