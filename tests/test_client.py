"""RunflowClient and AsyncRunflowClient against the fake Runflow over real HTTP."""

from __future__ import annotations

import asyncio
import random
import re
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from runflow_callbacks import (
    BatchCallbackDelivery,
    ConfigurationError,
    InvalidPayloadError,
    RunCallbackDelivery,
    RunflowAPIError,
)
from runflow_callbacks._metadata import distribution_version
from runflow_callbacks.client import AsyncRunflowClient, CallbackSecret, RunflowClient
from runflow_callbacks.testing import FakeRunflow, free_port, serve_fake_runflow, serve_in_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

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
    monkeypatch.delenv("RUNFLOW_API_URL", raising=False)
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
    assert (caught.value.status, caught.value.api_code, caught.value.message) == (400, None, None)
    assert caught.value.code == "runflow_api_error"


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


# --- retries of requests that are not idempotent, User-Agent, RUNFLOW_API_URL ----------------
# Against httpx.MockTransport: a scripted Runflow answering (or failing) one request at a time,
# and both twins driven through the same calls so that they are held to the same behaviour.

Outcome = httpx.Response | type[httpx.TransportError]


class ScriptedRunflow:
    """A MockTransport handler: one outcome per request, the last one repeated."""

    def __init__(self, *outcomes: Outcome) -> None:
        self._outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self._outcomes.pop(0) if len(self._outcomes) > 1 else self._outcomes[0]
        if isinstance(outcome, type):
            raise outcome("scripted failure", request=request)
        return httpx.Response(outcome.status_code, headers=outcome.headers, content=outcome.content)


class Twin:
    """Runs one client method on the sync or the async client, recording the backoff delays."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.delays: list[float] = []

    def call(
        self,
        script: ScriptedRunflow,
        method: str,
        *args: Any,
        client: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``method(*args, **kwargs)`` on a client built with ``client`` options."""
        options = {"api_key": "k", "rng": random.Random(1), **(client or {})}
        transport = httpx.MockTransport(script)
        if self.kind == "sync":
            with RunflowClient(transport=transport, sleep=self.delays.append, **options) as api:
                return getattr(api, method)(*args, **kwargs)

        async def record(seconds: float) -> None:
            self.delays.append(seconds)

        async def run() -> Any:
            async with AsyncRunflowClient(transport=transport, sleep=record, **options) as api:
                return await getattr(api, method)(*args, **kwargs)

        return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def twin(request: pytest.FixtureRequest) -> Twin:
    return Twin(request.param)


def secret_answer() -> httpx.Response:
    return httpx.Response(201, json={"label": "next", "plain_secret": "whsec_new"})


def delivery_answer() -> httpx.Response:
    return httpx.Response(201, json={"is_automatic": False})


@dataclass(frozen=True)
class Post:
    """A POST of the client: its method and arguments, a good answer, how to check a lost one."""

    method: str
    args: tuple[str, ...]
    answer: Callable[[], httpx.Response]
    hint: str


POSTS = [
    pytest.param(Post("create_callback_secret", (), secret_answer, "list the callback secrets"),
                 id="create_callback_secret"),
    pytest.param(Post("redeliver_batch", ("b",), delivery_answer, "delivery history of batch b"),
                 id="redeliver_batch"),
    pytest.param(Post("redeliver_run", ("r",), delivery_answer, "delivery history of run r"),
                 id="redeliver_run"),
]  # fmt: skip


@pytest.mark.parametrize("post", POSTS)
@pytest.mark.parametrize(
    "lost", [httpx.ReadTimeout, httpx.ReadError, httpx.WriteTimeout, httpx.RemoteProtocolError]
)
def test_a_post_whose_answer_was_lost_is_sent_once_and_says_how_to_check(
    twin: Twin, post: Post, lost: type[httpx.TransportError]
) -> None:
    script = ScriptedRunflow(lost, post.answer())
    with pytest.raises(RunflowAPIError) as caught:
        twin.call(script, post.method, *post.args)
    assert len(script.requests) == 1
    assert twin.delays == []
    error = caught.value
    expected_code = "timeout" if issubclass(lost, httpx.TimeoutException) else "network_error"
    assert (error.status, error.code) == (0, expected_code)
    assert "may have been applied" in str(error)
    assert post.hint in str(error)
    assert error.__cause__ is None


@pytest.mark.parametrize("post", POSTS)
@pytest.mark.parametrize("unsent", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_a_post_that_never_reached_runflow_is_retried_and_succeeds(
    twin: Twin, post: Post, unsent: type[httpx.TransportError]
) -> None:
    script = ScriptedRunflow(unsent, post.answer())
    assert twin.call(script, post.method, *post.args) is not None
    assert len(script.requests) == 2
    assert len(twin.delays) == 1
    first, second = script.requests
    assert (first.method, first.url, first.content) == (second.method, second.url, second.content)


def test_a_post_that_never_connects_gives_up_with_a_plain_network_error(twin: Twin) -> None:
    script = ScriptedRunflow(httpx.ConnectError)
    with pytest.raises(RunflowAPIError) as caught:
        twin.call(script, "create_callback_secret", client={"max_attempts": 3})
    assert len(script.requests) == 3
    assert len(twin.delays) == 2
    assert (caught.value.status, caught.value.code) == (0, "network_error")
    assert "may have been applied" not in str(caught.value)


@pytest.mark.parametrize("post", POSTS)
@pytest.mark.parametrize("status", [429, 503])
def test_a_post_answered_429_or_503_with_retry_after_is_retried(
    twin: Twin, post: Post, status: int
) -> None:
    busy = httpx.Response(status, headers={"Retry-After": "2"}, json={"code": "busy"})
    script = ScriptedRunflow(busy, post.answer())
    assert twin.call(script, post.method, *post.args) is not None
    assert len(script.requests) == 2
    assert twin.delays == [2.0]


@pytest.mark.parametrize("post", POSTS)
@pytest.mark.parametrize(
    "refusal",
    [
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(504, headers={"Retry-After": "1"}),
        httpx.Response(503),
        httpx.Response(429),
    ],
    ids=["500", "502", "504-retry-after", "503-without-retry-after", "429-without-retry-after"],
)
def test_a_post_answered_any_other_error_is_not_retried(
    twin: Twin, post: Post, refusal: httpx.Response
) -> None:
    script = ScriptedRunflow(refusal, post.answer())
    with pytest.raises(RunflowAPIError) as caught:
        twin.call(script, post.method, *post.args)
    assert caught.value.status == refusal.status_code
    assert len(script.requests) == 1
    assert twin.delays == []


def test_gets_keep_retrying_timeouts_and_server_errors(twin: Twin) -> None:
    script = ScriptedRunflow(httpx.ReadTimeout, httpx.Response(500), httpx.Response(200, json=[]))
    assert twin.call(script, "batch_deliveries", "b") == []
    assert len(script.requests) == 3
    assert len(twin.delays) == 2


def test_a_secret_update_is_replayed_because_it_only_sets_values(twin: Twin) -> None:
    updated = httpx.Response(200, json={"label": "b", "is_current": True})
    script = ScriptedRunflow(httpx.ReadTimeout, httpx.Response(502), updated)
    result = twin.call(script, "update_callback_secret", "s", label="b", is_current=True)
    assert (result.label, result.is_current) == ("b", True)
    assert len(script.requests) == 3
    assert {request.content for request in script.requests} == {
        b'{"label": "b", "is_current": true}'
    }


def test_every_request_carries_our_user_agent(twin: Twin) -> None:
    script = ScriptedRunflow(httpx.Response(200, json=[]))
    twin.call(script, "run_deliveries", "r")
    [request] = script.requests
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    expected = (
        f"runflow-callbacks/{distribution_version()} (python {python}; httpx {httpx.__version__})"
    )
    assert request.headers["User-Agent"] == expected
    assert re.fullmatch(r"runflow-callbacks/\S+ \(python 3\.\d+; httpx \d+\.\d+\S*\)", expected)


def test_the_api_url_comes_from_the_environment_unless_base_url_is_given(
    twin: Twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = ScriptedRunflow(httpx.Response(200, json=[]))
    monkeypatch.setenv("RUNFLOW_API_URL", "http://runflow.test:8080/")
    twin.call(script, "run_deliveries", "r")
    twin.call(script, "run_deliveries", "r", client={"base_url": "https://explicit.test"})
    monkeypatch.setenv("RUNFLOW_API_URL", "")
    twin.call(script, "run_deliveries", "r")
    monkeypatch.delenv("RUNFLOW_API_URL")
    twin.call(script, "run_deliveries", "r")
    assert [str(request.url) for request in script.requests] == [
        "http://runflow.test:8080/v1/runs/r/callback",
        "https://explicit.test/v1/runs/r/callback",
        "https://api.runflow.io/v1/runs/r/callback",
        "https://api.runflow.io/v1/runs/r/callback",
    ]
