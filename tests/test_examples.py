"""Both examples, each under a real uvicorn process on a free port, receiving real HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from asgi_driver import OTHER_SECRET, PATH, SECRET, batch_body, run_body
from runflow_callbacks import sign
from runflow_callbacks.testing import free_port, wait_for_port

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=["starlette_app", "fastapi_app"])
def example(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """Start ``examples/<name>.py`` with uvicorn; yield its base URL and its log file."""
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / f"{request.param}.log"
    env = {**os.environ, "RUNFLOW_CALLBACK_SECRETS": f"{SECRET}, {OTHER_SECRET}"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                f"examples.{request.param}:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
            yield f"http://127.0.0.1:{port}", log
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - only a hung server
                process.kill()
                process.wait(timeout=10)


def test_signed_callbacks_are_received_logged_and_answered_200(
    example: tuple[str, Path],
) -> None:
    url, log = example
    batch = batch_body()
    run = run_body()
    with httpx.Client(base_url=url, timeout=10) as http:
        first = http.post(PATH, content=batch, headers={"Runflow-Signature": sign(batch, SECRET)})
        # rotation: the second configured secret is accepted too
        second = http.post(
            PATH, content=run, headers={"Runflow-Signature": sign(run, OTHER_SECRET)}
        )
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == {"status": "processed"}
    text = log.read_text()
    assert "received batch.succeeded for 0190f2a4-0000-7000-8000-000000000002" in text
    assert "received run.completed" in text
    assert SECRET not in text


def test_forged_malformed_and_oversize_requests_get_their_statuses(
    example: tuple[str, Path],
) -> None:
    url, log = example
    body = batch_body()
    with httpx.Client(base_url=url, timeout=10) as http:
        forged = http.post(PATH, content=body, headers={"Runflow-Signature": "0" * 64})
        unsigned = http.post(PATH, content=body)
        garbage = http.post(PATH, content=b"[]", headers={"Runflow-Signature": sign(b"[]", SECRET)})
        tampered = http.post(
            PATH, content=body + b" ", headers={"Runflow-Signature": sign(body, SECRET)}
        )
    assert [r.status_code for r in (forged, unsigned, garbage, tampered)] == [401, 401, 400, 401]

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: example\r\n"
            b"Runflow-Signature: " + sign(body, SECRET).encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
    assert "Traceback" not in log.read_text()
    assert " 500 " not in log.read_text()
