"""The send, history, redeliver and fake-runflow commands, against real servers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from runflow_callbacks import CallbackReceiver, parse_callback, verify
from runflow_callbacks.cli import main
from runflow_callbacks.cli.fake import format_attempt, parse_delays
from runflow_callbacks.cli.history import MAX_SHOWN_ANSWER_CHARS, format_history, format_time
from runflow_callbacks.cli.send import last_send_path
from runflow_callbacks.models import BatchCallbackDelivery
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import free_port, serve_fake_runflow, serve_in_thread, wait_for_port
from runflow_callbacks.testing.fake.state import Attempt, Delivery, Subject

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Literal

    from starlette.requests import Request

    from runflow_callbacks.testing import RunningFakeRunflow

SECRET = "whsec_test_0123456789abcdef"
BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
#: A time as history and fake-runflow print it: UTC, milliseconds.
UTC_MS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RUNFLOW_API_URL", "RUNFLOW_API_KEY", "RUNFLOW_CALLBACK_SECRETS"):
        monkeypatch.delenv(name, raising=False)
    # send keeps what it sent in the user's cache: here, a directory of each test's own.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A real receiver that verifies with SECRET."""
    receiver = CallbackReceiver(secrets=SECRET)

    @receiver.on_any
    async def accept(_context: object) -> None:
        return None

    with serve_in_thread(Starlette(routes=[Route("/cb", receiver)])) as base_url:
        yield base_url + "/cb"


@pytest.fixture
def deduplicating_endpoint() -> Iterator[str]:
    """A real receiver that verifies with SECRET and records callbacks exactly once."""
    receiver = CallbackReceiver(secrets=SECRET, store=open_store("memory://"))
    receiver.on_any(lambda _context: None)
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


def test_send_set_changes_top_level_and_nested_fields_and_parses_json_values(
    recorder: tuple[Recorder, str],
) -> None:
    record, url = recorder
    settings = [
        f"batch_id={BATCH_ID}",
        "output.total=30",
        'metadata={"order": 42, "tags": ["a"]}',
        "note=not json",
        'label="7"',
        "extra.deep.flag=true",
        "output.items.0.status=failed",
    ]
    argv = ["send", url, "--secret", SECRET]
    for setting in settings:
        argv += ["--set", setting]
    assert main(argv) == 0
    [(headers, body)] = record.bodies
    assert verify(body, headers["runflow-signature"], SECRET).reveal() == SECRET
    sent = json.loads(body)
    assert sent["batch_id"] == BATCH_ID
    assert sent["output"]["total"] == 30
    assert sent["output"]["items"][0]["status"] == "failed"
    assert sent["metadata"] == {"order": 42, "tags": ["a"]}
    assert (sent["note"], sent["label"]) == ("not json", "7")
    assert sent["extra"] == {"deep": {"flag": True}}
    assert list(sent)[:3] == ["event", "batch_id", "status"]  # Runflow's order is kept
    assert body.startswith(b'{"event": "batch.succeeded", "batch_id": ')


def test_send_status_alone_picks_the_batch_event_that_carries_it(
    recorder: tuple[Recorder, str],
) -> None:
    record, url = recorder
    assert main(["send", url, "--secret", SECRET, "--status", "failed"]) == 0
    payload = parse_callback(record.bodies[0][1])
    assert (payload.event, payload.status) == ("batch.failed", "failed")


def test_send_status_with_an_event_is_sent_as_given(recorder: tuple[Recorder, str]) -> None:
    record, url = recorder
    argv = ["send", url, "--secret", SECRET, "--event", "run.completed", "--status", "cancelled"]
    assert main(argv) == 0
    payload = parse_callback(record.bodies[0][1])
    assert (payload.kind, payload.event, payload.status) == ("run", "run.completed", "cancelled")


@pytest.mark.parametrize(
    ("status", "count"), [("succeeded", 0), ("partial_succeeded", 7), ("cancelled", 4)]
)
def test_send_items_builds_that_many_items_with_counts_that_agree(
    recorder: tuple[Recorder, str], status: str, count: int
) -> None:
    record, url = recorder
    argv = ["send", url, "--secret", SECRET, "--status", status, "--items", str(count)]
    assert main(argv) == 0
    output = json.loads(record.bodies[0][1])["output"]
    statuses = [item["status"] for item in output["items"]]
    assert output["total"] == len(statuses) == count
    assert [output[name] for name in ("succeeded", "failed", "cancelled")] == [
        statuses.count(name) for name in ("succeeded", "failed", "cancelled")
    ]


def test_send_again_resends_the_last_body_byte_for_byte_and_it_is_a_duplicate(
    deduplicating_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["send", deduplicating_endpoint, "--secret", SECRET, "--set", "metadata.try=1"]
    assert main(argv) == 0
    assert "processed" in capsys.readouterr().out
    with open(last_send_path(), "rb") as kept:
        first = kept.read()
    assert json.loads(first)["metadata"] == {"try": 1}
    assert main(["send", deduplicating_endpoint, "--secret", SECRET, "--again"]) == 0
    assert "duplicate" in capsys.readouterr().out


def test_send_again_sends_exactly_the_bytes_of_the_previous_send(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    record, url = recorder
    body = b'{"event": "run.completed", "run_id": "x"}\n'
    (tmp_path / "body.json").write_bytes(body)
    assert main(["send", url, "--secret", SECRET, "--file", str(tmp_path / "body.json")]) == 0
    assert main(["send", url, "--secret", SECRET, "--again"]) == 0
    assert main(["send", url, "--unsigned", "--again"]) == 0
    (first_headers, first), (again_headers, again), (unsigned_headers, unsigned) = record.bodies
    assert first == again == unsigned == body
    assert first_headers["runflow-signature"] == again_headers["runflow-signature"]
    assert first_headers["runflow-request-id"] != again_headers["runflow-request-id"]
    assert "runflow-signature" not in unsigned_headers


def test_send_keeps_the_last_body_readable_by_the_user_only(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    record, url = recorder
    assert main(["send", url, "--secret", SECRET, "--event", "run.failed"]) == 0
    assert main(["send", url, "--secret", SECRET, "--event", "batch.failed"]) == 0
    kept = tmp_path / "cache" / "runflow-callbacks" / "last-send"
    assert kept.read_bytes() == record.bodies[-1][1]
    assert kept.stat().st_mode & 0o077 == 0
    assert sorted(path.name for path in kept.parent.iterdir()) == ["last-send"]


def test_send_that_cannot_keep_its_body_still_sends_and_says_why_in_one_line(
    recorder: tuple[Recorder, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    record, url = recorder
    (tmp_path / "a-file").write_bytes(b"")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    assert main(["send", url, "--secret", SECRET]) == 0
    assert len(record.bodies) == 1
    err = capsys.readouterr().err
    assert err.startswith("runflow-callbacks send: cannot keep the body for --again in ")
    assert err.count("\n") == 1


def test_send_help_says_where_again_finds_the_last_body(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # no line breaks inside the paths
    with pytest.raises(SystemExit) as exited:
        main(["send", "--help"])
    assert exited.value.code == 0
    again = next(line for line in capsys.readouterr().out.splitlines() if "--again  " in line)
    assert "$XDG_CACHE_HOME/runflow-callbacks/last-send" in again
    assert "~/.cache/runflow-callbacks/last-send" in again


def test_last_send_path_follows_xdg_and_ignores_a_relative_cache_home() -> None:
    assert last_send_path({"XDG_CACHE_HOME": "/var/cache/me", "HOME": "/home/me"}) == (
        "/var/cache/me/runflow-callbacks/last-send"
    )
    home_cache = "/home/me/.cache/runflow-callbacks/last-send"
    assert last_send_path({"HOME": "/home/me"}) == home_cache
    assert last_send_path({"XDG_CACHE_HOME": "", "HOME": "/home/me"}) == home_cache
    assert last_send_path({"XDG_CACHE_HOME": "cache", "HOME": "/home/me"}) == home_cache


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--again"], "--again: nothing sent yet (send keeps the last body in "),
        (["--status", "exploded"], "not a status of batch callbacks (known: cancelled, failed,"),
        (["--event", "run.failed", "--status", "done"], "not a status of run callbacks"),
        (["--event", "run.failed", "--items", "2"], "--items counts a batch's items"),
        (["--status", "partial_succeeded", "--items", "1"], "at least 2 items"),
        (["--set", "status.code=1"], "--set status.code=1: status is a string, not an object"),
        (["--set", "output.items.9.status=x"], "output.items is a list of 3, without a position 9"),
        (["--set", "output.items.first=x"], "without a position first"),
        (["--again", "--set", "a=1", "--items", "2"], "--again excludes --items, --set"),
        (["--again", "--event", "run.failed"], "--again excludes --event"),
        (["--again", "--file", "body.json"], "--again and --file exclude each other"),
        (["--file", "body.json", "--status", "failed"], "--file excludes --status"),
    ],
)
def test_send_shaping_mistakes_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["send", "http://127.0.0.1:1/cb", "--secret", SECRET, *argv]) == 1
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.err.count("\n") == 1
    assert captured.out == ""


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "batch_id"], "argument --set: 'batch_id' is not PATH=VALUE"),
        (["--set", "=3"], "argument --set: '' is not a field path"),
        (["--set", "output..total=3"], "'output..total' is not a field path"),
        (["--items", "-1"], "argument --items: '-1' is not an item count from 0 to 10000"),
        (["--items", "10001"], "argument --items"),
        (["--items", "many"], "argument --items: 'many' is not a number of items"),
    ],
)
def test_send_malformed_shaping_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["send", "http://127.0.0.1:1/cb", "--secret", SECRET, *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


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
    assert lines[0].startswith("delivery 1/1  SUCCEEDED  automatic  3/3 attempts  created ")
    assert re.search(f"created {UTC_MS}$", lines[0])
    assert "signed with" in lines[1]
    assert lines[2].split() == ["#", "at", "(UTC)", "HTTP", "time", "answer", "error"]
    rows = [line.split() for line in lines[3:6]]
    assert [row[3] for row in rows] == ["401", "500", "200"]
    assert [row[6] for row in rows] == ["nope", "nope", "ok"]
    assert all(row[5] == "ms" for row in rows)
    assert all(re.fullmatch(UTC_MS, f"{row[1]} {row[2]}") for row in rows)


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
    assert "(timeout: no answer within 5s)  next attempt 2026-05-06 10:00:02.000Z" in text
    assert text.splitlines()[-1].split()[:5] == ["1", "-", "-", "-", "-"]


def test_format_time_is_utc_to_the_millisecond() -> None:
    paris = datetime.fromisoformat("2026-12-01T22:04:05.123999+01:00")
    assert format_time(paris) == "2026-12-01 21:04:05.123Z"
    assert format_time(datetime(2026, 12, 1, 21, 4, 5, tzinfo=timezone.utc)) == (
        "2026-12-01 21:04:05.000Z"
    )


def test_format_history_shows_times_in_utc_and_each_answer_cut_short() -> None:
    long_answer = '{"status": "processed", "detail": "' + "x" * 200 + '"}'
    delivery = BatchCallbackDelivery.model_validate(
        {
            "status_code": "succeeded",
            "created_at": "2026-05-06T12:00:01.5+02:00",
            "attempts": [
                {
                    "attempt_number": 1,
                    "created_at": "2026-05-06T12:00:01.5+02:00",
                    "status_code": 500,
                    "response_body": "  boom\n",
                },
                {
                    "attempt_number": 2,
                    "created_at": "2026-05-06T10:00:03.25Z",
                    "status_code": 200,
                    "response_body": long_answer,
                },
                {"attempt_number": 3, "status_code": 204, "response_body": ""},
            ],
        }
    )
    lines = format_history([delivery]).splitlines()
    assert "created 2026-05-06 10:00:01.500Z" in lines[0]
    header, boom, long_row, empty = lines[2:]
    assert header.split() == ["#", "at", "(UTC)", "HTTP", "time", "answer", "error"]
    assert boom.split()[1:5] == ["2026-05-06", "10:00:01.500Z", "500", "-"]
    assert boom.split()[5] == "boom"
    assert long_row.split()[1:3] == ["2026-05-06", "10:00:03.250Z"]
    cell = long_row[header.index("answer") :].rsplit("  ", 1)[0].rstrip()
    assert len(cell) == MAX_SHOWN_ANSWER_CHARS
    assert cell == long_answer[: MAX_SHOWN_ANSWER_CHARS - 1] + "…"
    assert empty.split()[4:] == ["-", "-"]


def test_format_history_escapes_what_the_api_sent() -> None:
    forged = BatchCallbackDelivery.model_validate(
        {
            "status_code": "failed\nforged line",
            "is_automatic": True,
            "failure_reason_code": "http_error\x1b[2K",
            "failure_detail": "evil\nforged line",
            "attempts": [
                {
                    "attempt_number": 1,
                    "error_message": "boom\r\nforged line",
                    "response_body": "ok\n  2  2026-05-06 10:00:02.000Z  200\x1b[2K" + "\n" * 100,
                }
            ],
        }
    )
    lines = format_history([forged]).splitlines()
    assert len(lines) == 4  # the delivery, its id, the attempts' header, one attempt
    assert not any(line.lstrip().startswith(("forged", "2 ")) for line in lines)
    assert "\x1b" not in "".join(lines)
    assert "'evil\\nforged line'" in lines[0]
    assert lines[-1].endswith("'boom\\r\\nforged line'")
    assert "'ok\\n  2  2026-05-06 10:00:02.000Z  200\\x1b[2K" in lines[-1]
    assert len(lines[-1]) < 160  # the answer is cut, however long its escaped form


# --- fake-runflow --------------------------------------------------------------------------


def test_parse_delays() -> None:
    assert parse_delays("0.5,1,2") == (0.5, 1.0, 2.0)
    for bad in ("", "a,b", "-1", "nan"):
        with pytest.raises(ValueError, match="retry-delays"):
            parse_delays(bad)


def _subject(kind: Literal["batch", "run"] = "batch") -> Subject:
    return Subject(
        kind=kind,
        id=UUID(BATCH_ID),
        callback_url="http://127.0.0.1:8000/cb",
        payload={"event": f"{kind}.failed", "status": "failed"},
    )


def _delivery(subject: Subject) -> Delivery:
    created = datetime(2026, 12, 1, 21, 4, 5, 123456, tzinfo=timezone.utc)
    return Delivery(
        id=UUID("5b0c0000-0000-4000-8000-000000000001"),
        subject=subject,
        callback_url="http://127.0.0.1:8000/cb",
        payload_bytes=b"{}",
        signing_secret_id=None,
        is_automatic=True,
        max_attempts=5,
        created_at=created,
        updated_at=created,
    )


def test_format_attempt_is_one_line_with_time_ids_attempt_status_and_latency() -> None:
    delivery = _delivery(_subject())
    attempt = Attempt(
        id=UUID("9d410000-0000-4000-8000-000000000001"),
        delivery_id=delivery.id,
        attempt_number=2,
        created_at=datetime.fromisoformat("2026-12-01T22:04:05.123456+01:00"),
        status_code=401,
        response_body="nope",
        response_time_ms=4,
    )
    assert format_attempt(delivery, attempt) == (
        "2026-12-01 21:04:05.123Z  delivery 5b0c0000-0000-4000-8000-000000000001  "
        f"batch.failed  batch {BATCH_ID}  attempt 2/5  HTTP 401  4 ms"
    )


def test_format_attempt_names_the_connection_error_escaped() -> None:
    delivery = _delivery(_subject("run"))
    attempt = Attempt(
        id=UUID("9d410000-0000-4000-8000-000000000002"),
        delivery_id=delivery.id,
        attempt_number=5,
        created_at=datetime(2026, 12, 1, 21, 4, 5, tzinfo=timezone.utc),
        response_time_ms=0,
        error_message="connection failed: ConnectError: refused\nforged line",
    )
    line = format_attempt(delivery, attempt)
    assert "\n" not in line
    assert f"run.failed  run {BATCH_ID}  attempt 5/5  " in line
    assert line.endswith("  'connection failed: ConnectError: refused\\nforged line'  0 ms")


def test_fake_runflow_command_serves_the_fake_and_prints_each_attempt(
    endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "fake.log"
    attempts = tmp_path / "attempts.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNFLOW_")}
    argv = [sys.executable, "-m", "runflow_callbacks", "fake-runflow", "--port", str(port)]
    argv += ["--api-key", "rf_cmd", "--secret", SECRET, "--retry-delays", "0.05"]
    argv += ["--max-attempts", "2", "--attempt-timeout", "2", "--log-level", "warning"]
    with log.open("wb") as err, attempts.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
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
        # The line is printed and flushed before the API can answer that the delivery ended.
        [line] = attempts.read_text().splitlines()
        assert re.fullmatch(
            f"{UTC_MS}  delivery {records[0]['id']}  batch.succeeded  batch {batch['id']}  "
            r"attempt 1/2  HTTP 200  \d+ ms",
            line,
        ), line
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
    for printed in (output, attempts.read_text()):
        assert SECRET not in printed
        assert "rf_cmd" not in printed


def test_fake_runflow_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fake-runflow"]) == 1
    assert "--api-key" in capsys.readouterr().err
    assert main(["fake-runflow", "--api-key", "k", "--max-attempts", "0"]) == 1
    assert "max_attempts" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fake-runflow", "--api-key", "k", "--retry-delays", "x"])
