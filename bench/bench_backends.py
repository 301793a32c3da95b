"""PostgreSQL and Redis: what batching the per-callback writes changes, before and after.

Two measurements, each side by side for two versions of the two store modules: ``after`` (the
installed package) and, with ``--before DIR``, ``before``: ``postgres.py`` and ``redis.py``
copied from an earlier version into ``DIR`` (loaded under other module names in-process, and
in place of the package's modules in a ``serve`` process). The versions alternate within
each round, so that both see the same load on a shared machine.

* In-process: callbacks per second through :meth:`CallbackProcessor.handle` (sync, a no-op
  handler, distinct 1 KiB ``batch.succeeded`` callbacks into a fresh namespace; connections,
  tables and scripts warmed up first), ``concurrency`` asyncio tasks sharing one store object.
  Each row gives the median and every round's figure, the median of the rounds' after/before
  ratios (both versions run back to back in each round), the client's CPU time per callback
  (this process), the store server's (``redis-server``, or the postmaster and its backends),
  and, for a version that batches, the mean number of writes per batch.
* With ``--serve``, end to end: ``runflow-callbacks serve --handler`` (no-op handler, uvicorn,
  one worker) on each backend and version, next to the store-less ``CallbackReceiver``
  (``bench_middleware.py``'s), under wrk sending distinct signed callbacks (a fresh pool for
  every run, as ``bench_serve.py`` does). Every server process runs on CPU 0 and wrk on CPU 1
  (``taskset``, when there are two CPUs); the store server runs where the kernel puts it.

Store servers are private and started here, in two ``--durability`` settings: ``fast`` is the
test suite's (Redis without persistence, PostgreSQL with ``fsync=off``), ``durable`` what
production runs (Redis ``appendonly yes`` with ``appendfsync always``; PostgreSQL with
``fsync`` and ``synchronous_commit`` on).

    python bench/bench_backends.py --before /tmp/before [--callbacks 1500] [--rounds 5]
        [--concurrency 1,16] [--backends redis,postgres] [--durability fast,durable]
        [--serve [--no-in-process]] [--seconds 5] [--serve-rounds 3] [--connections 16]

``python bench/bench_backends.py serve-with DIR|- ARGS...`` is how the ``serve`` processes start:
``runflow-callbacks ARGS...`` with the store modules of ``DIR`` (``-``: the package's own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench_middleware import (
    BODY_BYTES,
    PATH,
    SECRET,
    Run,
    Server,
    callback_body,
    pinned,
    run_wrk,
)
from bench_stores import bodies

from runflow_callbacks import sign
from runflow_callbacks.models import parse_callback
from runflow_callbacks.processing import CallbackProcessor
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import free_port, wait_for_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import PostgresCluster, ServerUnavailable, _postgres_bin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from types import ModuleType

    from runflow_callbacks import CallbackContext
    from runflow_callbacks.stores import CallbackStore

HERE = Path(__file__).resolve().parent
BACKENDS = ("redis", "postgres")
DURABILITIES = ("fast", "durable")
MODULES = {"redis": "RedisStore", "postgres": "PostgresStore"}
#: The batch id of ``callback_body``; distinct bodies swap it for a fresh one of equal length.
TEMPLATE_ID = b"0190f2a4-0000-7000-8000-000000000002"
DISTINCT_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local signatures, bodies = {{}}, {{}}
for line in io.lines("{pool}") do
  local signature, body = line:match("^(%x+)\\t(.*)$")
  signatures[#signatures + 1] = signature
  bodies[#bodies + 1] = body
end
local next_index = 0
request = function()
  next_index = next_index % #bodies + 1
  local headers = {{}}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Runflow-Signature"] = signatures[next_index]
  return wrk.format(nil, nil, headers, bodies[next_index])
end
"""


async def no_op(context: CallbackContext) -> None:
    """The handler of every ``serve`` process and in-process round: does nothing."""


# --- the two versions ----------------------------------------------------------------------


def load_modules(directory: Path) -> dict[str, ModuleType]:
    """``postgres.py`` and ``redis.py`` of ``directory``, as modules of their own."""
    modules = {}
    for backend in BACKENDS:
        name = f"runflow_bench_before_{backend}"
        spec = importlib.util.spec_from_file_location(name, directory / f"{backend}.py")
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot load {directory / backend}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
        modules[backend] = module
    return modules


@dataclass
class Version:
    name: str
    #: ``backend -> (url, namespace) -> store``
    factories: dict[str, Callable[[str, str], CallbackStore]]
    #: What ``serve-with`` takes: the directory of the modules, or ``-``.
    directory: str


def versions(before: Path | None) -> list[Version]:
    def package(backend: str) -> Callable[[str, str], CallbackStore]:
        return lambda url, namespace: open_store(url, namespace=namespace)

    found = [Version("after", {b: package(b) for b in BACKENDS}, "-")]
    if before is not None:
        modules = load_modules(before)

        def earlier(backend: str) -> Callable[[str, str], CallbackStore]:
            kind = getattr(modules[backend], MODULES[backend])
            return lambda url, namespace: kind(url, namespace=namespace)

        found.insert(0, Version("before", {b: earlier(b) for b in BACKENDS}, str(before)))
    return found


# --- store servers -------------------------------------------------------------------------


def process_cpu(pid: int, *, children: bool = False) -> float:
    """CPU seconds ``pid`` used so far (with its reaped children's when ``children``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL server: the postmaster, its backends (ended ones included:
    the postmaster reaps them) and its live ones."""
    total = process_cpu(postmaster, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class StoreServer:
    backend: str
    durability: str
    url: str
    cpu: Callable[[], float]


class _Cluster(PostgresCluster):
    """``servers.PostgresCluster``, with ``fsync`` on unless ``fast``."""

    fast = True

    def start(self) -> None:
        options = f"-p {self.port} -k {self._run} -c listen_addresses=127.0.0.1"
        options += " -c fsync=off" if self.fast else " -c fsync=on -c synchronous_commit=on"
        start = ["-l", str(self._run / "log"), "-o", options, "-w", "-t", "60"]
        subprocess.run(
            [*self._pg_ctl, *start, "start"], check=True, capture_output=True, timeout=70
        )

    def postmaster(self) -> int:
        return int((self._run / "data" / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def store_server(backend: str, durability: str) -> Iterator[StoreServer]:
    """A private server of ``backend``, started for this run and stopped after it."""
    workdir = Path(tempfile.mkdtemp(prefix=f"runflow-bench-{backend}-"))
    try:
        if backend == "redis":
            binary = shutil.which("redis-server")
            if binary is None:
                raise ServerUnavailable("redis-server is not installed")
            port = free_port()
            persistence = ("yes", "always") if durability == "durable" else ("no", "everysec")
            process = subprocess.Popen(
                [
                    *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
                    *("--appendonly", persistence[0], "--appendfsync", persistence[1]),
                    *("--dir", str(workdir)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_for_port("127.0.0.1", port, timeout=60)
                yield StoreServer(
                    backend,
                    durability,
                    f"redis://127.0.0.1:{port}/0",
                    lambda: process_cpu(process.pid),
                )
            finally:
                process.terminate()
                process.wait(timeout=30)
            return
        bindir = _postgres_bin()
        if bindir is None:
            raise ServerUnavailable("no pg_ctl found")
        cluster = _Cluster(bindir, workdir)
        cluster.fast = durability == "fast"
        cluster.init()
        cluster.start()
        try:
            postmaster = cluster.postmaster()
            yield StoreServer(backend, durability, cluster.url, lambda: postgres_cpu(postmaster))
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- in-process ----------------------------------------------------------------------------


@dataclass
class Sample:
    per_second: float
    client_us: float
    server_us: float
    mean_batch: float | None


@dataclass
class Row:
    backend: str
    durability: str
    concurrency: int
    samples: dict[str, list[Sample]] = field(default_factory=dict)


async def _bounded(concurrency: int, jobs: list[Callable[[], Awaitable[object]]]) -> None:
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _spy_batches(store: CallbackStore) -> list[int]:
    """The sizes of the batches ``store`` sends from now on (nothing for a store that does not
    batch: an earlier version)."""
    sizes: list[int] = []
    batcher = getattr(store, "_batcher", None)
    if batcher is not None:
        run = batcher._run

        async def counted(batch: list[Any]) -> None:
            sizes.append(len(batch))
            await run(batch)

        batcher._run = counted
    return sizes


async def one_round(
    factory: Callable[[str, str], CallbackStore],
    server: StoreServer,
    payloads: list[bytes],
    concurrency: int,
) -> Sample:
    """``handle`` of ``payloads`` (the first ``concurrency`` of them warm up) into a fresh
    namespace."""
    store = factory(server.url, f"bench_{uuid.uuid4().hex[:12]}")
    async with store:
        processor = CallbackProcessor(store, no_op)
        contexts = [processor.incoming(parse_callback(body), body) for body in payloads]
        warm_up, timed = contexts[:concurrency], contexts[concurrency:]

        def handle(context: CallbackContext) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                outcome = await processor.handle(context)
                assert outcome.ok, outcome

            return run

        await asyncio.gather(*(handle(context)() for context in warm_up))
        sizes = _spy_batches(store)
        client, served, started = time.process_time(), server.cpu(), time.perf_counter()
        await _bounded(concurrency, [handle(context) for context in timed])
        elapsed = time.perf_counter() - started
        client, served = time.process_time() - client, server.cpu() - served
    count = len(timed)
    return Sample(
        count / elapsed,
        client / count * 1e6,
        served / count * 1e6,
        statistics.mean(sizes) if sizes else None,
    )


def measure_in_process(
    server: StoreServer,
    found: list[Version],
    *,
    callbacks: int,
    concurrency: list[int],
    rounds: int,
) -> list[Row]:
    rows = []
    for level in concurrency:
        row = Row(server.backend, server.durability, level, {v.name: [] for v in found})
        payloads = bodies(callbacks + level)
        for index in range(rounds):
            # Alternate which version goes first, so that neither always follows the other.
            for version in found if index % 2 == 0 else found[::-1]:
                factory = version.factories[server.backend]
                sample = asyncio.run(one_round(factory, server, payloads, level))
                row.samples[version.name].append(sample)
        rows.append(row)
    return rows


def in_process_table(rows: list[Row]) -> str:
    names = list(rows[0].samples) if rows else []
    head = "| backend | durability | concurrency |"
    rule = "|---|---|---:|"
    for name in names:
        head += f" {name} callbacks/s (runs) |"
        rule += "---:|"
    if len(names) == 2:
        head += " after / before (per round) |"
        rule += "---:|"
    head += " client CPU µs/callback | server CPU µs/callback | writes per batch |"
    rule += "---:|---:|---:|"
    lines = [head, rule]

    def median(samples: list[Sample], what: str) -> float:
        return float(statistics.median(getattr(sample, what) for sample in samples))

    for row in rows:
        line = f"| {row.backend} | {row.durability} | {row.concurrency} |"
        for name in names:
            runs = ", ".join(f"{s.per_second:.0f}" for s in row.samples[name])
            line += f" **{median(row.samples[name], 'per_second'):,.0f}** ({runs}) |"
        if len(names) == 2:
            # Each round ran both versions back to back: their ratio is steadier than the
            # ratio of the medians on a machine whose load drifts.
            ratios = [
                after.per_second / before.per_second
                for before, after in zip(row.samples["before"], row.samples["after"], strict=True)
            ]
            line += f" {statistics.median(ratios):.2f}x |"
        line += (
            " "
            + " → ".join(f"{median(row.samples[n], 'client_us'):.0f}" for n in names)
            + " | "
            + " → ".join(f"{median(row.samples[n], 'server_us'):.0f}" for n in names)
            + " | "
        )
        batches = [s.mean_batch for s in row.samples[names[-1]] if s.mean_batch is not None]
        line += f"{statistics.median(batches):.1f} |" if batches else "- |"
        lines.append(line)
    return "\n".join(lines)


# --- end to end ----------------------------------------------------------------------------


class ServeServer(Server):
    """``runflow-callbacks serve --handler bench_backends:no_op`` with one version's store
    modules, on CPU 0 (as ``bench_middleware``'s receiver)."""

    def __init__(self, version: Version, url: str, namespace: str) -> None:
        self.port = free_port()
        command = [
            *(sys.executable, __file__, "serve-with", version.directory, "serve"),
            *("--port", str(self.port), "--log-level", "warning"),
            *("--store", url, "--namespace", namespace, "--handler", "bench_backends:no_op"),
        ]
        self.process = subprocess.Popen(
            pinned(0, command),
            env={**os.environ, "PYTHONPATH": str(HERE), "RUNFLOW_CALLBACK_SECRETS": SECRET},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # the startup banner; failures show as wrk errors
        )
        wait_for_port("127.0.0.1", self.port, timeout=60)
        self.url = f"http://127.0.0.1:{self.port}{PATH}"


def distinct_pool(path: Path, count: int) -> None:
    """``count`` signed bodies of distinct batches, one ``signature<TAB>body`` a line."""
    template = callback_body(BODY_BYTES)
    assert template.count(TEMPLATE_ID) == 1
    with path.open("wb") as pool:
        for _ in range(count):
            body = template.replace(TEMPLATE_ID, str(uuid.uuid4()).encode())
            pool.write(sign(body, SECRET).encode() + b"\t" + body + b"\n")


@dataclass
class Measured:
    config: str
    run: Run
    store_us: float | None
    wrapped: bool


def measure_serve(
    servers: list[StoreServer],
    found: list[Version],
    *,
    seconds: int,
    rounds: int,
    connections: int,
    pool_size: int,
    workdir: Path,
) -> tuple[list[Measured], dict[str, dict[str, int]]]:
    """Every configuration under distinct callbacks, alternating, for ``rounds`` rounds; and
    what each store holds afterwards."""
    pool = workdir / "pool.txt"
    script = workdir / "distinct.lua"
    script.write_text(DISTINCT_LUA.format(pool=pool))
    running: dict[str, tuple[Server, StoreServer | None, str]] = {}
    results: list[Measured] = []
    try:
        running["receiver (no store)"] = (Server("receiver"), None, "")
        for server in servers:
            for version in found:
                namespace = f"serve_{uuid.uuid4().hex[:12]}"
                config = f"serve {server.backend} {server.durability}, {version.name}"
                running[config] = (ServeServer(version, server.url, namespace), server, namespace)
        for http, _, _ in running.values():  # warm up: imports, tables, connections
            distinct_pool(pool, pool_size)
            run_wrk(http, script, seconds=1, connections=connections)
        for _ in range(rounds):
            for config, (http, store, _) in running.items():
                distinct_pool(pool, pool_size)  # new batches for every run
                before = store.cpu() if store else 0.0
                run = run_wrk(http, script, seconds=seconds, connections=connections)
                requests = run.rps * seconds
                store_us = (store.cpu() - before) / requests * 1e6 if store else None
                results.append(Measured(config, run, store_us, requests > pool_size))
    finally:
        for http, _, _ in running.values():
            http.close()

    async def counts(url: str, namespace: str) -> dict[str, int]:
        async with open_store(url, namespace=namespace) as store:
            return (await store.stats()).to_json()

    held = {
        config: asyncio.run(counts(store.url, namespace))
        for config, (_, store, namespace) in running.items()
        if store is not None
    }
    return results, held


def serve_table(results: list[Measured]) -> str:
    """Medians per configuration. The ratios are per round (each round ran every configuration
    back to back, a version right after the other) and their median is shown."""
    lines = [
        "| configuration | median callbacks/s | runs | ratio to receiver (per round) "
        "| after / before (per round) | serve CPU µs/callback | store server CPU µs/callback |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    by_config: dict[str, list[Measured]] = {}
    for measured in results:
        by_config.setdefault(measured.config, []).append(measured)
    receiver = next(iter(by_config.values()))

    def per_round(runs: list[Measured], base: list[Measured]) -> float:
        return statistics.median(m.run.rps / b.run.rps for m, b in zip(runs, base, strict=True))

    for config, runs in by_config.items():
        rps = statistics.median(m.run.rps for m in runs)
        cpu = statistics.median(m.run.cpu_us for m in runs)
        store = [m.store_us for m in runs if m.store_us is not None]
        each = ", ".join(f"{m.run.rps:.0f}" for m in runs)
        note = " (pool exhausted: some were duplicates)" if any(m.wrapped for m in runs) else ""
        before = by_config.get(config.replace(", after", ", before"))
        versus = f"{per_round(runs, before):.2f}x" if config.endswith(", after") and before else "-"
        lines.append(
            f"| {config}{note} | {rps:,.0f} | {each} | {per_round(runs, receiver):.2f} | {versus} "
            f"| {cpu:.0f} | {f'{statistics.median(store):.0f}' if store else '-'} |"
        )
    return "\n".join(lines)


# --- command line --------------------------------------------------------------------------


def serve_with(directory: str, argv: list[str]) -> int:
    """Run ``runflow-callbacks argv`` with the store modules of ``directory`` (``-``: ours)."""
    if directory != "-":
        for backend, module in load_modules(Path(directory)).items():
            sys.modules[f"runflow_callbacks.stores.{backend}"] = module
    from runflow_callbacks.cli import main  # after the modules are in place

    return main(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve-with"]:
        return serve_with(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, help="directory of the earlier store modules")
    parser.add_argument("--callbacks", type=int, default=1500, help="callbacks per round")
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated task counts")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--durability", default=",".join(DURABILITIES))
    parser.add_argument("--serve", action="store_true", help="also measure serve end to end")
    parser.add_argument(
        "--no-in-process", action="store_true", help="skip the in-process rounds (with --serve)"
    )
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--serve-rounds", type=int, default=3, help="alternating wrk rounds")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--pool", type=int, default=40_000, help="distinct bodies per wrk run")
    args = parser.parse_args(argv)
    backends = [name for name in args.backends.split(",") if name]
    durabilities = [name for name in args.durability.split(",") if name]
    levels = [int(level) for level in args.concurrency.split(",")]
    found = versions(args.before)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, versions: "
        f"{', '.join(v.name for v in found)}"
        + ("" if args.no_in_process else f"; {args.callbacks} callbacks x {args.rounds} rounds")
        + (
            f"; serve: wrk -t1 -c{args.connections} -d{args.seconds}s x {args.serve_rounds} rounds"
            if args.serve
            else ""
        )
        + "\n"
    )
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        servers = []
        for durability in durabilities:
            for backend in backends:
                try:
                    servers.append(stack.enter_context(store_server(backend, durability)))
                except (ServerUnavailable, subprocess.SubprocessError, OSError) as exc:
                    print(f"{backend} ({durability}): left out ({exc})")
        if not args.no_in_process:
            for server in servers:
                rows += measure_in_process(
                    server, found, callbacks=args.callbacks, concurrency=levels, rounds=args.rounds
                )
            print(in_process_table(rows))
        if args.serve and servers:
            with tempfile.TemporaryDirectory() as tmp:
                results, held = measure_serve(
                    servers,
                    found,
                    seconds=args.seconds,
                    rounds=args.serve_rounds,
                    connections=args.connections,
                    pool_size=args.pool,
                    workdir=Path(tmp),
                )
            print()
            print(serve_table(results))
            print()
            for config, counts in held.items():
                print(
                    f"{config}: {counts['received']} distinct callbacks, {counts['processed']} "
                    f"processed, {counts['duplicates']} duplicate deliveries"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
