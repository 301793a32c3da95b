"""What CallbackMiddleware and CallbackReceiver cost on a real server, and what they hold.

Throughput: uvicorn (h11, one worker, access log off) in a separate process serves 1 KiB
signed ``batch.succeeded`` callbacks to ``wrk`` (keep-alive, its own process; the server
pinned to CPU 0, wrk to CPU 1), for

* ``bare``: a Starlette endpoint that reads the body and answers 200,
* ``middleware``: the same endpoint behind ``CallbackMiddleware``,
* ``receiver``: a ``CallbackReceiver`` with a no-op handler,

alternating the configurations for several rounds in one run. Each row gives the median
requests per second, the ratio to ``bare`` (median and range of the per-round ratios: each
round's figure over ``bare``'s in the same round) and the server's CPU time per request
(target: at least 0.92x of ``bare``).

Memory: a fresh server per configuration and body shape receives a small warm-up callback of
that shape, then one signed body of 16 MiB minus 4 KiB, then a second one (another batch or
run); the growth of its peak RSS (``VmHWM``) is compared with the body size (target: at most
1.5x). The shapes are ``bench_verify.py``'s (``short``, ``urls``, ``failed``, ``metadata``,
``run``). Besides ``bare``, ``middleware`` and ``receiver``, ``middleware_context`` is the
middleware with an endpoint that takes the body from ``get_callback(request).body`` rather than
``await request.body()`` (Starlette joins the replayed body with a final empty chunk, which
copies it once more), and ``serve_sync`` / ``serve_record`` are ``runflow-callbacks serve`` on
SQLite with a no-op handler and without one (record only). Then a request declaring
``Content-Length: 1000000000`` and sending no body is answered 413 at once, and the peak RSS
does not move: the body was never read.

    python bench/bench_middleware.py [--seconds 5] [--rounds 5] [--connections 16] [--no-pin]
                                     [--only throughput|memory] [--shapes short,run]
                                     [--configs receiver,serve_sync] [--memory-runs 1]

``python bench/bench_middleware.py in-process [--profile CONFIG]`` drives the three apps
in-process instead (no HTTP, no server) and prints µs per request: the code's own cost,
without the server's; with ``--profile``, a cProfile of that configuration's requests.
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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runflow_callbacks import dumps_payload, sign
from runflow_callbacks.testing import free_port, wait_for_port

if TYPE_CHECKING:
    from collections.abc import Iterable

    from starlette.requests import Request

    from runflow_callbacks import CallbackContext

HERE = Path(__file__).resolve().parent
SECRET = "whsec_bench_0123456789abcdef0123456789"
PATH = "/callbacks/runflow"
BODY_BYTES = 1024
CONFIGS = ("bare", "middleware", "receiver")
MiB = 1024 * 1024
#: Throughput target: req/s and server CPU per request, as a share of ``bare``'s.
THROUGHPUT_TARGET = 0.92
#: Memory: the body (16 MiB minus 4 KiB, so that it fits the default ``max_body_bytes``) and
#: the most peak RSS growth per body byte.
MEMORY_BODY_BYTES = 16 * MiB - 4096
WARM_UP_BYTES = 64 * 1024
MEMORY_TARGET = 1.5
MEMORY_CONFIGS = (
    "bare",
    "middleware_context",
    "middleware",
    "receiver",
    "serve_sync",
    "serve_record",
)
#: ``runflow-callbacks serve`` on SQLite: with a no-op handler (sync), and record only.
SERVE_ARGS: dict[str, tuple[str, ...]] = {
    "serve_sync": ("--handler", "bench_middleware:no_op"),
    "serve_record": (),
}


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


def shape_body(shape: str, size: int) -> bytes:
    """A body of ``bench_verify.py``'s ``shape`` of exactly ``size`` bytes."""
    from bench_verify import SHAPES

    return SHAPES[shape](size)


def shape_names() -> tuple[str, ...]:
    from bench_verify import SHAPES

    return tuple(SHAPES)


def with_fresh_id(body: bytes) -> bytes:
    """``body`` as the callback of another batch or run (a store records it anew)."""
    from runflow_callbacks import parse_callback

    subject = parse_callback(body).subject_id
    assert subject is not None
    return body.replace(subject.encode(), str(uuid.uuid4()).encode())


async def no_op(context: CallbackContext) -> None:
    """The handler of ``serve_sync``: does nothing."""


# --- the servers (run in their own process: ``bench_middleware.py serve CONFIG PORT``) -------


def build_app(config: str) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from runflow_callbacks import CallbackMiddleware, CallbackReceiver, get_callback

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
    """One server process for one configuration.

    ``serve_sync`` and ``serve_record`` run ``runflow-callbacks serve`` on a SQLite file in
    ``workdir``; every other configuration is :func:`build_app` under :func:`serve`.
    """

    def __init__(self, config: str, *, workdir: Path | None = None) -> None:
        self.port = free_port()
        env: dict[str, str] | None = None
        if config in SERVE_ARGS:
            assert workdir is not None, "serve needs a directory for its SQLite file"
            command = [
                *(sys.executable, "-m", "runflow_callbacks", "serve"),
                *("--port", str(self.port), "--log-level", "warning"),
                *("--store", f"sqlite:///{workdir / config}.db", *SERVE_ARGS[config]),
            ]
            env = {**os.environ, "PYTHONPATH": str(HERE), "RUNFLOW_CALLBACK_SECRETS": SECRET}
        else:
            command = [sys.executable, __file__, "serve", config, str(self.port)]
        self.process = subprocess.Popen(
            pinned(0, command),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if config in SERVE_ARGS else None,  # serve's banner
        )
        wait_for_port("127.0.0.1", self.port, timeout=60)
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


def spread(values: Iterable[float]) -> str:
    """``median (min-max)`` of ``values``, two decimals."""
    ordered = sorted(values)
    return f"{statistics.median(ordered):.2f} ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def throughput_table(results: dict[str, list[Run]]) -> str:
    """The throughput table: per configuration, req/s and CPU, as ratios to ``bare``.

    The ratios are taken round by round (each round's figure over ``bare``'s in the same
    round), then summarized as median and range: a slow minute moves both servers alike.
    """
    bare = results["bare"]
    lines = [
        "| configuration | median req/s | runs | req/s ratio to bare, median (range) | target "
        "| server CPU per request, median | bare CPU / this CPU, median (range) |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for config, runs in results.items():
        rps = statistics.median(run.rps for run in runs)
        cpu = statistics.median(run.cpu_us for run in runs)
        rounds = ", ".join(f"{run.rps:.0f}" for run in runs)
        rps_ratio = spread(run.rps / base.rps for run, base in zip(runs, bare, strict=True))
        cpu_ratio = spread(base.cpu_us / run.cpu_us for run, base in zip(runs, bare, strict=True))
        target = "-" if config == "bare" else f">= {THROUGHPUT_TARGET:.2f}"
        lines.append(
            f"| {config} | {rps:.0f} | {rounds} | {rps_ratio} | {target} "
            f"| {cpu:.0f} µs | {cpu_ratio} |"
        )
    return "\n".join(lines)


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


def post_callback(server: Server, body: bytes) -> float:
    """POST one signed callback to ``server``, which must answer 200; seconds taken."""
    line, seconds = post_raw(server.port, request_head(len(body), sign(body, SECRET)), body)
    assert b" 200 " in line, line
    return seconds


@dataclass
class Bodies:
    """The callbacks one memory measurement sends, all of one shape."""

    shape: str
    warm_up: bytes
    big: bytes
    second: bytes

    @classmethod
    def of(cls, shape: str, size: int = MEMORY_BODY_BYTES) -> Bodies:
        big = shape_body(shape, size)
        return cls(
            shape=shape,
            warm_up=with_fresh_id(shape_body(shape, WARM_UP_BYTES)),
            big=big,
            second=with_fresh_id(big),
        )


def memory(config: str, bodies: Bodies, *, workdir: Path, oversize: bool = False) -> dict[str, Any]:
    """Peak RSS growth of a fresh ``config`` server receiving ``bodies``' big callbacks."""
    with Server(config, workdir=workdir) as server:
        # Warm up with a small callback so imports and first-request allocations are counted
        # in the baseline, not in the growth.
        post_callback(server, bodies.warm_up)
        before = server.peak_rss_bytes()
        big_seconds = post_callback(server, bodies.big)
        after_big = server.peak_rss_bytes()
        post_callback(server, bodies.second)
        after_second = server.peak_rss_bytes()
        line, oversize_seconds = b"-", 0.0
        after_oversize = after_second
        if oversize:
            head = request_head(1_000_000_000, sign(bodies.warm_up, SECRET))
            line, oversize_seconds = post_raw(server.port, head)
            after_oversize = server.peak_rss_bytes()
    size = len(bodies.big)
    return {
        "config": config,
        "shape": bodies.shape,
        "body_bytes": size,
        "growth_bytes": after_big - before,
        "growth_ratio": (after_big - before) / size,
        "second_ratio": (after_second - before) / size,
        "big_seconds": big_seconds,
        "oversize_status": line.decode(),
        "oversize_seconds": oversize_seconds,
        "oversize_growth_bytes": after_oversize - after_second,
    }


@dataclass
class MemoryResults:
    """Peak RSS growth / body by (configuration, shape): after the first big callback and
    after the second; the oversize request's answer by configuration; the body sizes."""

    first: dict[tuple[str, str], list[float]]
    second: dict[tuple[str, str], list[float]]
    oversize: dict[str, dict[str, Any]]
    sizes: dict[str, int]


def measure_memory(
    shapes: Iterable[str], configs: Iterable[str] = MEMORY_CONFIGS, *, runs: int = 1
) -> MemoryResults:
    """Every configuration receiving every shape's bodies, a fresh server each time."""
    results = MemoryResults(first={}, second={}, oversize={}, sizes={})
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            bodies = Bodies.of(shape)
            results.sizes[shape] = len(bodies.big)
            for run in range(runs):
                workdir = Path(tmp) / f"{shape}-{run}"
                workdir.mkdir()
                for config in configs:
                    ask_oversize = config not in results.oversize and config != "bare"
                    m = memory(config, bodies, workdir=workdir, oversize=ask_oversize)
                    if ask_oversize:
                        results.oversize[config] = m
                    results.first.setdefault((config, shape), []).append(m["growth_ratio"])
                    results.second.setdefault((config, shape), []).append(m["second_ratio"])
    return results


def memory_tables(results: MemoryResults) -> str:
    """The memory tables: one row per configuration, one column per shape."""
    shapes = tuple(results.sizes)
    configs = tuple(dict.fromkeys(config for config, _ in results.first))

    def cell(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.2f}x"
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    def verdict(config: str) -> str:
        if config == "bare":
            return "(reference)"
        worst = max(max(results.first[config, shape]) for shape in shapes)
        return "met" if worst <= MEMORY_TARGET else f"**missed** ({worst:.2f}x)"

    body_sizes = ", ".join(f"{shape} {size:,} B" for shape, size in results.sizes.items())
    header = ["| configuration | " + " | ".join(shapes) + " |", "|---|" + "---:|" * len(shapes)]
    out = [
        f"Peak RSS growth / body, one callback ({body_sizes}); target <= {MEMORY_TARGET}x:",
        "",
        header[0].removesuffix(" |") + f" | <= {MEMORY_TARGET}x |",
        header[1] + "---|",
    ]
    out.extend(
        f"| {config} | "
        + " | ".join(cell(results.first[config, shape]) for shape in shapes)
        + f" | {verdict(config)} |"
        for config in configs
    )
    out += ["", "After a second callback of the same size (another batch or run):", "", *header]
    out.extend(
        f"| {config} | "
        + " | ".join(cell(results.second[config, shape]) for shape in shapes)
        + " |"
        for config in configs
    )
    if results.oversize:
        out += [
            "",
            "| configuration | Content-Length 1e9, no body | answered in | peak RSS growth |",
            "|---|---|---:|---:|",
        ]
        out.extend(
            f"| {config} | {m['oversize_status']} | {m['oversize_seconds'] * 1000:.1f} ms "
            f"| {m['oversize_growth_bytes'] // 1024} KiB |"
            for config, m in results.oversize.items()
        )
    return "\n".join(out)


def in_process_rounds(
    *, calls: int = 2000, rounds: int = 7, configs: Iterable[str] = CONFIGS
) -> dict[str, list[float]]:
    """µs per request of each configuration driven in-process (no HTTP, no server), per round.

    The configurations alternate round by round. Separates the code's own cost from what
    running inside a server adds (cold caches between requests, h11, the socket).
    """
    import asyncio

    drive = _driver()

    async def run() -> dict[str, list[float]]:
        apps = {config: build_app(config) for config in configs}
        for config, app in apps.items():
            if await drive(app) != 200:
                raise SystemExit(f"{config} did not answer 200")
        micros: dict[str, list[float]] = {config: [] for config in apps}
        for _ in range(rounds):
            for config, app in apps.items():
                start = time.perf_counter()
                for _ in range(calls):
                    await drive(app)
                micros[config].append((time.perf_counter() - start) / calls * 1e6)
        return micros

    return asyncio.run(run())


def in_process(*, calls: int = 2000, rounds: int = 7) -> dict[str, float]:
    """µs per request of each configuration driven in-process: the best round of each."""
    return {
        config: min(micros)
        for config, micros in in_process_rounds(calls=calls, rounds=rounds).items()
    }


def _driver() -> Any:
    """An async function that sends one signed 1 KiB callback to an ASGI app: its status."""
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

    return one


def profile(config: str, *, calls: int = 20000, top: int = 40) -> str:
    """A cProfile of ``calls`` in-process requests to ``config``: the ``top`` functions by
    own time, then by cumulative time."""
    import asyncio
    import cProfile
    import io
    import pstats

    drive = _driver()
    app = build_app(config)

    async def run() -> None:
        for _ in range(200):  # warm up outside the profile
            await drive(app)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            await drive(app)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        report.append(out.getvalue())

    report: list[str] = []
    asyncio.run(run())
    return report[0]


def in_process_table(micros: dict[str, list[float]]) -> str:
    bare = micros["bare"]
    lines = [
        "| configuration | µs per request, best | median | ratio to bare, median of rounds "
        "(range) | over bare, median |",
        "|---|---:|---:|---:|---:|",
    ]
    for config, rounds in micros.items():
        ratio = spread(mine / base for mine, base in zip(rounds, bare, strict=True))
        extra = statistics.median(mine - base for mine, base in zip(rounds, bare, strict=True))
        lines.append(
            f"| {config} | {min(rounds):.1f} | {statistics.median(rounds):.1f} | {ratio} "
            f"| {'-' if config == 'bare' else f'+{extra:.1f} µs'} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    if argv[:1] == ["in-process"]:
        options = argparse.ArgumentParser(prog="bench_middleware.py in-process")
        options.add_argument("--calls", type=int, default=2000, help="requests per round")
        options.add_argument("--rounds", type=int, default=15, help="alternating rounds")
        options.add_argument("--profile", choices=CONFIGS, help="cProfile one configuration")
        chosen = options.parse_args(argv[1:])
        if chosen.profile:
            print(profile(chosen.profile))
            return 0
        print(f"python {sys.version.split()[0]}, {chosen.rounds} rounds x {chosen.calls} calls\n")
        print(in_process_table(in_process_rounds(calls=chosen.calls, rounds=chosen.rounds)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per config")
    parser.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not bind the server and wrk to separate CPUs"
    )
    parser.add_argument("--only", choices=("throughput", "memory"), help="one half only")
    parser.add_argument("--shapes", help="comma-separated body shapes for memory (default: all)")
    parser.add_argument(
        "--configs", help="comma-separated configurations for memory (default: all)"
    )
    parser.add_argument(
        "--memory-runs", type=int, default=1, help="fresh servers per configuration and shape"
    )
    args = parser.parse_args(argv)
    global PIN_CPUS  # noqa: PLW0603 - one switch read by pinned(), set once from the command line
    PIN_CPUS = not args.no_pin

    pin = "server on CPU 0, wrk on CPU 1" if pinned(0, []) else "not pinned"
    with open("/proc/loadavg") as loadavg:
        load = " ".join(loadavg.read().split()[:3])
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load}: python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs ({pin}), uvicorn 1 worker (h11)\n"
    )
    if args.only != "memory":
        print(
            f"{BODY_BYTES} B signed batch callbacks, wrk -t1 -c{args.connections} "
            f"-d{args.seconds}s x {args.rounds} rounds\n"
        )
        results = throughput(seconds=args.seconds, rounds=args.rounds, connections=args.connections)
        print(throughput_table(results))
        print()
    if args.only != "throughput":
        shapes = args.shapes.split(",") if args.shapes else shape_names()
        configs = args.configs.split(",") if args.configs else MEMORY_CONFIGS
        print(memory_tables(measure_memory(shapes, configs, runs=args.memory_runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
