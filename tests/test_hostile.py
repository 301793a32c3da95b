"""Hostile input: whatever arrives, the answer is 200, 400, 401, 405 or 413, never a 500.

Every case runs against the middleware and the receiver (they share one core, and this proves
it). The property test at the end generates requests and checks that the app is called
exactly when the request is a POST with one valid signature over a small JSON object.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_driver import PATH, SECRET, RecordingApp, Result, batch_body, drive, signed
from runflow_callbacks import CallbackContext, CallbackMiddleware, CallbackReceiver, sign

LIMIT = 256 * 1024
ALLOWED = {200, 400, 401, 405, 413}
METHODS = [
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
]


class Target:
    """The middleware (over a recording app) or the receiver (with a recording handler)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.calls: list[CallbackContext] = []
        if kind == "middleware":
            self.app_under_test: Any = CallbackMiddleware(
                self._downstream, secrets=SECRET, max_body_bytes=LIMIT
            )
        else:
            receiver = CallbackReceiver(secrets=SECRET, max_body_bytes=LIMIT)
            receiver.on_any(self._handler)
            self.app_under_test = receiver

    async def _downstream(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["state"]["runflow_callback"])
        await RecordingApp(wait_for_disconnect=False)(scope, receive, send)

    async def _handler(self, context: CallbackContext) -> None:
        self.calls.append(context)

    async def send(self, body: bytes, headers: list[tuple[bytes, bytes]], **options: Any) -> Result:
        result = await drive(self.app_under_test, chunks=[body], headers=headers, **options)
        assert result.status in ALLOWED, (result.status, result.body)
        return result


@pytest.fixture(params=["middleware", "receiver"])
def target(request: pytest.FixtureRequest) -> Target:
    return Target(request.param)


def with_signature(body: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"runflow-signature", value)]


# --- header bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "é".encode("latin-1") * 64,
        "é".encode() * 32,
        b"\xff" * 64,
        b"\x00" * 64,
        b"\xe2\x80\x8b" + b"a" * 61,  # zero-width space
        b"a" * 63 + b"\xc3",
        b"a" * 10_000,
        b" \t ",
        b"sha256=" + b"a" * 64,
        "\uff10".encode() * 64,  # fullwidth digit zero
    ],
)
async def test_odd_signature_bytes_are_401(target: Target, value: bytes) -> None:
    result = await target.send(batch_body(), with_signature(batch_body(), value))
    assert result.status == 401
    assert target.calls == []


async def test_uppercase_hex_and_surrounding_whitespace_are_accepted(target: Target) -> None:
    body = batch_body()
    value = b"  " + sign(body, SECRET).upper().encode() + b"\t"
    result = await target.send(body, with_signature(body, value))
    assert result.status == 200
    assert len(target.calls) == 1


async def test_latin1_request_id_is_kept_decoded_and_logged_safely(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runflow_callbacks")
    body = batch_body()
    request_id = b"caf\xe9-\xff\x01\x1b[31m"
    result = await target.send(body, [*signed(body), (b"runflow-request-id", request_id)])
    assert result.status == 200
    assert target.calls[0].request_id == request_id.decode("latin-1")
    for record in caplog.records:
        assert "\x1b" not in record.getMessage()
        assert "\x01" not in record.getMessage()


async def test_header_names_in_any_case_are_recognised(target: Target) -> None:
    body = batch_body()
    headers = [(b"Runflow-Signature", sign(body, SECRET).encode())]
    result = await target.send(body, headers)
    assert result.status == 200


# --- duplicate headers ----------------------------------------------------------------------


@pytest.mark.parametrize("second", ["same", "other", "garbage"])
async def test_two_signature_headers_are_401_whatever_they_say(target: Target, second: str) -> None:
    body = batch_body()
    good = sign(body, SECRET).encode()
    extra = {"same": good, "other": sign(body, "whsec_x").encode(), "garbage": b"zz"}[second]
    result = await target.send(body, [*with_signature(body, good), (b"runflow-signature", extra)])
    assert result.status == 401
    assert result.json()["error"] == "malformed_signature"
    assert target.calls == []


async def test_conflicting_content_lengths_are_400(target: Target) -> None:
    body = batch_body()
    headers = [
        *signed(body),
        (b"content-length", b"1"),
    ]
    result = await target.send(body, headers)
    assert result.status == 400
    assert target.calls == []


async def test_a_repeated_identical_content_length_is_fine(target: Target) -> None:
    body = batch_body()
    headers = [*signed(body), (b"content-length", str(len(body)).encode())]
    assert (await target.send(body, headers)).status == 200


@pytest.mark.parametrize(
    "value", [b"9" * 40, b"18446744073709551616", b" 7000000 ", b"\xd9\xa1\xd9\xa2"]
)
async def test_huge_or_odd_content_lengths(target: Target, value: bytes) -> None:
    body = batch_body()
    result = await target.send(
        body, [*with_signature(body, sign(body, SECRET).encode()), (b"content-length", value)]
    )
    assert result.status in {400, 413}
    assert result.receive_calls == 0


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signature", [True, False])
async def test_an_empty_body(target: Target, signature: bool) -> None:
    headers = signed(b"") if signature else []
    result = await target.send(b"", headers)
    assert result.status == (400 if signature else 401)
    assert target.calls == []


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\xfd",
        b'{"event": "batch.succeeded", "status": "\xff"}',
        b'{"event": "run.completed", "status": "\xed\xa0\x80"}',  # a lone surrogate
    ],
)
async def test_invalid_utf8_with_a_valid_signature_is_400(target: Target, body: bytes) -> None:
    result = await target.send(body, signed(body))
    assert result.status == 400
    assert target.calls == []


async def test_a_byte_order_mark_is_either_tolerated_or_400(target: Target) -> None:
    body = b"\xef\xbb\xbf" + batch_body()
    result = await target.send(body, signed(body))
    assert result.status in {200, 400}
    assert (result.status == 200) == bool(target.calls)


@pytest.mark.parametrize("depth", [50, 1_000, 20_000])
async def test_deeply_nested_json_never_crashes(target: Target, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = batch_body()[:-1] + b', "extra": ' + nested.encode() + b"}"
    result = await target.send(body, signed(body))
    assert result.status in {200, 400}
    assert (result.status == 200) == bool(target.calls)


async def test_an_object_of_ten_thousand_keys_is_accepted(target: Target) -> None:
    body = batch_body(metadata={f"key{i}": i for i in range(10_000)})
    result = await target.send(body, signed(body))
    assert result.status == 200
    assert len(target.calls[0].payload.metadata) == 10_000


@pytest.mark.parametrize(
    "field_json",
    [
        '"duration_ms": ' + "9" * 5_000,
        '"duration_ms": 1e400',
        '"duration_ms": -' + "9" * 30,
        '"metadata": ' + "9" * 5_000,
        '"metadata": 1e999999',
    ],
)
async def test_huge_numbers(target: Target, field_json: str) -> None:
    body = b'{"event": "batch.succeeded", "batch_id": "0190f2a4-0000-7000-8000-000000000002", '
    body += field_json.encode() + b"}"
    result = await target.send(body, signed(body))
    assert result.status in {200, 400}
    assert (result.status == 200) == bool(target.calls)


async def test_a_body_over_the_limit_in_many_chunks(target: Target) -> None:
    body = batch_body(metadata={"pad": "x" * (LIMIT * 2)})
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    result = await drive(
        target.app_under_test,
        chunks=chunks,
        headers=[(b"runflow-signature", sign(body, SECRET).encode())],
    )
    assert result.status == 413
    assert result.receive_calls == LIMIT // 1000 + 1
    assert target.calls == []


@pytest.mark.parametrize("method", [m for m in METHODS if m != "POST"])
async def test_every_other_method_on_the_path_is_405(target: Target, method: str) -> None:
    body = batch_body()
    result = await target.send(body, signed(body), method=method)
    assert result.status == 405
    assert result.headers["allow"] == "POST"
    assert target.calls == []


# --- property -------------------------------------------------------------------------------

_valid_bodies = st.builds(
    lambda meta: batch_body(metadata=meta),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=10,
    ),
)
_bodies = st.one_of(
    _valid_bodies,
    _valid_bodies.map(lambda b: b + b"x"),
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v).encode(), st.lists(st.integers(), max_size=3)),
    st.just(b""),
    st.builds(lambda n: batch_body(metadata="p" * n), st.integers(LIMIT - 400, LIMIT + 400)),
)
_signature_kinds = st.sampled_from(
    ["valid", "valid_upper", "wrong_secret", "random", "missing", "twice"]
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(_bodies)
    kind = draw(_signature_kinds)
    good = sign(body, SECRET).encode()
    headers: list[tuple[bytes, bytes]] = []
    if kind in ("valid", "twice"):
        headers.append((b"runflow-signature", good))
    if kind == "twice":
        headers.append((b"runflow-signature", draw(st.sampled_from([good, b"0" * 64]))))
    if kind == "valid_upper":
        headers.append((b"runflow-signature", good.upper()))
    if kind == "wrong_secret":
        headers.append((b"runflow-signature", sign(body, "whsec_wrong").encode()))
    if kind == "random":
        headers.append((b"runflow-signature", draw(st.binary(max_size=80))))
    length = draw(st.sampled_from(["exact", "absent", "huge", "junk"]))
    if length == "exact":
        headers.append((b"content-length", str(len(body)).encode()))
    elif length == "huge":
        headers.append((b"content-length", b"99999999999"))
    elif length == "junk":
        headers.append((b"content-length", draw(st.binary(min_size=1, max_size=6))))
    headers += draw(
        st.lists(
            st.tuples(
                st.sampled_from([b"runflow-request-id", b"user-agent", b"x-odd"]),
                st.binary(max_size=30),
            ),
            max_size=3,
        )
    )
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE"]))
    return {
        "body": body,
        "signature": kind,
        "length": length,
        "headers": headers,
        "chunks": chunks,
        "method": method,
    }


def _should_be_accepted(request: dict[str, Any]) -> bool:
    """A POST, one valid signature, a well-formed batch callback within every limit."""
    body: bytes = request["body"]
    if request["method"] != "POST" or request["signature"] not in ("valid", "valid_upper"):
        return False
    if len(body) > LIMIT or (request["length"] in ("huge", "junk") and not _length_ok(request)):
        return False
    if not body.startswith(b'{"event": "batch.succeeded"'):
        return False
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _length_ok(request: dict[str, Any]) -> bool:
    [value] = [v for k, v in request["headers"] if k == b"content-length"]
    stripped = value.strip()
    return stripped.isdigit() and int(stripped) <= LIMIT


@pytest.mark.parametrize("kind", ["middleware", "receiver"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_property_answers_are_documented_and_the_app_runs_exactly_for_valid_callbacks(
    kind: str, request: dict[str, Any]
) -> None:
    target = Target(kind)
    result = asyncio.run(
        drive(
            target.app_under_test,
            chunks=request["chunks"],
            headers=request["headers"],
            method=request["method"],
            path=PATH,
        )
    )
    assert result.status in ALLOWED
    assert (result.status == 200) == bool(target.calls)
    if request["signature"] not in ("valid", "valid_upper"):
        assert target.calls == []
    if _should_be_accepted(request):
        assert result.status == 200, result.body
        assert target.calls[0].body == request["body"]
