"""``inbox retry`` exit statuses, and request values escaped in the inbox and reconcile tables.

The store is a SQLite file filled through the library (no server runs): each test records the
callbacks it needs, moves them to the state it needs, then runs the command in process.
"""

from __future__ import annotations

import asyncio
import textwrap
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NamedTuple

import pytest

from runflow_callbacks.cli import main
from runflow_callbacks.reconcile import ReconcileItem, ReconcileReport
from runflow_callbacks.stores import IncomingCallback, open_store
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

NOW = datetime(2026, 5, 6, 10, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)
FORGED = "evil\nforged line"

HANDLERS = textwrap.dedent(
    """
    def succeed(context):
        return None

    def fail(context):
        raise RuntimeError("this handler always fails")
    """
)


class Run(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "inbox_handlers.py").write_text(HANDLERS)
    monkeypatch.chdir(tmp_path)
    for name in ("RUNFLOW_CALLBACK_STORE", "RUNFLOW_CALLBACK_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    return f"sqlite:///{tmp_path / 'inbox.db'}"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def incoming(
    seed: int, *, key: str | None = None, event: str = "batch.succeeded"
) -> IncomingCallback:
    payload = PayloadFactory(seed=seed).batch("batch.succeeded")
    return IncomingCallback(
        key=key or f"batch:{payload.batch_id}:batch.succeeded",
        kind="batch",
        subject_id=str(payload.batch_id),
        event=event,
        body=dumps_payload(payload),
        headers={"Runflow-Request-Id": f"req_{seed}"},
        secret_id=None,
        secret_label="env 0",
        request_id=f"req_{seed}",
        received_at=NOW + timedelta(seconds=seed),
    )


def fill(url: str, *callbacks: IncomingCallback, states: dict[str, str] | None = None) -> None:
    """Record ``callbacks``, then move those named in ``states`` to processed or failed."""

    async def work() -> None:
        async with open_store(url) as opened:
            for callback in callbacks:
                await opened.record(callback)
            for key, state in (states or {}).items():
                claim = await opened.claim(key, now=NOW, lease=LEASE)
                assert claim.token is not None
                if state == "processed":
                    assert await opened.complete(key, claim.token, now=NOW)
                else:
                    assert await opened.fail(
                        key, claim.token, now=NOW, error="RuntimeError: boom", retry_at=NOW
                    )

    asyncio.run(work())


# --- inbox retry: 0 only when every retry succeeded ------------------------------------------


def test_retry_resetting_every_callback_exits_0(cli: Callable[..., Run], store: str) -> None:
    first, second = incoming(1), incoming(2)
    fill(store, first, second, states={first.key: "failed", second.key: "failed"})
    result = cli("inbox", "retry", "--all", "failed", "--store", store)
    assert result.code == 0
    assert result.out.count("due again") == 2


def test_retry_running_every_callback_successfully_exits_0(
    cli: Callable[..., Run], store: str
) -> None:
    failed = incoming(1)
    fill(store, failed, states={failed.key: "failed"})
    result = cli(
        "inbox", "retry", failed.key, "--store", store, "--handler", "inbox_handlers:succeed"
    )
    assert (result.code, result.out) == (0, f"{failed.key}: processed\n")


def test_retry_exits_1_when_a_processed_callback_cannot_be_reset(
    cli: Callable[..., Run], store: str
) -> None:
    done, failed = incoming(1), incoming(2)
    fill(store, done, failed, states={done.key: "processed", failed.key: "failed"})
    result = cli("inbox", "retry", done.key, failed.key, "--store", store)
    assert result.code == 1
    assert f"{done.key}: not reset" in result.out
    assert f"{failed.key}: due again" in result.out


def test_retry_with_a_handler_exits_1_when_the_callback_was_already_processed(
    cli: Callable[..., Run], store: str
) -> None:
    done = incoming(1)
    fill(store, done, states={done.key: "processed"})
    result = cli(
        "inbox", "retry", done.key, "--store", store, "--handler", "inbox_handlers:succeed"
    )
    assert (result.code, result.out) == (1, f"{done.key}: duplicate\n")


def test_retry_exits_1_when_every_run_failed(cli: Callable[..., Run], store: str) -> None:
    first, second = incoming(1), incoming(2)
    fill(store, first, second, states={first.key: "failed", second.key: "failed"})
    handler = ("--handler", "inbox_handlers:fail")
    result = cli("inbox", "retry", "--all", "failed", "--store", store, *handler)
    assert result.code == 1
    assert result.out.count(": failed") == 2


def test_retry_exits_1_when_a_key_is_unknown(cli: Callable[..., Run], store: str) -> None:
    failed = incoming(1)
    fill(store, failed, states={failed.key: "failed"})
    result = cli("inbox", "retry", failed.key, "batch:nope:batch.succeeded", "--store", store)
    assert result.code == 1
    assert f"{failed.key}: due again" in result.out
    assert result.err == "batch:nope:batch.succeeded: no such callback\n"


# --- values from a request are escaped in the tables ------------------------------------------


def _forged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("forged")]


def test_inbox_list_shows_a_forged_event_and_key_on_their_own_line(
    cli: Callable[..., Run], store: str
) -> None:
    forged = incoming(2, key=f"batch:b1:{FORGED}", event=FORGED)
    fill(store, incoming(1), forged)
    result = cli("inbox", "list", "--store", store)
    assert result.code == 0
    lines = result.out.splitlines()
    assert len(lines) == 3  # the header and one line per callback
    assert _forged_lines(result.out) == []
    assert lines[-1].endswith("'batch:b1:evil\\nforged line'")


def test_inbox_show_escapes_every_field_and_header_from_the_request(
    cli: Callable[..., Run], store: str
) -> None:
    forged = incoming(1, key=f"batch:b1:{FORGED}", event=FORGED)
    forged = IncomingCallback(
        **{
            **{name: getattr(forged, name) for name in IncomingCallback.__dataclass_fields__},
            "headers": {"Runflow-Request-Id": "req\r\nforged line: yes"},
            "request_id": "req\x1b[2Kforged",
        }
    )
    fill(store, forged)
    result = cli("inbox", "show", forged.key, "--store", store)
    assert result.code == 0
    head = result.out.split("\n\n", 1)[0]  # the fields and headers, before the body
    assert _forged_lines(head) == []
    assert "\x1b" not in head
    assert "event:            'evil\\nforged line'" in head.splitlines()
    assert "header:           Runflow-Request-Id: 'req\\r\\nforged line: yes'" in head.splitlines()


def test_inbox_retry_escapes_the_keys_it_reports(cli: Callable[..., Run], store: str) -> None:
    forged = incoming(1, key=f"batch:b1:{FORGED}", event=FORGED)
    fill(store, forged, states={forged.key: "failed"})
    result = cli("inbox", "retry", "--all", "failed", "--store", store)
    assert result.code == 0
    assert result.out.splitlines() == [
        "'batch:b1:evil\\nforged line': due again (a running 'serve --inbox' worker will run it)"
    ]


def test_a_long_printable_key_is_shown_whole_so_that_it_can_be_copied(
    cli: Callable[..., Run], store: str
) -> None:
    long_key = "batch:" + "b" * 300 + ":batch.succeeded"
    fill(store, incoming(1, key=long_key))
    result = cli("inbox", "list", "--store", store)
    assert result.out.splitlines()[-1].endswith(long_key)


def test_the_reconcile_report_escapes_ids_and_details() -> None:
    from runflow_callbacks.cli.reconcile import format_report

    report = ReconcileReport(
        items=[
            ReconcileItem(
                kind="batch",
                subject_id=f"b1\n{FORGED}",
                status="api_error",
                detail=f"Runflow API answered 500: {FORGED}",
            ),
            ReconcileItem(kind="run", subject_id="r1", status="recovered"),
        ]
    )
    lines = format_report(report).splitlines()
    assert len(lines) == 3  # one line per item, then the counts
    assert _forged_lines("\n".join(lines)) == []
    assert lines[0] == (
        "batch 'b1\\nevil\\nforged line': api_error "
        "('Runflow API answered 500: evil\\nforged line')"
    )
    assert lines[1:] == ["run r1: recovered", "1 api_error, 1 recovered"]
