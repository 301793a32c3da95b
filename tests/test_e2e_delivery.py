"""End to end: the fake Runflow delivers to ``examples/starlette_app.py`` under uvicorn.

The receiver runs as its own uvicorn process, configured through ``RUNFLOW_CALLBACK_SECRETS``
exactly as a user would run it; the fake signs, retries and records over real HTTP, and the
history is read back with the API client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from runflow_callbacks.testing import FakeRunflow, free_port, serve_fake_runflow, serve_process

if TYPE_CHECKING:
    import contextlib
    import subprocess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_e2e_current_0123456789abcdef"
WRONG = "whsec_e2e_stale_fedcba9876543210"
PATH = "/callbacks/runflow"


def example(
    port: int, secret: str, log_path: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    """``uvicorn examples.starlette_app:app`` on ``port`` with ``secret`` configured."""
    argv = [sys.executable, "-m", "uvicorn", "examples.starlette_app:app"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    env = {**os.environ, "RUNFLOW_CALLBACK_SECRETS": secret}
    return serve_process(argv, port=port, env=env, cwd=ROOT, log_path=log_path)


def test_delivered_and_logged_by_the_example_app(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "receiver.log"
    with (
        example(port, SECRET, log),
        serve_fake_runflow(secret=SECRET, retry_delays_s=[0.05], max_attempts=3) as runflow,
    ):
        batch = runflow.create_batch(
            callback_url=f"http://127.0.0.1:{port}{PATH}", event="batch.partial_succeeded"
        )
        run = runflow.create_run(callback_url=f"http://127.0.0.1:{port}{PATH}")
        delivered = runflow.wait_for_delivery(batch_id=batch["id"])
        run_delivered = runflow.wait_for_delivery(run_id=run["id"])
    assert delivered.status_code == run_delivered.status_code == "succeeded"
    assert [a.status_code for a in delivered.attempts or []] == [200]
    text = log.read_text()
    assert f"received batch.partial_succeeded for {batch['id']}" in text
    assert f"received run.completed for {run['id']}" in text
    assert SECRET not in text


def test_wrong_secret_fails_every_attempt_then_a_redelivery_succeeds(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}{PATH}"
    with serve_fake_runflow(secret=SECRET, retry_delays_s=[0.05], max_attempts=3) as runflow:
        with example(port, WRONG, tmp_path / "wrong.log"):
            batch = runflow.create_batch(callback_url=url)
            failed = runflow.wait_for_delivery(batch_id=batch["id"])
        assert failed.status_code == "failed"
        assert failed.failure_reason_code == "http_error"
        assert [a.status_code for a in failed.attempts or []] == [401, 401, 401]
        assert failed.attempt_count == failed.max_attempts == 3
        assert "signature_mismatch" in ((failed.attempts or [])[0].response_body or "")

        with example(port, f"{SECRET},{WRONG}", tmp_path / "fixed.log"), runflow.client() as api:
            manual = api.redeliver_batch(batch["id"])
            assert manual.is_automatic is False
            fixed = runflow.wait_for_delivery(batch_id=batch["id"], count=2)
            history = api.batch_deliveries(batch["id"])
    assert fixed.status_code == "succeeded"
    assert fixed.id == manual.id
    assert [(d.is_automatic, d.status_code) for d in history] == [
        (True, "failed"),
        (False, "succeeded"),
    ]
    assert [a.status_code for a in history[1].attempts or []] == [200]
    assert history[1].body == history[0].body
    assert history[1].signing_secret_id == history[0].signing_secret_id is not None


def test_receiver_down_for_the_first_attempts_then_up_gets_it_on_a_retry(
    tmp_path: Path,
) -> None:
    """The fake's sleep is the test's lever: after two refused attempts it waits for the
    receiver to be up, so the story is the same however slow the machine is."""
    receiver_up = threading.Event()
    sleeps = 0

    async def sleep(_seconds: float) -> None:
        nonlocal sleeps
        sleeps += 1
        if sleeps < 2:
            return
        for _ in range(3000):  # at most ~30 s
            if receiver_up.is_set():
                return
            await asyncio.sleep(0.01)

    port = free_port()
    fake = FakeRunflow(secret=SECRET, max_attempts=5, sleep=sleep)
    with serve_fake_runflow(fake) as runflow:
        batch = runflow.create_batch(callback_url=f"http://127.0.0.1:{port}{PATH}")
        for _ in range(1000):  # at most ~10 s until the two refused attempts are recorded
            [pending] = runflow.deliveries(batch_id=batch["id"])
            if pending.attempt_count == 2 and pending.status_code == "pending":
                break
            threading.Event().wait(0.01)
        assert pending.failure_reason_code == "connection_error"
        assert pending.next_attempt_at is not None
        with example(port, SECRET, tmp_path / "late.log"):
            receiver_up.set()
            delivered = runflow.wait_for_delivery(batch_id=batch["id"])
    assert delivered.status_code == "succeeded"
    attempts = delivered.attempts or []
    assert [a.status_code for a in attempts] == [None, None, 200]
    assert all(a.error_message for a in attempts[:2])
    assert delivered.failure_reason_code is None
