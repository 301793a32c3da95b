"""CallbackMiddleware: bounded reads, streaming verification, replay, pass-through, logging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute

from asgi_driver import (
    OTHER_SECRET,
    PATH,
    SECRET,
    RecordingApp,
    batch_body,
    drive,
    run_body,
    signed,
)
from runflow_callbacks import (
    BatchCallbackPayload,
    CallbackContext,
    CallbackMiddleware,
    ConfigurationError,
    PayloadTooLargeError,
    Secret,
    get_callback,
    sign,
)
from runflow_callbacks.answers import rejection
from runflow_callbacks.asgi import DEFAULT_MAX_BODY_BYTES
from runflow_callbacks.errors import RunflowCallbackError, StoreError
from runflow_callbacks.options import ReceiverOptions
from runflow_callbacks.reader import CallbackReader
from runflow_callbacks.testing import serve_in_thread

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from starlette.types import Message, Receive, Scope, Send
    from starlette.websockets import WebSocket

FIXED = datetime(2026, 5, 6, 10, 0, 5, tzinfo=timezone.utc)


def middleware(app: Any = None, **options: Any) -> CallbackMiddleware:
    options.setdefault("secrets", SECRET)
    return CallbackMiddleware(app or RecordingApp(), **options)


# --- the happy path -------------------------------------------------------------------------


async def test_verified_callback_reaches_the_app_with_context_and_exact_body() -> None:
    app = RecordingApp()
    body = batch_body()
    result = await drive(
        middleware(app, clock=lambda: FIXED),
        chunks=[body],
        headers=signed(body, runflow_request_id="req-1", user_agent="Runflow/1.0"),
    )
    assert result.status == 200
    assert result.body == b"downstream"
    [seen] = app.seen
    assert seen.body == body
    context = seen.context
    assert isinstance(context, CallbackContext)
    assert isinstance(context.payload, BatchCallbackPayload)
    assert context.body == body
    assert context.request_id == "req-1"
    assert context.received_at == FIXED
    assert context.signed is True
    assert context.secret_label == "#0"
    assert context.event == "batch.succeeded"
    assert context.headers == {
        "Content-Type": "application/json",
        "Runflow-Signature": sign(body, SECRET),
        "Runflow-Request-Id": "req-1",
        "User-Agent": "Runflow/1.0",
    }


async def test_body_is_replayed_once_then_the_real_disconnect_arrives() -> None:
    app = RecordingApp()
    body = batch_body()
    await drive(middleware(app), chunks=[body[:7], body[7:50], body[50:]], headers=signed(body))
    [seen] = app.seen
    assert seen.body == body
    assert seen.after_body == {"type": "http.disconnect"}


async def test_many_small_chunks_are_verified_as_they_arrive() -> None:
    app = RecordingApp()
    body = batch_body(metadata={"note": "x" * 3000})
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    result = await drive(middleware(app), chunks=chunks, headers=signed(body))
    assert result.status == 200
    assert app.seen[0].body == body
    assert result.receive_calls == len(chunks) + 1  # + the app's wait for http.disconnect


@pytest.mark.parametrize("position", [0, 500, -1])
async def test_a_flipped_byte_in_any_chunk_is_a_mismatch(position: int) -> None:
    body = batch_body(metadata={"note": "x" * 1000})
    tampered = bytearray(body)
    tampered[position] ^= 0x01
    chunks = [bytes(tampered[i : i + 300]) for i in range(0, len(tampered), 300)]
    app = RecordingApp()
    result = await drive(middleware(app), chunks=chunks, headers=signed(body))
    assert result.status == 401
    assert result.json()["error"] == "signature_mismatch"
    assert app.seen == []


async def test_rotation_accepts_each_configured_secret_and_names_it() -> None:
    secrets = [Secret(SECRET, label="old", id="s-1"), Secret(OTHER_SECRET, label="new")]
    app = RecordingApp()
    mw = middleware(app, secrets=secrets)
    body = batch_body()
    for secret in (SECRET, OTHER_SECRET):
        assert (await drive(mw, chunks=[body], headers=signed(body, secret))).status == 200
    assert [(s.context.secret_label, s.context.secret_id) for s in app.seen] == [
        ("old", "s-1"),
        ("new", None),
    ]
    third = await drive(mw, chunks=[body], headers=signed(body, "whsec_retired"))
    assert third.status == 401
    assert third.json()["error"] == "signature_mismatch"


async def test_get_callback_reads_the_context_in_a_starlette_endpoint() -> None:
    async def endpoint(request: Request) -> JSONResponse:
        context = get_callback(request)
        same = request.state.runflow_callback is context
        return JSONResponse(
            {"event": context.event, "same": same, "body": len(await request.body())}
        )

    app = middleware(Starlette(routes=[Route(PATH, endpoint, methods=["POST"])]))
    body = run_body()
    result = await drive(app, chunks=[body], headers=signed(body))
    assert result.json() == {"event": "run.completed", "same": True, "body": len(body)}


def test_get_callback_without_the_middleware_says_what_is_missing() -> None:
    request = Request({"type": "http", "headers": [], "method": "POST", "path": "/"})
    with pytest.raises(LookupError, match="CallbackMiddleware"):
        get_callback(request)


async def test_several_paths_are_guarded() -> None:
    app = RecordingApp()
    mw = middleware(app, path=["/a", "/b"])
    body = batch_body()
    for path in ("/a", "/b"):
        assert (await drive(mw, chunks=[body], headers=[], path=path)).status == 401
    assert (await drive(mw, chunks=[body], headers=[], path=PATH)).status == 200
    assert app.seen[0].context is None


async def test_an_outer_middleware_context_is_not_verified_twice() -> None:
    app = RecordingApp()
    inner = middleware(app, secrets="whsec_inner_would_reject")
    outer = middleware(inner)
    body = batch_body()
    result = await drive(outer, chunks=[body], headers=signed(body))
    assert result.status == 200
    assert app.seen[0].body == body
    assert app.seen[0].after_body == {"type": "http.disconnect"}


# --- rejections -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ([], "missing_signature"),
        ([(b"runflow-signature", b"")], "missing_signature"),
        ([(b"runflow-signature", b"abc")], "malformed_signature"),
        ([(b"runflow-signature", b"sha256=" + b"0" * 64)], "malformed_signature"),
        ([(b"runflow-signature", b"0" * 64)], "signature_mismatch"),
    ],
)
async def test_bad_signatures_are_401_and_the_app_is_not_called(
    headers: list[tuple[bytes, bytes]], code: str
) -> None:
    app = RecordingApp()
    result = await drive(middleware(app), chunks=[batch_body()], headers=headers)
    assert result.status == 401
    assert result.json()["error"] == code
    assert result.headers["content-type"] == "application/json"
    assert app.seen == []


async def test_missing_or_malformed_signature_is_answered_before_reading_the_body() -> None:
    result = await drive(middleware(), chunks=[b"{}"], headers=[(b"runflow-signature", b"z")])
    assert result.status == 401
    assert result.receive_calls == 0


async def test_two_signature_headers_are_malformed() -> None:
    body = batch_body()
    headers = [*signed(body), (b"runflow-signature", sign(body, SECRET).encode())]
    result = await drive(middleware(), chunks=[body], headers=headers)
    assert result.status == 401
    assert result.json()["error"] == "malformed_signature"
    assert "more than one" in result.json()["detail"]


async def test_answers_never_contain_the_secret_or_the_expected_signature() -> None:
    body = batch_body()
    forged = sign(body, "whsec_attacker")
    result = await drive(
        middleware(), chunks=[body], headers=[(b"runflow-signature", forged.encode())]
    )
    text = result.body.decode()
    assert SECRET not in text
    assert sign(body, SECRET) not in text
    assert forged not in text


async def test_content_length_over_the_limit_is_413_without_reading_the_body() -> None:
    body = batch_body()
    headers = [
        (b"runflow-signature", sign(body, SECRET).encode()),
        (b"content-length", b"1000000000"),
    ]
    result = await drive(middleware(max_body_bytes=1024), chunks=[body], headers=headers)
    assert result.status == 413
    assert result.json()["error"] == "payload_too_large"
    assert result.receive_calls == 0


async def test_a_streamed_body_is_cut_off_as_soon_as_it_crosses_the_limit() -> None:
    body = batch_body(metadata={"pad": "x" * 5000})
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    headers = [(b"runflow-signature", sign(body, SECRET).encode())]  # chunked: no length
    app = RecordingApp()
    result = await drive(middleware(app, max_body_bytes=2500), chunks=chunks, headers=headers)
    assert result.status == 413
    assert result.receive_calls == 3  # 1000 + 1000 + 1000 > 2500: stop at the third chunk
    assert app.seen == []


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    body = batch_body()
    result = await drive(middleware(max_body_bytes=len(body)), chunks=[body], headers=signed(body))
    assert result.status == 200


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1.5", b"", b"0x10", b"\xff"])
async def test_an_invalid_content_length_is_400(value: bytes) -> None:
    body = batch_body()
    headers = [(b"runflow-signature", sign(body, SECRET).encode()), (b"content-length", value)]
    result = await drive(middleware(), chunks=[body], headers=headers)
    assert result.status == 400
    assert "Content-Length" in result.json()["detail"]


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'"text"', b"{", b"null"])
async def test_a_verified_body_that_is_not_a_json_object_is_400(body: bytes) -> None:
    app = RecordingApp()
    result = await drive(middleware(app), chunks=[body], headers=signed(body))
    assert result.status == 400
    assert result.json()["error"] == "invalid_payload"
    assert app.seen == []


async def test_an_empty_signed_body_is_400() -> None:
    result = await drive(middleware(), chunks=[b""], headers=signed(b""))
    assert result.status == 400
    assert "empty" in result.json()["detail"]


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
async def test_other_methods_on_the_path_are_405_with_allow_post(method: str) -> None:
    app = RecordingApp()
    result = await drive(middleware(app), method=method, chunks=[], headers=[])
    assert result.status == 405
    assert result.headers["allow"] == "POST"
    assert result.json()["error"] == "method_not_allowed"
    assert app.seen == []


def test_a_rejection_answer_is_a_small_json_object() -> None:
    status, content = rejection(PayloadTooLargeError(limit=10))
    assert status == 413
    assert content == {
        "error": "payload_too_large",
        "detail": "callback body exceeds the limit of 10 bytes",
    }


def test_a_rejection_for_a_store_error_is_503_and_for_an_unknown_error_500() -> None:
    assert rejection(StoreError("down")) == (503, {"error": "store_unavailable", "detail": "down"})
    assert rejection(RunflowCallbackError("x")) == (500, {"error": "error", "detail": "x"})


# --- allow_unsigned ---------------------------------------------------------------------------


async def test_allow_unsigned_accepts_a_request_without_the_header() -> None:
    app = RecordingApp()
    body = batch_body()
    result = await drive(middleware(app, allow_unsigned=True), chunks=[body], headers=[])
    assert result.status == 200
    context = app.seen[0].context
    assert context.signed is False
    assert context.secret_label is None
    assert context.secret_id is None


@pytest.mark.parametrize("value", [b"0" * 64, b"nonsense", b""])
async def test_allow_unsigned_still_rejects_a_present_bad_signature(value: bytes) -> None:
    body = batch_body()
    result = await drive(
        middleware(allow_unsigned=True), chunks=[body], headers=[(b"runflow-signature", value)]
    )
    assert result.status == 401


# --- disconnects ----------------------------------------------------------------------------


async def test_a_client_that_leaves_mid_body_gets_no_answer_and_no_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    app = RecordingApp()
    body = batch_body()
    result = await drive(
        middleware(app),
        chunks=[body[:10], body[10:20], body[20:]],
        headers=signed(body),
        disconnect_after=2,
    )
    assert result.messages == []
    assert app.seen == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- pass-through ---------------------------------------------------------------------------


async def test_other_paths_pass_through_untouched() -> None:
    app = RecordingApp()
    result = await drive(middleware(app), chunks=[b"anything"], headers=[], path="/other")
    assert result.status == 200
    assert app.seen[0].body == b"anything"
    assert app.seen[0].context is None
    assert "state" not in app.seen[0].scope


async def test_lifespan_and_websocket_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def never() -> Message:
        raise AssertionError("not called")

    async def discard(message: Message) -> None:
        raise AssertionError("not called")

    mw = middleware(app)
    await mw({"type": "lifespan", "asgi": {"version": "3.0"}}, never, discard)
    await mw({"type": "websocket", "path": PATH, "headers": []}, never, discard)
    assert seen == ["lifespan", "websocket"]


async def test_lifespan_runs_through_the_middleware_in_starlette() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = middleware(Starlette(lifespan=lifespan))
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: list[str] = []
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})

    async def send(message: Message) -> None:
        outbox.append(message["type"])

    await asyncio.wait_for(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send), 10
    )
    assert events == ["startup", "shutdown"]
    assert outbox == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"max_body_bytes": 0},
        {"max_body_bytes": -1},
        {"max_body_bytes": True},
        {"max_body_bytes": 1.5},
        {"path": []},
        {"secrets": []},
        {"secrets": ""},
        {"secrets": b"whsec_bytes"},
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        middleware(**options)


def test_default_limit_is_16_mib() -> None:
    assert DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024
    assert middleware().max_body_bytes == DEFAULT_MAX_BODY_BYTES


def test_context_repr_leaves_out_body_payload_and_signature() -> None:
    body = batch_body(metadata={"customer": "secret-data"})
    reader = CallbackReader(
        signed(body),
        verifier=middleware().verifier,
        options=ReceiverOptions(max_body_bytes=len(body), clock=lambda: FIXED),
    )
    reader.feed(body)
    text = repr(reader.finish())
    assert "secret-data" not in text
    assert sign(body, SECRET) not in text
    assert "body_bytes=" in text


# --- logging --------------------------------------------------------------------------------


async def test_one_info_line_per_verified_callback_without_payload_or_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    body = batch_body(metadata={"customer": "confidential"})
    await drive(middleware(), chunks=[body], headers=signed(body, runflow_request_id="req-9"))
    records = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
    assert len(records) == 1
    [record] = records
    message = record.getMessage()
    assert record.levelno == logging.INFO
    for part in ("event=batch.succeeded", "outcome=verified", "request_id=req-9", "latency_ms="):
        assert part in message
    assert "secret=#0" in message
    assert "confidential" not in message
    assert SECRET not in message
    assert record.runflow_request_id == "req-9"  # type: ignore[attr-defined]


async def test_rejections_are_warnings_without_the_signature(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    body = batch_body()
    forged = sign(body, "whsec_attacker")
    await drive(
        middleware(),
        chunks=[body],
        headers=[(b"runflow-signature", forged.encode()), (b"runflow-request-id", b"r\n2")],
    )
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "signature_mismatch" in message
    assert forged not in message
    assert "\n" not in message  # a hostile request id cannot forge log lines


# --- real uvicorn ---------------------------------------------------------------------------


def callback_app(**options: Any) -> Starlette:
    async def endpoint(request: Request) -> JSONResponse:
        context = get_callback(request)
        body = await request.body()
        return JSONResponse({"event": context.event, "same_body": body == context.body})

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"other {len(await request.body())}")

    options.setdefault("secrets", SECRET)
    return Starlette(
        routes=[Route(PATH, endpoint, methods=["POST"]), Route("/other", other, methods=["POST"])],
        middleware=[Middleware(CallbackMiddleware, **options)],
    )


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_in_thread(callback_app(max_body_bytes=64 * 1024), log_config=None) as url:
        yield url


def test_real_server_content_length_body(server: str) -> None:
    body = batch_body()
    response = httpx.post(
        server + PATH, content=body, headers={"Runflow-Signature": sign(body, SECRET)}
    )
    assert response.status_code == 200
    assert response.json() == {"event": "batch.succeeded", "same_body": True}


def test_real_server_chunked_body(server: str) -> None:
    body = batch_body(metadata={"pad": "y" * 20_000})

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    response = httpx.post(
        server + PATH, content=chunks(), headers={"Runflow-Signature": sign(body, SECRET)}
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200
    assert response.json()["same_body"] is True


def test_real_server_oversize_chunked_and_declared_bodies_are_413(server: str) -> None:
    body = batch_body(metadata={"pad": "z" * 100_000})

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 8192):
            yield body[i : i + 8192]

    signature = {"Runflow-Signature": sign(body, SECRET)}
    streamed = httpx.post(server + PATH, content=chunks(), headers=signature)
    declared = httpx.post(server + PATH, content=body, headers=signature)
    assert (streamed.status_code, declared.status_code) == (413, 413)


def test_real_server_forged_and_wrong_method(server: str) -> None:
    body = batch_body()
    forged = httpx.post(server + PATH, content=body, headers={"Runflow-Signature": "0" * 64})
    assert forged.status_code == 401
    got = httpx.get(server + PATH)
    assert (got.status_code, got.headers["allow"]) == (405, "POST")


def test_real_server_other_paths_pass_through(server: str) -> None:
    response = httpx.post(server + "/other", content=b"12345")
    assert response.text == "other 5"


def test_real_server_oversize_content_length_is_answered_without_the_body(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Runflow-Signature: " + b"0" * 64 + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_real_server_client_leaving_mid_body_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    called: list[bool] = []

    async def endpoint(request: Request) -> PlainTextResponse:
        called.append(True)
        return PlainTextResponse("ok")

    app = CallbackMiddleware(
        Starlette(routes=[Route(PATH, endpoint, methods=["POST"])]), secrets=SECRET
    )
    body = batch_body()
    with serve_in_thread(app, log_config=None) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Runflow-Signature: " + sign(body, SECRET).encode() + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:20]
            )
        # A complete request afterwards proves the server is healthy and the first one ended.
        response = httpx.post(
            url + PATH, content=body, headers={"Runflow-Signature": sign(body, SECRET)}
        )
        assert response.status_code == 200
    assert called == [True]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_websocket_passes_through_a_real_server() -> None:
    import websockets

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello " + await websocket.receive_text())
        await websocket.close()

    app = middleware(Starlette(routes=[WebSocketRoute(PATH, echo)]))
    with serve_in_thread(app, log_config=None) as url:
        async with websockets.connect(url.replace("http", "ws") + PATH) as ws:
            await ws.send("runflow")
            reply = await asyncio.wait_for(ws.recv(), timeout=10)
    assert reply == "hello runflow"
