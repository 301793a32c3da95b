"""The send, history, redeliver and fake-runflow commands, against real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from typing import TYPE_CHECKING

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from runflow_callbacks import CallbackReceiver, parse_callback, verify
from runflow_callbacks.cli import main
from runflow_callbacks.cli.fake import parse_delays
from runflow_callbacks.cli.history import format_history
from runflow_callbacks.models import BatchCallbackDelivery
from runflow_callbacks.testing import free_port, serve_fake_runflow, serve_in_thread, wait_for_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from starlette.requests import Request

    from runflow_callbacks.testing import RunningFakeRunflow

SECRET = "whsec_test_0123456789abcdef"
BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUNFLOW_API_URL", "RUNFLOW_API_KEY", "RUNFLOW_CALLBACK_SECRETS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A real receiver that verifies with SECRET."""
    receiver = CallbackReceiver(secrets=SECRET)

    @receiver.on_any
    async def accept(_context: object) -> None:
        return None

    with serve_in_thread(Starlette(routes=[Route("/cb", receiver)])) as base_url:
        yield base_url + "/cb"


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[tuple[dict[str, str], bytes]] = []
        self.answers: deque[int] = deque()

    async def handle(self, request: Request) -> PlainTextResponse:
        self.bodies.append((dict(request.headers), await request.body()))
        status = self.answers.popleft() if self.answers else 200
        return PlainTextResponse("nope" if status >= 400 else "ok", status_code=status)


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    record = Recorder()
    with serve_in_thread(Starlette(routes=[Route("/r", record.handle, methods=["POST"])])) as url:
        yield record, url + "/r"


@pytest.fixture
def runflow() -> Iterator[RunningFakeRunflow]:
    with serve_fake_runflow(
        api_key="rf_cli", secret=SECRET, retry_delays_s=[0.01], max_attempts=3
    ) as running:
        yield running


def api_args(runflow: RunningFakeRunflow) -> list[str]:
    return ["--api-url", runflow.base_url, "--api-key", runflow.api_key]


# --- send ----------------------------------------------------------------------------------


@pytest.mark.parametrize("event", ["batch.partial_succeeded", "run.failed"])
def test_send_a_sample_accepted(
    endpoint: str, event: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", endpoint, "--secret", SECRET, "--event", event]) == 0
    out = capsys.readouterr().out
    assert out.startswith("HTTP 200 OK")
    assert SECRET not in out


def test_send_with_a_wrong_secret_or_unsigned_exits_1(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", endpoint, "--secret", "whsec_wrong"]) == 1
    assert capsys.readouterr().out.startswith("HTTP 401")
    assert main(["send", endpoint, "--unsigned"]) == 1
    assert "missing_signature" in capsys.readouterr().out


def test_send_file_sends_its_exact_bytes(
    recorder: tuple[Recorder, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, url = recorder
    body = b'{"event": "run.completed", "run_id": "x"}\n'
    (tmp_path / "body.json").write_bytes(body)
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", SECRET)
    assert main(["send", url, "--file", str(tmp_path / "body.json")]) == 0
    [(headers, sent)] = record.bodies
    assert sent == body
    assert verify(sent, headers["runflow-signature"], SECRET).reveal() == SECRET
    assert headers["content-type"] == "application/json"
    assert headers["runflow-request-id"]


def test_send_during_a_rotation_signs_with_the_last_secret_of_the_environment(
    recorder: tuple[Recorder, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, url = recorder
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", f"whsec_old_secret_0000000000,{SECRET}")
    assert main(["send", url]) == 0
    [(headers, sent)] = record.bodies
    assert verify(sent, headers["runflow-signature"], SECRET).reveal() == SECRET


def test_send_sign_with_picks_another_secret(recorder: tuple[Recorder, str]) -> None:
    record, url = recorder
    argv = ["--secret", SECRET, "--secret", "whsec_new_secret_1111111111", "--sign-with", "0"]
    assert main(["send", url, *argv]) == 0
    [(headers, sent)] = record.bodies
    assert verify(sent, headers["runflow-signature"], SECRET).reveal() == SECRET


def test_send_sample_is_realistic(recorder: tuple[Recorder, str]) -> None:
    record, url = recorder
    assert main(["send", url, "--secret", SECRET, "--event", "batch.cancelled"]) == 0
    payload = parse_callback(record.bodies[0][1])
    assert payload.event == "batch.cancelled"
    assert payload.status == "cancelled"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["send", "localhost:1/cb", "--secret", SECRET], "URL must start"),
        (["send", "http://127.0.0.1:1/cb"], "no callback secret"),
        (["send", "http://127.0.0.1:1/cb", "--secret", "a", "--sign-with", "1"], "--sign-with"),
        (["send", "http://127.0.0.1:1/cb", "--unsigned", "--sign-with", "0"], "exclude"),
        (["send", "http://127.0.0.1:1/cb", "--unsigned", "--secret", "a"], "exclude"),
        (["send", "http://127.0.0.1:1/cb", "--secret", "a", "--file", "/nope/x"], "cannot read"),
        (["send", "http://127.0.0.1:1/cb", "--secret", "a", "--timeout", "0"], "positive"),
    ],
)
def test_send_bad_input_is_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_send_to_nothing_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}/cb"
    assert main(["send", url, "--secret", SECRET]) == 1
    assert "no answer from" in capsys.readouterr().err


# --- history and redeliver -----------------------------------------------------------------


def test_history_tells_the_story_at_a_glance(
    runflow: RunningFakeRunflow,
    recorder: tuple[Recorder, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    record, url = recorder
    record.answers.extend([401, 500])
    batch = runflow.create_batch(callback_url=url)
    runflow.wait_for_delivery(batch_id=batch["id"])
    assert main(["history", "--batch", batch["id"], *api_args(runflow)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("delivery 1/1  SUCCEEDED  automatic  3/3 attempts")
    assert "signed with" in lines[1]
    assert lines[2].split() == ["#", "at", "HTTP", "time", "error"]
    assert [line.split()[3] for line in lines[3:6]] == ["401", "500", "200"]
    assert all(" ms " in line + " " for line in lines[3:6])


def test_history_json_is_the_raw_records(
    runflow: RunningFakeRunflow,
    recorder: tuple[Recorder, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = recorder
    run = runflow.create_run(callback_url=url)
    runflow.wait_for_delivery(run_id=run["id"])
    monkeypatch.setenv("RUNFLOW_API_URL", runflow.base_url)
    monkeypatch.setenv("RUNFLOW_API_KEY", runflow.api_key)
    assert main(["history", "--run", run["id"], "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    raw = httpx.get(
        f"{runflow.base_url}/v1/runs/{run['id']}/callback",
        headers={"Authorization": f"Bearer {runflow.api_key}"},
    ).json()
    assert printed == raw


def test_redeliver_then_history_shows_a_manual_failure(
    runflow: RunningFakeRunflow,
    recorder: tuple[Recorder, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    record, url = recorder
    batch = runflow.create_batch(callback_url=url)
    runflow.wait_for_delivery(batch_id=batch["id"])
    record.answers.extend([503, 503, 503])
    assert main(["redeliver", "--batch", batch["id"], *api_args(runflow)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("redelivery ")
    assert f"runflow-callbacks history --batch {batch['id']}" in out
    runflow.wait_for_delivery(batch_id=batch["id"], count=2)
    assert main(["history", "--batch", batch["id"], *api_args(runflow)]) == 0
    table = capsys.readouterr().out
    assert "delivery 2/2  FAILED  manual  3/3 attempts" in table
    assert "(http_error: the receiver answered 503)" in table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["history", "--batch", BATCH_ID], "Runflow API answered 404 not_found"),
        (["redeliver", "--run", BATCH_ID], "Runflow API answered 404 not_found"),
    ],
)
def test_api_errors_are_one_line(
    runflow: RunningFakeRunflow,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([*argv, *api_args(runflow)]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_wrong_key_and_missing_key(
    runflow: RunningFakeRunflow, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["history", "--batch", BATCH_ID, "--api-url", runflow.base_url]
    assert main([*argv, "--api-key", "rf_wrong"]) == 1
    err = capsys.readouterr().err
    assert "401 unauthorized" in err
    assert "rf_wrong" not in err
    assert main(argv) == 1
    assert "RUNFLOW_API_KEY" in capsys.readouterr().err


def test_history_needs_exactly_one_subject(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["history", "--batch", "a", "--run", "b"])
    assert exited.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_format_history_of_nothing_and_of_a_pending_delivery() -> None:
    assert format_history([]) == "no callback deliveries"
    pending = BatchCallbackDelivery.model_validate(
        {
            "status_code": "pending",
            "is_automatic": True,
            "attempt_count": 1,
            "max_attempts": 5,
            "failure_reason_code": "timeout",
            "failure_detail": "no answer within 5s",
            "next_attempt_at": "2026-05-06T10:00:02+00:00",
            "attempts": [{"attempt_number": 1, "error_message": "no answer within 5s"}],
        }
    )
    text = format_history([pending])
    assert "PENDING  automatic  1/5 attempts" in text
    assert "(timeout: no answer within 5s)  next attempt 2026-05-06 10:00:02" in text
    assert text.splitlines()[-1].split()[:4] == ["1", "-", "-", "-"]


def test_format_history_escapes_what_the_api_sent() -> None:
    forged = BatchCallbackDelivery.model_validate(
        {
            "status_code": "failed\nforged line",
            "is_automatic": True,
            "failure_reason_code": "http_error\x1b[2K",
            "failure_detail": "evil\nforged line",
            "attempts": [{"attempt_number": 1, "error_message": "boom\r\nforged line"}],
        }
    )
    lines = format_history([forged]).splitlines()
    assert len(lines) == 4  # the delivery, its id, the attempts' header, one attempt
    assert not any(line.lstrip().startswith("forged") for line in lines)
    assert "\x1b" not in "".join(lines)
    assert "'evil\\nforged line'" in lines[0]
    assert lines[-1].endswith("'boom\\r\\nforged line'")


# --- fake-runflow --------------------------------------------------------------------------


def test_parse_delays() -> None:
    assert parse_delays("0.5,1,2") == (0.5, 1.0, 2.0)
    for bad in ("", "a,b", "-1", "nan"):
        with pytest.raises(ValueError, match="retry-delays"):
            parse_delays(bad)


def test_fake_runflow_command_serves_the_fake(
    endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "fake.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNFLOW_")}
    argv = [sys.executable, "-m", "runflow_callbacks", "fake-runflow", "--port", str(port)]
    argv += ["--api-key", "rf_cmd", "--secret", SECRET, "--retry-delays", "0.05"]
    argv += ["--max-attempts", "2", "--attempt-timeout", "2", "--log-level", "warning"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        base_url = f"http://127.0.0.1:{port}"
        batch = httpx.post(f"{base_url}/_fake/batches", json={"callback_url": endpoint}).json()
        api = ["--api-url", base_url, "--api-key", "rf_cmd"]
        for _ in range(500):  # bounded wait, ~10 s at most
            assert main(["history", "--batch", batch["id"], "--json", *api]) == 0
            records = json.loads(capsys.readouterr().out)
            if records and records[0]["status_code"] not in {"pending", "delivering"}:
                break
            time.sleep(0.02)
        assert records[0]["status_code"] == "succeeded"
        assert records[0]["max_attempts"] == 2
        unknown = httpx.get(
            f"{base_url}/v1/batches/{BATCH_ID}/callback",
            headers={"Authorization": "Bearer rf_cmd"},
        )
        assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    finally:
        process.terminate()
        process.wait(timeout=10)
    output = log.read_text()
    assert f"fake Runflow on http://127.0.0.1:{port}" in output
    assert SECRET not in output
    assert "rf_cmd" not in output


def test_fake_runflow_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-runflow"]) == 1
    assert "--api-key" in capsys.readouterr().err
    assert main(["fake-runflow", "--api-key", "k", "--max-attempts", "0"]) == 1
    assert "max_attempts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fake-runflow", "--api-key", "k", "--retry-delays", "x"])
