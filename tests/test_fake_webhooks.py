"""The fake Runflow's org-level webhooks: signed events delivered to a real receiver, retries,
subscriptions, the signing options, and the webhook API's records.

Everything goes over real HTTP: the fake under uvicorn delivers to a receiver under uvicorn
(a :class:`~runflow_callbacks.receiver.CallbackReceiver` verifying with the webhook's secret, or
a scripted endpoint), and the tests read the records through the API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from runflow_callbacks import (
    CallbackReceiver,
    ConfigurationError,
    RunCallbackPayload,
    parse_callback,
    verify,
)
from runflow_callbacks.testing import FakeRunflow, free_port, serve_fake_runflow, serve_in_thread
from runflow_callbacks.testing.fake import DeliveryEngine
from runflow_callbacks.testing.fake.state import FakeState
from runflow_callbacks.webhooks import WEBHOOK_EVENT_TYPES, webhook_secret
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.requests import Request

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.testing import RunningFakeRunflow

FAST: dict[str, Any] = {"retry_delays_s": [0.01], "attempt_timeout_s": 5.0, "max_attempts": 3}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"webhook secret for the tests!!").decode()


@dataclass
class Scripted:
    """An endpoint that answers the queued statuses, then 200, and keeps every request."""

    url: str = ""
    answers: deque[int] = field(default_factory=deque)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    state = Scripted()

    async def endpoint(request: Request) -> Response:
        state.requests.append((dict(request.headers), await request.body()))
        status = state.answers.popleft() if state.answers else 200
        return PlainTextResponse(f"answer {status}", status_code=status)

    with serve_in_thread(Starlette(routes=[Route("/hook", endpoint, methods=["POST"])])) as url:
        state.url = url + "/hook"
        yield state


@pytest.fixture
def runflow() -> Iterator[RunningFakeRunflow]:
    with serve_fake_runflow(**FAST) as running:
        yield running


@dataclass
class Received:
    url: str
    contexts: list[CallbackContext] = field(default_factory=list)


def receiving(secret: str, *, key: Any = "raw", **options: Any) -> Iterator[Received]:
    receiver = CallbackReceiver(secrets=webhook_secret(secret, key=key, label="webhook"), **options)
    received = Received(url="")
    receiver.on_any(received.contexts.append)
    with serve_in_thread(Starlette(routes=[Route("/webhooks/runflow", receiver)])) as url:
        received.url = url + "/webhooks/runflow"
        yield received


# --- delivery to a real receiver ----------------------------------------------------------------


def test_a_run_event_reaches_a_receiver_verifying_with_the_webhooks_secret(
    runflow: RunningFakeRunflow,
) -> None:
    for received in receiving(WEBHOOK_SECRET):
        webhook = runflow.create_webhook(received.url, secret=WEBHOOK_SECRET)
        run = runflow.create_run(callback_url=None, event="run.failed")
        [delivery] = runflow.wait_for_webhook_deliveries()
        [context] = received.contexts
    assert isinstance(context.payload, RunCallbackPayload)
    assert (context.event, context.subject_id) == ("run.failed", run["id"])
    assert context.secret_label == "webhook"
    assert delivery.webhook_id == webhook["id"]
    assert delivery.event_type_code == "run.failed"
    assert delivery.rebuilt_body() == context.body  # the fake writes bytes as Runflow does
    [attempt] = delivery.attempts or []
    assert (attempt.status_code, attempt.succeeded, attempt.attempt_number) == (200, True, 1)


def test_a_secret_the_fake_made_is_returned_once_and_signs_the_deliveries(
    runflow: RunningFakeRunflow,
) -> None:
    created = runflow.create_webhook(f"http://127.0.0.1:{free_port()}/none")
    secret = created["secret"]
    assert secret.startswith("whsec_")
    with runflow.client() as client:
        again = client.get_webhook(created["id"])
    assert "secret" not in (again.model_extra or {})
    assert again.secret_fingerprint == created["secret_fingerprint"]
    for received in receiving(secret):
        with runflow.client() as client:
            httpx.patch(
                f"{runflow.base_url}/v1/webhooks/{created['id']}",
                json={"url": received.url},
                headers={"Authorization": f"Bearer {runflow.api_key}"},
            ).raise_for_status()
        runflow.create_run(callback_url=None, event="run.completed")
        runflow.wait_for_webhook_deliveries()
        assert len(received.contexts) == 1


def test_a_wrong_secret_is_401_on_every_attempt_like_a_callback(
    runflow: RunningFakeRunflow,
) -> None:
    for received in receiving("whsec_not_the_webhooks"):
        runflow.create_webhook(received.url, secret=WEBHOOK_SECRET)
        runflow.create_run(callback_url=None, event="run.completed")
        [delivery] = runflow.wait_for_webhook_deliveries()
        assert received.contexts == []
    attempts = delivery.attempts or []
    assert [(a.status_code, a.succeeded) for a in attempts] == [(401, False)] * 3
    assert attempts[-1].next_retry_at is None


def test_each_subscribed_webhook_gets_the_event_and_a_callback_url_still_gets_its_callback(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    everything = runflow.create_webhook(scripted.url, secret=WEBHOOK_SECRET)
    failures = runflow.create_webhook(scripted.url + "?failed", event_types=["run.failed"])
    completed = runflow.create_run(callback_url=scripted.url + "?callback", event="run.completed")
    failed = runflow.create_run(callback_url=None, event="run.failed")
    runflow.create_batch(callback_url=None, event="batch.failed")  # not a webhook event
    deliveries = runflow.wait_for_webhook_deliveries(count=3)
    callback = runflow.wait_for_delivery(run_id=completed["id"])
    assert [(d.webhook_id, d.payload and d.payload["run_id"]) for d in deliveries] == [
        (everything["id"], completed["id"]),
        (everything["id"], failed["id"]),
        (failures["id"], failed["id"]),
    ]
    assert callback.status_code == "succeeded"
    assert len(runflow.deliveries(run_id=completed["id"])) == 1  # webhooks are not in the history
    assert len(runflow.deliveries(run_id=failed["id"])) == 0
    assert len(scripted.requests) == 4


# --- retries ---------------------------------------------------------------------------------


def test_failed_attempts_are_retried_on_the_callback_schedule_and_recorded(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    scripted.answers.extend([500, 503])
    runflow.create_webhook(scripted.url, secret=WEBHOOK_SECRET)
    runflow.create_run(callback_url=None, event="run.cancelled")
    [delivery] = runflow.wait_for_webhook_deliveries()
    attempts = delivery.attempts or []
    assert [(a.attempt_number, a.status_code, a.succeeded) for a in attempts] == [
        (1, 500, False),
        (2, 503, False),
        (3, 200, True),
    ]
    assert attempts[0].next_retry_at is not None
    assert attempts[1].next_retry_at is not None
    assert attempts[2].next_retry_at is None
    assert attempts[0].response_body == "answer 500"
    bodies = {body for _, body in scripted.requests}
    signatures = {headers["runflow-signature"] for headers, _ in scripted.requests}
    request_ids = {headers["runflow-request-id"] for headers, _ in scripted.requests}
    assert len(bodies) == len(signatures) == 1  # signed once, the same bytes every attempt
    assert request_ids == {a.id for a in attempts}
    [body] = bodies
    assert verify(body, signatures.pop(), WEBHOOK_SECRET).reveal() == WEBHOOK_SECRET


def test_a_receiver_that_is_down_fails_every_attempt_without_a_status(
    runflow: RunningFakeRunflow,
) -> None:
    runflow.create_webhook(f"http://127.0.0.1:{free_port()}/down")
    runflow.create_run(callback_url=None, event="run.failed")
    [delivery] = runflow.wait_for_webhook_deliveries()
    attempts = delivery.attempts or []
    assert [(a.status_code, a.succeeded) for a in attempts] == [(None, False)] * 3
    assert all(a.response_time_ms is not None for a in attempts)


def test_the_engine_uses_one_schedule_for_callbacks_and_webhooks() -> None:
    engine = DeliveryEngine(FakeState(), retry_delays_s=[1, 2], max_attempts=4)
    assert [engine.retry_delay_s(n) for n in (1, 2, 3)] == [1, 2, 4]


# --- signing options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "key"),
    [
        ("raw", WEBHOOK_SECRET.encode()),
        ("without_prefix", WEBHOOK_SECRET.removeprefix("whsec_").encode()),
        ("base64", base64.b64decode(WEBHOOK_SECRET.removeprefix("whsec_"))),
    ],
)
def test_the_header_name_and_the_key_are_configurable(
    scripted: Scripted, mode: Any, key: bytes
) -> None:
    fake = FakeRunflow(webhook_signature_header="X-Webhook-Signature", webhook_signing_key=mode)
    with serve_fake_runflow(fake) as runflow:
        runflow.create_webhook(scripted.url, secret=WEBHOOK_SECRET)
        runflow.create_run(callback_url=None, event="run.completed")
        runflow.wait_for_webhook_deliveries()
    [(headers, body)] = scripted.requests
    assert "runflow-signature" not in headers
    expected = hmac.new(key, body, hashlib.sha256).hexdigest()
    assert headers["x-webhook-signature"] == expected


def test_a_receiver_keyed_without_the_prefix_verifies_such_deliveries() -> None:
    fake = FakeRunflow(webhook_signing_key="without_prefix", **FAST)
    with serve_fake_runflow(fake) as runflow:
        for received in receiving(WEBHOOK_SECRET, key="without_prefix"):
            runflow.create_webhook(received.url, secret=WEBHOOK_SECRET)
            runflow.create_run(callback_url=None, event="run.completed")
            [delivery] = runflow.wait_for_webhook_deliveries()
            assert len(received.contexts) == 1
    assert [a.status_code for a in delivery.attempts or []] == [200]


@pytest.mark.parametrize("mode", ["raw", "without_prefix", "base64"])
def test_a_receiver_with_another_header_and_key_verifies_such_deliveries(mode: Any) -> None:
    fake = FakeRunflow(
        webhook_signature_header="X-Webhook-Signature", webhook_signing_key=mode, **FAST
    )
    with serve_fake_runflow(fake) as runflow:
        for received in receiving(WEBHOOK_SECRET, key=mode, signature_header="X-Webhook-Signature"):
            runflow.create_webhook(received.url, secret=WEBHOOK_SECRET)
            runflow.create_run(callback_url=None, event="run.completed")
            [delivery] = runflow.wait_for_webhook_deliveries()
            [context] = received.contexts
    assert [a.status_code for a in delivery.attempts or []] == [200]
    assert context.headers["X-Webhook-Signature"]
    # The default header is not looked at: such a delivery is unsigned for a default receiver.
    fake = FakeRunflow(webhook_signature_header="X-Webhook-Signature", **FAST)
    with serve_fake_runflow(fake) as runflow:
        for received in receiving(WEBHOOK_SECRET):
            runflow.create_webhook(received.url, secret=WEBHOOK_SECRET)
            runflow.create_run(callback_url=None, event="run.completed")
            [refused] = runflow.wait_for_webhook_deliveries()
            assert received.contexts == []
    assert {a.status_code for a in refused.attempts or []} == {401}


def test_a_secret_unusable_under_the_key_mode_is_refused(scripted: Scripted) -> None:
    with serve_fake_runflow(FakeRunflow(webhook_signing_key="base64")) as runflow:
        with pytest.raises(ConfigurationError, match="base64"):
            runflow.create_webhook(scripted.url, secret="whsec_not*base64")
        runflow.create_webhook(scripted.url)  # the fake's own secrets fit every mode


@pytest.mark.parametrize(
    "options",
    [
        {"webhook_signing_key": "hex"},
        {"webhook_signature_header": ""},
        {"webhook_paging": "cursor"},
        {"webhook_page_size": 0},
    ],
)
def test_unknown_webhook_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        FakeRunflow(**options)


# --- the webhook API ---------------------------------------------------------------------------


def api(runflow: RunningFakeRunflow) -> httpx.Client:
    return httpx.Client(
        base_url=runflow.base_url, headers={"Authorization": f"Bearer {runflow.api_key}"}
    )


def test_event_types_are_listed_and_readable_one_by_one(runflow: RunningFakeRunflow) -> None:
    with api(runflow) as http:
        listed = http.get("/v1/webhooks/event-types").json()
        one = http.get("/v1/webhooks/event-types/run.failed")
        missing = http.get("/v1/webhooks/event-types/batch.succeeded")
    assert [item["code"] for item in listed["items"]] == list(WEBHOOK_EVENT_TYPES)
    assert listed["next"] is None
    assert one.json()["code"] == "run.failed"
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({}, "url"),
        ({"url": "ftp://x"}, "url"),
        ({"url": "http://x", "event_subscriptions": ["batch.succeeded"]}, "event_subscriptions"),
        ({"url": "http://x", "event_subscriptions": "run.failed"}, "event_subscriptions"),
        ({"url": "http://x", "secret": " whsec_a"}, "secret"),
        ({"url": "http://x", "secret": 3}, "secret"),
    ],
)
def test_an_invalid_webhook_is_a_422_naming_the_field(
    runflow: RunningFakeRunflow, body: dict[str, Any], field_name: str
) -> None:
    with api(runflow) as http:
        answer = http.post("/v1/webhooks", json=body)
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["field"] == field_name


def test_subscriptions_may_be_objects_and_are_deduplicated(runflow: RunningFakeRunflow) -> None:
    with api(runflow) as http:
        answer = http.post(
            "/v1/webhooks",
            json={
                "url": "http://127.0.0.1:9/x",
                "event_subscriptions": [{"event_type_code": "run.failed"}, "run.failed"],
            },
        )
    assert answer.status_code == 201
    assert [s["event_type_code"] for s in answer.json()["event_subscriptions"]] == ["run.failed"]


def test_patch_changes_subscriptions_and_disables_a_webhook(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    webhook = runflow.create_webhook(scripted.url)
    path = f"/v1/webhooks/{webhook['id']}"
    with api(runflow) as http:
        narrowed = http.patch(path, json={"event_subscriptions": ["run.cancelled"]}).json()
        runflow.create_run(callback_url=None, event="run.completed")  # no longer subscribed
        runflow.create_run(callback_url=None, event="run.cancelled")
        runflow.wait_for_webhook_deliveries()
        disabled = http.patch(path, json={"disabled": True}).json()
        runflow.create_run(callback_url=None, event="run.cancelled")
        enabled = http.patch(path, json={"disabled": False}).json()
        wrong = http.patch(path, json={"disabled": "yes"})
    assert [s["event_type_code"] for s in narrowed["event_subscriptions"]] == ["run.cancelled"]
    assert disabled["disabled_at"] is not None
    assert enabled["disabled_at"] is None
    assert wrong.status_code == 422
    [delivery] = runflow.webhook_deliveries()
    assert delivery.event_type_code == "run.cancelled"
    assert len(scripted.requests) == 1


def test_a_new_secret_signs_the_next_deliveries(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    webhook = runflow.create_webhook(scripted.url, secret=WEBHOOK_SECRET)
    runflow.create_run(callback_url=None, event="run.failed")
    runflow.wait_for_webhook_deliveries()
    with api(runflow) as http:
        changed = http.patch(f"/v1/webhooks/{webhook['id']}", json={"secret": "whsec_rotated"})
    assert changed.json()["secret_fingerprint"] != webhook["secret_fingerprint"]
    runflow.create_run(callback_url=None, event="run.failed")
    runflow.wait_for_webhook_deliveries(count=2)
    (old_headers, old_body), (new_headers, new_body) = scripted.requests
    verify(old_body, old_headers["runflow-signature"], WEBHOOK_SECRET)
    verify(new_body, new_headers["runflow-signature"], "whsec_rotated")


def test_a_deleted_webhook_is_gone_but_its_deliveries_stay_under_any(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    webhook = runflow.create_webhook(scripted.url)
    runflow.create_run(callback_url=None, event="run.failed")
    [delivery] = runflow.wait_for_webhook_deliveries()
    path = f"/v1/webhooks/{webhook['id']}"
    with api(runflow) as http:
        assert http.delete(path).status_code == 204
        assert http.get(path).status_code == 404
        assert http.get(path + "/deliveries").status_code == 404
        assert http.delete(path).status_code == 404
    assert runflow.webhook_deliveries() == [delivery]
    runflow.create_run(callback_url=None, event="run.failed")
    assert len(runflow.fake.state.webhook_deliveries) == 1


def test_objects_are_embedded_only_when_asked(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    webhook = runflow.create_webhook(scripted.url)
    runflow.create_run(callback_url=None, event="run.failed")
    [delivery] = runflow.wait_for_webhook_deliveries()
    assert delivery.webhook is None
    attempts = f"/v1/webhooks/any/deliveries/{delivery.id}/attempts"
    with api(runflow) as http:
        plain = http.get(f"/v1/webhooks/{webhook['id']}").json()
        full = http.get(
            f"/v1/webhooks/{webhook['id']}", params={"embed": "deliveries,event_subscriptions"}
        ).json()
        with_webhook = http.get(
            f"/v1/webhooks/any/deliveries/{delivery.id}", params={"embed": "webhook"}
        ).json()
        attempt = http.get(attempts, params={"embed": "delivery"}).json()["items"][0]
    assert (plain["deliveries"], plain["event_subscriptions"]) == (None, None)
    assert [d["id"] for d in full["deliveries"]] == [delivery.id]
    assert len(full["event_subscriptions"]) == len(WEBHOOK_EVENT_TYPES)
    assert with_webhook["webhook"]["id"] == webhook["id"]
    assert attempt["delivery"]["id"] == delivery.id


def test_a_delivery_record_has_exactly_the_spec_fields(
    runflow: RunningFakeRunflow, scripted: Scripted
) -> None:
    runflow.create_webhook(scripted.url)
    run = runflow.create_run(callback_url=None, event="run.completed")
    [delivery] = runflow.wait_for_webhook_deliveries()
    with api(runflow) as http:
        record = http.get(f"/v1/webhooks/any/deliveries/{delivery.id}").json()
    assert set(record) == {
        "id",
        "webhook_id",
        "event_type_code",
        "payload",
        "created_at",
        "attempts",
        "webhook",
    }
    assert set(record["attempts"][0]) == {
        "id",
        "delivery_id",
        "attempt_number",
        "status_code",
        "response_body",
        "response_time_ms",
        "succeeded",
        "next_retry_at",
        "created_at",
        "delivery",
    }
    assert record["payload"]["run_id"] == run["id"]
    [(_, body)] = scripted.requests
    assert dumps_payload(record["payload"]) == body
    assert parse_callback(body).subject_id == run["id"]


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"page": "0"}])
def test_bad_paging_parameters_are_a_422(
    runflow: RunningFakeRunflow, query: dict[str, str]
) -> None:
    with api(runflow) as http:
        assert http.get("/v1/webhooks/any/deliveries", params=query).status_code == 422


def test_a_pq_cursor_that_is_not_one_is_a_422() -> None:
    with serve_fake_runflow(webhook_paging="pq") as runflow, api(runflow) as http:
        answer = http.get("/v1/webhooks", params={"pq": "garbage!"})
        first = http.get("/v1/webhooks").json()
    assert answer.status_code == 422
    assert first == {"items": [], "next_pq": None, "prev_pq": None}


def test_the_webhook_api_needs_the_api_key(runflow: RunningFakeRunflow) -> None:
    answer = httpx.get(f"{runflow.base_url}/v1/webhooks")
    assert answer.status_code == 401
