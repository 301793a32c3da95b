"""Org-level webhooks: the models, the signing secret helper, and the client's webhook calls.

The client reads lists to their end; both paging styles are read from the fake Runflow over
real HTTP (``webhook_paging="links"`` and ``"pq"``). Shapes the fake never answers (relative
links, bare arrays, links to another host, loops) come from an ``httpx.MockTransport``.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from runflow_callbacks import (
    ConfigurationError,
    InvalidPayloadError,
    RunCallbackPayload,
    RunflowAPIError,
    SignatureMismatchError,
    Verifier,
    sign,
    verify,
)
from runflow_callbacks.client import AsyncRunflowClient, RunflowClient
from runflow_callbacks.testing import serve_fake_runflow, serve_in_thread
from runflow_callbacks.webhooks import (
    WEBHOOK_EVENT_TYPES,
    Page,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEventSubscription,
    WebhookEventType,
    webhook_secret,
)
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pydantic import BaseModel

    from runflow_callbacks.testing import RunningFakeRunflow

RUN_ID = "0190f2a4-0000-7000-8000-000000000001"
PAYLOAD: dict[str, Any] = {
    "event": "run.completed",
    "run_id": RUN_ID,
    "status": "succeeded",
    "output": {"text": "é"},
    "duration_ms": 1000,
    "created_at": "2026-05-06T10:00:00+00:00",
    "completed_at": "2026-05-06T10:00:01+00:00",
    "metadata": None,
}
MODELS: list[type[BaseModel]] = [
    Webhook,
    WebhookEventSubscription,
    WebhookEventType,
    WebhookDelivery,
    WebhookAttempt,
    Page[WebhookDelivery],
]


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_every_field_may_be_absent(model: type[BaseModel]) -> None:
    parsed = model.model_validate({})
    assert all(value is None for value in parsed.model_dump().values())


@pytest.mark.parametrize("model", MODELS)
def test_every_field_may_be_null(model: type[BaseModel]) -> None:
    parsed = model.model_validate(dict.fromkeys(model.model_fields))
    assert all(value is None for value in parsed.model_dump().values())


@pytest.mark.parametrize("model", MODELS)
def test_unknown_fields_are_kept(model: type[BaseModel]) -> None:
    parsed = model.model_validate({"added_tomorrow": {"x": 1}})
    assert parsed.model_extra == {"added_tomorrow": {"x": 1}}


def test_a_full_delivery_parses_with_its_attempts_webhook_and_nested_objects() -> None:
    delivery = WebhookDelivery.model_validate_json(
        json.dumps(
            {
                "id": "d1",
                "webhook_id": "w1",
                "event_type_code": "run.completed",
                "payload": PAYLOAD,
                "created_at": "2026-05-06T10:00:01.123+00:00",
                "attempts": [
                    {
                        "id": "a1",
                        "delivery_id": "d1",
                        "attempt_number": 1,
                        "status_code": 500,
                        "response_body": "down",
                        "response_time_ms": 3,
                        "succeeded": False,
                        "next_retry_at": "2026-05-06T10:00:02+00:00",
                        "created_at": "2026-05-06T10:00:01+00:00",
                        "delivery": {"id": "d1"},
                    }
                ],
                "webhook": {
                    "id": "w1",
                    "event_subscriptions": [
                        {"webhook_id": "w1", "event_type_code": "run.completed"},
                        {"webhook_id": "w1", "event_type_code": None},
                    ],
                    "deliveries": [{"id": "d1"}],
                },
            }
        )
    )
    [attempt] = delivery.attempts or []
    assert (attempt.status_code, attempt.succeeded) == (500, False)
    assert attempt.delivery is not None
    assert attempt.delivery.id == "d1"
    assert delivery.webhook is not None
    assert delivery.webhook.event_types == ["run.completed"]
    assert delivery.created_at == datetime(2026, 5, 6, 10, 0, 1, 123000, tzinfo=timezone.utc)


def test_a_webhook_without_embedded_subscriptions_lists_no_event_types() -> None:
    assert Webhook().event_types == []


def test_the_rebuilt_body_is_the_payload_as_runflow_writes_it() -> None:
    delivery = WebhookDelivery(payload=dict(reversed(PAYLOAD.items())))
    body = delivery.rebuilt_body()
    assert body == dumps_payload(PAYLOAD)
    assert body is not None
    assert body.startswith(b'{"event": "run.completed", "run_id": "')
    assert b'"\\u00e9"' in body  # json.dumps' ASCII escapes, as Runflow writes them


def test_the_payload_parses_into_the_typed_callback() -> None:
    payload = WebhookDelivery(payload=PAYLOAD).parse_payload()
    assert isinstance(payload, RunCallbackPayload)
    assert (payload.subject_id, payload.status) == (RUN_ID, "succeeded")


def test_without_a_payload_there_is_no_body_and_nothing_to_parse() -> None:
    assert WebhookDelivery().rebuilt_body() is None
    assert WebhookDelivery().parse_payload() is None


def test_a_payload_that_is_no_callback_raises_our_error() -> None:
    with pytest.raises(InvalidPayloadError):
        WebhookDelivery(payload={"event": "run.completed", "run_id": "not-a-uuid"}).parse_payload()


def test_a_payload_that_is_no_object_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="payload"):
        WebhookDelivery.model_validate({"payload": [1, 2]})


def test_the_documented_event_types() -> None:
    assert WEBHOOK_EVENT_TYPES == ("run.completed", "run.failed", "run.cancelled")


# --- the signing secret ------------------------------------------------------------------------


def test_the_default_key_is_the_whole_secret_as_for_callbacks() -> None:
    secret = webhook_secret("whsec_abc", id="w1", label="webhook")
    body = b'{"event": "run.failed"}'
    assert verify(body, sign(body, "whsec_abc"), secret) is secret
    assert (secret.id, secret.label) == ("w1", "webhook")


def test_the_key_can_be_the_secret_without_its_prefix() -> None:
    secret = webhook_secret("whsec_abc", key="without_prefix")
    body = b"{}"
    assert verify(body, sign(body, "abc"), secret) is secret
    assert secret.reveal() == "abc"


def test_without_prefix_needs_the_prefix() -> None:
    with pytest.raises(ConfigurationError, match="whsec_"):
        webhook_secret("abc", key="without_prefix")


@pytest.mark.parametrize("value", ["", " whsec_a", "whsec_a\n"])
def test_an_unusable_secret_is_refused_like_a_callback_secret(value: str) -> None:
    with pytest.raises(ConfigurationError):
        webhook_secret(value)


def test_an_unknown_key_mode_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="key must be"):
        webhook_secret("whsec_abc", key="hex")  # type: ignore[arg-type] # checked at run time


def test_a_base64_key_signs_with_the_decoded_bytes() -> None:
    import base64
    import hashlib
    import hmac

    raw = bytes(range(256))[::7]  # not UTF-8
    secret = webhook_secret("whsec_" + base64.b64encode(raw).decode(), key="base64")
    body = b'{"event": "run.completed"}'
    signature = hmac.new(raw, body, hashlib.sha256).hexdigest()
    assert Verifier([secret]).verify(body, signature) == secret
    with pytest.raises(SignatureMismatchError):
        Verifier([webhook_secret(secret.reveal())]).verify(body, signature)  # the raw string
    for bad in ("whsec_not base64!", "whsec_"):
        with pytest.raises(ConfigurationError, match="base64"):
            webhook_secret(bad, key="base64")
    assert "whsec_" in repr(secret)
    assert base64.b64encode(raw).decode()[:8] not in repr(secret)


# --- the client against the fake, over real HTTP ---------------------------------------------


@pytest.fixture(scope="module")
def hook() -> Iterator[str]:
    """A receiver that accepts everything (these tests are about the API, not signatures)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def accept(_request: object) -> Response:
        return Response(status_code=204)

    with serve_in_thread(Starlette(routes=[Route("/hook", accept, methods=["POST"])])) as url:
        yield url + "/hook"


def populated(runflow: RunningFakeRunflow, hook: str, *, runs: int) -> list[dict[str, Any]]:
    """Two webhooks (one for run.failed only), ``runs`` failed runs; waits for every delivery."""
    webhooks = [
        runflow.create_webhook(hook),
        runflow.create_webhook(hook, event_types=["run.failed"]),
    ]
    for _ in range(runs):
        runflow.create_run(callback_url=None, event="run.failed")
    runflow.create_run(callback_url=None, event="run.completed")  # to the first webhook only
    runflow.wait_for_webhook_deliveries(count=2 * runs + 1)
    return webhooks


@pytest.fixture(scope="module", params=["links", "pq"])
def paged(request: pytest.FixtureRequest, hook: str) -> Iterator[RunningFakeRunflow]:
    """A fake whose lists come two items a page, in either paging style, with 5 failed runs."""
    with serve_fake_runflow(
        retry_delays_s=[0.01], webhook_paging=request.param, webhook_page_size=2
    ) as running:
        populated(running, hook, runs=5)
        yield running


@pytest.fixture
def client(paged: RunningFakeRunflow) -> Iterator[RunflowClient]:
    with paged.client(max_attempts=3, backoff_base_s=0.001) as api:
        yield api


def test_every_page_of_deliveries_is_read_in_order(
    paged: RunningFakeRunflow, client: RunflowClient
) -> None:
    everything = client.list_webhook_deliveries("any")
    assert len(everything) == 11
    expected = [str(d.id) for d in paged.fake.state.webhook_deliveries]
    assert [d.id for d in everything] == expected
    assert all(isinstance(d.parse_payload(), RunCallbackPayload) for d in everything)


@pytest.mark.parametrize("limit", [1, 3, 500])
def test_the_page_size_does_not_change_what_is_read(client: RunflowClient, limit: int) -> None:
    assert len(client.list_webhook_deliveries("any", limit=limit)) == 11


def test_the_deliveries_of_one_webhook(client: RunflowClient) -> None:
    first, second = client.list_webhooks(embed=["event_subscriptions"])
    assert first.event_types == list(WEBHOOK_EVENT_TYPES)
    assert second.event_types == ["run.failed"]
    assert first.id is not None
    assert second.id is not None
    assert len(client.list_webhook_deliveries(first.id)) == 6
    only_failed = client.list_webhook_deliveries(second.id)
    assert {d.event_type_code for d in only_failed} == {"run.failed"}
    assert len(only_failed) == 5
    assert {d.webhook_id for d in only_failed} == {second.id}


def test_since_keeps_the_deliveries_created_from_then_on(
    paged: RunningFakeRunflow, client: RunflowClient
) -> None:
    records = paged.fake.state.webhook_deliveries
    assert (
        client.list_webhook_deliveries("any", since=records[7].created_at)
        == (client.list_webhook_deliveries("any")[7:])
    )
    later = records[-1].created_at + timedelta(seconds=1)
    assert client.list_webhook_deliveries("any", since=later) == []


def test_since_must_be_timezone_aware(client: RunflowClient) -> None:
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        client.list_webhook_deliveries("any", since=datetime(2026, 5, 6))


@pytest.mark.parametrize("limit", [0, 501, True, 2.0])
def test_a_page_size_outside_1_to_500_is_refused_before_any_request(
    client: RunflowClient, limit: Any
) -> None:
    with pytest.raises(ConfigurationError, match="limit"):
        client.list_webhook_deliveries("any", limit=limit)


def test_one_webhook_delivery_and_its_attempts(client: RunflowClient) -> None:
    newest = client.list_webhook_deliveries("any")[-1]
    assert newest.id is not None
    assert client.get_webhook_delivery(newest.id) == newest
    assert newest.webhook_id is not None
    assert client.get_webhook_delivery(newest.id, webhook_id=newest.webhook_id) == newest
    [attempt] = client.list_webhook_attempts(newest.id)
    assert (attempt.status_code, attempt.succeeded, attempt.next_retry_at) == (204, True, None)
    assert attempt.id is not None
    assert client.get_webhook_attempt(newest.id, attempt.id) == attempt


def test_get_webhook(client: RunflowClient) -> None:
    first = client.list_webhooks()[0]
    assert first.id is not None
    assert first.event_subscriptions is None  # not embedded
    again = client.get_webhook(first.id, embed=("event_subscriptions", "deliveries"))
    assert again.event_types == list(WEBHOOK_EVENT_TYPES)
    assert len(again.deliveries or []) == 6


def test_a_page_answered_503_is_retried(paged: RunningFakeRunflow, client: RunflowClient) -> None:
    paged.fail_next_api_calls(1)
    first = client.list_webhook_deliveries("any")
    paged.fail_next_api_calls(1)
    assert client.list_webhook_deliveries("any") == first


async def test_the_async_client_reads_the_same_pages(
    paged: RunningFakeRunflow, client: RunflowClient
) -> None:
    async with AsyncRunflowClient(api_key=paged.api_key, base_url=paged.base_url) as api:
        deliveries = await api.list_webhook_deliveries("any", limit=3)
        webhooks = await api.list_webhooks(embed=["event_subscriptions"])
        newest = deliveries[-1]
        assert newest.id is not None
        attempts = await api.list_webhook_attempts(newest.id)
        assert attempts[0].id is not None
        one = await api.get_webhook_attempt(newest.id, attempts[0].id)
        assert await api.get_webhook_delivery(newest.id) == newest
        assert webhooks[0].id is not None
        assert await api.get_webhook(webhooks[0].id) == client.get_webhook(webhooks[0].id)
    assert deliveries == client.list_webhook_deliveries("any")
    assert webhooks == client.list_webhooks(embed=["event_subscriptions"])
    assert one == attempts[0]


# --- errors ----------------------------------------------------------------------------------


def test_an_unknown_webhook_is_a_404(client: RunflowClient) -> None:
    unknown = "0190f2a4-0000-7000-8000-00000000dead"
    for call in (
        lambda: client.get_webhook(unknown),
        lambda: client.list_webhook_deliveries(unknown),
        lambda: client.get_webhook_delivery(unknown),
        lambda: client.list_webhook_attempts(unknown),
    ):
        with pytest.raises(RunflowAPIError) as caught:
            call()
        assert (caught.value.status, caught.value.code) == (404, "not_found")


def test_a_wrong_api_key_is_a_401(paged: RunningFakeRunflow) -> None:
    with (
        RunflowClient(api_key="rf_wrong", base_url=paged.base_url, max_attempts=1) as api,
        pytest.raises(RunflowAPIError) as caught,
    ):
        api.list_webhook_deliveries("any")
    assert caught.value.status == 401


@pytest.mark.parametrize("bad", ["", "a/b", "a?b", "a#b", "a%2F"])
def test_an_id_that_is_not_plain_is_refused_before_any_request(
    client: RunflowClient, bad: str
) -> None:
    with pytest.raises(ConfigurationError, match="plain id"):
        client.list_webhook_deliveries(bad)
    with pytest.raises(ConfigurationError, match="plain id"):
        client.get_webhook_attempt("d1", bad)


def test_embed_names_are_checked(client: RunflowClient) -> None:
    with pytest.raises(ConfigurationError, match="embed"):
        client.list_webhooks(embed=["a,b"])
    assert client.list_webhooks(embed="event_subscriptions")[0].event_types


# --- page shapes the fake does not answer ------------------------------------------------------

Pages = dict[str, Any]


def scripted(pages: dict[str, Pages | list[Any]]) -> tuple[RunflowClient, list[str]]:
    """A client whose API answers ``pages[path?query]`` (the URL it asked, without the host)."""
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        target = request.url.raw_path.decode("ascii")
        asked.append(f"{request.url.host}{target}")
        if target not in pages:
            return httpx.Response(404, json={"code": "not_found"})
        return httpx.Response(200, json=pages[target])

    client = RunflowClient(
        api_key="rf_test",
        base_url="https://api.runflow.test",
        transport=httpx.MockTransport(answer),
        max_attempts=1,
    )
    return client, asked


def item(number: int) -> dict[str, Any]:
    return {"id": f"d{number}", "payload": {**PAYLOAD, "metadata": {"n": number}}}


def ids(deliveries: list[WebhookDelivery]) -> list[str | None]:
    return [delivery.id for delivery in deliveries]


def test_relative_and_query_only_next_links_are_followed() -> None:
    client, asked = scripted(
        {
            "/v1/webhooks/any/deliveries?limit=1": {"items": [item(1)], "next": "/v1/p2"},
            "/v1/p2": {"items": [item(2)], "next": "?page=3", "previous": "/v1/p1"},
            "/v1/p2?page=3": {"items": [item(3)], "next": None},
        }
    )
    with client:
        assert ids(client.list_webhook_deliveries("any", limit=1)) == ["d1", "d2", "d3"]
    assert asked == [
        "api.runflow.test/v1/webhooks/any/deliveries?limit=1",
        "api.runflow.test/v1/p2",
        "api.runflow.test/v1/p2?page=3",
    ]


def test_a_pq_cursor_is_sent_back_with_the_first_query() -> None:
    client, asked = scripted(
        {
            "/v1/webhooks/w1/deliveries?limit=2": {"items": [item(1)], "next_pq": 7},
            "/v1/webhooks/w1/deliveries?limit=2&pq=7": {"items": [item(2)], "next_pq": ""},
        }
    )
    with client:
        assert ids(client.list_webhook_deliveries("w1", limit=2)) == ["d1", "d2"]
    assert len(asked) == 2


def test_a_bare_array_is_one_page() -> None:
    client, _ = scripted({"/v1/webhooks/any/deliveries": [item(1), item(2)]})
    with client:
        assert ids(client.list_webhook_deliveries("any")) == ["d1", "d2"]


def test_a_page_without_items_ends_nothing_and_adds_nothing() -> None:
    client, _ = scripted(
        {
            "/v1/webhooks": {"items": None, "next": "/v1/webhooks?page=2"},
            "/v1/webhooks?page=2": {"items": [{"id": "w1"}]},
        }
    )
    with client:
        assert [webhook.id for webhook in client.list_webhooks()] == ["w1"]


def test_a_next_link_to_another_host_is_not_followed() -> None:
    client, asked = scripted(
        {"/v1/webhooks": {"items": [], "next": "https://elsewhere.test/v1/webhooks?page=2"}}
    )
    with client, pytest.raises(InvalidPayloadError, match="another host"):
        client.list_webhooks()
    assert asked == ["api.runflow.test/v1/webhooks"]


def test_pages_that_loop_are_an_error_not_a_hang() -> None:
    client, asked = scripted(
        {
            "/v1/webhooks": {"items": [{"id": "w1"}], "next": "/v1/webhooks?page=2"},
            "/v1/webhooks?page=2": {"items": [{"id": "w2"}], "next": "/v1/webhooks"},
        }
    )
    with client, pytest.raises(InvalidPayloadError, match="loop"):
        client.list_webhooks()
    assert len(asked) == 2


@pytest.mark.parametrize(
    "answer",
    [
        {"items": [{"payload": "not an object"}]},
        {"items": "nope"},
        {"items": [], "next": 3},
    ],
)
def test_an_unexpected_page_is_our_error(answer: Pages) -> None:
    client, _ = scripted({"/v1/webhooks/any/deliveries": answer})
    with client, pytest.raises(InvalidPayloadError, match="unexpected page"):
        client.list_webhook_deliveries("any")


def test_an_unexpected_record_is_our_error() -> None:
    client, _ = scripted({"/v1/webhooks/w1": {"created_at": "yesterday"}})
    with client, pytest.raises(InvalidPayloadError, match="unexpected webhook"):
        client.get_webhook("w1")


def test_the_async_client_follows_the_same_links() -> None:
    pages: dict[str, Any] = {
        "/v1/webhooks/any/deliveries/d1/attempts": {"items": [{"id": "a1"}], "next_pq": "x"},
        "/v1/webhooks/any/deliveries/d1/attempts?pq=x": {"items": [{"id": "a2"}]},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.raw_path.decode("ascii")])

    async def read() -> list[WebhookAttempt]:
        async with AsyncRunflowClient(
            api_key="rf_test",
            base_url="https://api.runflow.test",
            transport=httpx.MockTransport(answer),
        ) as api:
            return await api.list_webhook_attempts("d1")

    assert [a.id for a in asyncio.run(read())] == ["a1", "a2"]


def _call_names(cls: type[object]) -> set[str]:
    return {name for name in vars(cls) if "webhook" in name}


def test_both_clients_have_the_same_webhook_methods() -> None:
    names: Callable[[type[object]], set[str]] = _call_names
    assert (
        names(RunflowClient)
        == names(AsyncRunflowClient)
        == {
            "list_webhooks",
            "get_webhook",
            "list_webhook_deliveries",
            "get_webhook_delivery",
            "list_webhook_attempts",
            "get_webhook_attempt",
        }
    )
