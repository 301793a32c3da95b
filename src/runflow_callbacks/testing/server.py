"""Run an ASGI app under a real uvicorn server, for tests and demos.

>>> from starlette.applications import Starlette
>>> with serve_in_thread(Starlette()) as base_url:  # doctest: +SKIP
...     httpx.get(base_url + "/")

Needs the ``serve`` extra (uvicorn).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path

__all__ = ["free_port", "serve_in_thread", "serve_process", "wait_for_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, *, timeout: float = 15.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


@contextlib.contextmanager
def serve_in_thread(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    startup_timeout: float = 15.0,
    **config: Any,
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread; yield its base URL.

    ``port=0`` binds a free port. Extra keyword arguments go to ``uvicorn.Config``. The server
    is shut down (gracefully) when the block ends.
    """
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigurationError(
            "serve_in_thread needs uvicorn: pip install 'runflow-callbacks[serve]'"
        ) from None

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, **config))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{bound_port}")
        time.sleep(0.005)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def serve_process(
    argv: Sequence[str],
    *,
    port: int,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    log_path: str | Path | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until it listens on ``host:port``, stop it afterwards.

    Output goes to ``log_path`` (discarded without one). The process is terminated (killed
    after 10 seconds) when the block ends, also when it failed to start.
    """
    with contextlib.ExitStack() as stack:
        out = (
            stack.enter_context(open(log_path, "wb"))
            if log_path is not None
            else subprocess.DEVNULL
        )
        process = subprocess.Popen(  # noqa: S603 - argv comes from the caller, not a shell
            list(argv), env=None if env is None else dict(env), cwd=cwd, stdout=out, stderr=out
        )
        try:
            wait_for_port(host, port, timeout=startup_timeout)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - only a hung server
                process.kill()
                process.wait(timeout=10)
