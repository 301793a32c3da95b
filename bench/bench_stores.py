"""How many callbacks per second each store takes through the exactly-once cycle.

For each backend (memory, a SQLite file, Redis, PostgreSQL) and each concurrency level, a fresh
namespace receives ``--callbacks`` distinct batch callbacks (1 KiB bodies), ``concurrency``
asyncio tasks at a time on one store object, and the rows say callbacks per second of:

* ``record+claim+complete``: the two store calls of one successful delivery
  (``record_and_claim`` then ``complete``),
* ``handle (sync)``: :meth:`CallbackProcessor.handle` with a no-op handler (the same two
  calls plus the key, the handler's context and the outcome),
* ``duplicate``: ``handle`` of a callback already processed (one refused ``record_and_claim``),
* ``(reference) one round trip``: a bare ``PING`` (Redis) or ``SELECT 1`` (PostgreSQL) per
  call, one at a time: the client and network floor; one cycle costs two round trips.

Each figure is the best of ``--repeat`` rounds. Redis and PostgreSQL come from
``RUNFLOW_TEST_REDIS_URL`` / ``RUNFLOW_TEST_POSTGRES_URL`` or a private throwaway server
(``tests/servers.py``: Redis without persistence, PostgreSQL with ``fsync=off``); a backend whose
server cannot be started is left out with a note. SQLite runs with ``synchronous=FULL`` (every
commit is fsynced), as in production.

    python bench/bench_stores.py [--callbacks 500] [--concurrency 1,16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from runflow_callbacks.models import parse_callback
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.stores import IncomingCallback, open_store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import ServerUnavailable, postgres_server, redis_server

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import CallbackStore

BACKENDS = ("memory", "sqlite", "redis", "postgres")
LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class Row:
    backend: str
    concurrency: int
    what: str
    per_second: float


def bodies(count: int) -> list[bytes]:
    """``count`` distinct ``batch.succeeded`` bodies of about 1 KiB."""
    pad = "x" * 880
    return [
        (
            f'{{"event": "batch.succeeded", "batch_id": "{uuid.UUID(int=index)}", '
            f'"status": "succeeded", "output": null, "duration_ms": 1000, '
            f'"metadata": {{"pad": "{pad}"}}}}'
        ).encode()
        for index in range(count)
    ]


async def _noop(context: CallbackContext) -> None:
    return None


async def _bounded(concurrency: int, jobs: list[Callable[[], Awaitable[object]]]) -> float:
    """Run ``jobs`` with ``concurrency`` workers; the wall time in seconds."""
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def _round(url: str, what: str, payloads: list[bytes], concurrency: int) -> float:
    """One round: callbacks per second."""
    namespace = f"bench_{uuid.uuid4().hex[:12]}"
    async with open_store(url, namespace=namespace) as store:
        processor = CallbackProcessor(store, _noop)
        warmup = [processor.incoming(parse_callback(body), body) for body in payloads[:concurrency]]
        incoming = [
            processor.incoming(parse_callback(body), body) for body in payloads[concurrency:]
        ]
        # Tables, connections and scripts are set up outside the measurement.
        await asyncio.gather(*(_handle(processor, item)() for item in warmup))
        if what == "duplicate":
            await _bounded(concurrency, [_handle(processor, item) for item in incoming])
        if what == "record+claim+complete":
            jobs = [_cycle(store, _incoming(processor, item)) for item in incoming]
        else:
            jobs = [_handle(processor, item) for item in incoming]
        seconds = await _bounded(concurrency, jobs)
    return len(incoming) / seconds


def _incoming(processor: CallbackProcessor, context: CallbackContext) -> IncomingCallback:
    return IncomingCallback(
        key=processor.key_of(context),
        kind=context.payload.kind,
        subject_id=context.subject_id,
        event=context.event,
        body=context.body,
        headers=context.headers,
        secret_id=None,
        secret_label=None,
        request_id=None,
        received_at=context.received_at,
    )


def _cycle(store: CallbackStore, item: IncomingCallback) -> Callable[[], Awaitable[object]]:
    async def run() -> None:
        now = item.received_at
        admission = await store.record_and_claim(item, now=now, lease=LEASE)
        assert admission.token is not None
        assert await store.complete(item.key, admission.token, now=now)

    return run


def _handle(processor: CallbackProcessor, item: CallbackContext) -> Callable[[], Awaitable[object]]:
    async def run() -> None:
        outcome = await processor.handle(item)
        assert outcome.ok, outcome

    return run


async def _round_trips(backend: str, url: str, count: int) -> float:
    """Bare round trips per second, one at a time (the floor of a server backend)."""
    if backend == "redis":
        import redis.asyncio as redis_asyncio

        client = redis_asyncio.Redis.from_url(url)
        try:
            await client.ping()
            started = time.perf_counter()
            for _ in range(count):
                await client.ping()
            return count / (time.perf_counter() - started)
        finally:
            await client.aclose()
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as connection:
        await connection.execute("SELECT 1")
        started = time.perf_counter()
        for _ in range(count):
            await connection.execute("SELECT 1")
        return count / (time.perf_counter() - started)


async def measure_backend(
    backend: str, url: str, *, callbacks: int, concurrency: list[int], repeat: int
) -> list[Row]:
    """Every row of one backend."""
    rows = []
    for level in concurrency:
        payloads = bodies(callbacks + level)
        for what in ("record+claim+complete", "handle (sync)", "duplicate"):
            best = 0.0
            for _ in range(repeat):
                best = max(best, await _round(url, what, payloads, level))
            rows.append(Row(backend, level, what, best))
    if backend in {"redis", "postgres"}:
        best = max([await _round_trips(backend, url, callbacks) for _ in range(repeat)])
        rows.append(Row(backend, 1, "(reference) one round trip", best))
    return rows


def measure(
    backends: tuple[str, ...] = BACKENDS,
    *,
    callbacks: int = 500,
    concurrency: list[int] | None = None,
    repeat: int = 3,
) -> tuple[list[Row], list[str]]:
    """Rows for every backend that could run, and a note for each that could not."""
    levels = concurrency or [1, 16]
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="runflow-bench-") as workdir:
        for backend in backends:
            with contextlib.ExitStack() as stack:
                try:
                    url = _url(backend, workdir, stack)
                except ServerUnavailable as exc:
                    notes.append(f"{backend}: left out ({exc})")
                    continue
                rows += asyncio.run(
                    measure_backend(
                        backend, url, callbacks=callbacks, concurrency=levels, repeat=repeat
                    )
                )
    return rows, notes


def _url(backend: str, workdir: str, stack: contextlib.ExitStack) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{Path(workdir) / 'bench.db'}"
    if backend == "redis":
        return stack.enter_context(redis_server())
    if backend == "postgres":
        return stack.enter_context(postgres_server())
    raise ValueError(f"unknown backend {backend!r}")


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| backend | concurrency | what | callbacks/s |", "|---|---:|---|---:|"]
    lines += [
        f"| {row.backend} | {row.concurrency} | {row.what} | {row.per_second:,.0f} |"
        for row in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--callbacks", type=int, default=500, help="callbacks per round")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated task counts")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per figure (best kept)")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help="comma-separated subset of " + str(BACKENDS)
    )
    args = parser.parse_args(argv)
    backends = tuple(name.strip() for name in args.backends.split(",") if name.strip())
    levels = [int(level) for level in args.concurrency.split(",")]
    rows, notes = measure(
        backends, callbacks=args.callbacks, concurrency=levels, repeat=args.repeat
    )
    print(table(rows))
    for note in notes:
        print(f"\n{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
