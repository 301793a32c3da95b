"""callback_view, the Django view decorator: sync and async views, Django's test clients, its
WSGI and ASGI handlers (behind our middlewares too) and a real server.

``configure_django`` sets Django up once per test session (the front-door suite uses it too);
each test routes through ``urlpatterns`` below, or its own URL conf.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import django
import httpx
import pytest
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from asgi_driver import OTHER_SECRET, SECRET, RecordingApp, batch_body, drive, signed
from runflow_callbacks import CallbackMiddleware, ConfigurationError, sign
from runflow_callbacks.django import CallbackView, callback_view, get_callback
from runflow_callbacks.wsgi import CallbackWSGIMiddleware
from test_wsgi import ScriptedInput, call_wsgi, http_post, serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError

LIMIT = 4096
SYNC = "/callbacks/runflow"
ASYNC = "/callbacks/runflow/async"
JSON = "application/json"


def configure_django() -> None:
    """Configure Django once for the whole test session (idempotent)."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-tests-only-not-a-secret",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        # The CSRF check is on: a callback view must be exempt from it.
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()


configure_django()


class URLConf:
    """A URL conf without a module of its own: ``ROOT_URLCONF`` may be any object with
    ``urlpatterns`` (hashable, as Django caches its resolver per URL conf)."""

    def __init__(self, *patterns: Any) -> None:
        self.urlpatterns = list(patterns)


class Seen:
    """What the views saw, reset for each test."""

    calls: list[tuple[str, CallbackContext, bytes]] = []  # noqa: RUF012 - reset by a fixture
    rejections: list[str] = []  # noqa: RUF012 - same as above


class Counting(CallbackView):
    def rejected(self, error: RunflowCallbackError) -> None:
        Seen.rejections.append(error.code)


runflow = Counting(secrets=SECRET, max_body_bytes=LIMIT)


@runflow
def sync_callback(request: HttpRequest) -> JsonResponse:
    context = get_callback(request)
    Seen.calls.append(("sync", context, request.body))
    return JsonResponse({"received": context.event, "json": json.loads(request.body)["event"]})


@runflow
async def async_callback(request: HttpRequest) -> JsonResponse:
    context = get_callback(request)
    Seen.calls.append(("async", context, request.body))
    return JsonResponse({"received": context.event, "json": json.loads(request.body)["event"]})


@callback_view(secrets=SECRET, allow_unsigned=True)
def unsigned_callback(request: HttpRequest) -> JsonResponse:
    context = request.runflow_callback  # where the decorator put it
    return JsonResponse({"signed": context.signed})


def plain(request: HttpRequest) -> JsonResponse:
    """An ordinary view: no callback, and Django's CSRF check applies."""
    try:
        get_callback(request)
    except LookupError as error:
        return JsonResponse({"lookup": str(error)})
    return JsonResponse({"lookup": None})


def behind_middleware(request: HttpRequest) -> JsonResponse:
    """Not decorated: a middleware in front of Django verified the callback."""
    context = get_callback(request)
    Seen.calls.append(("middleware", context, request.body))
    return JsonResponse({"received": context.event})


behind_middleware.csrf_exempt = True  # type: ignore[attr-defined]

urlpatterns = [
    path(SYNC[1:], sync_callback),
    path(ASYNC[1:], async_callback),
    path("callbacks/unsigned", unsigned_callback),
    path("plain", plain),
    path("behind", behind_middleware),
]


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    Seen.calls.clear()
    Seen.rejections.clear()
    yield
    Seen.calls.clear()
    Seen.rejections.clear()


@pytest.fixture
def client() -> Client:
    return Client(enforce_csrf_checks=True)


def post(
    client: Client, url: str, body: bytes, headers: list[tuple[bytes, bytes]], **extra: str
) -> Any:
    named = {k.decode(): v.decode() for k, v in headers if k != b"content-length"}
    return client.post(url, data=body, content_type=JSON, headers=named, **extra)


# --- the accepted request ----------------------------------------------------------------


@pytest.mark.parametrize(("url", "kind"), [(SYNC, "sync"), (ASYNC, "async")])
def test_a_signed_callback_reaches_the_view_with_its_context(
    client: Client, url: str, kind: str
) -> None:
    body = batch_body()
    response = post(client, url, body, signed(body, runflow_request_id="req-3"))
    assert response.status_code == 200
    assert response.json() == {"received": "batch.succeeded", "json": "batch.succeeded"}
    [(seen_kind, context, seen_body)] = Seen.calls
    assert (seen_kind, seen_body, context.body) == (kind, body, body)
    assert context.request_id == "req-3"
    assert context.signed
    assert Seen.rejections == []


@pytest.mark.parametrize(("url", "kind"), [(SYNC, "sync"), (ASYNC, "async")])
async def test_the_async_client_reaches_both_kinds_of_view(url: str, kind: str) -> None:
    body = batch_body()
    headers = {"Runflow-Signature": sign(body, SECRET)}
    response = await AsyncClient(enforce_csrf_checks=True).post(
        url, data=body, content_type=JSON, headers=headers
    )
    assert response.status_code == 200
    assert [call[0] for call in Seen.calls] == [kind]


def test_the_decorated_views_keep_their_kind_name_and_csrf_exemption() -> None:
    from asgiref.sync import iscoroutinefunction

    assert iscoroutinefunction(async_callback)
    assert not iscoroutinefunction(sync_callback)
    assert sync_callback.__name__ == "sync_callback"
    assert getattr(async_callback, "csrf_exempt", False)


def test_the_csrf_check_is_on_for_other_views(client: Client) -> None:
    assert client.post("/plain", data=b"{}", content_type=JSON).status_code == 403


def test_an_unsigned_callback_is_accepted_only_when_allowed(client: Client) -> None:
    body = batch_body()
    assert post(client, "/callbacks/unsigned", body, []).json() == {"signed": False}
    assert post(client, SYNC, body, []).status_code == 401
    wrong = post(client, "/callbacks/unsigned", body, signed(body, OTHER_SECRET))
    assert wrong.status_code == 401


def test_get_callback_outside_a_callback_view_is_a_lookup_error() -> None:
    response = Client().get("/plain")
    assert "callback_view" in response.json()["lookup"]


# --- rejections: the same statuses and bodies as every front door --------------------------


CASES: list[tuple[str, bytes, list[tuple[bytes, bytes]], int, str]] = [
    ("POST", batch_body(), [], 401, "missing_signature"),
    ("POST", batch_body(), [(b"runflow-signature", b"abc")], 401, "malformed_signature"),
    ("POST", batch_body(), signed(batch_body(), OTHER_SECRET), 401, "signature_mismatch"),
    ("POST", b"[1, 2]", signed(b"[1, 2]"), 400, "invalid_payload"),
    ("POST", b"", signed(b""), 400, "invalid_payload"),
    ("GET", b"", [], 405, "method_not_allowed"),
    ("PUT", batch_body(), signed(batch_body()), 405, "method_not_allowed"),
]


@pytest.mark.parametrize("url", [SYNC, ASYNC])
@pytest.mark.parametrize("case", CASES)
async def test_each_rejection_is_the_asgi_middlewares_answer(
    url: str, case: tuple[str, bytes, list[tuple[bytes, bytes]], int, str]
) -> None:
    method, body, headers, status, code = case
    asgi = CallbackMiddleware(RecordingApp(), secrets=SECRET, max_body_bytes=LIMIT)
    expected = await drive(asgi, chunks=[body], headers=headers, method=method)
    named = {k.decode(): v.decode() for k, v in headers if k != b"content-length"}
    response = await AsyncClient(enforce_csrf_checks=True).generic(
        method, url, data=body, content_type=JSON, headers=named
    )
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert response.content == expected.body
    assert response["Content-Type"] == "application/json"
    if status == 405:
        assert response["Allow"] == "POST"
        assert Seen.rejections == []
    else:
        assert Seen.rejections == [code]
    assert Seen.calls == []


@pytest.mark.parametrize("url", [SYNC, ASYNC])
def test_a_content_length_over_the_limit_is_413_unread(client: Client, url: str) -> None:
    body = batch_body()
    response = post(client, url, body, signed(body), CONTENT_LENGTH=str(LIMIT + 1))
    assert (response.status_code, response.json()["error"]) == (413, "payload_too_large")
    assert Seen.rejections == ["payload_too_large"]
    assert Seen.calls == []


def test_djangos_own_upload_limit_is_413_too(client: Client) -> None:
    body = batch_body()
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=100):
        response = post(client, SYNC, body, signed(body))
    assert response.status_code == 413
    assert response.json() == {
        "error": "payload_too_large",
        "detail": "callback body exceeds the limit of 100 bytes",
    }
    assert Seen.calls == []


async def _chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def test_under_asgi_a_streamed_body_without_content_length_is_413_over_the_limit() -> None:
    transport = httpx.ASGITransport(app=ASGIHandler())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        big = b"x" * (LIMIT * 3)
        signature = {"Runflow-Signature": sign(big, SECRET), "Content-Type": JSON}
        too_big = await http.post(ASYNC, content=_chunks(big, 1000), headers=signature)
        body = batch_body()
        signature = {"Runflow-Signature": sign(body, SECRET), "Content-Type": JSON}
        fine = await http.post(ASYNC, content=_chunks(body, 50), headers=signature)
    assert "content-length" not in too_big.request.headers
    assert (too_big.status_code, too_big.json()["error"]) == (413, "payload_too_large")
    assert fine.status_code == 200
    assert [(kind, seen) for kind, _, seen in Seen.calls] == [("async", body)]


@pytest.mark.parametrize("url", [SYNC, ASYNC])
def test_a_client_leaving_mid_body_runs_nothing_and_logs_nothing(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    body = batch_body()
    result = call_wsgi(
        WSGIHandler(),
        chunks=[body[:10], body[10:]],
        headers=signed(body),
        path=url,
        disconnect_after=1,
    )
    assert (result.status, result.json()["error"]) == (400, "client_disconnected")
    assert Seen.calls == []
    assert Seen.rejections == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_input_that_fails_to_read_is_our_answer_not_a_500() -> None:
    body = batch_body()
    stream = ScriptedInput([body[:10]], fail=OSError("connection reset"))
    result = call_wsgi(WSGIHandler(), chunks=[], headers=signed(body), stream=stream)
    assert (result.status, result.json()["error"]) == (400, "client_disconnected")
    assert Seen.calls == []


def test_each_rejection_logs_one_warning_under_django(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    post(client, SYNC, batch_body(), [(b"runflow-request-id", b"req-4")])
    [record] = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
    assert record.name == "runflow_callbacks.django"
    assert record.levelno == logging.WARNING
    assert "outcome=missing_signature" in record.getMessage()
    assert "request_id=req-4" in record.getMessage()


def test_options_are_checked_and_no_repr_holds_the_secret() -> None:
    with pytest.raises(ConfigurationError, match="callback_view takes no lease option"):
        callback_view(secrets=SECRET, lease=1)  # type: ignore[call-arg]
    view = callback_view(secrets=[OTHER_SECRET, SECRET], max_body_bytes=10)
    assert view.max_body_bytes == 10
    assert repr(view).startswith("CallbackView(secrets=Verifier(")
    assert SECRET not in repr(view)
    assert OTHER_SECRET not in repr(view)


# --- behind our middlewares -----------------------------------------------------------------


def verified_by(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Which loggers logged a verified callback: one line per verification."""
    return [r.name for r in caplog.records if "outcome=verified" in r.getMessage()]


def test_behind_the_wsgi_middleware_the_view_reuses_its_context(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    app = CallbackWSGIMiddleware(WSGIHandler(), secrets=SECRET, path=[SYNC, "/behind"])
    body = batch_body()
    for url in (SYNC, "/behind"):
        result = call_wsgi(app, chunks=[body], headers=signed(body), path=url)
        assert result.status == 200
    assert [(kind, seen) for kind, _, seen in Seen.calls] == [("sync", body), ("middleware", body)]
    assert call_wsgi(app, chunks=[body], headers=[], path="/behind").status == 401
    assert len(Seen.calls) == 2
    assert verified_by(caplog) == ["runflow_callbacks.wsgi"] * 2  # never again by the view


async def test_under_asgi_callback_middleware_wraps_the_django_application(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    app = CallbackMiddleware(ASGIHandler(), secrets=SECRET, path=["/behind", ASYNC])
    transport = httpx.ASGITransport(app=app)
    body = batch_body()
    headers = {"Runflow-Signature": sign(body, SECRET), "Content-Type": JSON}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        behind = await http.post("/behind", content=body, headers=headers)
        decorated = await http.post(ASYNC, content=body, headers=headers)
        forged = await http.post("/behind", content=body, headers={"Runflow-Signature": "0" * 64})
    assert (behind.status_code, behind.json()) == (200, {"received": "batch.succeeded"})
    assert decorated.status_code == 200
    assert (forged.status_code, forged.json()["error"]) == (401, "signature_mismatch")
    assert [(kind, seen) for kind, _, seen in Seen.calls] == [("middleware", body), ("async", body)]
    assert Seen.rejections == []
    assert verified_by(caplog) == ["runflow_callbacks.asgi"] * 2  # the decorator reused it


def test_a_view_with_its_own_url_conf_through_the_wsgi_handler() -> None:
    own = callback_view(secrets=OTHER_SECRET)

    @own
    def other(request: HttpRequest) -> JsonResponse:
        return JsonResponse({"secret": get_callback(request).secret_label})

    urls = URLConf(path("other", other))
    body = batch_body()
    with override_settings(ROOT_URLCONF=urls):
        ok = call_wsgi(
            WSGIHandler(), chunks=[body], headers=signed(body, OTHER_SECRET), path="/other"
        )
        wrong = call_wsgi(WSGIHandler(), chunks=[body], headers=signed(body), path="/other")
    assert ok.status == 200
    assert wrong.status == 401


# --- a real server ----------------------------------------------------------------------------


def test_over_real_http_through_djangos_wsgi_handler() -> None:
    body = batch_body()
    headers = {"Runflow-Signature": sign(body, SECRET), "Content-Type": JSON}
    with serving(WSGIHandler()) as port:
        sync = http_post(port, body, headers, path=SYNC)
        async_ = http_post(port, body, headers, path=ASYNC)
        wrong = http_post(port, body, {"Runflow-Signature": sign(body, OTHER_SECRET)}, path=SYNC)
        too_big = http_post(port, b"x" * (LIMIT + 1), headers, path=ASYNC)
        get = http_post(port, b"", {}, path=SYNC, method="GET")
    assert (sync.status, sync.json()["received"]) == (200, "batch.succeeded")
    assert async_.status == 200
    assert (wrong.status, wrong.json()["error"]) == (401, "signature_mismatch")
    assert (too_big.status, too_big.json()["error"]) == (413, "payload_too_large")
    assert (get.status, get.headers["allow"]) == (405, "POST")
    assert [(kind, seen) for kind, _, seen in Seen.calls] == [("sync", body), ("async", body)]


def test_without_django_the_import_names_the_extra() -> None:
    code = "import sys\nsys.modules['django'] = None\nimport runflow_callbacks.django"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "pip install 'runflow-callbacks[django]'" in result.stderr
