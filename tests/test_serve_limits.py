"""``serve`` bounds what unauthenticated clients cost: real sockets against real uvicorn.

A stalled request head is answered 408 and closed after ``--head-timeout``, a stalled body
408 after ``--body-timeout``; bodies not yet verified cannot hold more than
``--max-unverified-bytes`` together (503 beyond, so Runflow retries), and past
``--max-connections`` concurrent requests the answer is 503. Nothing here asserts a duration:
each test only waits (generously) for the server to act.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import TYPE_CHECKING

import httpx
import pytest

from runflow_callbacks import sign
from runflow_callbacks.testing import free_port, serve_process

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "whsec_limits_0123456789abcdef"
PATH = "/callbacks/runflow"
BODY = (
    b'{"event": "run.completed", "run_id": "0190f2a4-0000-7000-8000-000000000001", '
    b'"status": "succeeded"}'
)
WAIT_S = 20.0  # how long a test waits for the server to act, at most


@contextlib.contextmanager
def serving(tmp_path: Path, *flags: str) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, "-m", "runflow_callbacks", "serve", "--port", str(port)]
    argv += ["--store", f"sqlite:///{tmp_path / 'limits.db'}", *flags]
    env = {**os.environ, "RUNFLOW_CALLBACK_SECRETS": SECRET}
    with serve_process(argv, port=port, env=env, cwd=tmp_path, log_path=tmp_path / "serve.log"):
        yield port


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    connection.settimeout(WAIT_S)
    return connection


def _read_until_closed(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or WAIT_S passes)."""
    received = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := connection.recv(65536):
            received += chunk
    return received


def _head(length: int, signature: str | None = None) -> bytes:
    lines = [
        f"POST {PATH} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
    ]
    if signature is not None:
        lines.append(f"Runflow-Signature: {signature}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.slow
def test_a_request_head_sent_byte_by_byte_is_cut_off_with_408(tmp_path: Path) -> None:
    with serving(tmp_path, "--head-timeout", "1") as port, _connect(port) as connection:
        connection.sendall(b"POST /callbacks/runflow HTTP/1.1\r\nHost: x\r\n")  # never finished
        answer = _read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request_timeout" in answer


@pytest.mark.slow
def test_an_idle_connection_that_never_speaks_is_closed(tmp_path: Path) -> None:
    with serving(tmp_path, "--head-timeout", "1") as port, _connect(port) as connection:
        answer = _read_until_closed(connection)
    assert answer.startswith(b"HTTP/1.1 408")


@pytest.mark.slow
def test_a_body_sent_one_byte_short_is_answered_408_and_a_real_callback_still_passes(
    tmp_path: Path,
) -> None:
    signature = sign(BODY, SECRET)
    with serving(tmp_path, "--body-timeout", "1") as port:
        with _connect(port) as connection:
            connection.sendall(_head(len(BODY), signature) + BODY[:-1])
            answer = _read_until_closed(connection)
        real = httpx.post(
            f"http://127.0.0.1:{port}{PATH}",
            content=BODY,
            headers={"Runflow-Signature": signature},
            timeout=WAIT_S,
        )
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request_timeout" in answer
    assert real.status_code == 200


@pytest.mark.slow
def test_bodies_not_yet_verified_cannot_pin_more_than_their_budget(tmp_path: Path) -> None:
    flags = ("--max-unverified-bytes", "1000", "--body-timeout", "30")
    with serving(tmp_path, *flags) as port, contextlib.ExitStack() as stack:
        # The first declares 600 bytes and stalls: it holds 600 of the 1000.
        first = stack.enter_context(_connect(port))
        first.sendall(_head(600, "0" * 64) + b"{")
        second = stack.enter_context(_connect(port))
        second.sendall(_head(600, "0" * 64))
        refused = _read_until_closed(second)
        small = httpx.post(
            f"http://127.0.0.1:{port}{PATH}",
            content=BODY,
            headers={"Runflow-Signature": sign(BODY, SECRET)},
            timeout=WAIT_S,
        )
    assert refused.startswith(b"HTTP/1.1 503"), refused
    assert b"overloaded" in refused
    assert small.status_code == 200  # what fits in the budget is still received


@pytest.mark.slow
def test_past_max_connections_requests_are_answered_503(tmp_path: Path) -> None:
    with serving(tmp_path, "--max-connections", "2", "--head-timeout", "30") as port:
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(_connect(port)).sendall(_head(10, "0" * 64) + b"{")
            over = stack.enter_context(_connect(port))
            over.sendall(_head(len(BODY), sign(BODY, SECRET)) + BODY)
            answer = _read_until_closed(over)
        after = httpx.post(
            f"http://127.0.0.1:{port}{PATH}",
            content=BODY,
            headers={"Runflow-Signature": sign(BODY, SECRET)},
            timeout=WAIT_S,
        )
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert after.status_code == 200  # once the slow ones are gone, callbacks pass again
