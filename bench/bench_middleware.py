"""What CallbackMiddleware and CallbackReceiver cost on a real server, and what they hold.

Throughput: uvicorn (one worker, access log off) in a separate process serves 1 KiB signed
``batch.succeeded`` callbacks to ``wrk`` (keep-alive, its own process), for

* ``bare``: a Starlette endpoint that reads the body and answers 200,
* ``middleware``: the same endpoint behind ``CallbackMiddleware``,
* ``receiver``: a ``CallbackReceiver`` with a no-op handler,

alternating the configurations for several rounds in one run and reporting the median
requests per second and the ratio to ``bare`` (target: at least 0.90).

Memory: a fresh server per configuration receives one signed body just under 16 MiB; the
growth of its peak RSS (``VmHWM``) is compared with the body size (target: at most 3x).
Besides the three above, ``middleware_context`` is the middleware with an endpoint that takes
the body from ``get_callback(request).body`` rather than ``await request.body()`` (Starlette
joins the replayed body with a final empty chunk, which copies it once more). Then a request
declaring ``Content-Length: 1000000000`` and sending no body is answered 413 at once, and the
peak RSS does not move: the body was never read.

    python bench/bench_middleware.py [--seconds 5] [--rounds 3] [--connections 16] [--no-pin]

``python bench/bench_middleware.py in-process`` drives the three apps in-process instead (no
HTTP, no server) and prints µs per request: the code's own cost, without the server's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runflow_callbacks import dumps_payload, sign
from runflow_callbacks.testing import free_port, wait_for_port

if TYPE_CHECKING:
    from starlette.requests import Request

SECRET = "whsec_bench_0123456789abcdef0123456789"
PATH = "/callbacks/runflow"
BODY_BYTES = 1024
CONFIGS = ("bare", "middleware", "receiver")
MiB = 1024 * 1024


def callback_body(size: int) -> bytes:
    """A signed-size ``batch.succeeded`` body of exactly ``size`` bytes (Runflow's format)."""
    base = {
        "event": "batch.succeeded",
        "batch_id": "0190f2a4-0000-7000-8000-000000000002",
        "status": "succeeded",
        "output": {
            "items": [{"run_id": "0190f2a4-0000-7000-8000-000000000010", "output": ""}],
            "succeeded": 1,
            "failed": 0,
            "cancelled": 0,
            "total": 1,
        },
        "duration_ms": 1000,
        "created_at": "2026-05-06T10:00:00+00:00",
        "completed_at": "2026-05-06T10:00:01+00:00",
        "metadata": None,
    }
    pad = size - len(dumps_payload(base))
    if pad < 0:
        raise ValueError(f"a callback body cannot be smaller than {size - pad} bytes")
    base["output"]["items"][0]["output"] = "x" * pad  # type: ignore[index]
    body = dumps_payload(base)
    assert len(body) == size
    return body


# --- the servers (run in their own process: ``bench_middleware.py serve CONFIG PORT``) -------


def build_app(config: str) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from runflow_callbacks import (
        CallbackContext,
        CallbackMiddleware,
        CallbackReceiver,
        get_callback,
    )

    async def endpoint(request: Request) -> Response:
        await request.body()
        return Response(b'{"status": "processed"}', media_type="application/json")

    async def context_endpoint(request: Request) -> Response:
        assert get_callback(request).body
        return Response(b'{"status": "processed"}', media_type="application/json")

    if config == "bare":
        return Starlette(routes=[Route(PATH, endpoint, methods=["POST"])])
    if config == "middleware":
        return CallbackMiddleware(
            Starlette(routes=[Route(PATH, endpoint, methods=["POST"])]), secrets=SECRET
        )
    if config == "middleware_context":  # the endpoint uses the context, not request.body()
        return CallbackMiddleware(
            Starlette(routes=[Route(PATH, context_endpoint, methods=["POST"])]), secrets=SECRET
        )
    if config == "receiver":
        receiver = CallbackReceiver(secrets=SECRET)

        @receiver.on_any
        async def no_op(context: CallbackContext) -> None:
            return None

        return Starlette(routes=[Route(PATH, receiver)])
    raise SystemExit(f"unknown configuration {config!r}")


def serve(config: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build_app(config),
        host="127.0.0.1",
        port=port,
        workers=1,
        log_level="warning",
        access_log=False,
    )


def pinned(cpu: int, command: list[str]) -> list[str]:
    """``command`` bound to one CPU with ``taskset`` (when there are two CPUs to share).

    The server on CPU 0 and wrk on CPU 1 stop migrating between cores, which otherwise costs
    cache refills on every request and adds more noise than the difference measured.
    """
    if PIN_CPUS and shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu), *command]
    return command


PIN_CPUS = True


class Server:
    """One server process for one configuration."""

    def __init__(self, config: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            pinned(0, [sys.executable, __file__, "serve", config, str(self.port)]),
            stdout=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)
        self.url = f"http://127.0.0.1:{self.port}{PATH}"

    def peak_rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        assert match, "no VmHWM in /proc/PID/status"
        return int(match.group(1)) * 1024

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- throughput -----------------------------------------------------------------------------

LUA = """
wrk.method = "POST"
wrk.body = io.open("{body}", "rb"):read("*a")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Runflow-Signature"] = "{signature}"
"""


@dataclass
class Run:
    rps: float
    #: Server CPU time per request: less sensitive than req/s to other load on the machine.
    cpu_us: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(server: Server, script: Path, *, seconds: int, connections: int) -> Run:
    """One wrk run against ``server``: requests per second and server CPU per request."""
    cpu_before = cpu_seconds(server.process.pid)
    result = subprocess.run(
        pinned(
            1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), server.url]
        ),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    cpu = cpu_seconds(server.process.pid) - cpu_before
    if "Non-2xx" in result.stdout or "Socket errors" in result.stdout:
        raise SystemExit(f"wrk saw errors against {server.url}:\n{result.stdout}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    count = re.search(r"(\d+) requests in", result.stdout)
    assert rps, result.stdout
    assert count, result.stdout
    return Run(rps=float(rps.group(1)), cpu_us=cpu / int(count.group(1)) * 1e6)


def throughput(*, seconds: int, rounds: int, connections: int) -> dict[str, list[Run]]:
    body = callback_body(BODY_BYTES)
    results: dict[str, list[Run]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(body)
        script = Path(tmp) / "post.lua"
        script.write_text(LUA.format(body=body_file, signature=sign(body, SECRET)))
        servers = {config: Server(config) for config in CONFIGS}
        try:
            for server in servers.values():  # warm up: imports, first-request caches
                run_wrk(server, script, seconds=1, connections=connections)
            for _ in range(rounds):
                for config, server in servers.items():
                    results[config].append(
                        run_wrk(server, script, seconds=seconds, connections=connections)
                    )
        finally:
            for server in servers.values():
                server.close()
    return results


# --- memory ---------------------------------------------------------------------------------


def post_raw(port: int, head: bytes, body: bytes = b"") -> tuple[bytes, float]:
    """Send one request over a fresh connection; return the status line and seconds taken."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head)
        if body:
            sock.sendall(body)
        answer = sock.recv(65536)
    return answer.split(b"\r\n", 1)[0], time.perf_counter() - started


def request_head(content_length: int, signature: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Runflow-Signature: {signature}\r\nContent-Length: {content_length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def memory(config: str, *, oversize: bool = True) -> dict[str, Any]:
    big = callback_body(16 * MiB - 4096)
    small = callback_body(BODY_BYTES)
    with Server(config) as server:
        # Warm up with a small callback so imports and first-request allocations are counted
        # in the baseline, not in the growth.
        line, _ = post_raw(server.port, request_head(len(small), sign(small, SECRET)), small)
        assert b" 200 " in line, line
        before = server.peak_rss_bytes()
        line, big_seconds = post_raw(server.port, request_head(len(big), sign(big, SECRET)), big)
        assert b" 200 " in line, line
        after_big = server.peak_rss_bytes()
        line, oversize_seconds = b"-", 0.0
        after_oversize = after_big
        if oversize:
            head = request_head(1_000_000_000, sign(small, SECRET))
            line, oversize_seconds = post_raw(server.port, head)
            after_oversize = server.peak_rss_bytes()
    return {
        "config": config,
        "body_bytes": len(big),
        "growth_bytes": after_big - before,
        "growth_ratio": (after_big - before) / len(big),
        "big_seconds": big_seconds,
        "oversize_status": line.decode(),
        "oversize_seconds": oversize_seconds,
        "oversize_growth_bytes": after_oversize - after_big,
    }


def in_process(*, calls: int = 2000, rounds: int = 7) -> dict[str, float]:
    """µs per request of each configuration driven in-process (no HTTP, no server): best round.

    Separates the code's own cost from what running inside a server adds (cold caches between
    requests, h11, the socket).
    """
    import asyncio

    body = callback_body(BODY_BYTES)
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"runflow-signature", sign(body, SECRET).encode()),
    ]

    async def one(app: Any) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": PATH,
            "raw_path": PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status = 0

        async def receive() -> dict[str, Any]:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    async def run() -> dict[str, float]:
        apps = {config: build_app(config) for config in CONFIGS}
        for config, app in apps.items():
            if await one(app) != 200:
                raise SystemExit(f"{config} did not answer 200")
        best: dict[str, float] = {}
        for _ in range(rounds):
            for config, app in apps.items():
                start = time.perf_counter()
                for _ in range(calls):
                    await one(app)
                micros = (time.perf_counter() - start) / calls * 1e6
                best[config] = min(best.get(config, micros), micros)
        return best

    return asyncio.run(run())


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["in-process"]:
        print("| configuration | µs per request, in-process | ratio to bare |")
        print("|---|---:|---:|")
        best = in_process()
        for config, micros in best.items():
            print(f"| {config} | {micros:.1f} | {micros / best['bare']:.2f}x |")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per config")
    parser.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not bind the server and wrk to separate CPUs"
    )
    args = parser.parse_args(argv)
    global PIN_CPUS  # noqa: PLW0603 - one switch read by pinned(), set once from the command line
    PIN_CPUS = not args.no_pin

    pin = "server on CPU 0, wrk on CPU 1" if pinned(0, []) else "not pinned"
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs ({pin}), uvicorn 1 worker, "
        f"{BODY_BYTES} B signed batch callbacks, wrk -t1 -c{args.connections} "
        f"-d{args.seconds}s x {args.rounds} rounds\n"
    )
    results = throughput(seconds=args.seconds, rounds=args.rounds, connections=args.connections)
    bare_rps = statistics.median(run.rps for run in results["bare"])
    bare_cpu = statistics.median(run.cpu_us for run in results["bare"])
    print(
        "| configuration | median req/s | runs | ratio to bare | target "
        "| server CPU per request | bare CPU / this CPU |"
    )
    print("|---|---:|---|---:|---|---:|---:|")
    for config in CONFIGS:
        rps = statistics.median(run.rps for run in results[config])
        cpu = statistics.median(run.cpu_us for run in results[config])
        runs = ", ".join(f"{run.rps:.0f}" for run in results[config])
        target = "-" if config == "bare" else ">= 0.90"
        print(
            f"| {config} | {rps:.0f} | {runs} | {rps / bare_rps:.2f} | {target} "
            f"| {cpu:.0f} µs | {bare_cpu / cpu:.2f} |"
        )

    print(
        "\n| configuration | body | peak RSS growth | ratio | target | "
        "Content-Length 1e9, no body | answered in | RSS growth |"
    )
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for config in ("bare", "middleware_context", "middleware", "receiver"):
        m = memory(config, oversize=config != "bare")
        print(
            f"| {config} | {m['body_bytes'] / MiB:.2f} MiB | {m['growth_bytes'] / MiB:.1f} MiB "
            f"| {m['growth_ratio']:.2f}x | <= 3x | {m['oversize_status']} "
            f"| {m['oversize_seconds'] * 1000:.1f} ms | {m['oversize_growth_bytes']} B |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
