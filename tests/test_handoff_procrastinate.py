"""The procrastinate hand-off: the job deferred in the record's transaction, run once.

This module is also the procrastinate app of the worker subprocesses the kill test starts
(``RUNFLOW_HANDOFF_*`` variables configure it there). Each test gets a database of its own, so
that procrastinate's schema and jobs never meet another test's.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import procrastinate
import psycopg
import pytest

from runflow_callbacks import sign
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.handoff import HandOff
from runflow_callbacks.handoff.procrastinate import (
    DEFAULT_QUEUE,
    ProcrastinateHandOff,
    close_store,
    make_task,
    retry_stalled_jobs,
)
from runflow_callbacks.models import parse_callback
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.receiver import CallbackReceiver
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Iterator

    from runflow_callbacks.context import CallbackContext

pytestmark = pytest.mark.postgres

SECRET = "whsec_handoff_procrastinate_0123456789"
URL = "http://receiver/callbacks/runflow"
LEASE = timedelta(seconds=1.5)
SLOW_SECONDS = 2.5

# --- the worker side (also imported by the worker subprocesses) ---------------------------

_DATABASE = os.environ.get("RUNFLOW_HANDOFF_DATABASE", "postgresql:///unused")
_EFFECTS = os.environ.get("RUNFLOW_HANDOFF_EFFECTS")
_SLOW = set(filter(None, os.environ.get("RUNFLOW_HANDOFF_SLOW", "").split(",")))

worker_app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=_DATABASE))


def _side_effect(context: CallbackContext) -> None:
    assert _EFFECTS is not None
    with Path(_EFFECTS).open("a", encoding="utf-8") as effects:
        effects.write(f"start {context.key}\n")
    if context.subject_id in _SLOW:
        time.sleep(SLOW_SECONDS)
    with Path(_EFFECTS).open("a", encoding="utf-8") as effects:
        effects.write(f"done {context.key}\n")


run_callback = make_task(
    worker_app,
    store=_DATABASE,
    namespace=os.environ.get("RUNFLOW_HANDOFF_NAMESPACE", "runflow_callbacks"),
    handlers=_side_effect,
    lease=LEASE,
)


def _work() -> None:
    """A worker subprocess: ``python -c 'import test_handoff_procrastinate as m; m._work()'``."""

    async def work() -> None:
        async with worker_app.open_async():
            try:
                await worker_app.run_worker_async(
                    queues=[DEFAULT_QUEUE], concurrency=1, update_heartbeat_interval=0.5
                )
            finally:
                await close_store(run_callback)

    asyncio.run(work())


# --- helpers --------------------------------------------------------------------------------


@pytest.fixture
def database(postgres_url: str) -> Iterator[str]:
    """A fresh database on the test server, dropped afterwards."""
    name = f"h_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _app(database: str) -> procrastinate.App:
    return procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=database))


async def _apply_schema(app: procrastinate.App) -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


def _signed(body: bytes) -> dict[str, str]:
    return {"Runflow-Signature": sign(body, SECRET), "Content-Type": "application/json"}


def _client(receiver: CallbackReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=receiver), base_url="http://receiver"
    )


def _key(body: bytes) -> str:
    data = json.loads(body)
    return f"batch:{data['batch_id']}:{data['event']}"


def _jobs(database: str) -> list[tuple[str, dict[str, Any], str]]:
    with psycopg.connect(database) as connection:
        rows = connection.execute(
            "SELECT task_name, args, status::text FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
    return [(name, args, status) for name, args, status in rows]


# --- in-process tests -------------------------------------------------------------------------


async def test_recorded_and_deferred_in_one_transaction_and_run_once(
    database: str, namespace: str
) -> None:
    app = _app(database)
    await _apply_schema(app)
    ran: list[str | None] = []
    task = make_task(
        app,
        store=database,
        namespace=namespace,
        handlers=lambda context: ran.append(context.key),
        name="t.run",
    )
    body = dumps_payload(PayloadFactory(seed=1).batch())
    key = _key(body)
    async with open_store(database, namespace=namespace) as store:
        receiver = CallbackReceiver(
            secrets=SECRET, store=store, hand_off=ProcrastinateHandOff(task)
        )
        async with _client(receiver) as client:
            first = await client.post(URL, content=body, headers=_signed(body))
            again = await client.post(URL, content=body, headers=_signed(body))
        assert (first.status_code, first.json()["status"]) == (200, "recorded")
        assert (again.status_code, again.json()["status"]) == (200, "recorded")
        assert _jobs(database) == [("t.run", {"key": key}, "todo")] * 2
        async with app.open_async():
            await app.run_worker_async(queues=[DEFAULT_QUEUE], wait=False)
        await close_store(task)
        assert ran == [key]  # the second job found it processed
        assert [status for *_, status in _jobs(database)] == ["succeeded", "succeeded"]
        async with _client(receiver) as client:
            late = await client.post(URL, content=body, headers=_signed(body))
        assert (late.status_code, late.json()["status"]) == (200, "duplicate")
        assert len(_jobs(database)) == 2  # a processed callback is not deferred again
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.processed) == (1, 2, 1)


async def test_a_refused_defer_rolls_the_record_back_and_answers_503(
    database: str, namespace: str
) -> None:
    app = _app(database)  # no procrastinate schema yet: the defer fails
    body = dumps_payload(PayloadFactory(seed=2).batch())
    key = _key(body)
    async with open_store(database, namespace=namespace) as store:
        receiver = CallbackReceiver(
            secrets=SECRET, store=store, hand_off=ProcrastinateHandOff(app, task_name="t.by_name")
        )
        async with _client(receiver) as client:
            refused = await client.post(URL, content=body, headers=_signed(body))
            assert refused.status_code == 503
            assert refused.json()["error"] == "queue_unavailable"
            assert await store.get(key) is None  # one transaction: not recorded either
            await _apply_schema(app)
            retried = await client.post(URL, content=body, headers=_signed(body))
        assert (retried.status_code, retried.json()["status"]) == (200, "recorded")
        stats = await store.stats()
        assert (stats.received, stats.duplicates) == (1, 0)
    assert _jobs(database) == [("t.by_name", {"key": key}, "todo")]


async def test_a_failing_handler_is_retried_when_due(database: str, namespace: str) -> None:
    app = _app(database)
    await _apply_schema(app)
    failures = [RuntimeError("downstream is down")]

    def handle(context: CallbackContext) -> None:
        if failures:
            raise failures.pop()

    task = make_task(
        app,
        store=database,
        namespace=namespace,
        handlers=handle,
        name="t.flaky",
        backoff=lambda attempt: timedelta(0),
    )
    body = dumps_payload(PayloadFactory(seed=3).batch())
    async with open_store(database, namespace=namespace) as store:
        processor = CallbackProcessor(store, hand_off=ProcrastinateHandOff(task))
        outcome = await processor.handle(processor.incoming(parse_callback(body), body))
        assert outcome.status == "recorded"
        assert outcome.key is not None
        async with app.open_async():
            await app.run_worker_async(queues=[DEFAULT_QUEUE], wait=False)
        await close_store(task)
        record = await store.get(outcome.key)
    assert record is not None
    assert (record.state, record.attempts) == ("processed", 2)
    assert [status for *_, status in _jobs(database)] == ["succeeded"]  # one job, retried


async def test_the_hand_off_needs_the_postgres_store() -> None:
    hand_off = ProcrastinateHandOff(procrastinate.App(connector=procrastinate.PsycopgConnector()))
    assert isinstance(hand_off, HandOff)
    body = dumps_payload(PayloadFactory(seed=4).batch())
    async with open_store("memory://") as store:
        processor = CallbackProcessor(store, hand_off=hand_off)
        with pytest.raises(ConfigurationError, match="PostgreSQL store"):
            await processor.handle(processor.incoming(parse_callback(body), body))


# --- a worker killed mid-handler ----------------------------------------------------------------


class _Worker:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import test_handoff_procrastinate as m; m._work()"],
            cwd=Path(__file__).parent,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()


def _effects(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [
        (line.split(" ")[0], line.split(" ")[1])
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_worker_killed_mid_handler_loses_and_doubles_nothing(
    database: str, namespace: str, tmp_path: Path
) -> None:
    app = _app(database)
    await _apply_schema(app)
    count = 16
    bodies = [dumps_payload(PayloadFactory(seed=200 + i).batch()) for i in range(count)]
    keys = [_key(body) for body in bodies]
    slow = keys[3].split(":")[1]
    effects = tmp_path / "effects.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "RUNFLOW_HANDOFF_DATABASE": database,
        "RUNFLOW_HANDOFF_NAMESPACE": namespace,
        "RUNFLOW_HANDOFF_EFFECTS": str(effects),
        "RUNFLOW_HANDOFF_SLOW": slow,
    }
    answers: collections.Counter[tuple[int, str]] = collections.Counter()
    hand_off = ProcrastinateHandOff(app)  # deferred by name: no handler here
    first = _Worker(env, tmp_path / "worker-1.log")
    second: _Worker | None = None
    recovered = 0
    async with open_store(database, namespace=namespace) as store:
        receiver = CallbackReceiver(secrets=SECRET, store=store, hand_off=hand_off)

        async def deliver(indexes: list[int]) -> None:
            async with _client(receiver) as client:
                for index in indexes:
                    body = bodies[index]
                    answer = await client.post(URL, content=body, headers=_signed(body))
                    answers[answer.status_code, answer.json().get("status", "")] += 1

        try:
            await deliver([*range(count), 0, 3, 7])
            deadline = time.monotonic() + 60
            while ("start", keys[3]) not in _effects(effects):
                assert time.monotonic() < deadline, "the slow handler did not start"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            first.kill()  # mid-handler: the job stays 'doing', the claim until its lease ends
            await deliver([3, 12])
            second = _Worker(env, tmp_path / "worker-2.log")
            async with app.open_async():
                deadline = time.monotonic() + 60
                while not recovered:
                    assert time.monotonic() < deadline, "the stalled job was not found"
                    await asyncio.sleep(0.5)
                    recovered = await retry_stalled_jobs(app, seconds_since_heartbeat=2)
            deadline = time.monotonic() + 90
            while (await store.stats()).processed < count or any(
                status in {"todo", "doing"} for *_, status in _jobs(database)
            ):
                assert time.monotonic() < deadline, "not every callback was processed"
                await asyncio.sleep(0.2)
        finally:
            first.stop()
            if second is not None:
                second.stop()
        stats = await store.stats()
        slow_record = await store.get(keys[3])
    lines = _effects(effects)
    done = collections.Counter(key for kind, key in lines if kind == "done")
    started = collections.Counter(key for kind, key in lines if kind == "start")
    print(
        f"procrastinate kill test: {count} callbacks, {sum(answers.values())} deliveries"
        f" {dict(answers)}; {recovered} stalled job recovered; handler starts"
        f" {sum(started.values())}, completions {sum(done.values())}"
    )
    assert set(answers) <= {(200, "recorded"), (200, "duplicate")}
    assert done == dict.fromkeys(keys, 1)  # 0 lost, 0 doubled
    assert started[keys[3]] == 2
    assert (stats.received, stats.processed, stats.duplicates) == (count, count, 5)
    assert slow_record is not None
    assert slow_record.attempts == 2
