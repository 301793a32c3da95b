"""JSON logs: every line one JSON object with the fields of the text lines, serve included."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import sign
from runflow_callbacks.logs import JsonFormatter
from runflow_callbacks.testing import free_port, serve_process

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "whsec_logs_0123456789abcdef"
BODY = (
    b'{"event": "run.completed", "run_id": "0190f2a4-0000-7000-8000-000000000001", '
    b'"status": "succeeded"}'
)


def _fail() -> None:
    raise RuntimeError("database down")


def test_a_record_is_one_line_of_json_with_the_callback_fields_and_the_traceback() -> None:
    try:
        _fail()
    except RuntimeError:
        record = logging.LogRecord(
            "runflow_callbacks.receiver",
            logging.ERROR,
            __file__,
            1,
            "event=%s",
            ("a\nb",),
            sys.exc_info(),
        )
    record.runflow_event = "evil\nforged line"
    record.runflow_outcome = "failed"
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["event"] == "evil\nforged line"
    assert (parsed["outcome"], parsed["level"], parsed["error"]) == (
        "failed",
        "ERROR",
        "RuntimeError",
    )
    assert "database down" in parsed["traceback"]
    assert parsed["time"].endswith("+00:00")


@pytest.mark.slow
def test_serve_with_json_logs_writes_only_json_lines(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "runflow_callbacks", "serve", "--port", str(port)]
    argv += ["--store", f"sqlite:///{tmp_path / 'cb.db'}", "--log-format", "json"]
    env = {**os.environ, "RUNFLOW_CALLBACK_SECRETS": SECRET}
    with serve_process(argv, port=port, env=env, cwd=tmp_path, log_path=log):
        url = f"http://127.0.0.1:{port}/callbacks/runflow"
        assert (
            httpx.post(
                url, content=BODY, headers={"Runflow-Signature": sign(BODY, SECRET)}
            ).status_code
            == 200
        )
        assert (
            httpx.post(url, content=BODY, headers={"Runflow-Signature": "0" * 64}).status_code
            == 401
        )
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    outcomes = [entry.get("outcome") for entry in parsed]
    assert "recorded" in outcomes
    assert "signature_mismatch" in outcomes
    assert any(entry["logger"].startswith("uvicorn") for entry in parsed)
    assert any("runflow-callbacks serve:" in entry["message"] for entry in parsed)
