"""One rejection-and-answer suite, run against every front door.

``FrontDoorSuite`` holds the tests; each subclass only swaps the factory that builds its front
door (the middleware over an app, the receiver without and with a store, the FastAPI
dependency; the WSGI middleware, the Flask extension and the Django view decorator, sync and
async, each called in-process as a WSGI server calls it), so every rejection case runs against
every one of them and their answers come from the one table in ``runflow_callbacks.answers``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from asgi_driver import PATH, SECRET, batch_body, drive, signed
from runflow_callbacks import CallbackMiddleware, CallbackReceiver, sign
from runflow_callbacks.stores import open_store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from starlette.types import ASGIApp, Receive, Scope, Send

    from asgi_driver import Result
    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError

LIMIT = 4096
METHODS = ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: The front doors a WSGI server calls (in a worker thread, as a threaded server does).
WSGI_KINDS = frozenset({"wsgi", "flask", "django", "django-async"})


class FrontDoorSuite:
    """What every front door answers before (and instead of) running anything."""

    kind: ClassVar[str]

    @pytest.fixture
    def door(self) -> Iterator[Door]:
        door = Door(self.kind)
        yield door
        door.close()

    # --- the accepted request ------------------------------------------------------------

    async def test_a_signed_callback_reaches_the_code_behind_the_door_once(
        self, door: Door
    ) -> None:
        body = batch_body()
        result = await door.send(body, signed(body))
        assert result.status == 200
        [context] = door.calls
        assert context.body == body
        assert context.signed
        assert door.rejections == []

    # --- rejections ---------------------------------------------------------------------

    @pytest.mark.parametrize(
        ("headers", "code"),
        [
            ([], "missing_signature"),
            ([(b"runflow-signature", b"")], "missing_signature"),
            ([(b"runflow-signature", b"abc")], "malformed_signature"),
            ([(b"runflow-signature", b"sha256=" + b"0" * 64)], "malformed_signature"),
            ([(b"runflow-signature", b"0" * 64)], "signature_mismatch"),
            (
                [(b"runflow-signature", b"0" * 64), (b"runflow-signature", b"1" * 64)],
                "malformed_signature",
            ),
        ],
    )
    async def test_a_bad_signature_is_401_with_its_code(
        self, door: Door, headers: list[tuple[bytes, bytes]], code: str
    ) -> None:
        result = await door.send(batch_body(), headers)
        assert (result.status, door.error_code(result)) == (401, code)
        door.assert_rejected_once(code)

    @pytest.mark.parametrize("method", METHODS)
    async def test_any_other_method_is_405_with_allow_post(self, door: Door, method: str) -> None:
        body = batch_body()
        result = await door.send(body, signed(body), method=method)
        assert result.status == 405
        assert result.headers["allow"] == "POST"
        if method != "HEAD":
            assert door.error_code(result) == "method_not_allowed"
        assert door.calls == []

    async def test_a_content_length_over_the_limit_is_413_unread(self, door: Door) -> None:
        body = batch_body()
        headers = [
            (b"runflow-signature", sign(body, SECRET).encode()),
            (b"content-length", str(LIMIT + 1).encode()),
        ]
        result = await door.send(body, headers)
        assert (result.status, door.error_code(result)) == (413, "payload_too_large")
        door.assert_rejected_once("payload_too_large")

    async def test_a_streamed_body_over_the_limit_is_413(self, door: Door) -> None:
        body = b"x" * (LIMIT + 10)
        result = await door.send(body, signed(body), chunk_size=1000)
        assert (result.status, door.error_code(result)) == (413, "payload_too_large")

    @pytest.mark.parametrize(
        "body", [b"[1, 2]", b"not json", b'{"event": 3}', b"\xff\xfe{}", b'"a string"']
    )
    async def test_verified_bytes_that_are_not_a_callback_are_400(
        self, door: Door, body: bytes
    ) -> None:
        result = await door.send(body, signed(body))
        assert (result.status, door.error_code(result)) == (400, "invalid_payload")
        door.assert_rejected_once("invalid_payload")

    async def test_an_empty_signed_body_is_400(self, door: Door) -> None:
        result = await door.send(b"", signed(b""))
        assert (result.status, door.error_code(result)) == (400, "invalid_payload")

    @pytest.mark.parametrize("value", [b"abc", b"-1", b"1e3"])
    async def test_an_invalid_content_length_is_400(self, door: Door, value: bytes) -> None:
        body = batch_body()
        signature = (b"runflow-signature", sign(body, SECRET).encode())
        result = await door.send(body, [signature, (b"content-length", value)])
        assert (result.status, door.error_code(result)) == (400, "invalid_payload")

    async def test_no_answer_holds_the_secret_or_the_computed_signature(self, door: Door) -> None:
        body = batch_body(metadata={"customer": "confidential"})
        wrong = sign(body, "whsec_another_secret_000000")
        result = await door.send(body, [(b"runflow-signature", wrong.encode())])
        text = result.body.decode()
        assert result.status == 401
        for leaked in (SECRET, sign(body, SECRET), wrong, "confidential"):
            assert leaked not in text

    async def test_a_client_leaving_mid_body_runs_nothing_and_logs_no_rejection(
        self, door: Door, caplog: pytest.LogCaptureFixture
    ) -> None:
        body = batch_body()
        caplog.set_level(logging.INFO, logger="runflow_callbacks")
        await door.send(body, signed(body), chunk_size=10, disconnect_after=1)
        assert door.calls == []
        assert door.rejections == []
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    async def test_each_rejection_logs_one_warning_with_its_code(
        self, door: Door, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="runflow_callbacks")
        await door.send(batch_body(), [(b"runflow-request-id", b"req-9")])
        [record] = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
        assert record.levelno == logging.WARNING
        assert "outcome=missing_signature" in record.getMessage()
        assert "request_id=req-9" in record.getMessage()


class TestMiddleware(FrontDoorSuite):
    kind = "middleware"


class TestReceiver(FrontDoorSuite):
    kind = "receiver"


class TestReceiverWithStore(FrontDoorSuite):
    kind = "receiver+store"


class TestDependency(FrontDoorSuite):
    kind = "dependency"


class TestWSGIMiddleware(FrontDoorSuite):
    kind = "wsgi"


class TestFlaskExtension(FrontDoorSuite):
    kind = "flask"


class TestDjangoView(FrontDoorSuite):
    kind = "django"


class TestDjangoAsyncView(FrontDoorSuite):
    kind = "django-async"


class Door:
    """One front door of ``kind``, with the code behind it recording what reached it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls: list[CallbackContext] = []
        self.rejections: list[str] = []
        self._stores: list[Any] = []
        self._closers: list[Callable[[], None]] = []
        self.wsgi_app: WSGIApplication | None = None
        if kind in WSGI_KINDS:
            self.wsgi_app = self._wsgi_build()
        else:
            self.app = self._build()

    def _build(self) -> ASGIApp:
        door = self

        if self.kind == "middleware":

            class Middleware(CallbackMiddleware):
                async def rejected(self, error: RunflowCallbackError) -> None:
                    door.rejections.append(error.code)

            return Middleware(self._downstream, secrets=SECRET, max_body_bytes=LIMIT)
        if self.kind in {"receiver", "receiver+store"}:

            class Receiver(CallbackReceiver):
                async def rejected(self, error: RunflowCallbackError) -> None:
                    door.rejections.append(error.code)

            store = None
            if self.kind == "receiver+store":
                store = open_store("memory://")
                self._stores.append(store)
            receiver = Receiver(secrets=SECRET, max_body_bytes=LIMIT, store=store)
            receiver.on_any(self._handler)
            return receiver
        return self._fastapi_app()

    def _fastapi_app(self) -> ASGIApp:
        from fastapi import Depends, FastAPI

        from runflow_callbacks.fastapi import CallbackDependency

        door = self

        class Dependency(CallbackDependency):
            async def rejected(self, error: RunflowCallbackError) -> None:
                door.rejections.append(error.code)

        dependency = Dependency(secrets=SECRET, max_body_bytes=LIMIT)
        app = FastAPI()

        async def route(
            context: CallbackContext = Depends(dependency),  # noqa: B008 - FastAPI's idiom
        ) -> dict[str, str]:
            door.calls.append(context)
            return {"status": "processed"}

        app.add_api_route(PATH, route, methods=["POST", *METHODS])
        return app

    def _wsgi_build(self) -> WSGIApplication:
        from runflow_callbacks.wsgi import CallbackWSGIMiddleware

        door = self
        if self.kind == "flask":
            return self._flask_app()
        if self.kind in {"django", "django-async"}:
            return self._django_app()

        class WSGIMiddleware(CallbackWSGIMiddleware):
            def rejected(self, error: RunflowCallbackError) -> None:
                door.rejections.append(error.code)

        return WSGIMiddleware(self._wsgi_downstream, secrets=SECRET, max_body_bytes=LIMIT)

    def _wsgi_downstream(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> list[bytes]:
        self.calls.append(environ["runflow_callbacks.callback"])
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    def _flask_app(self) -> WSGIApplication:
        from flask import Flask

        from runflow_callbacks.flask import RunflowCallbacks, get_callback

        door = self

        class Extension(RunflowCallbacks):
            def rejected(self, error: RunflowCallbackError) -> None:
                door.rejections.append(error.code)

        app = Flask(__name__)
        Extension(app, secrets=SECRET, max_body_bytes=LIMIT)

        @app.route(PATH, methods=["POST", *METHODS])
        def view() -> dict[str, str]:
            door.calls.append(get_callback())
            return {"status": "processed"}

        return app

    def _django_app(self) -> WSGIApplication:
        from django.core.handlers.wsgi import WSGIHandler
        from django.http import HttpRequest, JsonResponse
        from django.test import override_settings
        from django.urls import path

        from runflow_callbacks.django import CallbackView, get_callback
        from test_django import URLConf, configure_django

        configure_django()
        door = self

        class View(CallbackView):
            def rejected(self, error: RunflowCallbackError) -> None:
                door.rejections.append(error.code)

        def sync_view(request: HttpRequest) -> JsonResponse:
            door.calls.append(get_callback(request))
            return JsonResponse({"status": "processed"})

        async def async_view(request: HttpRequest) -> JsonResponse:
            return sync_view(request)

        view = View(secrets=SECRET, max_body_bytes=LIMIT)
        chosen = view(sync_view) if self.kind == "django" else view(async_view)
        urls = override_settings(ROOT_URLCONF=URLConf(path(PATH[1:], chosen)))
        urls.enable()
        self._closers.append(urls.disable)
        handler: WSGIApplication = WSGIHandler()
        return handler

    async def _downstream(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append(scope["state"]["runflow_callback"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def _handler(self, context: CallbackContext) -> None:
        self.calls.append(context)

    async def send(
        self,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        *,
        method: str = "POST",
        chunk_size: int | None = None,
        disconnect_after: int | None = None,
    ) -> Result:
        chunks = (
            [body]
            if chunk_size is None
            else [body[i : i + chunk_size] for i in range(0, len(body), chunk_size)]
        )
        if self.wsgi_app is not None:
            from test_wsgi import call_wsgi

            return await asyncio.to_thread(
                call_wsgi,
                self.wsgi_app,
                chunks=chunks,
                headers=headers,
                method=method,
                disconnect_after=disconnect_after,
            )
        return await drive(
            self.app,
            chunks=chunks,
            headers=headers,
            method=method,
            disconnect_after=disconnect_after,
        )

    def error_code(self, result: Result) -> str:
        """The answer's error code, whichever nesting the front door uses."""
        content = result.json()
        if self.kind == "dependency":  # FastAPI keeps its {"detail": ...} nesting
            content = content["detail"]
        code: str = content["error"]
        return code

    def assert_rejected_once(self, code: str) -> None:
        assert self.rejections == [code]
        assert self.calls == []

    def close(self) -> None:
        self._stores.clear()
        for close in self._closers:
            close()


async def _stalled_receive_after(first: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": True}
        await asyncio.sleep(3600)  # the client never sends the rest
        raise AssertionError("unreachable")

    return receive


@pytest.mark.parametrize("kind", ["middleware", "receiver", "receiver+store"])
async def test_a_body_that_stalls_is_answered_408_after_body_timeout(kind: str) -> None:
    from runflow_callbacks.options import ReceiverOptions

    door = Door(kind)
    app: Any = door.app
    app.options = ReceiverOptions(max_body_bytes=LIMIT, body_timeout=timedelta(milliseconds=50))
    body = batch_body()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": PATH, "headers": signed(body)}
    await asyncio.wait_for(app(scope, await _stalled_receive_after(body[:10]), send), 10)
    assert sent[0]["status"] == 408
    assert door.rejections == ["request_timeout"]
    assert door.calls == []
