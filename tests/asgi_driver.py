"""Drive ASGI apps without a server: a scripted ``receive``, a recording ``send``.

Shared by the middleware, receiver and hostile-input tests. Real uvicorn runs live in the
tests themselves; this covers what a real client cannot script exactly (a disconnect after
the second chunk, a message count proving the body was never read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from runflow_callbacks import dumps_payload, sign

if TYPE_CHECKING:
    from collections.abc import Sequence

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECRET = "whsec_test_0123456789abcdef"
OTHER_SECRET = "whsec_other_fedcba9876543210"
PATH = "/callbacks/runflow"
BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
RUN_ID = "0190f2a4-0000-7000-8000-000000000001"


def _envelope(event: str, subject: tuple[str, str], overrides: dict[str, Any]) -> bytes:
    payload: dict[str, Any] = {
        "event": event,
        subject[0]: subject[1],
        "status": "succeeded",
        "output": None,
        "duration_ms": 1000,
        "created_at": "2026-05-06T10:00:00+00:00",
        "completed_at": "2026-05-06T10:00:01+00:00",
        "metadata": None,
    }
    payload.update(overrides)
    return dumps_payload(payload)


def batch_body(**overrides: Any) -> bytes:
    """A ``batch.succeeded`` callback body, written the way Runflow writes it."""
    overrides.setdefault(
        "output", {"items": [], "succeeded": 0, "failed": 0, "cancelled": 0, "total": 0}
    )
    return _envelope("batch.succeeded", ("batch_id", BATCH_ID), overrides)


def run_body(**overrides: Any) -> bytes:
    """A ``run.completed`` callback body."""
    return _envelope("run.completed", ("run_id", RUN_ID), overrides)


def signed(body: bytes, secret: str = SECRET, **extra: str) -> list[tuple[bytes, bytes]]:
    """ASGI headers of a signed callback (``extra`` as lowercase name=value)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"runflow-signature", sign(body, secret).encode()),
    ]
    headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return headers


@dataclass
class Result:
    """What an app sent back, and how much of the request it consumed."""

    messages: list[Message] = field(default_factory=list)
    receive_calls: int = 0

    @property
    def status(self) -> int | None:
        for message in self.messages:
            if message["type"] == "http.response.start":
                status: int = message["status"]
                return status
        return None

    @property
    def headers(self) -> dict[str, str]:
        for message in self.messages:
            if message["type"] == "http.response.start":
                return {k.decode(): v.decode() for k, v in message["headers"]}
        return {}

    @property
    def body(self) -> bytes:
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    def json(self) -> Any:
        return json.loads(self.body)


async def drive(
    app: ASGIApp,
    *,
    chunks: Sequence[bytes],
    headers: Sequence[tuple[bytes, bytes]],
    method: str = "POST",
    path: str = PATH,
    disconnect_after: int | None = None,
    scope_extra: dict[str, Any] | None = None,
) -> Result:
    """Call ``app`` with one HTTP request whose body arrives as ``chunks``.

    ``disconnect_after=n`` makes the client leave after ``n`` chunks. Once the body is
    complete, further ``receive()`` calls get ``http.disconnect`` (the request is over).
    """
    result = Result()
    script: list[Message] = []
    for index, chunk in enumerate(chunks):
        if disconnect_after is not None and index >= disconnect_after:
            break
        more = index < len(chunks) - 1
        script.append({"type": "http.request", "body": chunk, "more_body": more})
    if not chunks and disconnect_after is None:
        script.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> Message:
        result.receive_calls += 1
        if script:
            return script.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        result.messages.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": list(headers),
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        **(scope_extra or {}),
    }
    await app(scope, receive, send)
    return result


@dataclass
class Seen:
    """What the downstream app saw of one request."""

    scope: Scope
    body: bytes
    context: Any
    after_body: Message | None


class RecordingApp:
    """A downstream app: reads the body with Starlette, then waits for ``http.disconnect``."""

    def __init__(self, *, wait_for_disconnect: bool = True) -> None:
        self.seen: list[Seen] = []
        self.wait_for_disconnect = wait_for_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        request = Request(scope, receive)
        body = await request.body()
        after = await receive() if self.wait_for_disconnect else None
        context = scope.get("state", {}).get("runflow_callback")
        self.seen.append(Seen(scope=scope, body=body, context=context, after_body=after))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"downstream"})
