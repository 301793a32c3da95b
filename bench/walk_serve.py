"""Walk one callback through the application ``serve`` runs, and count what it passes.

Builds ``create_app`` on a SQLite store with a no-op sync handler (``serve --handler``), sends
two signed callbacks in process (the first warms caches up), and traces the second with
``sys.setprofile`` / ``threading.setprofile``. It prints:

* the distinct functions of this package called on the event loop thread, and in other
  threads (the SQLite worker, the handler's thread),
* the package modules on the loop and the module transitions between consecutive calls,
* calls that go *up* the layering (a module calling one that should sit above it),
* thread hops (work handed from the loop to a thread) and SQLite transactions.

    python bench/walk_serve.py
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import sys
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from runflow_callbacks import sign
from runflow_callbacks.app import create_app
from runflow_callbacks.stores.sqlite import SQLiteStore
from runflow_callbacks.testing import PayloadFactory
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from runflow_callbacks.context import CallbackContext

SECRET = "whsec_walk_0123456789"
PACKAGE = str(Path(sys.modules["runflow_callbacks"].__file__ or "").parent)
#: Bottom to top, as the README's "How it fits together" draws it.
LAYERS = [
    ("errors", "_time", "defaults", "_events", "_metadata"),
    ("verifier", "wire"),
    ("models",),
    ("keys",),
    ("options", "context", "_log", "answers", "handlers"),
    ("reader",),
    (
        "stores._text",
        "stores._net",
        "stores._state",
        "stores._logic",
        "stores._writer",
        "stores._batch",
    ),
    ("stores", "stores.sqlite", "stores.memory"),
    ("processing",),
    ("receiver",),
    ("asgi", "fastapi", "app", "reconcile"),
]
_RESUMABLE = inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
RANK = {module: rank for rank, group in enumerate(LAYERS) for module in group}


def handle(context: CallbackContext) -> None:
    """The no-op handler ``serve --handler`` runs."""


def _module(frame: FrameType) -> str | None:
    filename = frame.f_code.co_filename
    if not filename.startswith(PACKAGE):
        return None
    relative = Path(filename).relative_to(PACKAGE).with_suffix("")
    name = ".".join(relative.parts)
    return name.removesuffix(".__init__")


class Trace:
    def __init__(self) -> None:
        self.loop_thread = threading.get_ident()
        self.loop_calls: list[tuple[str, str]] = []
        self.other_calls: set[tuple[str, str]] = set()
        self.upward: list[str] = []
        self.hops = 0
        self._started: set[FrameType] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_flags & _RESUMABLE:
            if frame in self._started:
                return  # a coroutine resuming after an await, not a new call
            self._started.add(frame)
        if code.co_name == "run_in_executor" and code.co_filename.endswith("base_events.py"):
            self.hops += 1
        module = _module(frame)
        if module is None:
            return
        where = (module, code.co_name)
        if threading.get_ident() != self.loop_thread:
            self.other_calls.add(where)
            return
        caller = frame.f_back
        caller_module = None if caller is None else _module(caller)
        if caller_module is not None and RANK.get(caller_module, 99) < RANK.get(module, 99):
            assert caller is not None
            self.upward.append(
                f"{caller_module}.{caller.f_code.co_name} -> {module}.{code.co_name}"
            )
        self.loop_calls.append(where)


async def _trace_writes(store: SQLiteStore, count: Callable[[str], None]) -> None:
    """Have the store's write connection report each statement (private: a bench's licence)."""
    writer: Any = getattr(store, "_writer", None)
    if writer is not None:  # the group-commit store: run it in the writer thread
        await writer.submit(lambda connection: connection.set_trace_callback(count))
        return
    connection: Any = store._connection  # type: ignore[attr-defined] # the store of 0.1
    executor: Any = store._executor  # type: ignore[attr-defined]
    await asyncio.get_running_loop().run_in_executor(executor, connection.set_trace_callback, count)


async def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        store = SQLiteStore(Path(workdir) / "walk.db")
        app = create_app(secrets=SECRET, store=store, handler=handle)
        transactions = 0

        def count(statement: str) -> None:
            nonlocal transactions
            transactions += statement.strip().upper().startswith("BEGIN")

        factory = PayloadFactory(seed=1)
        bodies = [dumps_payload(factory.batch()) for _ in range(2)]
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://walk") as client:
            for index, body in enumerate(bodies):
                headers = {"Runflow-Signature": sign(body, SECRET)}
                if index == 0:
                    answer = await client.post("/callbacks/runflow", content=body, headers=headers)
                    await _trace_writes(store, count)
                    continue
                trace = Trace()
                sys.setprofile(trace)
                threading.setprofile(trace)
                try:
                    answer = await client.post("/callbacks/runflow", content=body, headers=headers)
                finally:
                    sys.setprofile(None)
                    threading.setprofile(None)
        await store.close()
    assert answer.json() == {"status": "processed"}, answer.text
    functions = sorted(set(trace.loop_calls))
    modules = sorted({module for module, _ in trace.loop_calls})
    path = [module for module, _ in trace.loop_calls]
    transitions = sum(1 for a, b in itertools.pairwise(path) if a != b)
    print(f"distinct functions of ours on the loop: {len(functions)}")
    if "-v" in sys.argv:
        print("  " + " -> ".join(f"{module}.{name}" for module, name in trace.loop_calls))
    print(f"distinct functions of ours in other threads: {len(trace.other_calls)}")
    print(f"modules of ours on the loop: {len(modules)} ({', '.join(modules)})")
    print(f"module transitions on the loop: {transitions}")
    print(f"upward calls: {len(set(trace.upward))}")
    for call in sorted(set(trace.upward)):
        print(f"  {call}")
    print(f"thread hops: {trace.hops}")
    print(f"SQLite write transactions: {transactions}")


if __name__ == "__main__":
    asyncio.run(main())
