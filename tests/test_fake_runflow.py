"""The fake Runflow: delivery over real HTTP, retries, records in the exact spec shape, the API."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from runflow_callbacks import (
    BatchCallbackDelivery,
    CallbackAttempt,
    ConfigurationError,
    RunCallbackDelivery,
    parse_callback,
    verify,
)
from runflow_callbacks.testing import FakeRunflow, free_port, serve_fake_runflow, serve_in_thread
from runflow_callbacks.testing.fake import DeliveryEngine
from runflow_callbacks.testing.fake.state import FakeState

if TYPE_CHECKING:
    from collections.abc import Iterator
    from uuid import UUID

    from starlette.requests import Request

    from runflow_callbacks.testing import RunningFakeRunflow
    from runflow_callbacks.testing.fake.state import Attempt, Delivery

SECRET = "whsec_test_0123456789abcdef"
FAST: dict[str, Any] = {"retry_delays_s": [0.01], "attempt_timeout_s": 5.0}


@dataclass
class Receiver:
    """A scripted callback endpoint: answers the queued statuses, then 200."""

    url: str
    answers: deque[int] = field(default_factory=deque)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    hang: threading.Event | None = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    async def endpoint(request: Request) -> Response:
        state.requests.append((dict(request.headers), await request.body()))
        if state.hang is not None:
            while not state.hang.is_set():  # noqa: ASYNC110 - a threading.Event set by the test thread; bounded by the fake's attempt timeout
                await asyncio.sleep(0.01)
        status = state.answers.popleft() if state.answers else 200
        return PlainTextResponse(f"answer {status}", status_code=status)

    app = Starlette(routes=[Route("/hook", endpoint, methods=["POST"])])
    with serve_in_thread(app) as base_url:
        state.url = base_url + "/hook"
        yield state
        if state.hang is not None:
            state.hang.set()


@pytest.fixture
def runflow() -> Iterator[RunningFakeRunflow]:
    with serve_fake_runflow(secret=SECRET, max_attempts=3, **FAST) as running:
        yield running


def api(runflow: RunningFakeRunflow) -> httpx.Client:
    return httpx.Client(
        base_url=runflow.base_url, headers={"Authorization": f"Bearer {runflow.api_key}"}
    )


@pytest.fixture
def http(runflow: RunningFakeRunflow) -> Iterator[httpx.Client]:
    with api(runflow) as client:
        yield client


def test_delivers_a_signed_batch_and_records_it_in_the_spec_shape(
    runflow: RunningFakeRunflow, http: httpx.Client, receiver: Receiver
) -> None:
    batch = runflow.create_batch(callback_url=receiver.url, metadata={"order": 42})
    delivery = runflow.wait_for_delivery(batch_id=batch["id"])
    assert isinstance(delivery, BatchCallbackDelivery)
    assert delivery.status_code == "succeeded"
    assert delivery.is_automatic is True
    assert (delivery.attempt_count, delivery.max_attempts) == (1, 3)
    assert delivery.completed_at is not None
    assert delivery.next_attempt_at is None

    [(headers, body)] = receiver.requests
    assert delivery.body == body
    assert headers["content-type"] == "application/json"
    assert verify(body, headers["runflow-signature"], SECRET).reveal() == SECRET
    payload = parse_callback(body)
    assert payload.subject_id == batch["id"]
    assert payload.event == batch["event"] == "batch.succeeded"
    assert payload.metadata == {"order": 42}
    assert delivery.payload == json.loads(body)

    [attempt] = delivery.attempts or []
    assert attempt.status_code == 200
    assert attempt.response_body == "answer 200"
    assert attempt.delivery_id == delivery.id
    assert headers["runflow-request-id"] == str(attempt.id)

    raw = http.get(f"/v1/batches/{batch['id']}/callback").json()
    assert set(raw[0]) == set(BatchCallbackDelivery.model_fields) - {"run_id"} | {"batch_id"}
    assert set(raw[0]) - {"batch_id"} == set(RunCallbackDelivery.model_fields) - {"run_id"}
    assert set(raw[0]["attempts"][0]) == set(CallbackAttempt.model_fields)
    assert raw[0]["payload_bytes"].encode() == body
    assert isinstance(raw[0]["attempts"][0]["status_code"], int)
    secrets = http.get("/v1/callback-secrets").json()["items"]
    assert raw[0]["signing_secret_id"] == secrets[0]["id"]
    assert secrets[0]["last_used_at"] is not None


def test_run_history_has_run_id(
    runflow: RunningFakeRunflow, http: httpx.Client, receiver: Receiver
) -> None:
    run = runflow.create_run(callback_url=receiver.url, event="run.failed")
    delivery = runflow.wait_for_delivery(run_id=run["id"])
    assert isinstance(delivery, RunCallbackDelivery)
    assert str(delivery.run_id) == run["id"]
    raw = http.get(f"/v1/runs/{run['id']}/callback").json()
    assert set(raw[0]) == set(RunCallbackDelivery.model_fields)
    assert run["status"] == "failed"
    assert parse_callback(receiver.requests[0][1]).event == "run.failed"


def test_non_2xx_answers_are_retried_with_the_same_bytes_and_new_request_ids(
    runflow: RunningFakeRunflow, receiver: Receiver
) -> None:
    receiver.answers.extend([500, 401])
    batch = runflow.create_batch(callback_url=receiver.url)
    delivery = runflow.wait_for_delivery(batch_id=batch["id"])
    assert delivery.status_code == "succeeded"
    assert [a.status_code for a in delivery.attempts or []] == [500, 401, 200]
    assert [a.attempt_number for a in delivery.attempts or []] == [1, 2, 3]
    assert delivery.failure_reason_code is None
    bodies = {body for _, body in receiver.requests}
    signatures = {headers["runflow-signature"] for headers, _ in receiver.requests}
    request_ids = {headers["runflow-request-id"] for headers, _ in receiver.requests}
    assert (len(bodies), len(signatures), len(request_ids)) == (1, 1, 3)


def test_gives_up_after_max_attempts(runflow: RunningFakeRunflow, receiver: Receiver) -> None:
    receiver.answers.extend([503] * 5)
    batch = runflow.create_batch(callback_url=receiver.url)
    delivery = runflow.wait_for_delivery(batch_id=batch["id"])
    assert delivery.status_code == "failed"
    assert delivery.attempt_count == delivery.max_attempts == 3
    assert delivery.failure_reason_code == "http_error"
    assert delivery.failure_detail == "the receiver answered 503"
    assert delivery.next_attempt_at is None
    assert delivery.completed_at is not None


@dataclass
class AttemptLog:
    """An ``on_attempt`` listener: what it saw of each attempt, when it was told."""

    seen: list[tuple[int, int | None, str, UUID]] = field(default_factory=list)

    def __call__(self, delivery: Delivery, attempt: Attempt) -> None:
        self.seen.append(
            (attempt.attempt_number, attempt.status_code, delivery.status_code, attempt.id)
        )


def test_on_attempt_is_told_of_every_attempt_once_its_outcome_is_recorded(
    receiver: Receiver,
) -> None:
    receiver.answers.extend([500, 401])
    told = AttemptLog()
    fake = FakeRunflow(secret=SECRET, max_attempts=3, **FAST)
    fake.engine.on_attempt = told
    with serve_fake_runflow(fake) as rf:
        batch = rf.create_batch(callback_url=receiver.url)
        delivery = rf.wait_for_delivery(batch_id=batch["id"])
    assert [seen[:3] for seen in told.seen] == [
        (1, 500, "pending"),
        (2, 401, "pending"),
        (3, 200, "succeeded"),
    ]
    assert [seen[3] for seen in told.seen] == [a.id for a in delivery.attempts or []]


def test_on_attempt_sees_a_delivery_that_gave_up_as_failed(receiver: Receiver) -> None:
    receiver.answers.extend([503, 503])
    told = AttemptLog()
    fake = FakeRunflow(secret=SECRET, max_attempts=2, **FAST)
    fake.engine.on_attempt = told
    with serve_fake_runflow(fake) as rf:
        batch = rf.create_batch(callback_url=receiver.url)
        assert rf.wait_for_delivery(batch_id=batch["id"]).status_code == "failed"
    assert [seen[:3] for seen in told.seen] == [(1, 503, "pending"), (2, 503, "failed")]


def test_a_listener_that_raises_is_logged_and_the_delivery_goes_on(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_delivery: Delivery, _attempt: Attempt) -> None:
        raise RuntimeError("listener broke")

    receiver.answers.append(500)
    fake = FakeRunflow(secret=SECRET, max_attempts=2, **FAST)
    fake.engine.on_attempt = broken
    with caplog.at_level("ERROR"), serve_fake_runflow(fake) as rf:
        batch = rf.create_batch(callback_url=receiver.url)
        delivery = rf.wait_for_delivery(batch_id=batch["id"])
    assert (delivery.status_code, delivery.attempt_count) == ("succeeded", 2)
    failures = [r for r in caplog.records if "on_attempt failed" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


def test_connection_errors_and_timeouts_are_recorded(receiver: Receiver) -> None:
    receiver.hang = threading.Event()
    with serve_fake_runflow(max_attempts=1, retry_delays_s=[0.01], attempt_timeout_s=0.2) as rf:
        down = rf.create_run(callback_url=f"http://127.0.0.1:{free_port()}/hook")
        slow = rf.create_run(callback_url=receiver.url)
        refused = rf.wait_for_delivery(run_id=down["id"])
        timed_out = rf.wait_for_delivery(run_id=slow["id"])
    assert (refused.status_code, refused.failure_reason_code) == ("failed", "connection_error")
    [attempt] = refused.attempts or []
    assert attempt.status_code is None
    assert attempt.error_message
    assert attempt.error_message.startswith("connection failed")
    assert (timed_out.status_code, timed_out.failure_reason_code) == ("failed", "timeout")
    assert (timed_out.attempts or [])[0].error_message == "no answer within 0.2s (ReadTimeout)"


def test_unsigned_when_the_org_has_no_secret(receiver: Receiver) -> None:
    with serve_fake_runflow(**FAST) as rf:
        run = rf.create_run(callback_url=receiver.url)
        delivery = rf.wait_for_delivery(run_id=run["id"])
    assert delivery.signing_secret_id is None
    assert "runflow-signature" not in receiver.requests[0][0]


def test_secrets_api_create_get_promote(
    runflow: RunningFakeRunflow, http: httpx.Client, receiver: Receiver
) -> None:
    created = http.post("/v1/callback-secrets", json={"label": "next"})
    assert created.status_code == 201
    record = created.json()
    plain = record.pop("plain_secret")
    assert plain.startswith("whsec_")
    assert record["key_prefix"] == plain[:12]
    assert record["is_current"] is False
    assert record["org_id"] == str(runflow.fake.org_id)
    fetched = http.get(f"/v1/callback-secrets/{record['id']}").json()
    assert "plain_secret" not in fetched
    assert fetched["label"] == "next"

    promoted = http.patch(f"/v1/callback-secrets/{record['id']}", json={"is_current": True})
    assert promoted.json()["is_current"] is True
    items = http.get("/v1/callback-secrets").json()["items"]
    assert [item["is_current"] for item in items] == [False, True]

    batch = runflow.create_batch(callback_url=receiver.url)
    delivery = runflow.wait_for_delivery(batch_id=batch["id"])
    assert str(delivery.signing_secret_id) == record["id"]
    headers, body = receiver.requests[0]
    assert verify(body, headers["runflow-signature"], plain).reveal() == plain

    renamed = http.patch(f"/v1/callback-secrets/{record['id']}", json={"label": "current"})
    assert renamed.json()["label"] == "current"
    assert http.delete(f"/v1/callback-secrets/{record['id']}").status_code == 204
    assert http.get(f"/v1/callback-secrets/{record['id']}").status_code == 404


def test_redelivery_is_manual_and_guarded(receiver: Receiver) -> None:
    gate = threading.Event()

    async def gated_sleep(_seconds: float) -> None:
        for _ in range(1000):  # at most ~10 s
            if gate.is_set():
                return
            await asyncio.sleep(0.01)

    receiver.answers.extend([500, 500])
    fake = FakeRunflow(secret=SECRET, max_attempts=2, sleep=gated_sleep)
    with serve_fake_runflow(fake) as rf, api(rf) as http:
        batch = rf.create_batch(callback_url=receiver.url)
        conflict = http.post(f"/v1/batches/{batch['id']}/callback-redeliveries")
        assert conflict.status_code == 422
        body = conflict.json()
        assert body["code"] == "validation_error"
        assert body["errors"][0]["error_type"] == "conflict"
        gate.set()
        assert rf.wait_for_delivery(batch_id=batch["id"]).status_code == "failed"

        again = http.post(f"/v1/batches/{batch['id']}/callback-redeliveries")
        assert again.status_code == 201
        assert again.json()["is_automatic"] is False
        last = rf.wait_for_delivery(batch_id=batch["id"], count=2)
        assert last.status_code == "succeeded"
        assert last.is_automatic is False
        assert [d.is_automatic for d in rf.deliveries(batch_id=batch["id"])] == [True, False]

        silent = rf.create_batch(callback_url=None)
        assert rf.deliveries(batch_id=silent["id"]) == []
        guard = http.post(f"/v1/batches/{silent['id']}/callback-redeliveries")
        assert guard.status_code == 422
        assert guard.json()["errors"][0]["error_type"] == "missing_callback_url"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/batches/0190f2a4-0000-7000-8000-00000000dead/callback"),
        ("GET", "/v1/runs/not-a-uuid/callback"),
        ("POST", "/v1/runs/0190f2a4-0000-7000-8000-00000000dead/callback-redeliveries"),
        ("GET", "/v1/callback-secrets/0190f2a4-0000-7000-8000-00000000dead"),
        ("PATCH", "/v1/callback-secrets/nope"),
        ("GET", "/v1/nothing-here"),
    ],
)
def test_unknown_ids_answer_404_with_the_error_body(
    runflow: RunningFakeRunflow, http: httpx.Client, method: str, path: str
) -> None:
    response = http.request(method, path, json={})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert set(response.json()) == {"code", "message", "errors"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic rf_test_api_key"}],
)
def test_api_needs_the_bearer_key(runflow: RunningFakeRunflow, headers: dict[str, str]) -> None:
    response = httpx.get(runflow.base_url + "/v1/callback-secrets", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"


def test_organization_header_must_match(runflow: RunningFakeRunflow, http: httpx.Client) -> None:
    ok = http.get("/v1/callback-secrets", headers={"X-Organization-Id": str(runflow.fake.org_id)})
    assert ok.status_code == 200
    other = http.get("/v1/callback-secrets", headers={"X-Organization-Id": "someone-else"})
    assert other.status_code == 403


@pytest.mark.parametrize(
    ("path", "content", "status"),
    [
        ("/_fake/batches", b"{", 400),
        ("/_fake/batches", b"[]", 400),
        ("/_fake/batches", b'{"callback_url": 5}', 422),
        ("/_fake/batches", b'{"callback_url": "ftp://x"}', 422),
        ("/_fake/batches", b'{"event": "batch.exploded"}', 422),
        ("/_fake/runs", b'{"event": "batch.succeeded"}', 422),
        ("/_fake/runs", b'{"id": "nope"}', 422),
        ("/_fake/batches", b'{"output": {"total": "many"}}', 422),
        ("/_fake/faults", b'{"count": "x"}', 422),
        ("/_fake/faults", b'{"count": 1, "status": 200}', 422),
    ],
)
def test_bad_test_endpoint_input_is_a_clear_4xx(
    runflow: RunningFakeRunflow, path: str, content: bytes, status: int
) -> None:
    response = httpx.post(runflow.base_url + path, content=content)
    assert response.status_code == status
    assert set(response.json()) == {"code", "message", "errors"}


def test_created_records_take_overrides_and_fill_batch_counts(
    runflow: RunningFakeRunflow,
) -> None:
    items = [{"run_id": "0190f2a4-0000-7000-8000-00000000000a", "status": "failed"}]
    batch = runflow.create_batch(
        callback_url=None,
        status="failed",
        output={"items": items},
        batch_id="0190f2a4-0000-7000-8000-000000000002",
    )
    assert batch["id"] == "0190f2a4-0000-7000-8000-000000000002"
    assert batch["event"] == "batch.failed"
    assert batch["output"]["failed"] == batch["output"]["total"] == 1
    assert batch["created_at"].endswith("+00:00")


def test_faults_answer_the_next_api_calls(runflow: RunningFakeRunflow, http: httpx.Client) -> None:
    assert httpx.post(runflow.base_url + "/_fake/faults", json={"count": 2}).status_code == 201
    assert [http.get("/v1/callback-secrets").status_code for _ in range(3)] == [503, 503, 200]


def test_engine_schedule_and_configuration() -> None:
    engine = DeliveryEngine(FakeState(), retry_delays_s=[0.5, 1])
    assert [engine.retry_delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert engine.on_attempt is None
    told = AttemptLog()
    assert DeliveryEngine(FakeState(), on_attempt=told).on_attempt is told
    bad: list[dict[str, Any]] = [
        {"retry_delays_s": []},
        {"max_attempts": 0},
        {"attempt_timeout_s": 0},
    ]
    for options in bad:
        with pytest.raises(ConfigurationError):
            DeliveryEngine(FakeState(), **options)
    with pytest.raises(ConfigurationError):
        FakeRunflow(api_key="")
    with pytest.raises(ConfigurationError):
        FakeRunflow(secret=" whsec_x")
    assert "secret" not in repr(FakeRunflow(secret=SECRET)).lower()


def test_secret_values_stay_out_of_reprs() -> None:
    fake = FakeRunflow(secret=SECRET, api_key="rf_key_do_not_print")
    record = next(iter(fake.state.secrets.values()))
    assert SECRET not in repr(record)
    assert "rf_key_do_not_print" not in repr(fake)


def test_duplicate_ids_are_a_409(runflow: RunningFakeRunflow) -> None:
    batch = runflow.create_batch(callback_url=None)
    again = httpx.post(runflow.base_url + "/_fake/batches", json={"id": batch["id"]})
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = st.sampled_from(
    ["callback_url", "event", "status", "output", "metadata", "id", "label", "is_current", "count"]
)
_BODIES = st.one_of(
    st.binary(max_size=40),
    st.dictionaries(
        _FIELDS, _JSON | st.sampled_from(["batch.failed", "http://x/", "run.failed"])
    ).map(lambda data: json.dumps(data).encode()),
)
_ROUTES = st.sampled_from(
    [
        ("POST", "/_fake/batches"),
        ("POST", "/_fake/runs"),
        ("POST", "/_fake/faults"),
        ("POST", "/v1/callback-secrets"),
        ("PATCH", "/v1/callback-secrets/{secret}"),
        ("POST", "/v1/batches/{batch}/callback-redeliveries"),
        ("GET", "/v1/runs/{batch}/callback"),
        ("DELETE", "/v1/batches/{batch}/callback"),
    ]
)


@settings(max_examples=120, deadline=None)
@given(calls=st.lists(st.tuples(_ROUTES, _BODIES), min_size=1, max_size=4))
def test_no_input_makes_the_fake_answer_500(calls: list[tuple[tuple[str, str], bytes]]) -> None:
    """Every answer is a documented status with Runflow's error body, never a 500."""

    async def scenario() -> None:
        refuse = httpx.MockTransport(lambda _request: httpx.Response(204))
        fake = FakeRunflow(api_key="k", secret=SECRET, retry_delays_s=[0], transport=refuse)
        secret_id = next(iter(fake.state.secrets))
        transport = httpx.ASGITransport(app=fake)
        headers = {"Authorization": "Bearer k"}
        async with httpx.AsyncClient(transport=transport, base_url="http://fake") as http:
            batch = (await http.post("/_fake/batches", json={"callback_url": None})).json()
            for (method, path), body in calls:
                url = path.format(secret=secret_id, batch=batch["id"])
                answer = await http.request(method, url, content=body, headers=headers)
                if answer.status_code >= 400:
                    error = answer.json()
                    assert set(error) == {"code", "message", "errors"}
                    assert answer.status_code < 500 or error["message"] == "injected fault"
        await fake.engine.aclose()

    asyncio.run(scenario())
