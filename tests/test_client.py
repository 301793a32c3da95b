"""RunflowClient and AsyncRunflowClient against the fake Runflow over real HTTP."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import (
    BatchCallbackDelivery,
    ConfigurationError,
    InvalidPayloadError,
    RunCallbackDelivery,
    RunflowAPIError,
)
from runflow_callbacks.client import AsyncRunflowClient, CallbackSecret, RunflowClient
from runflow_callbacks.testing import FakeRunflow, free_port, serve_fake_runflow, serve_in_thread

if TYPE_CHECKING:
    from collections.abc import Iterator

    from runflow_callbacks.testing import RunningFakeRunflow

SECRET = "whsec_test_0123456789abcdef"


@pytest.fixture(scope="module")
def hook() -> Iterator[str]:
    """A receiver that accepts everything (the client tests are about the API, not signatures)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def accept(_request: object) -> Response:
        return Response(status_code=204)

    with serve_in_thread(Starlette(routes=[Route("/hook", accept, methods=["POST"])])) as url:
        yield url + "/hook"


@pytest.fixture
def runflow() -> Iterator[RunningFakeRunflow]:
    with serve_fake_runflow(secret=SECRET, retry_delays_s=[0.01], max_attempts=2) as running:
        yield running


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def sleeps() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def client(runflow: RunningFakeRunflow, sleeps: RecordingSleep) -> Iterator[RunflowClient]:
    with RunflowClient(
        api_key=runflow.api_key, base_url=runflow.base_url, sleep=sleeps, rng=random.Random(1)
    ) as api:
        yield api


def test_history_and_redelivery(
    runflow: RunningFakeRunflow, client: RunflowClient, hook: str
) -> None:
    batch = runflow.create_batch(callback_url=hook)
    runflow.wait_for_delivery(batch_id=batch["id"])
    [delivery] = client.batch_deliveries(batch["id"])
    assert isinstance(delivery, BatchCallbackDelivery)
    assert str(delivery.batch_id) == batch["id"]
    assert (delivery.status_code, delivery.is_automatic) == ("succeeded", True)
    assert [a.status_code for a in delivery.attempts or []] == [204]

    again = client.redeliver_batch(batch["id"])
    assert isinstance(again, BatchCallbackDelivery)
    assert again.is_automatic is False
    assert again.body == delivery.body
    runflow.wait_for_delivery(batch_id=batch["id"], count=2)
    assert [d.is_automatic for d in client.batch_deliveries(batch["id"])] == [True, False]

    run = runflow.create_run(callback_url=hook, event="run.cancelled")
    runflow.wait_for_delivery(run_id=run["id"])
    [run_delivery] = client.run_deliveries(run["id"])
    assert isinstance(run_delivery, RunCallbackDelivery)
    assert isinstance(client.redeliver_run(run["id"]), RunCallbackDelivery)


def test_conflict_while_a_delivery_is_in_flight() -> None:
    gate = threading.Event()

    async def hold(_seconds: float) -> None:
        for _ in range(1000):  # at most ~10 s
            if gate.is_set():
                return
            await asyncio.sleep(0.01)

    fake = FakeRunflow(api_key="k", max_attempts=2, sleep=hold)
    with serve_fake_runflow(fake) as rf, rf.client(sleep=lambda _s: None) as api:
        down = f"http://127.0.0.1:{free_port()}/hook"
        batch = rf.create_batch(callback_url=down)
        with pytest.raises(RunflowAPIError) as caught:
            api.redeliver_batch(batch["id"])
        gate.set()
        rf.wait_for_delivery(batch_id=batch["id"])
    error = caught.value
    assert (error.status, error.code) == (422, "validation_error")
    assert error.errors[0]["error_type"] == "conflict"
    assert "in flight" in str(error)


def test_unknown_id_is_a_404_error(client: RunflowClient, sleeps: RecordingSleep) -> None:
    with pytest.raises(RunflowAPIError) as caught:
        client.run_deliveries("0190f2a4-0000-7000-8000-00000000dead")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert sleeps.delays == []


def test_auth_failure_is_not_retried(runflow: RunningFakeRunflow, sleeps: RecordingSleep) -> None:
    with (
        RunflowClient(api_key="wrong", base_url=runflow.base_url, sleep=sleeps) as api,
        pytest.raises(RunflowAPIError) as caught,
    ):
        api.batch_deliveries("0190f2a4-0000-7000-8000-000000000002")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert caught.value.message == "missing or invalid API key"
    assert sleeps.delays == []
    assert "wrong" not in str(caught.value)


def test_503_is_retried_then_succeeds(
    runflow: RunningFakeRunflow, client: RunflowClient, sleeps: RecordingSleep
) -> None:
    created = client.create_callback_secret(label="rotation")
    runflow.fail_next_api_calls(2, status=503)
    fetched = client.get_callback_secret(created.id or "")
    assert fetched.label == "rotation"
    assert len(sleeps.delays) == 2
    assert 0.25 <= sleeps.delays[0] < 0.5
    assert 0.5 <= sleeps.delays[1] < 1.0


def test_gives_up_after_max_attempts_with_the_last_error(
    runflow: RunningFakeRunflow, sleeps: RecordingSleep
) -> None:
    runflow.fail_next_api_calls(3, status=429)
    with (
        runflow.client(max_attempts=3, sleep=sleeps) as api,
        pytest.raises(RunflowAPIError) as caught,
    ):
        api.get_callback_secret("0190f2a4-0000-7000-8000-00000000dead")
    assert caught.value.status == 429
    assert len(sleeps.delays) == 2


def test_network_errors_are_retried_then_reported_without_a_traceback(
    sleeps: RecordingSleep,
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        RunflowClient(api_key="k", base_url=url, sleep=sleeps) as api,
        pytest.raises(RunflowAPIError) as caught,
    ):
        api.batch_deliveries("0190f2a4-0000-7000-8000-000000000002")
    assert (caught.value.status, caught.value.code) == (0, "network_error")
    assert len(sleeps.delays) == 4
    assert caught.value.__cause__ is None


def test_secrets_create_get_update(client: RunflowClient) -> None:
    created = client.create_callback_secret(label="next")
    assert isinstance(created, CallbackSecret)
    assert created.plain_secret is not None
    plain = created.plain_secret.get_secret_value()
    assert plain.startswith("whsec_")
    assert plain not in repr(created)
    assert plain not in str(created.model_dump())
    assert created.is_current is False
    fetched = client.get_callback_secret(str(created.id))
    assert fetched.plain_secret is None
    assert fetched.key_prefix == plain[:12]
    promoted = client.update_callback_secret(str(created.id), is_current=True, label="current")
    assert (promoted.is_current, promoted.label) == (True, "current")
    with pytest.raises(ConfigurationError):
        client.update_callback_secret(str(created.id))


def test_backoff_is_exponential_capped_and_honours_retry_after() -> None:
    api = RunflowClient(api_key="k", backoff_base_s=1, backoff_max_s=4, rng=random.Random(0))
    ceilings = [1, 2, 4, 4, 4]
    for attempt, ceiling in enumerate(ceilings, start=1):
        assert ceiling / 2 <= api.backoff_s(attempt) < ceiling
    answer = httpx.Response(503, headers={"Retry-After": "3"})
    assert api.backoff_s(1, answer) == 3
    assert api.backoff_s(1, httpx.Response(503, headers={"Retry-After": "60"})) == 4
    api.close()


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNFLOW_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="RUNFLOW_API_KEY"):
        RunflowClient()
    monkeypatch.setenv("RUNFLOW_API_KEY", "rf_from_env")
    api = RunflowClient(organization_id="org-1")
    assert api.base_url == "https://api.runflow.io"
    assert "rf_from_env" not in repr(api)
    for bad in ("", "a/b", "../x"):
        with pytest.raises(ConfigurationError):
            api.batch_deliveries(bad)
    api.close()
    with pytest.raises(ConfigurationError):
        RunflowClient(api_key="k", base_url="api.runflow.io")
    with pytest.raises(ConfigurationError):
        RunflowClient(api_key="k", max_attempts=0)


def test_organization_header_is_sent(runflow: RunningFakeRunflow) -> None:
    with (
        runflow.client(organization_id="someone-else", max_attempts=1) as api,
        pytest.raises(RunflowAPIError) as caught,
    ):
        api.create_callback_secret()
    assert caught.value.status == 403
    with runflow.client(organization_id=str(runflow.fake.org_id)) as api:
        assert api.create_callback_secret().org_id == runflow.fake.org_id


def test_non_json_error_body_still_raises_our_error() -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(400, text="<html>"))
    with (
        RunflowClient(api_key="k", transport=transport) as api,
        pytest.raises(RunflowAPIError) as caught,
    ):
        api.batch_deliveries("x")
    assert (caught.value.status, caught.value.code, caught.value.message) == (400, None, None)


async def test_async_client_does_the_same(runflow: RunningFakeRunflow, hook: str) -> None:
    delays: list[float] = []

    async def no_wait(seconds: float) -> None:
        delays.append(seconds)

    batch = runflow.create_batch(callback_url=hook)
    await asyncio.to_thread(runflow.wait_for_delivery, batch_id=batch["id"])
    async with AsyncRunflowClient(
        api_key=runflow.api_key, base_url=runflow.base_url, sleep=no_wait
    ) as api:
        runflow.fail_next_api_calls(1)
        [delivery] = await api.batch_deliveries(batch["id"])
        assert delivery.status_code == "succeeded"
        assert len(delays) == 1
        manual = await api.redeliver_batch(batch["id"])
        assert manual.is_automatic is False
        with pytest.raises(RunflowAPIError) as missing:
            await api.run_deliveries("0190f2a4-0000-7000-8000-00000000dead")
        assert missing.value.status == 404
        created = await api.create_callback_secret(label="a")
        updated = await api.update_callback_secret(str(created.id), label="b")
        assert (await api.get_callback_secret(str(updated.id))).label == "b"


def test_raw_history_is_checked_and_needs_one_subject() -> None:
    transport = httpx.MockTransport(lambda _request: httpx.Response(200, json={"not": "a list"}))
    with RunflowClient(api_key="k", transport=transport) as api:
        with pytest.raises(InvalidPayloadError, match="JSON array"):
            api.delivery_history_json(batch_id="b")
        with pytest.raises(ConfigurationError, match="exactly one"):
            api.delivery_history_json(batch_id="b", run_id="r")
        with pytest.raises(ConfigurationError, match="exactly one"):
            api.delivery_history_json()


def test_unexpected_record_shapes_raise_our_error() -> None:
    answers = {
        "/v1/batches/b/callback": httpx.Response(200, json=[{"attempts": "many"}]),
        "/v1/runs/r/callback-redeliveries": httpx.Response(201, json={"is_automatic": "maybe"}),
        "/v1/callback-secrets/s": httpx.Response(200, json={"is_current": []}),
    }
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    with RunflowClient(api_key="k", transport=transport) as api:
        with pytest.raises(InvalidPayloadError):
            api.batch_deliveries("b")
        with pytest.raises(InvalidPayloadError):
            api.redeliver_run("r")
        with pytest.raises(InvalidPayloadError):
            api.get_callback_secret("s")


async def test_async_client_network_errors_and_timeouts() -> None:
    delays: list[float] = []

    async def no_wait(seconds: float) -> None:
        delays.append(seconds)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with AsyncRunflowClient(
        api_key="k", transport=httpx.MockTransport(refuse), sleep=no_wait, max_attempts=3
    ) as api:
        with pytest.raises(RunflowAPIError) as caught:
            await api.run_deliveries("r")
    assert (caught.value.status, caught.value.code) == (0, "timeout")
    assert len(delays) == 2
