"""``runflow-callbacks serve``, ``inbox`` and ``reconcile`` on SQLite, as a user runs them."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from runflow_callbacks import sign
from runflow_callbacks.app import create_app, load_handler
from runflow_callbacks.cli import main
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.testing import (
    PayloadFactory,
    free_port,
    serve_fake_runflow,
    serve_in_thread,
    wait_for_port,
)
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from runflow_callbacks.asgi import CallbackContext

SECRET = "whsec_serve_tests_0123456789abcdef"
PATH = "/callbacks/runflow"

HANDLER_MODULE = textwrap.dedent(
    """
    import os

    def handle(context):
        # Append one line per run: the test counts side effects from this file.
        with open(os.environ["HANDLER_LOG"], "a") as log:
            log.write(f"{context.payload.kind}:{context.subject_id}:{context.event}\\n")
        if context.payload.metadata and context.payload.metadata.get("fail"):
            raise RuntimeError("this callback always fails")
    """
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "demo_handlers.py").write_text(HANDLER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANDLER_LOG", str(tmp_path / "handled.log"))
    monkeypatch.setenv("RUNFLOW_CALLBACK_SECRETS", SECRET)
    return tmp_path


def _handled(workdir: Path) -> list[str]:
    log = workdir / "handled.log"
    return log.read_text().splitlines() if log.exists() else []


def _body(seed: int, **fields: object) -> bytes:
    return dumps_payload(PayloadFactory(seed=seed).batch(**fields))  # type: ignore[arg-type]


def _headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Runflow-Signature": sign(body, secret), "Content-Type": "application/json"}


@contextlib.contextmanager
def _serve(workdir: Path, *args: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runflow_callbacks", "serve", "--port", str(port), *args],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        # A handler's error is logged with its traceback; the server itself never fails.
        assert b"Exception in ASGI application" not in output, output.decode(errors="replace")
        assert SECRET.encode() not in output


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_serve_records_runs_once_and_survives_a_restart(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{workdir}/callbacks.db"
    body = _body(1)
    args = ("--store", store, "--handler", "demo_handlers:handle")
    with _serve(workdir, *args) as url, httpx.Client(base_url=url) as client:
        first = client.post(PATH, content=body, headers=_headers(body))
        duplicate = client.post(PATH, content=body, headers=_headers(body))
        forged = client.post(PATH, content=body, headers=_headers(body, "whsec_not_ours_123"))
        health = client.get("/healthz")
    assert (first.status_code, first.json()) == (200, {"status": "processed"})
    assert (duplicate.status_code, duplicate.json()["status"]) == (200, "duplicate")
    assert forged.status_code == 401
    assert health.json() == {"status": "ok"}
    with _serve(workdir, *args) as url, httpx.Client(base_url=url) as client:
        after_restart = client.post(PATH, content=body, headers=_headers(body))
    assert after_restart.json()["status"] == "duplicate"
    assert len(_handled(workdir)) == 1

    listed = _cli_json(capsys, "inbox", "list", "--json", "--store", store)
    assert isinstance(listed, list)
    [entry] = listed
    assert entry["state"] == "processed"
    assert entry["event"] == "batch.succeeded"
    assert entry["deliveries"] == 3
    stats = _cli_json(capsys, "inbox", "stats", "--json", "--store", store)
    assert stats == {**stats, "received": 1, "duplicates": 2, "rejected": 1, "processed": 1}
    shown = _cli_json(capsys, "inbox", "show", entry["key"], "--json", "--store", store)
    assert isinstance(shown, dict)
    assert shown["body"].encode() == body


def test_without_a_handler_callbacks_wait_in_the_inbox_for_a_worker(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{workdir}/inbox.db"
    bodies = [_body(seed) for seed in range(3)]
    with _serve(workdir, "--store", store) as url, httpx.Client(base_url=url) as client:
        answers = [client.post(PATH, content=b, headers=_headers(b)) for b in bodies]
    assert [a.json()["status"] for a in answers] == ["recorded"] * 3
    assert _handled(workdir) == []
    pending = _cli_json(capsys, "inbox", "list", "--json", "--limit", "2", "--store", store)
    assert isinstance(pending, list)
    assert len(pending) == 2
    assert {entry["state"] for entry in pending} == {"received"}

    worker = ("--store", store, "--handler", "demo_handlers:handle", "--inbox")
    with _serve(workdir, *worker, "--poll-seconds", "0.05"):
        deadline = time.monotonic() + 20
        while len(_handled(workdir)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(_handled(workdir)) == 3
    states = _cli_json(capsys, "inbox", "list", "--json", "--store", store)
    assert isinstance(states, list)
    assert [entry["state"] for entry in states] == ["processed"] * 3


def test_a_failed_callback_is_kept_and_inbox_retry_runs_it_again(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{workdir}/retry.db"
    body = _body(7, metadata={"fail": True})
    with _serve(workdir, "--store", store, "--handler", "demo_handlers:handle") as url:
        answer = httpx.post(url + PATH, content=body, headers=_headers(body))
    assert answer.status_code == 500
    [failed] = _cli_json(capsys, "inbox", "list", "--json", "--state", "failed", "--store", store)
    assert failed["last_error"] == "RuntimeError: this callback always fails"

    capsys.readouterr()
    code = main(["inbox", "retry", "--all", "failed", "--store", store])
    assert code == 0
    assert "due again" in capsys.readouterr().out
    handler = ("--handler", "demo_handlers:handle")
    assert main(["inbox", "retry", failed["key"], "--store", store, *handler]) == 1
    assert f"{failed['key']}: failed" in capsys.readouterr().out
    assert len(_handled(workdir)) == 2
    assert main(["inbox", "retry", "batch:nope:batch.succeeded", "--store", store]) == 1


def test_reconcile_recovers_what_runflow_gave_up_on(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{workdir}/reconcile.db"
    down = f"http://127.0.0.1:{free_port()}{PATH}"  # nothing listens there
    with serve_fake_runflow(
        secret=SECRET, retry_delays_s=[0.01], max_attempts=2, attempt_timeout_s=2
    ) as runflow:
        batches = [runflow.create_batch(callback_url=down)["id"] for _ in range(2)]
        for batch_id in batches:
            assert runflow.wait_for_delivery(batch_id=batch_id).status_code == "failed"
        monkeypatch.setenv("RUNFLOW_API_URL", runflow.base_url)
        monkeypatch.setenv("RUNFLOW_API_KEY", runflow.api_key)
        argv = ["reconcile", "--store", store, "--handler", "demo_handlers:handle", "--json"]
        for batch_id in batches:
            argv += ["--batch", batch_id]
        report = _cli_json(capsys, *argv)
        again = _cli_json(capsys, *argv)
    assert isinstance(report, dict)
    assert isinstance(again, dict)
    assert report["counts"] == {"recovered": 2}
    assert again["counts"] == {"already_processed": 2}
    assert sorted(line.split(":")[1] for line in _handled(workdir)) == sorted(batches)
    stats = _cli_json(capsys, "inbox", "stats", "--json", "--store", store)
    assert stats == {**stats, "reconciled": 2, "processed": 2, "duplicates": 0}


def test_create_app_runs_the_inbox_worker_in_its_lifespan(workdir: Path) -> None:
    seen: list[str | None] = []

    def handle(context: CallbackContext) -> None:
        seen.append(context.event)

    app = create_app(
        secrets=SECRET, store="memory://", handler=handle, inbox=True, path="/hooks/runflow"
    )
    body = _body(11)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/hooks/runflow", content=body, headers=_headers(body))
        assert answer.json()["status"] == "recorded"
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/callbacks/runflow").status_code == 404
    assert seen == ["batch.succeeded"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "module:function"),
        ("missing_module_xyz:handle", "cannot import"),
        ("demo_handlers:nothing", "has no attribute"),
        ("demo_handlers:os", "not callable"),
    ],
)
def test_bad_handler_specs_are_clear_errors(workdir: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_handler(spec)


def test_cli_errors_are_one_line_without_secrets(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["inbox", "list", "--store", "mysql://user:hunter2@db/x"]) == 1
    err = capsys.readouterr().err
    assert "unknown store URL scheme" in err
    assert "hunter2" not in err
    assert main(["reconcile", "--store", "memory://"]) == 1
    assert "at least one --batch or --run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [["serve"], ["reconcile"], ["inbox", "list"], ["inbox", "show"], ["inbox", "retry"]]
)
def test_the_store_help_says_how_to_keep_the_password_out_of_the_process_list(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Prefer setting RUNFLOW_CALLBACK_STORE: a URL given here, and the password" in text
    assert "visible in the process list" in text
