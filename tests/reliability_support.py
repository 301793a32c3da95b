"""What the reliability tests share: the handler the ``serve`` processes run, and the processes.

The handler (``reliability_support:handle``) leaves its side effects in one log file shared by
every process (``RELIABILITY_LOG``), one line per write with ``O_APPEND`` (a small write is
atomic, so lines from several processes never interleave):

* ``done <key>`` when a run succeeds: the test counts these, exactly one per callback;
* ``try <key>`` before each run when failures are planned (``RELIABILITY_FAIL_PERCENT``): run
  number *n* of a key fails when ``sha256(seed:key:n)`` falls in the lowest percent, so the
  failures are spread evenly and repeat for the same key and seed, in whichever process runs it.
  A key fails at most :data:`MAX_PLANNED_FAILURES` times, so that none reaches the dead letter.

``RELIABILITY_SLEEP_S`` makes each successful run sleep a little, to widen the races between
replicas.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runflow_callbacks.testing import free_port, serve_process

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from runflow_callbacks.asgi import CallbackContext
    from runflow_callbacks.models import CallbackDelivery
    from runflow_callbacks.testing import RunningFakeRunflow

__all__ = [
    "HANDLER",
    "MAX_PLANNED_FAILURES",
    "Receiver",
    "done_keys",
    "handle",
    "sent_body",
    "tries",
    "wait_until_delivered",
]

#: The ``--handler`` of the ``serve`` processes (``tests/`` is put on their ``PYTHONPATH``).
HANDLER = "reliability_support:handle"
_TESTS = Path(__file__).resolve().parent
#: Planned failures per key at most: well below ``serve``'s ``--max-tries`` (8 by default).
MAX_PLANNED_FAILURES = 3


class PlannedFailureError(RuntimeError):
    """The failure the soak plans for a share of the handler runs."""


def _append(log: str, line: str) -> None:
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def _lines(log: str | Path) -> list[str]:
    try:
        return Path(log).read_text().splitlines()
    except FileNotFoundError:
        return []


def handle(context: CallbackContext) -> None:
    """The handler under test: fail as planned, else sleep a little and log ``done <key>``."""
    log = os.environ["RELIABILITY_LOG"]
    key = f"{context.payload.kind}:{context.subject_id}:{context.event}"
    fail_percent = int(os.environ.get("RELIABILITY_FAIL_PERCENT", "0"))
    if fail_percent:
        # Runs of one key never overlap (the store's lease), so this count is exact.
        attempt = _lines(log).count(f"try {key}") + 1
        _append(log, f"try {key}\n")
        seed = os.environ.get("RELIABILITY_SEED", "0")
        roll = hashlib.sha256(f"{seed}:{key}:{attempt}".encode()).digest()[0] * 100 // 256
        if roll < fail_percent and attempt <= MAX_PLANNED_FAILURES:
            raise PlannedFailureError(f"planned failure of run {attempt}")
    sleep_s = float(os.environ.get("RELIABILITY_SLEEP_S", "0"))
    if sleep_s:
        time.sleep(sleep_s)
    _append(log, f"done {key}\n")


def done_keys(log: Path) -> list[str]:
    """The keys of the successful runs, one entry per run."""
    return [line.split(" ", 1)[1] for line in _lines(log) if line.startswith("done ")]


def tries(log: Path) -> int:
    """How many runs were made when failures were planned (failed ones included)."""
    return sum(1 for line in _lines(log) if line.startswith("try "))


class Receiver:
    """One ``runflow-callbacks serve`` process, stoppable and restartable on the same port.

    Each start writes its output to a file in ``workdir`` (a pipe nobody reads would block a
    busy server); :meth:`stop` checks that the server itself never failed and never printed
    ``secret``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        secret: str,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        name: str = "receiver",
    ) -> None:
        self.workdir = workdir
        self.secret = secret
        self.args = list(args)
        self.env = {
            **os.environ,
            **(env or {}),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(_TESTS), os.environ.get("PYTHONPATH", "")])
            ),
            "RUNFLOW_CALLBACK_SECRETS": secret,
        }
        self.name = name
        self.port = free_port()
        self._outputs: list[Path] = []
        self._starts = 0
        self._running: contextlib.ExitStack | None = None

    @property
    def url(self) -> str:
        """The base URL (the callback path is ``/callbacks/runflow``)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start serving on this receiver's port and wait until it listens."""
        assert self._running is None, "already running"
        self._starts += 1
        self._outputs.append(self.workdir / f"{self.name}-{self._starts}.out")
        argv = [
            *(sys.executable, "-m", "runflow_callbacks", "serve"),
            *("--port", str(self.port), "--log-level", "warning", *self.args),
        ]
        running = contextlib.ExitStack()
        running.enter_context(
            serve_process(
                argv,
                port=self.port,
                env=self.env,
                cwd=self.workdir,
                log_path=self._outputs[-1],
                startup_timeout=60,
            )
        )
        self._running = running

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: requests in flight finish) and check the output."""
        running, self._running = self._running, None
        if running is None:
            return
        running.close()
        output = self._outputs[-1].read_text(errors="replace")
        assert "Exception in ASGI application" not in output, output[-4000:]
        assert self.secret not in output

    def restart(self) -> None:
        """Stop, then serve again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sent_body(runflow: RunningFakeRunflow, batch_id: str) -> bytes:
    """The exact bytes the fake signed for the first delivery of a batch (read in-process:
    cheaper than the history API when the load generator needs them at once)."""
    subject = runflow.fake.state.subject("batch", batch_id)
    assert subject is not None
    assert subject.deliveries, "the batch has no delivery"
    return subject.deliveries[0].payload_bytes


def wait_until_delivered(
    runflow: RunningFakeRunflow, batch_ids: Iterable[str], *, timeout_s: float
) -> dict[str, list[CallbackDelivery]]:
    """Wait until no delivery of these batches is in flight; then the history of each, from
    the history API.

    Raises :class:`TimeoutError` naming how many were still in flight after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    waiting = list(batch_ids)
    done = list(waiting)
    while waiting:
        subjects = [(i, runflow.fake.state.subject("batch", i)) for i in waiting]
        waiting = [i for i, subject in subjects if subject is None or subject.in_flight()]
        if waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} deliveries in flight after {timeout_s}s")
            time.sleep(0.1)
    return {batch_id: runflow.deliveries(batch_id=batch_id) for batch_id in done}
