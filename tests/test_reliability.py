"""Exactly once under duress: replicas sharing a store, duplicates, failing handlers, restarts.

Real ``runflow-callbacks serve`` processes receive callbacks from the fake Runflow over HTTP;
the handler (``reliability_support.handle``) logs every successful run to a shared file, and
the tests count the lines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from reliability_support import (
    HANDLER,
    Receiver,
    done_keys,
    sent_body,
    tries,
    wait_until_delivered,
)
from runflow_callbacks import sign
from runflow_callbacks.cli import main
from runflow_callbacks.models import parse_callback
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory, serve_fake_runflow
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from pathlib import Path

    from runflow_callbacks.models import CallbackDelivery
    from runflow_callbacks.testing import RunningFakeRunflow

SECRET = "whsec_reliability_0123456789abcdef"
PATH = "/callbacks/runflow"
CALLBACKS = 500
#: Callbacks in flight at once from the load generator (each also sent twice more).
CONCURRENCY = 32
#: Short waits between the fake's attempts, so a 409 or a restart costs little time.
RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)
#: Soak callbacks on Redis and PostgreSQL (SQLite soaks with CALLBACKS): enough to cross the
#: restart with failures in flight on both replicas, few enough to keep CI short.
SOAK_CALLBACKS_SHARED = 300


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RELIABILITY_LOG", str(tmp_path / "handled.log"))
    return tmp_path


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def _attempt_statuses(histories: dict[str, list[CallbackDelivery]]) -> list[int | None]:
    """The receiver's answer to every attempt (None: no answer, e.g. connection refused)."""
    return [
        attempt.status_code
        for history in histories.values()
        for delivery in history
        for attempt in delivery.attempts or []
    ]


def _last_states(histories: dict[str, list[CallbackDelivery]]) -> dict[str, str | None]:
    return {batch_id: history[-1].status_code for batch_id, history in histories.items()}


async def _deliver_and_duplicate(
    runflow: RunningFakeRunflow, urls: list[str], *, count: int
) -> dict[str, list[int]]:
    """Create ``count`` batches (callback URLs alternating between ``urls``) and send each
    callback's exact bytes once more to every URL at the same time, while the fake delivers
    it. Returns the answers to the duplicates by batch id."""
    limit = asyncio.Semaphore(CONCURRENCY)
    answers: dict[str, list[int]] = {}
    timeout = httpx.Timeout(30.0)
    pool = httpx.Limits(max_connections=2 * CONCURRENCY)
    async with httpx.AsyncClient(timeout=timeout, limits=pool) as client:

        async def one(number: int) -> None:
            async with limit:
                batch = await asyncio.to_thread(
                    runflow.create_batch,
                    callback_url=urls[number % len(urls)] + PATH,
                    metadata={"number": number},
                )
                body = sent_body(runflow, batch["id"])
                headers = {"Runflow-Signature": sign(body, SECRET)}
                sent = await asyncio.gather(
                    *(client.post(url + PATH, content=body, headers=headers) for url in urls)
                )
                answers[batch["id"]] = [response.status_code for response in sent]

        await asyncio.gather(*(one(number) for number in range(count)))
    return answers


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
@pytest.mark.timeout(240)
def test_two_replicas_sharing_a_store_run_each_of_500_callbacks_once(
    backend: str,
    request: pytest.FixtureRequest,
    namespace: str,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store: str = request.getfixturevalue(f"{backend}_url")
    replicas = [
        Receiver(
            workdir,
            secret=SECRET,
            name=f"replica{number}",
            args=["--store", store, "--handler", HANDLER],
            # The namespace from the environment; the inbox commands below take the option.
            env={"RUNFLOW_CALLBACK_NAMESPACE": namespace, "RELIABILITY_SLEEP_S": "0.2"},
        )
        for number in (1, 2)
    ]
    with contextlib.ExitStack() as stack:
        for replica in replicas:
            stack.enter_context(replica)
        runflow = stack.enter_context(
            serve_fake_runflow(
                secret=SECRET, retry_delays_s=RETRY_DELAYS_S, max_attempts=10, attempt_timeout_s=20
            )
        )
        urls = [replica.url for replica in replicas]
        answers = asyncio.run(_deliver_and_duplicate(runflow, urls, count=CALLBACKS))
        batch_ids = list(answers)
        histories = wait_until_delivered(runflow, batch_ids, timeout_s=120)

    # Every answer, to the fake and to the duplicates, was 200 or 409 (never 5xx), and every
    # delivery ended succeeded: each 409 was followed by a 200 on a later attempt.
    duplicate_statuses = [status for pair in answers.values() for status in pair]
    statuses = _attempt_statuses(histories)
    assert set(duplicate_statuses) | set(statuses) <= {200, 409}
    assert set(_last_states(histories).values()) == {"succeeded"}

    # The side effects: exactly one run per callback, across both replicas.
    done = done_keys(workdir / "handled.log")
    assert len(done) == CALLBACKS
    assert {key.split(":")[1] for key in done} == set(batch_ids)

    ns = ("--store", store, "--namespace", namespace)
    stats = _cli_json(capsys, "inbox", "stats", "--json", *ns)
    recorded = len(duplicate_statuses) + len(statuses)  # every 200 and 409 was recorded first
    assert stats == {
        **stats,
        "received": CALLBACKS,
        "processed": CALLBACKS,
        "duplicates": recorded - CALLBACKS,
        "failed": 0,
        "dead": 0,
        "processing": 0,
        "pending": 0,
    }
    listed = _cli_json(capsys, "inbox", "list", "--json", *ns)
    assert isinstance(listed, list)
    conflicted = {batch_id for batch_id, pair in answers.items() if 409 in pair}
    # A run holds its callback for 200 ms (RELIABILITY_SLEEP_S), so the duplicates sent to
    # both replicas at once collide on hundreds of callbacks: the race really is exercised.
    assert conflicted
    processed = {entry["subject_id"] for entry in listed if entry["state"] == "processed"}
    assert conflicted <= processed
    assert len(processed) == CALLBACKS
    print(
        f"{backend}: {len(conflicted)} callbacks saw a 409 on a duplicate, "
        f"{statuses.count(409)} fake attempts answered 409"
    )


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def soak_store(request: pytest.FixtureRequest, workdir: Path) -> tuple[str, str]:
    """The backend of a soak and its store URL."""
    backend: str = request.param
    if backend == "sqlite":
        return backend, f"sqlite:///{workdir}/soak.db"
    url: str = request.getfixturevalue(f"{backend}_url")
    return backend, url


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_soak_with_failing_handlers_and_a_restart_loses_and_repeats_nothing(
    soak_store: tuple[str, str],
    namespace: str,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One receiver on a SQLite file; two replicas sharing Redis or PostgreSQL, one of them
    # restarted midway while the other goes on.
    backend, store = soak_store
    count, replicas = (CALLBACKS, 1) if backend == "sqlite" else (SOAK_CALLBACKS_SHARED, 2)
    planned = {"RELIABILITY_FAIL_PERCENT": "20", "RELIABILITY_SEED": "soak"}
    for name, value in planned.items():
        monkeypatch.setenv(name, value)  # for the reconcile run in this process
    ns = ("--store", store, "--namespace", namespace)
    receivers = [
        Receiver(
            workdir,
            secret=SECRET,
            name=f"receiver{number}",
            args=[*ns, "--handler", HANDLER, "--lease-seconds", "30"],
            env=planned,
        )
        for number in range(1, replicas + 1)
    ]
    with contextlib.ExitStack() as stack:
        for receiver in receivers:
            stack.enter_context(receiver)
        runflow = stack.enter_context(
            serve_fake_runflow(
                secret=SECRET, retry_delays_s=RETRY_DELAYS_S, max_attempts=6, attempt_timeout_s=20
            )
        )
        batch_ids = asyncio.run(_create_with_a_restart(runflow, receivers, count=count))
        histories = wait_until_delivered(runflow, batch_ids, timeout_s=120)

        # Whatever Runflow gave up on (failed or down too often) is read back from the
        # delivery history; the handler fails there too at times, so reconcile until clean.
        states = _last_states(histories)
        exhausted = sorted(i for i, state in states.items() if state != "succeeded")
        monkeypatch.setenv("RUNFLOW_API_URL", runflow.base_url)
        monkeypatch.setenv("RUNFLOW_API_KEY", runflow.api_key)
        argv = ["reconcile", *ns, "--handler", HANDLER, "--json"]
        for batch_id in exhausted:
            argv += ["--batch", batch_id]
        reconciled = collections.Counter[str]()
        deadline = time.monotonic() + 60
        while exhausted:
            capsys.readouterr()
            code = main(argv)
            report = json.loads(capsys.readouterr().out)
            reconciled.update(report["counts"])
            if code == 0:
                break
            assert time.monotonic() < deadline, report

    # No answer was a 5xx other than the planned handler failures (500); the restart shows
    # as connection errors (no status).
    statuses = _attempt_statuses(histories)
    assert set(statuses) <= {200, 500, None}
    done = done_keys(workdir / "handled.log")
    assert len(done) == count
    assert {key.split(":")[1] for key in done} == set(batch_ids)
    runs = tries(workdir / "handled.log")
    assert runs > count  # some runs failed as planned
    stats = _cli_json(capsys, "inbox", "stats", "--json", *ns)
    assert stats == {
        **stats,
        "received": count,
        "processed": count,
        "failed": 0,
        "dead": 0,
        "processing": 0,
        "pending": 0,
    }
    print(
        f"soak on {backend}: {runs} handler runs for {count} callbacks ({runs - count} failed), "
        f"{statuses.count(None)} attempts found the receiver down, "
        f"{len(exhausted)} reconciled ({dict(reconciled)})"
    )


async def _create_with_a_restart(
    runflow: RunningFakeRunflow, receivers: list[Receiver], *, count: int
) -> list[str]:
    """Create ``count`` batches (callback URLs alternating between ``receivers``), restarting
    the first receiver once half of them exist."""
    limit = asyncio.Semaphore(8)
    created: list[str] = []
    half_created = asyncio.Event()

    async def one(number: int) -> None:
        async with limit:
            url = receivers[number % len(receivers)].url + PATH
            batch = await asyncio.to_thread(
                runflow.create_batch, callback_url=url, metadata={"n": number}
            )
            created.append(batch["id"])
            if len(created) == count // 2:
                half_created.set()

    async def restart_midway() -> None:
        await half_created.wait()
        await asyncio.to_thread(receivers[0].restart)  # creating goes on meanwhile

    restart = asyncio.create_task(restart_midway())
    await asyncio.gather(*(one(number) for number in range(count)))
    await asyncio.wait_for(restart, timeout=120)
    return created


def test_namespace_option_and_variable_select_the_receiver_on_a_shared_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = f"sqlite:///{tmp_path}/shared.db"
    body = dumps_payload(PayloadFactory(seed=3).batch())

    async def record_in_first() -> None:
        async with open_store(store, namespace="first") as opened:
            processor = CallbackProcessor(opened, mode="inbox")
            await processor.handle(processor.incoming(parse_callback(body), body))

    asyncio.run(record_in_first())
    first = _cli_json(capsys, "inbox", "stats", "--json", "--store", store, "--namespace", "first")
    monkeypatch.setenv("RUNFLOW_CALLBACK_NAMESPACE", "second")
    second = _cli_json(capsys, "inbox", "stats", "--json", "--store", store)
    assert (first["received"], second["received"]) == (1, 0)

    capsys.readouterr()
    assert main(["inbox", "stats", "--store", store, "--namespace", "Not-A-Name"]) == 1
    assert "namespace must be" in capsys.readouterr().err
