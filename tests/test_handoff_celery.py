"""The Celery hand-off: recorded and queued before 2xx, each handler run once by the workers.

This module is also the Celery app of the worker subprocesses the Redis test starts
(``celery -A test_handoff_celery worker``): the ``RUNFLOW_HANDOFF_*`` variables configure it
there. The handler writes its side effects (``start`` and ``done`` lines) to a file, so that
the test can count what ran, across workers and a ``kill -9``.
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
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from celery import Celery, signals

from runflow_callbacks import sign
from runflow_callbacks.errors import ConfigurationError
from runflow_callbacks.handoff import HandOff, HandOffError
from runflow_callbacks.handoff.celery import DEFAULT_TASK_NAME, CeleryHandOff, make_task
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.receiver import CallbackReceiver
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Iterator

    from runflow_callbacks.context import CallbackContext

SECRET = "whsec_handoff_celery_0123456789"
URL = "http://receiver/callbacks/runflow"
LEASE = timedelta(seconds=1.5)
SLOW_SECONDS = 2.5

# --- the worker side (also imported by the worker subprocesses) ---------------------------

_EFFECTS = os.environ.get("RUNFLOW_HANDOFF_EFFECTS")
_SLOW = set(filter(None, os.environ.get("RUNFLOW_HANDOFF_SLOW", "").split(",")))
_FLAKY = set(filter(None, os.environ.get("RUNFLOW_HANDOFF_FLAKY", "").split(",")))

worker_app = Celery("test_handoff_celery", broker=os.environ.get("RUNFLOW_HANDOFF_BROKER"))
worker_app.conf.update(
    task_default_queue=os.environ.get("RUNFLOW_HANDOFF_QUEUE", "celery"),
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    # A killed worker's message comes back after 4 seconds (the default is an hour).
    broker_transport_options={
        "visibility_timeout": 4,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)


def _write(line: str) -> None:
    assert _EFFECTS is not None
    with Path(_EFFECTS).open("a", encoding="utf-8") as effects:
        effects.write(line + "\n")


def _side_effect(context: CallbackContext) -> None:
    """The handler of the worker subprocesses: slow for _SLOW ids, failing once for _FLAKY."""
    _write(f"start {context.key} {os.getpid()}")
    if context.subject_id in _SLOW:
        time.sleep(SLOW_SECONDS)
    if context.subject_id in _FLAKY and context.attempt == 1:
        raise RuntimeError("downstream is down")
    _write(f"done {context.key} {os.getpid()}")


run_callback = make_task(
    worker_app,
    store=os.environ.get("RUNFLOW_HANDOFF_STORE", "memory://"),
    namespace=os.environ.get("RUNFLOW_HANDOFF_NAMESPACE", "runflow_callbacks"),
    handlers=_side_effect,
    lease=LEASE,
    backoff=lambda attempt: timedelta(milliseconds=200),
)

# --- helpers --------------------------------------------------------------------------------


def _signed(body: bytes) -> dict[str, str]:
    return {"Runflow-Signature": sign(body, SECRET), "Content-Type": "application/json"}


def _client(receiver: CallbackReceiver) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=receiver), base_url="http://receiver"
    )


def _key(body: bytes) -> str:
    data = json.loads(body)
    return f"batch:{data['batch_id']}:{data['event']}"


@pytest.fixture
def published() -> Iterator[list[tuple[str, tuple[Any, ...]]]]:
    """The (task id, args) of every task the broker took while the test runs."""
    seen: list[tuple[str, tuple[Any, ...]]] = []

    def note(headers: dict[str, Any], body: Any, **_: Any) -> None:
        seen.append((headers["id"], tuple(body[0])))

    signals.after_task_publish.connect(note, weak=False)
    yield seen
    signals.after_task_publish.disconnect(note)


def _memory_app() -> Celery:
    return Celery("handoff_memory", broker="memory://")


# --- unit tests: the in-memory broker, eager runs ---------------------------------------------


async def test_recorded_and_queued_once_per_delivery_with_the_key_as_task_id(
    tmp_path: Path, published: list[tuple[str, tuple[Any, ...]]]
) -> None:
    url = f"sqlite:///{tmp_path / 'callbacks.db'}"
    ran: list[str | None] = []
    task = make_task(
        _memory_app(), store=url, handlers=lambda context: ran.append(context.key), name="t.run"
    )
    body = dumps_payload(PayloadFactory(seed=1).batch())
    key = _key(body)
    async with open_store(url) as store:
        receiver = CallbackReceiver(secrets=SECRET, store=store, hand_off=CeleryHandOff(task))
        async with _client(receiver) as client:
            first = await client.post(URL, content=body, headers=_signed(body))
            again = await client.post(URL, content=body, headers=_signed(body))
        assert (first.status_code, first.json()["status"]) == (200, "recorded")
        assert (again.status_code, again.json()["status"]) == (200, "recorded")
        # A duplicate of a callback not processed yet is queued again, under the same id.
        assert published == [(key, (key,)), (key, (key,))]
        assert ran == []  # nothing runs in the receiver
        # The worker's runs: the first processes it, the second job finds it processed.
        assert task.apply(args=(key,)).get() == "processed"
        assert task.apply(args=(key,)).get() == "duplicate"
        assert ran == [key]
        async with _client(receiver) as client:
            late = await client.post(URL, content=body, headers=_signed(body))
        assert (late.status_code, late.json()["status"]) == (200, "duplicate")
        assert len(published) == 2  # a processed callback is not queued again
        stats = await store.stats()
        assert (stats.received, stats.duplicates, stats.processed) == (1, 2, 1)


async def test_a_refused_publish_answers_503_and_the_retry_queues_it(
    tmp_path: Path, published: list[tuple[str, tuple[Any, ...]]]
) -> None:
    down = Celery("handoff_down", broker="redis://127.0.0.1:1/0")
    body = dumps_payload(PayloadFactory(seed=2).batch())
    key = _key(body)
    async with open_store(f"sqlite:///{tmp_path / 'callbacks.db'}") as store:
        receiver = CallbackReceiver(
            secrets=SECRET,
            store=store,
            hand_off=CeleryHandOff(down, retry_policy={"max_retries": 0}),
        )
        async with _client(receiver) as client:
            refused = await client.post(URL, content=body, headers=_signed(body))
            assert refused.status_code == 503
            assert refused.json()["error"] == "queue_unavailable"
            record = await store.get(key)
            assert record is not None  # recorded: the answer only says it is not queued
            assert record.state == "received"
            # Runflow retries once the broker is back: the retry queues it.
            assert receiver.processor is not None
            receiver.processor.hand_off = CeleryHandOff(_memory_app())
            retried = await client.post(URL, content=body, headers=_signed(body))
        assert (await store.stats()).duplicates == 1
    assert (retried.status_code, retried.json()["status"]) == (200, "recorded")
    assert published == [(key, (key,))]


async def test_enqueue_errors_say_what_failed_without_the_broker_password() -> None:
    down = Celery("handoff_secret", broker="redis://:s3cret-pw@127.0.0.1:1/0")
    with pytest.raises(HandOffError) as caught:
        await CeleryHandOff(down, retry_policy={"max_retries": 0}).enqueue("k")
    assert caught.value.code == "queue_unavailable"
    assert "s3cret-pw" not in str(caught.value)


async def test_a_failing_handler_is_retried_by_celery_until_it_succeeds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'callbacks.db'}"
    failures = [RuntimeError("downstream is down")]

    def handle(context: CallbackContext) -> None:
        if failures:
            raise failures.pop()

    task = make_task(
        _memory_app(),
        store=url,
        handlers=handle,
        name="t.flaky",
        backoff=lambda attempt: timedelta(0),
    )
    body = dumps_payload(PayloadFactory(seed=3).batch())
    async with open_store(url) as store:
        processor = CallbackProcessor(store, hand_off=CeleryHandOff(_memory_app()))
        from runflow_callbacks.models import parse_callback

        outcome = await processor.handle(processor.incoming(parse_callback(body), body))
        assert outcome.status == "recorded"
        assert outcome.key is not None
        # Eager: Celery's retry runs the task again at once; the second run succeeds.
        task.apply(args=(outcome.key,))
        record = await store.get(outcome.key)
        assert record is not None
        assert (record.state, record.attempts) == ("processed", 2)
        assert record.last_error == "RuntimeError: downstream is down"


def test_an_unknown_key_is_dropped(tmp_path: Path) -> None:
    task = make_task(
        _memory_app(), store=f"sqlite:///{tmp_path / 'c.db'}", handlers=None, name="t.unknown"
    )
    assert task.apply(args=("batch:nope:batch.succeeded",)).get() == "unknown"


def test_the_task_acks_late_and_rejects_on_worker_lost() -> None:
    task = make_task(_memory_app(), store="memory://", handlers=None)
    assert task.name == DEFAULT_TASK_NAME
    assert task.acks_late
    assert task.reject_on_worker_lost
    assert task.max_retries is None
    assert isinstance(CeleryHandOff(task), HandOff)


async def test_a_hand_off_needs_a_store_and_sync_mode() -> None:
    hand_off = CeleryHandOff(_memory_app())
    with pytest.raises(ConfigurationError, match="needs a store"):
        CallbackReceiver(secrets=SECRET, hand_off=hand_off)
    async with open_store("memory://") as store:
        with pytest.raises(ConfigurationError, match="mode='sync'"):
            CallbackProcessor(store, hand_off=hand_off, mode="inbox")
    with pytest.raises(ConfigurationError, match="Celery app or task"):
        CeleryHandOff(object())


# --- the real thing: a Redis broker, worker processes, a kill -9 mid-handler -----------------


def _broker(redis_url: str) -> str:
    """The broker on the test Redis server, in a database of its own (not the store's)."""
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(path="/7"))


class _Worker:
    """A ``celery worker`` subprocess (one process: ``--pool=solo``)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "test_handoff_celery:worker_app",
                "worker",
                "--pool=solo",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel=INFO",
                "-Q",
                env["RUNFLOW_HANDOFF_QUEUE"],
            ],
            cwd=Path(__file__).parent,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"the celery worker did not start:\n{self.log.read_text(errors='replace')}")

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


async def _until(condition: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_worker_killed_mid_handler_loses_and_doubles_nothing(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    import redis as redis_client

    count = 24
    bodies = [dumps_payload(PayloadFactory(seed=100 + i).batch()) for i in range(count)]
    keys = [_key(body) for body in bodies]
    ids = [key.split(":")[1] for key in keys]
    slow, flaky = ids[4], ids[9]
    effects = tmp_path / "effects.txt"
    broker = _broker(redis_url)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "RUNFLOW_HANDOFF_BROKER": broker,
        "RUNFLOW_HANDOFF_STORE": redis_url,
        "RUNFLOW_HANDOFF_NAMESPACE": namespace,
        "RUNFLOW_HANDOFF_QUEUE": f"q_{namespace}",
        "RUNFLOW_HANDOFF_EFFECTS": str(effects),
        "RUNFLOW_HANDOFF_SLOW": slow,
        "RUNFLOW_HANDOFF_FLAKY": flaky,
    }
    sender = Celery("handoff_sender", broker=broker)
    hand_off = CeleryHandOff(sender, queue=f"q_{namespace}")  # sent by name: no handler here
    answers: collections.Counter[tuple[int, str]] = collections.Counter()
    first = _Worker(env, tmp_path / "worker-1.log")
    second: _Worker | None = None
    async with open_store(redis_url, namespace=namespace) as store:
        receiver = CallbackReceiver(secrets=SECRET, store=store, hand_off=hand_off)

        async def deliver(indexes: list[int]) -> None:
            async with _client(receiver) as client:
                for index in indexes:
                    body = bodies[index]
                    answer = await client.post(URL, content=body, headers=_signed(body))
                    answers[answer.status_code, answer.json().get("status", "")] += 1

        try:
            first.wait_ready()
            # Every callback once, six of them twice (queued again under the same task id).
            await deliver([*range(count), 0, 1, 2, 4, 9, 15])
            await _until(
                lambda: ("start", keys[4]) in _effects(effects),
                timeout=60,
                what="the slow handler to start",
            )
            await asyncio.sleep(0.3)
            first.kill()  # mid-handler: its claim stands until the lease expires
            done_before = sum(1 for kind, _ in _effects(effects) if kind == "done")
            await deliver([4, 20, 21])  # Runflow redelivers while no worker runs
            second = _Worker(env, tmp_path / "worker-2.log")
            second.wait_ready()
            processed = 0

            async def all_processed() -> None:
                nonlocal processed
                while processed < count:
                    processed = (await store.stats()).processed
                    await asyncio.sleep(0.2)

            await asyncio.wait_for(all_processed(), timeout=90)
            # Then every message is consumed and acknowledged: the duplicates ran nothing.
            broker_redis = redis_client.Redis.from_url(broker)
            queue = f"q_{namespace}"
            await _until(
                lambda: broker_redis.llen(queue) == 0 and broker_redis.hlen("unacked") == 0,
                timeout=60,
                what="the broker's queue to drain",
            )
            broker_redis.close()
        finally:
            first.stop()
            if second is not None:
                second.stop()
        stats = await store.stats()
        slow_record = await store.get(keys[4])
        flaky_record = await store.get(keys[9])
    lines = _effects(effects)
    done = collections.Counter(key for kind, key in lines if kind == "done")
    started = collections.Counter(key for kind, key in lines if kind == "start")
    print(
        f"handoff kill test: {count} callbacks, {sum(answers.values())} deliveries {dict(answers)};"
        f" {done_before} done before the kill; handler starts {sum(started.values())},"
        f" completions {sum(done.values())}; slow callback started {started[keys[4]]} times"
    )
    assert set(answers) <= {(200, "recorded"), (200, "duplicate")}
    assert done == dict.fromkeys(keys, 1)  # 0 lost, 0 doubled
    assert started[keys[4]] == 2  # killed mid-handler once, run again by the second worker
    assert started[keys[9]] == 2  # failed once, retried by Celery after the backoff
    assert (stats.received, stats.processed, stats.duplicates) == (count, count, 9)
    assert slow_record is not None
    assert slow_record.attempts == 2
    assert flaky_record is not None
    assert flaky_record.attempts == 2
