"""The receiver at work: a fake Runflow delivering to ``runflow-callbacks serve`` on SQLite.

The second part of ``runflow-callbacks demo`` (:mod:`runflow_callbacks.cli.demo`), which
imports this module only when it gets there. ``python3 dev.py demo`` runs, in a temporary
directory:

1. a fake Runflow (real HTTP, real signatures, real retries) and ``serve`` side by side;
2. a stream of batch callbacks, with progress;
3. a forged and a rewritten callback, rejected with 401;
4. manual redeliveries, answered 200 as duplicates without running the handler again;
5. the receiver stopped for a while: some callbacks are delivered on a retry after the
   restart, others exhaust Runflow's attempts;
6. ``reconcile``, which recovers those from the delivery history;
7. the receiver restarted with the wrong secret: every callback refused, kept by
   ``serve --keep-rejected``, then recovered with ``inbox replay-rejected``;
8. ``inbox prune``: bodies removed, tombstones kept, a redelivery still a duplicate;
9. the inbox summary, and a check that every batch was handled exactly once.

The handler is :func:`handle`: it appends one line per run to ``$RUNFLOW_DEMO_LOG``, which is
how the demo counts side effects.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import httpx

from runflow_callbacks.cli.history import format_history
from runflow_callbacks.defaults import API_KEY_ENV, API_URL_ENV, DEFAULT_CALLBACK_PATH, SECRETS_ENV
from runflow_callbacks.stores import mask_url, open_store
from runflow_callbacks.testing import (
    PayloadFactory,
    free_port,
    serve_fake_runflow,
    signed_request,
    wait_for_port,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from runflow_callbacks.context import CallbackContext
    from runflow_callbacks.stores import StoreStats
    from runflow_callbacks.testing import RunningFakeRunflow

__all__ = ["handle", "run"]

LOG_ENV: Final = "RUNFLOW_DEMO_LOG"
#: :func:`handle`, as ``serve --handler`` and ``reconcile --handler`` import it.
_HANDLER: Final = "runflow_callbacks.cli._demo_run:handle"
#: Runflow's retry schedule, shortened so the demo takes seconds (attempts at +0, 0.3, 0.9,
#: 2.1 and 4.5 s).
_RETRY_DELAYS_S: Final = (0.3, 0.6, 1.2, 2.4)
_MAX_ATTEMPTS: Final = 5
_EVENTS: Final = ("batch.succeeded", "batch.partial_succeeded", "batch.succeeded", "batch.failed")


def handle(context: CallbackContext) -> None:
    """The demo's handler: one line per run, the callback's key, in ``$RUNFLOW_DEMO_LOG``."""
    line = f"{context.payload.kind}:{context.subject_id}:{context.event}\n"
    with Path(os.environ[LOG_ENV]).open("a") as log:
        log.write(line)


class _Receiver:
    """``runflow-callbacks serve`` as a subprocess that can be stopped and started again."""

    def __init__(self, workdir: Path, store_url: str, secret: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{DEFAULT_CALLBACK_PATH}"
        self._workdir = workdir
        self._store_url = store_url
        self.store_url = store_url
        self._env = {
            **os.environ,
            SECRETS_ENV: secret,
            LOG_ENV: str(workdir / "handled.log"),
            "PYTHONUNBUFFERED": "1",
        }
        self._process: subprocess.Popen[bytes] | None = None
        self._log = (workdir / "serve.log").open("ab")

    def start(self, *, secret: str | None = None) -> None:
        """Start ``serve`` (with another secret than Runflow's when ``secret`` is given)."""
        command = [
            sys.executable,
            "-m",
            "runflow_callbacks",
            "serve",
            "--store",
            self._store_url,
            "--handler",
            _HANDLER,
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--keep-rejected",
            "100",
        ]
        env = self._env if secret is None else {**self._env, SECRETS_ENV: secret}
        self._process = subprocess.Popen(  # noqa: S603 - our own CLI, fixed arguments
            command, cwd=self._workdir, env=env, stdout=self._log, stderr=self._log
        )
        wait_for_port("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
            self._process = None

    def close(self) -> None:
        self.stop()
        self._log.close()


class _Demo:
    def __init__(self, runflow: RunningFakeRunflow, receiver: _Receiver, out: TextIO) -> None:
        self.runflow = runflow
        self.receiver = receiver
        self.out = out
        self.batches: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def title(self, text: str) -> None:
        self.say()
        self.say(text)
        self.say("-" * len(text))

    def create(self, count: int, offset: int = 0) -> list[str]:
        created = [
            self.runflow.create_batch(
                callback_url=self.receiver.url,
                event=_EVENTS[(offset + index) % len(_EVENTS)],
                metadata={"demo": True, "n": offset + index},
            )["id"]
            for index in range(count)
        ]
        self.batches += created
        return created

    def states(self, batch_ids: list[str]) -> list[tuple[str | None, int]]:
        """(state, attempts) of the latest delivery of each batch."""
        result = []
        for batch_id in batch_ids:
            history = self.runflow.deliveries(batch_id=batch_id)
            last = history[-1] if history else None
            result.append(
                (None, 0) if last is None else (last.status_code, last.attempt_count or 0)
            )
        return result

    def wait(
        self,
        batch_ids: list[str],
        done: Callable[[str | None, int], bool],
        *,
        timeout_s: float = 30.0,
        progress: bool = False,
    ) -> list[tuple[str | None, int]]:
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states(batch_ids)
            finished = sum(done(state, attempts) for state, attempts in states)
            if progress:
                bar = "#" * finished + "." * (len(batch_ids) - finished)
                print(f"\r  [{bar}] {finished}/{len(batch_ids)} delivered", end="", file=self.out)
                self.out.flush()
            if finished == len(batch_ids) or time.monotonic() > deadline:
                if progress:
                    self.say()
                return states
            time.sleep(0.1)


def _stats(store_url: str) -> StoreStats:
    import asyncio  # noqa: PLC0415 - only the summary needs an event loop

    async def read() -> StoreStats:
        async with open_store(store_url) as store:
            return await store.stats()

    return asyncio.run(read())


def _cli(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI, fixed arguments
        [sys.executable, "-m", "runflow_callbacks", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="runflow-demo-") as tmp:
        yield Path(tmp)


def run(*, batches: int = 20, workdir: Path | None = None, out: TextIO | None = None) -> int:
    """Run the whole demo; return 0 when every batch was handled exactly once.

    ``out`` defaults to the ``sys.stdout`` of the moment of the call (not of the import).
    """
    secret = "whsec_demo_" + secrets.token_hex(16)
    with _workdir(workdir) as root:
        store_url = f"sqlite:///{root / 'runflow-callbacks.db'}"
        receiver = _Receiver(root, store_url, secret)
        try:
            with serve_fake_runflow(
                secret=secret,
                retry_delays_s=_RETRY_DELAYS_S,
                max_attempts=_MAX_ATTEMPTS,
                attempt_timeout_s=2.0,
            ) as runflow:
                demo = _Demo(runflow, receiver, out or sys.stdout)
                return _acts(demo, root, store_url, secret, batches)
        finally:
            receiver.close()


def _acts(demo: _Demo, root: Path, store_url: str, secret: str, count: int) -> int:
    say = demo.say
    demo.title("1. Runflow and the receiver, side by side")
    say(f"  fake Runflow API   {demo.runflow.base_url}  (signs with the current callback secret)")
    demo.receiver.start()
    say(f"  receiver (serve)   {demo.receiver.url}")
    say(f"  store              {mask_url(store_url)}")

    demo.title(f"2. A stream of {count} batch callbacks")
    stream = demo.create(count)
    states = demo.wait(stream, lambda state, _: state == "succeeded", progress=True)
    say(f"  every delivery answered 200: {all(state == 'succeeded' for state, _ in states)}")

    demo.title("3. Forged and rewritten callbacks")
    factory = PayloadFactory(seed=99)
    forged = signed_request(factory.batch("batch.succeeded"), "whsec_attacker_guess_0000")
    answer = httpx.post(demo.receiver.url, content=forged.body, headers=forged.headers)
    say(f"  signed with a guessed secret    -> {answer.status_code} {answer.json()['error']}")
    genuine = signed_request(factory.batch("batch.succeeded"), secret)
    rewritten = genuine.body.replace(b"+00:00", b"Z")
    answer = httpx.post(demo.receiver.url, content=rewritten, headers=genuine.headers)
    say(f"  timestamps rewritten with 'Z'   -> {answer.status_code} {answer.json()['error']}")

    demo.title("4. Redeliveries are duplicates")
    with demo.runflow.client() as client:
        for batch_id in stream[:3]:
            client.redeliver_batch(batch_id)
    # The redelivery is now each batch's latest delivery: wait for its answer.
    demo.wait(stream[:3], lambda state, _: state == "succeeded")
    say("  3 manual redeliveries answered 200 without running the handler again")

    demo.title("5. The receiver goes down")
    demo.receiver.stop()
    say("  receiver stopped; Runflow keeps retrying on its schedule: +0.3s, +0.6s, +1.2s, +2.4s")
    exhausted = demo.create(3, offset=100)
    demo.wait(exhausted, lambda state, _: state == "failed", timeout_s=30)
    say(f"  {len(exhausted)} callbacks exhausted all {_MAX_ATTEMPTS} attempts while it was down")
    late = demo.create(3, offset=200)
    demo.wait(late, lambda _, attempts: attempts >= 2, timeout_s=30)
    demo.receiver.start()
    say("  receiver restarted")
    states = demo.wait(late, lambda state, _: state in {"succeeded", "failed"}, timeout_s=30)
    retried = sum(state == "succeeded" for state, _ in states)
    say(f"  {retried} of {len(late)} callbacks delivered on a retry after the restart")
    say(f"  runflow-callbacks history --batch {late[0]}")
    history = format_history(demo.runflow.deliveries(batch_id=late[0]))
    say("\n".join("    " + line for line in history.splitlines()))

    demo.title("6. Reconcile from the delivery history")
    env = {**os.environ, LOG_ENV: str(root / "handled.log")}
    env[API_URL_ENV] = demo.runflow.base_url
    env[API_KEY_ENV] = demo.runflow.api_key
    args = ["reconcile", "--store", store_url, "--handler", _HANDLER]
    for batch_id in demo.batches:
        args += ["--batch", batch_id]
    result = _cli(root, env, *args, "--json")
    if result.returncode != 0:
        say(f"  reconcile failed: {result.stderr.strip()}")
        return 1
    counts: dict[str, Any] = json.loads(result.stdout)["counts"]
    say(f"  runflow-callbacks reconcile --batch ... ({len(demo.batches)} batches): {counts}")

    if not _wrong_secret(demo, root, {**env, SECRETS_ENV: secret}):
        return 1
    if not _retention(demo, root, env, store_url):
        return 1

    demo.title("9. Inbox summary")
    stats = _stats(store_url)
    say(f"  received (distinct)   {stats.received}")
    say(f"  duplicates ignored    {stats.duplicates}")
    say(f"  rejected              {stats.rejected}")
    say(f"  recovered (reconcile) {stats.reconciled}")
    say(f"  processed             {stats.processed}")
    handled = (root / "handled.log").read_text().splitlines()
    distinct = len(set(handled))
    say()
    ok = len(handled) == distinct == len(demo.batches) == stats.processed
    verdict = "OK" if ok else "MISMATCH"
    say(
        f"{verdict}: {len(demo.batches)} batches, {len(handled)} handler runs "
        f"({len(handled) - distinct} repeated, {len(demo.batches) - distinct} lost)"
    )
    return 0 if ok else 1


def _wrong_secret(demo: _Demo, root: Path, env: dict[str, str]) -> bool:
    """A receiver deployed with the wrong secret refuses everything; what it kept is replayed."""
    say = demo.say
    demo.title("7. The wrong secret deployed, then recovered")
    demo.receiver.stop()
    demo.receiver.start(secret="whsec_demo_wrong_" + secrets.token_hex(8))
    say("  receiver restarted with the wrong secret (serve --keep-rejected 100)")
    refused = demo.create(3, offset=300)
    demo.wait(refused, lambda state, _: state == "failed", timeout_s=30)
    say(f"  {len(refused)} callbacks answered 401 on all {_MAX_ATTEMPTS} attempts: Runflow gave up")
    demo.receiver.stop()  # at shutdown the receiver writes what it kept
    demo.receiver.start()
    say("  receiver restarted with the right secret")
    store = ["--store", demo.receiver.store_url]
    kept = json.loads(_cli(root, env, "inbox", "rejected", "--json", *store).stdout)
    reasons = sorted({request["reason"] for request in kept})
    say(f"  runflow-callbacks inbox rejected: {len(kept)} kept ({', '.join(reasons)})")
    result = _cli(root, env, "inbox", "replay-rejected", "--all", "--handler", _HANDLER, *store)
    lines = result.stdout.splitlines()
    processed = sum("verified; processed" in line for line in lines)
    duplicates = sum("verified; duplicate" in line for line in lines)
    still = sum("still refused" in line for line in lines)
    say(
        "  runflow-callbacks inbox replay-rejected --all: "
        f"{processed} processed, {duplicates} duplicates (the same callback's retries), "
        f"{still} still refused (the forged and rewritten ones of step 3)"
    )
    if processed != len(refused):
        say(f"  replay failed: {result.stdout.strip()} {result.stderr.strip()}")
        return False
    return True


def _retention(demo: _Demo, root: Path, env: dict[str, str], store_url: str) -> bool:
    """Prune every finished callback; a redelivery of a pruned one is still a duplicate."""
    say = demo.say
    demo.title("8. Retention that keeps deduplicating")
    time.sleep(1.0)  # everything processed so far is now over a second old
    result = _cli(root, env, "inbox", "prune", "--older-than", "1s", "--store", store_url)
    if result.returncode != 0:
        say(f"  prune failed: {result.stderr.strip()}")
        return False
    say(f"  runflow-callbacks inbox prune --older-than 1s: {result.stdout.strip()}")
    with demo.runflow.client() as client:
        client.redeliver_batch(demo.batches[0])
    [(state, _)] = demo.wait(demo.batches[:1], lambda state, _: state == "succeeded")
    say(f"  a pruned callback redelivered -> answered 200 ({state}); its handler did not run")
    return True
