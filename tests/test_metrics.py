"""Prometheus metrics: the counts match the traffic exactly, on a receiver and through serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
from prometheus_client.parser import text_string_to_metric_families

from runflow_callbacks import CallbackReceiver, Secret, Verifier, dumps_payload, sign
from runflow_callbacks.app import create_app
from runflow_callbacks.metrics import CallbackMetrics
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory

if TYPE_CHECKING:
    from runflow_callbacks.context import CallbackContext

OLD, NEW = "whsec_metrics_old_0123456789", "whsec_metrics_new_0123456789"
VERIFIER = Verifier([Secret(OLD, label="old"), Secret(NEW, label="new")])
URL = "http://receiver/callbacks/runflow"


def _batch(seed: int, **fields: object) -> bytes:
    return dumps_payload(PayloadFactory(seed=seed).batch(**fields))  # type: ignore[arg-type]


async def _post(app: object, body: bytes, *, secret: str | None = NEW) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    headers = {} if secret is None else {"Runflow-Signature": sign(body, secret)}
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        return await client.post(URL, content=body, headers=headers)


def _value(metrics: CallbackMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_every_answer_and_rejection_is_counted_exactly() -> None:
    metrics = CallbackMetrics()
    store = open_store("memory://")
    receiver = CallbackReceiver(secrets=VERIFIER, store=store, metrics=metrics)

    @receiver.on("batch.succeeded")
    def handle(context: CallbackContext) -> None:
        if context.payload.metadata and context.payload.metadata.get("fail"):
            raise RuntimeError("downstream is down")

    first, second = _batch(1, event="batch.succeeded"), _batch(2, event="batch.succeeded")
    failing = _batch(3, event="batch.succeeded", metadata={"fail": True})
    nobody = _batch(4, event="batch.cancelled")
    for body in (first, second, first, failing, nobody):
        await _post(receiver, body)
    await _post(receiver, first, secret="whsec_forged_0000000000")
    await _post(receiver, second, secret="whsec_forged_0000000000")
    await _post(receiver, first, secret=None)
    await _post(receiver, b"[1, 2]")

    received = "runflow_callbacks_received_total"
    assert _value(metrics, received, outcome="processed") == 2
    assert _value(metrics, received, outcome="duplicate") == 1
    assert _value(metrics, received, outcome="failed") == 1
    assert _value(metrics, received, outcome="unhandled") == 1
    rejected = "runflow_callbacks_rejected_total"
    assert _value(metrics, rejected, reason="signature_mismatch") == 2
    assert _value(metrics, rejected, reason="missing_signature") == 1
    assert _value(metrics, rejected, reason="invalid_payload") == 1
    # Handler runs: the two processed and the failing one (the duplicate and unhandled ran none).
    assert _value(metrics, "runflow_callbacks_handler_seconds_count") == 3
    assert (
        _value(metrics, "runflow_callbacks_store_seconds_count", operation="record_and_claim") == 5
    )
    assert (
        _value(metrics, "runflow_callbacks_secret_last_match_timestamp_seconds", secret="new") > 0
    )
    assert (
        _value(metrics, "runflow_callbacks_secret_last_match_timestamp_seconds", secret="old") == 0
    )


async def test_worker_runs_are_counted_by_outcome_and_source() -> None:
    metrics = CallbackMetrics()
    receiver = CallbackReceiver(
        secrets=VERIFIER, store=open_store("memory://"), metrics=metrics, mode="inbox"
    )
    receiver.on_any(lambda context: None)
    await _post(receiver, _batch(5))
    assert receiver.processor is not None
    await receiver.processor.run_due()
    assert _value(metrics, "runflow_callbacks_received_total", outcome="recorded") == 1
    assert _value(metrics, "runflow_callbacks_runs_total", outcome="processed", source="http") == 1


async def test_the_scrape_shows_the_inbox_per_state_read_from_the_store() -> None:
    store = open_store("memory://")
    app = create_app(secrets=VERIFIER, store=store, metrics=True)  # record only: all received
    for seed in (6, 7, 8):
        assert (await _post(app, _batch(seed))).json()["status"] == "recorded"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(scrape.text)}
    inbox = {
        sample.labels["state"]: sample.value
        for sample in families["runflow_callbacks_inbox_callbacks"].samples
    }
    assert inbox == {
        "received": 3,
        "processing": 0,
        "processed": 0,
        "failed": 0,
        "dead": 0,
        "unhandled": 0,
    }
    received = families["runflow_callbacks_received"].samples
    assert [(s.labels, s.value) for s in received if s.name.endswith("_total")] == [
        ({"outcome": "recorded"}, 3.0)
    ]
