"""End to end: callbacks per second through ``runflow-callbacks serve`` on SQLite.

Each configuration is a server process (uvicorn, one worker, access log off) that ``wrk``
(keep-alive, its own process) sends 1 KiB signed ``batch.succeeded`` callbacks to:

* ``receiver (no store)``: a ``CallbackReceiver`` with a no-op handler, nothing recorded
  (``bench_middleware.py``'s server): the ceiling of verification and parsing alone;
* ``serve sqlite, sync``: ``runflow-callbacks serve --store sqlite:///... --handler`` with a
  no-op handler: each new callback is recorded, claimed, run and completed before the answer;
* ``serve sqlite, record only``: ``serve`` without a handler: each callback is recorded.

under two loads:

* ``duplicates``: the same body every time (wrk's fixed body): after the first request every
  callback is a duplicate, answered from the store without running anything;
* ``distinct``: every request a different batch (fresh ids, bodies signed beforehand and read
  by the wrk Lua script), so every request is a new callback. A pool larger than any run is
  generated per run; should wrk get through it, the row says so.

The configurations alternate for several rounds in one run; the table gives the median
callbacks per second, each round's figure, the ratio to the store-less receiver under the same
load, and the server's CPU time per request (steadier than req/s on a shared machine). SQLite
runs with ``synchronous=FULL``: every commit reaches the disk.

The receiver runs pinned to CPU 0 (as in ``bench_middleware.py``) and wrk to CPU 1; ``serve``
is not pinned unless ``--pin-serve`` is given, so its SQLite writer thread may run on either CPU.
``--baseline SRC`` adds the two ``serve`` configurations once more, importing
runflow-callbacks from ``SRC`` (the ``src`` directory of another checkout, e.g. a
``git worktree`` of main): before and after a change, measured in the same rounds.

    python bench/bench_serve.py [--seconds 5] [--rounds 3] [--connections 16] [--pool 40000]
                                [--pin-serve] [--baseline SRC]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from bench_middleware import (
    BODY_BYTES,
    LUA,
    PATH,
    SECRET,
    Run,
    Server,
    callback_body,
    pinned,
    run_wrk,
)

from runflow_callbacks import sign
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import free_port, wait_for_port

if TYPE_CHECKING:
    from runflow_callbacks import CallbackContext

HERE = Path(__file__).resolve().parent
CONFIGS = ("receiver (no store)", "serve sqlite, sync", "serve sqlite, record only")
#: The suffix of the configurations that run the ``--baseline`` tree.
BASELINE = " (baseline)"
LOADS = ("duplicates", "distinct")
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
    """The handler of the ``sync`` configuration: does nothing."""


class ServeServer(Server):
    """``runflow-callbacks serve`` in its own process (``--log-level warning``).

    ``source`` is a directory to import runflow-callbacks from instead of the installed one
    (``--baseline``); ``pin`` binds the whole process to CPU 0, where the receiver runs.
    """

    def __init__(self, *args: str, source: Path | None = None, pin: bool = False) -> None:
        self.port = free_port()
        path = [str(HERE)] if source is None else [str(source), str(HERE)]
        command = [
            *(sys.executable, "-m", "runflow_callbacks", "serve"),
            *("--port", str(self.port), "--log-level", "warning", *args),
        ]
        self.process = subprocess.Popen(
            pinned(0, command) if pin else command,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(path),
                "RUNFLOW_CALLBACK_SECRETS": SECRET,
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # the startup banner; failures show as wrk errors
        )
        wait_for_port("127.0.0.1", self.port, timeout=60)
        self.url = f"http://127.0.0.1:{self.port}{PATH}"


def distinct_pool(path: Path, count: int) -> None:
    """Write ``count`` signed bodies of distinct batches, one ``signature<TAB>body`` a line."""
    template = callback_body(BODY_BYTES)
    assert template.count(TEMPLATE_ID) == 1
    assert b"\n" not in template
    with path.open("wb") as pool:
        for _ in range(count):
            body = template.replace(TEMPLATE_ID, str(uuid.uuid4()).encode())
            pool.write(sign(body, SECRET).encode() + b"\t" + body + b"\n")


@dataclass
class Measured:
    config: str
    load: str
    run: Run
    wrapped: bool


def requests_in(run: Run, seconds: int) -> int:
    return round(run.rps * seconds)


def measure(
    *,
    seconds: int,
    rounds: int,
    connections: int,
    pool_size: int,
    workdir: Path,
    pin_serve: bool = False,
    baseline: Path | None = None,
) -> list[Measured]:
    """Alternate every configuration under every load for ``rounds`` rounds."""
    body = callback_body(BODY_BYTES)
    (workdir / "body.json").write_bytes(body)
    duplicates_script = workdir / "duplicates.lua"
    duplicates_script.write_text(
        LUA.format(body=workdir / "body.json", signature=sign(body, SECRET))
    )
    pool = workdir / "pool.txt"
    distinct_script = workdir / "distinct.lua"
    distinct_script.write_text(DISTINCT_LUA.format(pool=pool))
    servers: dict[str, Server] = {}
    results: list[Measured] = []
    try:
        servers[CONFIGS[0]] = Server("receiver")
        for suffix, source in [("", None), *([(BASELINE, baseline)] if baseline else [])]:
            name = "sync" if source is None else "baseline-sync"
            servers[CONFIGS[1] + suffix] = ServeServer(
                *("--store", f"sqlite:///{workdir}/{name}.db", "--handler", "bench_serve:no_op"),
                source=source,
                pin=pin_serve,
            )
            name = "record" if source is None else "baseline-record"
            servers[CONFIGS[2] + suffix] = ServeServer(
                "--store", f"sqlite:///{workdir}/{name}.db", source=source, pin=pin_serve
            )
        headers = {"Runflow-Signature": sign(body, SECRET), "Content-Type": "application/json"}
        for server in servers.values():
            # Process the fixed body once before wrk sends it 16 at a time: concurrent first
            # deliveries of one callback are answered 409 (in progress) by design.
            httpx.post(server.url, content=body, headers=headers, timeout=30).raise_for_status()
            # Warm up: imports, tables, first-request caches.
            run_wrk(server, duplicates_script, seconds=1, connections=connections)
        for _ in range(rounds):
            for load in LOADS:
                for config, server in servers.items():
                    if load == "distinct":
                        distinct_pool(pool, pool_size)  # new batches for every run
                    script = distinct_script if load == "distinct" else duplicates_script
                    run = run_wrk(server, script, seconds=seconds, connections=connections)
                    wrapped = load == "distinct" and requests_in(run, seconds) > pool_size
                    results.append(Measured(config, load, run, wrapped))
    finally:
        for server in servers.values():
            server.close()
    return results


def store_counts(workdir: Path) -> dict[str, dict[str, int]]:
    """What the SQLite stores hold after the runs (proof that ``distinct`` was distinct, and
    that every callback acknowledged was recorded: wrk saw no error, and none is missing)."""

    async def counts(name: str) -> dict[str, int]:
        async with open_store(f"sqlite:///{workdir}/{name}.db") as store:
            return (await store.stats()).to_json()

    names = ("sync", "record", "baseline-sync", "baseline-record")
    return {name: asyncio.run(counts(name)) for name in names if (workdir / f"{name}.db").exists()}


def table(results: list[Measured]) -> str:
    """The Markdown table of medians, one row per configuration and load."""
    lines = [
        "| configuration | load | median callbacks/s | runs | ratio to receiver "
        "| server CPU per request | receiver CPU / this CPU |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for load in LOADS:
        receiver = [m.run for m in results if m.load == load and m.config == CONFIGS[0]]
        ceiling = statistics.median(run.rps for run in receiver)
        ceiling_cpu = statistics.median(run.cpu_us for run in receiver)
        measured = dict.fromkeys(m.config for m in results)  # in the order they ran
        for config in measured:
            runs = [m for m in results if m.load == load and m.config == config]
            rps = statistics.median(m.run.rps for m in runs)
            cpu = statistics.median(m.run.cpu_us for m in runs)
            each = ", ".join(f"{m.run.rps:.0f}" for m in runs)
            note = " (pool exhausted: some were duplicates)" if any(m.wrapped for m in runs) else ""
            lines.append(
                f"| {config} | {load}{note} | {rps:.0f} | {each} | {rps / ceiling:.2f} "
                f"| {cpu:.0f} µs | {ceiling_cpu / cpu:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections")
    parser.add_argument(
        "--pool", type=int, default=40_000, help="distinct callbacks generated per run"
    )
    parser.add_argument(
        "--pin-serve", action="store_true", help="run serve on CPU 0, as the receiver runs"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure serve importing runflow-callbacks from this directory (another src)",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None and not (args.baseline / "runflow_callbacks").is_dir():
        parser.error(f"--baseline {args.baseline}: no runflow_callbacks package in it")
    serve_pin = "serve on CPU 0" if args.pin_serve else "serve not pinned"
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, uvicorn 1 worker, "
        f"{BODY_BYTES} B signed batch callbacks, wrk -t1 -c{args.connections} "
        f"-d{args.seconds}s x {args.rounds} rounds, receiver on CPU 0, {serve_pin}"
        + ("" if args.baseline is None else f", baseline from {args.baseline}")
        + "\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(
            seconds=args.seconds,
            rounds=args.rounds,
            connections=args.connections,
            pool_size=args.pool,
            workdir=Path(tmp),
            pin_serve=args.pin_serve,
            baseline=args.baseline and args.baseline.resolve(),
        )
        held = store_counts(Path(tmp))
    print(table(results))
    print()
    for name, counts in held.items():
        print(
            f"{name}.db after the runs: {counts['received']} distinct callbacks "
            f"({counts['processed']} processed), {counts['duplicates']} duplicate deliveries"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
