"""Recovering what a receiver missed from Runflow's org-level webhook deliveries.

The story runs over real HTTP: the fake Runflow delivers webhook events to a receiver (a
:class:`~runflow_callbacks.receiver.CallbackReceiver` on a SQLite store, verifying with the
webhook's secret) that is up for the first event and down for the next ones; then
``runflow-callbacks reconcile --webhook any --since ...`` recovers those, exactly once. Shapes
the fake never answers (no payload, a payload that is no callback) come from a stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from runflow_callbacks import CallbackReceiver
from runflow_callbacks.cli import main
from runflow_callbacks.cli.reconcile import format_report
from runflow_callbacks.client import AsyncRunflowClient
from runflow_callbacks.errors import ConfigurationError, RunflowAPIError
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.reconcile import REBUILT_BODY_HEADER, reconcile_webhooks
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import free_port, serve_fake_runflow, serve_in_thread
from runflow_callbacks.webhooks import WebhookDelivery, webhook_secret

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from starlette.types import Receive, Scope, Send

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore
    from runflow_callbacks.testing import RunningFakeRunflow

SECRET = "whsec_webhook_reconcile_0123456789"
HANDLERS = """\
import json, os

def handle(context):
    with open(os.environ["WEBHOOK_RECOVERY_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps([context.key, context.source, context.signed]) + "\\n")
"""


@pytest.fixture
def runflow() -> Iterator[RunningFakeRunflow]:
    """Two attempts per delivery, quickly: a receiver that is down misses the event."""
    with serve_fake_runflow(max_attempts=2, retry_delays_s=[0.01], attempt_timeout_s=5.0) as rf:
        yield rf


class Late:
    """An ASGI app that hands each request to the receiver the lifespan built."""

    def __init__(self, receivers: list[CallbackReceiver]) -> None:
        self.receivers = receivers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.receivers[0](scope, receive, send)


@contextlib.contextmanager
def receiver_up(port: int, store_url: str, handled: list[str]) -> Iterator[None]:
    """The receiver on ``port``, recording in ``store_url``, while the block runs (the store
    is opened and closed by the app's lifespan, in the server's event loop)."""
    receivers: list[CallbackReceiver] = []

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with open_store(store_url) as store:
            receiver = CallbackReceiver(secrets=webhook_secret(SECRET), store=store)

            def handle(context: CallbackContext) -> None:
                handled.append(str(context.key))

            receiver.on_any(handle)
            receivers.append(receiver)
            yield

    app = Starlette(routes=[Route("/webhooks/runflow", Late(receivers))], lifespan=lifespan)
    with serve_in_thread(app, port=port):
        yield


def log_lines(path: Path) -> list[list[Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def reconcile_cli(
    runflow: RunningFakeRunflow, store_url: str, *extra: str, handler: bool = True
) -> list[str]:
    argv = ["reconcile", "--webhook", "any", "--since", "1h", "--store", store_url]
    argv += ["--api-url", runflow.base_url, "--api-key", runflow.api_key, *extra]
    if handler:
        argv += ["--handler", "webhook_recovery_handlers:handle"]
    assert main(argv) == 0
    return argv


@pytest.fixture
def recovery_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The log the CLI's handler (``webhook_recovery_handlers:handle``) appends each run to."""
    (tmp_path / "webhook_recovery_handlers.py").write_text(HANDLERS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "recovered.jsonl"
    monkeypatch.setenv("WEBHOOK_RECOVERY_LOG", str(log))
    return log


async def stored(store_url: str, key: str) -> tuple[str, str, dict[str, str], bytes]:
    async with open_store(store_url) as store:
        record = await store.get(key)
    assert record is not None
    return record.state, record.source, dict(record.headers), record.body


def test_receiver_down_then_reconcile_recovers_each_missed_event_exactly_once(
    runflow: RunningFakeRunflow,
    tmp_path: Path,
    recovery_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store_url = f"sqlite:///{tmp_path / 'receiver.db'}"
    port = free_port()
    webhook = runflow.create_webhook(f"http://127.0.0.1:{port}/webhooks/runflow", secret=SECRET)
    handled: list[str] = []
    with receiver_up(port, store_url, handled):
        delivered = runflow.create_run(callback_url=None, event="run.completed")
        runflow.wait_for_webhook_deliveries(count=1)
    missed = [
        runflow.create_run(callback_url=None, event=e) for e in ("run.failed", "run.cancelled")
    ]
    deliveries = runflow.wait_for_webhook_deliveries(count=3)
    assert [a.succeeded for d in deliveries for a in d.attempts or []] == [True] + [False] * 4
    assert handled == [f"run:{delivered['id']}:run.completed"]
    capsys.readouterr()

    reconcile_cli(runflow, store_url)
    first = capsys.readouterr().out.splitlines()

    missed_keys = [
        f"run:{missed[0]['id']}:run.failed",
        f"run:{missed[1]['id']}:run.cancelled",
    ]
    assert log_lines(recovery_log) == [[key, "reconcile", False] for key in missed_keys]
    assert first[0].startswith(f"run {delivered['id']}: already_processed (body rebuilt from")
    assert first[1].startswith(f"run {missed[0]['id']}: recovered (body rebuilt from webhook")
    assert f"webhook {webhook['id']} delivery {deliveries[1].id}" in first[1]
    assert first[-1] == "1 already_processed, 2 recovered"

    state, source, headers, body = asyncio.run(stored(store_url, missed_keys[0]))
    assert (state, source) == ("processed", "reconcile")
    assert headers == {
        REBUILT_BODY_HEADER: "rebuilt",
        "Runflow-Webhook-Id": webhook["id"],
        "Runflow-Webhook-Delivery-Id": deliveries[1].id,
    }
    assert body == runflow.fake.state.webhook_deliveries[1].payload_bytes  # rebuilt, and equal

    reconcile_cli(runflow, store_url, "--json")
    second = json.loads(capsys.readouterr().out)
    assert second["counts"] == {"already_processed": 3}
    assert {item["rebuilt"] for item in second["items"]} == {True}
    assert [item["delivery_id"] for item in second["items"]] == [d.id for d in deliveries]
    assert len(log_lines(recovery_log)) == 2  # nothing ran again
    assert handled == [f"run:{delivered['id']}:run.completed"]


def test_since_leaves_older_deliveries_alone(
    runflow: RunningFakeRunflow,
    tmp_path: Path,
    recovery_log: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runflow.create_webhook(f"http://127.0.0.1:{free_port()}/down", secret=SECRET)
    runflow.create_run(callback_url=None, event="run.failed")
    runflow.create_run(callback_url=None, event="run.failed")
    _older, newer = runflow.wait_for_webhook_deliveries(count=2)
    assert newer.created_at is not None
    store_url = f"sqlite:///{tmp_path / 'receiver.db'}"
    argv = ["reconcile", "--webhook", "any", "--since", newer.created_at.isoformat()]
    argv += ["--store", store_url, "--handler", "webhook_recovery_handlers:handle"]
    argv += ["--api-url", runflow.base_url, "--api-key", runflow.api_key]
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 recovered"
    assert log_lines(recovery_log) == [
        [f"run:{newer.payload and newer.payload['run_id']}:run.failed", "reconcile", False]
    ]


def test_without_a_handler_the_events_are_recorded_for_the_inbox_worker(
    runflow: RunningFakeRunflow, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runflow.create_webhook(f"http://127.0.0.1:{free_port()}/down")
    run = runflow.create_run(callback_url=None, event="run.completed")
    runflow.wait_for_webhook_deliveries()
    store_url = f"sqlite:///{tmp_path / 'inbox.db'}"
    reconcile_cli(runflow, store_url, handler=False)
    assert capsys.readouterr().out.splitlines()[-1] == "1 recorded"
    state, source, headers, _ = asyncio.run(stored(store_url, f"run:{run['id']}:run.completed"))
    assert (state, source, headers[REBUILT_BODY_HEADER]) == ("received", "reconcile", "rebuilt")


# --- the function behind the command ---------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[CallbackStore]:
    async with open_store("memory://") as opened:
        yield opened


@pytest.fixture
async def client(runflow: RunningFakeRunflow) -> AsyncIterator[AsyncRunflowClient]:
    async with AsyncRunflowClient(
        api_key=runflow.api_key, base_url=runflow.base_url, max_attempts=1
    ) as api:
        yield api


def since_an_hour() -> datetime:
    return datetime.now(timezone.utc) - timedelta(hours=1)


async def test_two_webhooks_delivering_one_event_recover_it_once_from_the_newest(
    runflow: RunningFakeRunflow,
    client: AsyncRunflowClient,
    store: CallbackStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"http://127.0.0.1:{free_port()}/down"
    await asyncio.to_thread(runflow.create_webhook, down)
    second = await asyncio.to_thread(runflow.create_webhook, down + "?two")
    run = await asyncio.to_thread(runflow.create_run, callback_url=None, event="run.failed")
    await asyncio.to_thread(runflow.wait_for_webhook_deliveries, count=2)
    ran: list[CallbackContext] = []
    processor = CallbackProcessor(store, ran.append)
    with caplog.at_level(logging.INFO, logger="runflow_callbacks.reconcile"):
        report = await reconcile_webhooks(client, processor, since=since_an_hour())
    [item] = report.items
    newest = runflow.fake.state.webhook_deliveries[-1]
    assert (item.kind, item.subject_id, item.status) == ("run", run["id"], "recovered")
    assert (item.webhook_id, item.delivery_id) == (second["id"], str(newest.id))
    assert item.rebuilt
    assert item.detail == "newest of 2 deliveries of this callback"
    [context] = ran
    assert (context.source, context.signed, context.secret_id) == ("reconcile", False, None)
    assert context.headers["Runflow-Webhook-Delivery-Id"] == str(newest.id)
    assert "body rebuilt from the parsed payload" in caplog.text
    assert report.ok
    assert report.to_json()["items"] == [
        {
            "kind": "run",
            "subject_id": run["id"],
            "status": "recovered",
            "key": f"run:{run['id']}:run.failed",
            "detail": "newest of 2 deliveries of this callback",
            "webhook_id": second["id"],
            "delivery_id": str(newest.id),
            "rebuilt": True,
        }
    ]


async def test_one_webhook_by_id_and_an_unknown_one_in_the_same_run(
    runflow: RunningFakeRunflow, client: AsyncRunflowClient, store: CallbackStore
) -> None:
    down = f"http://127.0.0.1:{free_port()}/down"
    first = await asyncio.to_thread(runflow.create_webhook, down, event_types=["run.failed"])
    await asyncio.to_thread(runflow.create_webhook, down, event_types=["run.completed"])
    await asyncio.to_thread(runflow.create_run, callback_url=None, event="run.failed")
    await asyncio.to_thread(runflow.create_run, callback_url=None, event="run.completed")
    await asyncio.to_thread(runflow.wait_for_webhook_deliveries, count=2)
    unknown = "0190f2a4-0000-7000-8000-00000000dead"
    report = await reconcile_webhooks(
        client,
        CallbackProcessor(store, lambda _context: None),
        since=since_an_hour(),
        webhook_ids=[first["id"], unknown],
    )
    recovered, failed = report.items
    assert (recovered.status, recovered.webhook_id) == ("recovered", first["id"])
    assert (failed.kind, failed.subject_id, failed.status) == ("webhook", unknown, "api_error")
    assert failed.detail is not None
    assert "not_found" in failed.detail or "404" in failed.detail
    assert not report.ok
    assert format_report(report).splitlines()[1].startswith(f"webhook {unknown}: api_error (")


async def test_record_only_needs_a_store_and_the_processor_keeps_its_own_options(
    client: AsyncRunflowClient, store: CallbackStore
) -> None:
    with pytest.raises(ConfigurationError, match="needs a processor, or a store"):
        await reconcile_webhooks(client, None, since=since_an_hour())
    with pytest.raises(ConfigurationError, match="processor's key function"):
        await reconcile_webhooks(
            client,
            CallbackProcessor(store, lambda _context: None),
            since=since_an_hour(),
            clock=since_an_hour,
        )
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await reconcile_webhooks(client, None, store=store, since=datetime(2026, 5, 6))


class StandIn:
    """The one client method reconcile_webhooks calls, answering fixed deliveries."""

    def __init__(self, deliveries: list[dict[str, Any]]) -> None:
        self.deliveries = [WebhookDelivery.model_validate(d) for d in deliveries]
        self.asked: list[tuple[str, datetime | None]] = []

    async def list_webhook_deliveries(
        self, webhook_id: str, *, since: datetime | None = None
    ) -> list[WebhookDelivery]:
        self.asked.append((webhook_id, since))
        return self.deliveries


async def test_deliveries_without_a_usable_payload_are_reported_each(
    store: CallbackStore,
) -> None:
    run_id = "0190f2a4-0000-7000-8000-000000000001"
    stand_in = StandIn(
        [
            {"id": "d1", "webhook_id": "w1", "payload": None},
            {"id": "d2", "payload": {"event": "run.failed", "run_id": "nope"}},
            {"id": "d3", "payload": {"event": "run.failed", "run_id": run_id, "status": "failed"}},
            {"id": "d4", "payload": {"event": "run.started", "run_id": run_id}},
        ]
    )
    since = since_an_hour()
    report = await reconcile_webhooks(
        cast("AsyncRunflowClient", stand_in), None, store=store, since=since
    )
    assert stand_in.asked == [("any", since)]
    summary = [(i.kind, i.subject_id, i.status, i.webhook_id) for i in report.items]
    assert summary == [
        ("webhook_delivery", "d1", "no_payload", "w1"),
        ("webhook_delivery", "d2", "invalid", "any"),
        ("run", run_id, "recorded", "any"),
        ("webhook_delivery", "d4", "recorded", "any"),  # an event this version does not know
    ]
    assert [i.rebuilt for i in report.items] == [False, False, True, True]
    assert report.count("invalid") == 1
    assert not report.ok


async def test_an_unreadable_list_is_one_api_error_item(store: CallbackStore) -> None:
    class Broken:
        async def list_webhook_deliveries(
            self, webhook_id: str, *, since: datetime | None = None
        ) -> list[WebhookDelivery]:
            raise RunflowAPIError(status=503, code="service_unavailable", message="down")

    report = await reconcile_webhooks(
        cast("AsyncRunflowClient", Broken()), None, store=store, since=since_an_hour()
    )
    [item] = report.items
    assert (item.kind, item.subject_id, item.status) == ("webhook", "any", "api_error")
    assert report.to_json()["items"] == [
        {
            "kind": "webhook",
            "subject_id": "any",
            "status": "api_error",
            "key": None,
            "detail": item.detail,
            "webhook_id": None,
            "delivery_id": None,
            "rebuilt": False,
        }
    ]


# --- the command line's own checks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconcile", "--webhook", "any"], "--webhook needs --since"),
        (["reconcile", "--batch", "b", "--since", "2h"], "--since applies to --webhook only"),
        (["reconcile"], "--webhook with --since"),
    ],
)
def test_webhook_options_that_do_not_go_together_are_one_line_and_exit_1(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--store", "memory://"]) == 1
    assert message in capsys.readouterr().err


def test_a_since_that_is_no_time_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["reconcile", "--webhook", "any", "--since", "yesterday", "--store", "memory://"])
    assert exited.value.code == 2
    assert "is not a time" in capsys.readouterr().err
