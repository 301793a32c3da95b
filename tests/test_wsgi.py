"""CallbackWSGIMiddleware: bounded reads of wsgi.input, the same answers and log lines as over
ASGI, body replay, pass-through, and a real WSGI server over real HTTP.

``call_wsgi`` (an in-process WSGI call with a scripted ``wsgi.input``) and ``serving`` (a
real threaded werkzeug server on 127.0.0.1) are shared by the Flask, Django and front-door
tests.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from asgi_driver import (
    OTHER_SECRET,
    PATH,
    SECRET,
    RecordingApp,
    Result,
    batch_body,
    drive,
    run_body,
    signed,
)
from runflow_callbacks import CallbackMiddleware, ConfigurationError, sign
from runflow_callbacks.options import ReceiverOptions
from runflow_callbacks.wsgi import (
    CHUNK_BYTES,
    ENVIRON_KEY,
    CallbackWSGIMiddleware,
    environ_headers,
    get_callback,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.errors import RunflowCallbackError

LIMIT = 4096
FIXED = datetime(2026, 5, 6, 10, 0, 5, tzinfo=timezone.utc)


# --- the in-process driver -------------------------------------------------------------


class ScriptedInput:
    """A ``wsgi.input`` that hands out ``chunks`` one read at a time, then EOF.

    ``fail`` is raised by the read after the scripted chunks (a server's error when the
    client leaves); ``delay_s`` is slept before each read (a slow client).
    """

    def __init__(
        self, chunks: Sequence[bytes], *, fail: Exception | None = None, delay_s: float = 0
    ) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]
        self.fail = fail
        self.delay_s = delay_s
        self.reads = 0
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if not self.chunks:
            if self.fail is not None:
                raise self.fail
            return b""
        chunk = self.chunks[0]
        if size is None or size < 0 or size >= len(chunk):
            self.chunks.pop(0)
        else:
            chunk, self.chunks[0] = chunk[:size], chunk[size:]
        self.bytes_read += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        return self.read(size)


def wsgi_environ(
    *,
    headers: Sequence[tuple[bytes, bytes]],
    stream: Any,
    method: str = "POST",
    path: str = PATH,
    terminated: bool = False,
) -> WSGIEnvironment:
    """A WSGI environ as a server builds it (repeated headers joined with commas)."""
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if terminated:
        environ["wsgi.input_terminated"] = True
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        key = name.upper().replace("-", "_")
        if key not in {"CONTENT_LENGTH", "CONTENT_TYPE"}:
            key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def call_wsgi(
    app: WSGIApplication,
    *,
    chunks: Sequence[bytes],
    headers: Sequence[tuple[bytes, bytes]],
    method: str = "POST",
    path: str = PATH,
    disconnect_after: int | None = None,
    terminated: bool = False,
    stream: Any = None,
) -> Result:
    """Call ``app`` once with a request whose body is read as ``chunks``.

    ``disconnect_after=n`` makes the input end after ``n`` chunks (the client left). The
    answer comes back as the ASGI messages of :class:`asgi_driver.Result`, so one set of
    assertions reads both.
    """
    if stream is None:
        kept = chunks if disconnect_after is None else chunks[:disconnect_after]
        stream = ScriptedInput(kept)
    environ = wsgi_environ(
        headers=headers, stream=stream, method=method, path=path, terminated=terminated
    )
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> Any:
        started.append((status, response_headers))
        return lambda _data: None

    iterable = app(environ, start_response)
    try:
        body = b"".join(iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()
    status, response_headers = started[-1]
    result = Result()
    result.messages.append(
        {
            "type": "http.response.start",
            "status": int(status.split()[0]),
            "headers": [(k.lower().encode(), v.encode()) for k, v in response_headers],
        }
    )
    result.messages.append({"type": "http.response.body", "body": body})
    result.receive_calls = getattr(stream, "reads", 0)
    return result


@dataclass
class Seen:
    """What the app behind the middleware saw of one request."""

    environ: WSGIEnvironment
    context: CallbackContext | None
    body: bytes


@dataclass
class RecordingWSGIApp:
    """A WSGI app that reads its body the usual way and answers 200 ``downstream``."""

    seen: list[Seen] = field(default_factory=list)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        context = environ.get(ENVIRON_KEY)
        self.seen.append(Seen(environ=environ, context=context, body=body))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"downstream"]


def middleware(app: Any = None, **options: Any) -> CallbackWSGIMiddleware:
    options.setdefault("secrets", SECRET)
    options.setdefault("max_body_bytes", LIMIT)
    return CallbackWSGIMiddleware(app or RecordingWSGIApp(), **options)


def send(
    door: CallbackWSGIMiddleware, body: bytes, headers: Sequence[tuple[bytes, bytes]], **kw: Any
) -> Result:
    return call_wsgi(door, chunks=[body], headers=headers, **kw)


def recorded(door: CallbackWSGIMiddleware) -> list[Seen]:
    app = door.app
    assert isinstance(app, RecordingWSGIApp)
    return app.seen


def chunks_of(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


# --- a real server ---------------------------------------------------------------------


@contextlib.contextmanager
def serving(app: WSGIApplication) -> Iterator[int]:
    """Serve ``app`` with werkzeug's threaded server on 127.0.0.1; yield its port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Answered:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_post(
    port: int,
    body: bytes | Iterable[bytes],
    headers: dict[str, str],
    *,
    method: str = "POST",
    path: str = PATH,
) -> Answered:
    """One request over a fresh connection; an iterable body goes out chunked."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Connection": "close", **headers})
        response = connection.getresponse()
        return Answered(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def half_closed_post(port: int, declared: int, sent: bytes, signature: str) -> bytes:
    """Declare ``declared`` bytes, send ``sent``, stop sending; return the raw answer."""
    head = (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\nRunflow-Signature: {signature}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + sent)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


# --- the accepted request ----------------------------------------------------------------


def test_a_signed_callback_reaches_the_app_with_its_context_and_a_replayable_body() -> None:
    door = middleware(clock=lambda: FIXED)
    body = batch_body()
    result = send(door, body, signed(body, runflow_request_id="req-1"))
    assert (result.status, result.body) == (200, b"downstream")
    [seen] = recorded(door)
    assert seen.body == body
    assert seen.context is not None
    assert seen.context is get_callback(seen.environ)
    assert seen.context.body == body
    assert seen.context.signed
    assert seen.context.event == "batch.succeeded"
    assert seen.context.request_id == "req-1"
    assert seen.context.received_at == FIXED
    assert seen.environ["CONTENT_LENGTH"] == str(len(body))
    assert isinstance(seen.environ["wsgi.input"], io.BytesIO)


def test_the_replayed_input_holds_exactly_the_body_and_ends_there() -> None:
    seen: list[bytes] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append(stream.read())
        seen.append(stream.read())
        start_response("200 OK", [])
        return []

    body = run_body()
    result = send(middleware(app), body, signed(body))
    assert result.status == 200
    assert seen == [body, b""]


def test_a_body_of_many_reads_is_verified_as_it_arrives() -> None:
    door = middleware()
    body = batch_body(metadata={"note": "x" * 2000})
    stream = ScriptedInput(chunks_of(body, 100))
    result = call_wsgi(door, chunks=[], headers=signed(body), stream=stream)
    assert result.status == 200
    assert stream.reads == len(chunks_of(body, 100))
    [seen] = recorded(door)
    assert seen.body == body


def test_a_chunked_body_without_content_length_is_read_to_the_end_the_server_marks() -> None:
    door = middleware()
    body = batch_body()
    headers = [h for h in signed(body) if h[0] != b"content-length"]
    result = call_wsgi(door, chunks=chunks_of(body, 50), headers=headers, terminated=True)
    assert result.status == 200
    [seen] = recorded(door)
    assert seen.body == body
    assert seen.environ["CONTENT_LENGTH"] == str(len(body))


def test_without_content_length_or_a_terminated_input_nothing_is_read() -> None:
    # PEP 3333: reading past the end of the request may block forever; the body is empty.
    door = middleware()
    headers = [(b"runflow-signature", sign(b"", SECRET).encode())]
    stream = ScriptedInput([batch_body()])
    result = call_wsgi(door, chunks=[], headers=headers, stream=stream)
    assert (result.status, result.json()["error"]) == (400, "invalid_payload")
    assert stream.reads == 0


def test_an_unsigned_callback_is_accepted_only_when_allowed() -> None:
    body = batch_body()
    unsigned = [(b"content-length", str(len(body)).encode())]
    assert send(middleware(), body, unsigned).json()["error"] == "missing_signature"
    door = middleware(allow_unsigned=True)
    assert send(door, body, unsigned).status == 200
    [seen] = recorded(door)
    assert seen.context is not None
    assert not seen.context.signed
    assert seen.context.secret_label is None


def test_allow_unsigned_still_rejects_a_wrong_signature() -> None:
    body = batch_body()
    result = send(middleware(allow_unsigned=True), body, signed(body, OTHER_SECRET))
    assert (result.status, result.json()["error"]) == (401, "signature_mismatch")


def test_options_come_as_keywords_or_as_receiver_options() -> None:
    options = ReceiverOptions(max_body_bytes=10, allow_unsigned=True)
    door = CallbackWSGIMiddleware(RecordingWSGIApp(), secrets=SECRET, options=options)
    assert (door.max_body_bytes, door.allow_unsigned) == (10, True)
    body = batch_body()
    assert send(door, body, signed(body)).status == 413
    changed = CallbackWSGIMiddleware(
        RecordingWSGIApp(), secrets=SECRET, options=options, max_body_bytes=LIMIT
    )
    assert (changed.max_body_bytes, changed.allow_unsigned) == (LIMIT, True)
    assert send(changed, body, [(b"content-length", str(len(body)).encode())]).status == 200


def test_engine_options_and_an_empty_path_list_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="takes no mode option"):
        CallbackWSGIMiddleware(RecordingWSGIApp(), secrets=SECRET, mode="inbox")  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="at least one callback path"):
        CallbackWSGIMiddleware(RecordingWSGIApp(), secrets=SECRET, path=[])


# --- rejections ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_any_other_method_is_405_with_allow_post_and_the_body_unread(method: str) -> None:
    door = middleware()
    body = batch_body()
    stream = ScriptedInput([body])
    result = call_wsgi(door, chunks=[], headers=signed(body), method=method, stream=stream)
    assert result.status == 405
    assert result.headers["allow"] == "POST"
    assert result.json() == {
        "error": "method_not_allowed",
        "detail": "Runflow callbacks are delivered with POST",
    }
    assert (stream.reads, recorded(door)) == (0, [])


def test_a_content_length_over_the_limit_is_413_before_reading() -> None:
    door = middleware()
    body = b"x" * (LIMIT + 1)
    stream = ScriptedInput([body])
    result = call_wsgi(door, chunks=[], headers=signed(body), stream=stream)
    assert (result.status, result.json()["error"]) == (413, "payload_too_large")
    assert stream.reads == 0
    assert recorded(door) == []


def test_a_body_without_content_length_is_413_once_it_crosses_the_limit() -> None:
    door = middleware()
    body = b"x" * (LIMIT * 50)
    stream = ScriptedInput(chunks_of(body, 1000))
    headers = [(b"runflow-signature", sign(body, SECRET).encode())]
    result = call_wsgi(door, chunks=[], headers=headers, stream=stream, terminated=True)
    assert (result.status, result.json()["error"]) == (413, "payload_too_large")
    assert LIMIT < stream.bytes_read <= LIMIT + CHUNK_BYTES
    assert stream.bytes_read < len(body)
    assert recorded(door) == []


@pytest.mark.parametrize(
    ("headers", "code", "detail"),
    [
        ([], "missing_signature", "missing"),
        ([(b"runflow-signature", b"abc")], "malformed_signature", "64 hex digits"),
        ([(b"runflow-signature", b"0" * 64)], "signature_mismatch", "does not match"),
        (
            [(b"runflow-signature", b"0" * 64), (b"runflow-signature", b"1" * 64)],
            "malformed_signature",
            "more than one",
        ),
    ],
)
def test_a_bad_signature_is_401(headers: list[tuple[bytes, bytes]], code: str, detail: str) -> None:
    door = middleware()
    result = send(door, batch_body(), headers)
    assert result.status == 401
    assert result.headers["content-type"] == "application/json"
    assert result.json()["error"] == code
    assert detail in result.json()["detail"]
    assert recorded(door) == []


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'{"event": 3}', b""])
def test_verified_bytes_that_are_not_a_callback_are_400(body: bytes) -> None:
    door = middleware()
    result = send(door, body, signed(body))
    assert (result.status, result.json()["error"]) == (400, "invalid_payload")
    assert recorded(door) == []


def test_a_client_leaving_mid_body_is_answered_quietly_without_calling_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="runflow_callbacks")
    rejected: list[str] = []

    class Counting(CallbackWSGIMiddleware):
        def rejected(self, error: RunflowCallbackError) -> None:
            rejected.append(error.code)

    door = Counting(RecordingWSGIApp(), secrets=SECRET)
    body = batch_body()
    result = call_wsgi(door, chunks=chunks_of(body, 10), headers=signed(body), disconnect_after=2)
    assert (result.status, result.json()["error"]) == (400, "client_disconnected")
    assert recorded(door) == []
    assert rejected == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "error", [OSError("connection reset"), ValueError("bad chunk"), RuntimeError("server")]
)
def test_an_input_that_fails_to_read_is_our_answer_not_a_traceback(error: Exception) -> None:
    door = middleware()
    body = batch_body()
    stream = ScriptedInput([body[:10]], fail=error)
    result = call_wsgi(door, chunks=[], headers=signed(body), stream=stream)
    assert (result.status, result.json()["error"]) == (400, "client_disconnected")
    assert recorded(door) == []


def test_a_body_slower_than_body_timeout_is_408() -> None:
    door = middleware(body_timeout=timedelta(milliseconds=20))
    body = batch_body()
    stream = ScriptedInput(chunks_of(body, 50), delay_s=0.05)
    result = call_wsgi(door, chunks=[], headers=signed(body), stream=stream)
    assert (result.status, result.json()["error"]) == (408, "request_timeout")
    assert stream.reads == 1  # checked after each read: the first one was already too late
    assert recorded(door) == []


def test_bodies_beyond_the_unverified_budget_are_503_and_the_budget_comes_back() -> None:
    door = middleware(max_unverified_bytes=100)
    body = batch_body()
    result = send(door, body, signed(body))
    assert (result.status, result.json()["error"]) == (503, "overloaded")
    small = middleware(max_unverified_bytes=LIMIT)
    for _ in range(3):
        assert send(small, body, signed(body)).status == 200
        assert send(small, body, signed(body, OTHER_SECRET)).status == 401
    assert small.budget is not None
    assert small.budget.held == 0


def test_concurrent_requests_share_the_budget_and_give_it_all_back() -> None:
    door = middleware(max_unverified_bytes=LIMIT * 64)
    body = batch_body()
    statuses: list[int] = []

    def one(i: int) -> None:
        headers = signed(body) if i % 2 else signed(body, OTHER_SECRET)
        status = call_wsgi(door, chunks=chunks_of(body, 7), headers=headers).status
        assert status is not None
        statuses.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 16 + [401] * 16
    assert door.budget is not None
    assert door.budget.held == 0


def test_each_rejection_is_reported_to_rejected_once() -> None:
    codes: list[str] = []

    class Counting(CallbackWSGIMiddleware):
        def rejected(self, error: RunflowCallbackError) -> None:
            codes.append(error.code)

    door = Counting(RecordingWSGIApp(), secrets=SECRET, max_body_bytes=LIMIT)
    body = batch_body()
    send(door, body, [])
    send(door, b"x" * (LIMIT + 1), signed(b"x" * (LIMIT + 1)))
    send(door, b"[]", signed(b"[]"))
    send(door, body, signed(body), method="GET")  # 405 is no rejection of a callback
    assert codes == ["missing_signature", "payload_too_large", "invalid_payload"]


# --- pass-through -----------------------------------------------------------------------


def test_other_paths_pass_straight_through_untouched() -> None:
    door = middleware()
    stream = ScriptedInput([b"anything"])
    headers = [(b"content-length", b"8")]
    result = call_wsgi(door, chunks=[], headers=headers, path="/health", stream=stream)
    assert (result.status, result.body) == (200, b"downstream")
    [seen] = recorded(door)
    assert seen.body == b"anything"
    assert seen.environ["wsgi.input"] is stream
    assert ENVIRON_KEY not in seen.environ
    with pytest.raises(LookupError, match="CallbackWSGIMiddleware"):
        get_callback(seen.environ)


def test_several_paths_are_guarded_and_only_they() -> None:
    door = middleware(path=["/a", "/b"])
    body = batch_body()
    assert send(door, body, [], path="/a").status == 401
    assert send(door, body, [], path="/b").status == 401
    assert send(door, body, [], path=PATH).status == 200


def test_a_request_verified_by_an_outer_middleware_is_not_read_again() -> None:
    inner = middleware()
    outer = middleware(inner)
    body = batch_body()
    result = send(outer, body, signed(body))
    assert result.status == 200
    [seen] = recorded(inner)
    assert seen.body == body
    assert seen.context is not None


# --- the same answers and log lines as over ASGI ------------------------------------------


ANSWER_CASES: list[tuple[str, bytes, list[tuple[bytes, bytes]]]] = [
    ("POST", b"[1]", signed(b"[1]")),
    ("POST", batch_body(), []),
    ("POST", batch_body(), [(b"runflow-signature", b"sha256=" + b"0" * 64)]),
    ("POST", batch_body(), signed(batch_body(), OTHER_SECRET)),
    ("POST", b"x" * (LIMIT + 1), signed(b"x" * (LIMIT + 1))),
    ("POST", batch_body(), [(b"runflow-signature", b"0" * 64), (b"content-length", b"1e3")]),
    ("GET", b"", []),
]


@pytest.mark.parametrize(("method", "body", "headers"), ANSWER_CASES)
async def test_every_rejection_is_answered_exactly_as_the_asgi_middleware_answers(
    method: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    asgi = CallbackMiddleware(RecordingApp(), secrets=SECRET, max_body_bytes=LIMIT)
    expected = await drive(asgi, chunks=[body], headers=headers, method=method)
    got = send(middleware(), body, headers, method=method)
    assert got.status == expected.status
    assert got.body == expected.body
    assert got.headers.get("allow") == expected.headers.get("allow")
    assert got.headers["content-type"] == expected.headers["content-type"]


async def test_a_rejection_logs_the_same_record_as_over_asgi(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    headers = [(b"runflow-request-id", b"req-9\nforged"), *signed(b"{}", OTHER_SECRET)]
    asgi = CallbackMiddleware(RecordingApp(), secrets=SECRET)
    await drive(asgi, chunks=[b"{}"], headers=headers)
    send(middleware(), b"{}", headers)
    over_asgi, over_wsgi = (r for r in caplog.records if r.name.startswith("runflow_callbacks"))
    assert (over_asgi.name, over_wsgi.name) == ("runflow_callbacks.asgi", "runflow_callbacks.wsgi")

    def shape(record: logging.LogRecord) -> tuple[Any, ...]:
        message = record.getMessage().split(" latency_ms=")[0]
        extra = {k: v for k, v in vars(record).items() if k.startswith("runflow_")}
        extra.pop("runflow_latency_ms")
        return record.levelno, message, extra

    assert shape(over_wsgi) == shape(over_asgi)
    assert "request_id='req-9\\nforged'" in over_wsgi.getMessage()


def test_a_verified_callback_logs_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    body = batch_body()
    send(middleware(), body, signed(body, runflow_request_id="req-2"))
    [record] = [r for r in caplog.records if r.name.startswith("runflow_callbacks")]
    assert record.name == "runflow_callbacks.wsgi"
    assert record.levelno == logging.INFO
    assert "event=batch.succeeded" in record.getMessage()
    assert "outcome=verified" in record.getMessage()
    assert "request_id=req-2" in record.getMessage()


# --- secrets stay secret ------------------------------------------------------------------


def test_no_repr_answer_or_log_line_holds_a_secret(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="runflow_callbacks")
    door = middleware(secrets=[OTHER_SECRET, SECRET])
    body = batch_body(metadata={"customer": "confidential"})
    wrong = sign(body, "whsec_another_secret_000000")
    answer = send(door, body, [(b"runflow-signature", wrong.encode())])
    accepted = send(door, body, signed(body))
    text = "\n".join(
        [repr(door), str(door), answer.body.decode(), accepted.body.decode(), caplog.text]
    )
    assert "CallbackWSGIMiddleware(paths=['/callbacks/runflow']" in repr(door)
    for leaked in (SECRET, OTHER_SECRET, sign(body, SECRET), wrong, "confidential"):
        assert leaked not in text


def test_environ_headers_split_a_joined_signature_and_skip_an_empty_length() -> None:
    environ = {
        "HTTP_RUNFLOW_SIGNATURE": "a,b",
        "HTTP_RUNFLOW_REQUEST_ID": "r,1",
        "CONTENT_LENGTH": "",
        "CONTENT_TYPE": "application/json",
        "wsgi.input": object(),
        "PATH_INFO": PATH,
    }
    assert sorted(environ_headers(environ)) == [
        (b"content-type", b"application/json"),
        (b"runflow-request-id", b"r,1"),
        (b"runflow-signature", b"a"),
        (b"runflow-signature", b"b"),
    ]


def test_importing_the_wsgi_module_loads_no_web_framework() -> None:
    code = (
        "import json, sys\nimport runflow_callbacks.wsgi\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'flask', 'django', 'starlette', 'werkzeug', 'fastapi', 'anyio'})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(result.stdout) == []


# --- a real WSGI server over real HTTP ----------------------------------------------------


@pytest.fixture
def served() -> Iterator[tuple[int, RecordingWSGIApp]]:
    app = RecordingWSGIApp()
    with serving(middleware(app)) as port:
        yield port, app


def test_over_real_http_a_signed_callback_is_verified_and_replayed(
    served: tuple[int, RecordingWSGIApp],
) -> None:
    port, app = served
    body = batch_body()
    signature = sign(body, SECRET)
    answer = http_post(port, body, {"Runflow-Signature": signature})
    assert (answer.status, answer.body) == (200, b"downstream")
    [seen] = app.seen
    assert seen.body == body
    assert seen.context is not None
    assert seen.context.headers["Runflow-Signature"] == signature


def test_over_real_http_a_chunked_body_is_verified_and_replayed(
    served: tuple[int, RecordingWSGIApp],
) -> None:
    port, app = served
    body = batch_body(metadata={"note": "y" * 1500})
    answer = http_post(port, iter(chunks_of(body, 300)), {"Runflow-Signature": sign(body, SECRET)})
    assert answer.status == 200
    [seen] = app.seen
    assert seen.body == body


def test_over_real_http_a_chunked_body_over_the_limit_is_413(
    served: tuple[int, RecordingWSGIApp],
) -> None:
    port, app = served
    body = b"z" * (LIMIT * 4)
    answer = http_post(port, iter(chunks_of(body, 512)), {"Runflow-Signature": sign(body, SECRET)})
    assert (answer.status, answer.json()["error"]) == (413, "payload_too_large")
    assert app.seen == []


def test_over_real_http_each_rejection_has_its_status(
    served: tuple[int, RecordingWSGIApp],
) -> None:
    port, app = served
    body = batch_body()
    too_large = http_post(port, b"x" * (LIMIT + 1), {"Runflow-Signature": sign(b"x", SECRET)})
    assert (too_large.status, too_large.json()["error"]) == (413, "payload_too_large")
    wrong = http_post(port, body, {"Runflow-Signature": sign(body, OTHER_SECRET)})
    assert (wrong.status, wrong.json()["error"]) == (401, "signature_mismatch")
    missing = http_post(port, body, {})
    assert (missing.status, missing.json()["error"]) == (401, "missing_signature")
    not_json = http_post(port, b"nope", {"Runflow-Signature": sign(b"nope", SECRET)})
    assert (not_json.status, not_json.json()["error"]) == (400, "invalid_payload")
    get = http_post(port, b"", {}, method="GET")
    assert (get.status, get.headers["allow"]) == (405, "POST")
    other = http_post(port, b"free", {}, path="/elsewhere")
    assert (other.status, other.body) == (200, b"downstream")
    assert [seen.body for seen in app.seen] == [b"free"]


def test_over_real_http_a_client_that_stops_mid_body_is_answered_and_runs_nothing(
    served: tuple[int, RecordingWSGIApp],
) -> None:
    port, app = served
    body = batch_body()
    answer = half_closed_post(port, len(body), body[:20], sign(body, SECRET))
    assert answer.startswith(b"HTTP/1.1 400")
    assert b'"error": "client_disconnected"' in answer
    assert app.seen == []
    # The server is still serving.
    assert http_post(port, body, {"Runflow-Signature": sign(body, SECRET)}).status == 200
