"""The README's main job: the receiver demo, end to end on SQLite."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from runflow_callbacks.cli import main

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_the_demo_handles_every_batch_exactly_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["demo", "--batches", "4", "--workdir", str(tmp_path)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "verified with secret 'new'" in text  # the signature walk-through comes first
    assert "4/4 delivered" in text
    assert "-> 401 signature_mismatch" in text
    assert "3 callbacks exhausted all 5 attempts" in text
    assert "'recovered': 3" in text
    # 3 redeliveries, the wrong secret's 12 retries replayed, 1 redelivery of a pruned callback
    assert "duplicates ignored    16" in text
    # 2 forged in step 3, and the wrong secret's 3 callbacks x 5 attempts
    assert "rejected              17" in text
    assert "3 processed, 12 duplicates" in text
    assert "2 still refused" in text
    assert "its handler did not run" in text
    assert "OK: 13 batches, 13 handler runs (0 repeated, 0 lost)" in text
    # Secrets show masked (``Secret('whsec_demo…')``), never whole.
    assert not re.search(r"whsec_demo_[0-9a-f]{8}", text)


def test_the_demo_refuses_an_empty_stream(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--batches", "0"]) == 1
    assert "--batches must be at least 1" in capsys.readouterr().err
