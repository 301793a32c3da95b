"""Operating a store from the command line: prune, replay, rejected requests, as a user would.

``inbox prune`` and ``serve --retention`` keep tombstones that still deduplicate; ``inbox
retry`` selects by state, event and time, re-runs processed callbacks with ``--force`` and
prints a dry run; ``serve --keep-rejected`` keeps refused requests that ``inbox rejected``
lists and ``inbox replay-rejected`` recovers with the right secret. SQLite files throughout
(the store backends share one suite in ``test_store_retention.py``), real HTTP for ``serve``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

import httpx
import pytest

from runflow_callbacks import CallbackReceiver, sign
from runflow_callbacks.cli import main
from runflow_callbacks.stores import open_store
from runflow_callbacks.testing import PayloadFactory, free_port, wait_for_port
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from runflow_callbacks.context import CallbackContext

OLD = "whsec_operations_old_0123456789"
NEW = "whsec_operations_new_9876543210"
PATH = "/callbacks/runflow"
DAY = timedelta(days=1)

HANDLERS = textwrap.dedent(
    """
    import os

    def handle(context):
        with open(os.environ["HANDLER_LOG"], "a") as log:
            log.write(f"{context.key} {context.attempt} {context.source}\\n")
    """
)


class Run(NamedTuple):
    code: int
    out: str
    err: str


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "ops_handlers.py").write_text(HANDLERS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HANDLER_LOG", str(tmp_path / "handled.log"))
    for name in (
        "RUNFLOW_CALLBACK_STORE",
        "RUNFLOW_CALLBACK_NAMESPACE",
        "RUNFLOW_CALLBACK_SECRETS",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def store(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'ops.db'}"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def handled(workdir: Path) -> list[str]:
    log = workdir / "handled.log"
    return log.read_text().splitlines() if log.exists() else []


def body_of(seed: int, event: str = "batch.succeeded") -> bytes:
    """A batch callback body (its ids depend on the time too: keep the bytes to send again)."""
    return dumps_payload(PayloadFactory(seed=seed).batch(event))


def receive(
    url: str, bodies: list[bytes], *, at: datetime, fail: frozenset[int] = frozenset()
) -> list[str]:
    """Deliver ``bodies`` through a receiver on ``url`` whose clock says ``at``; the handler
    fails for the positions in ``fail``. Returns each callback's key."""
    keys: list[str] = []

    async def work() -> None:
        async with open_store(url) as opened:
            receiver = CallbackReceiver(secrets=OLD, store=opened, clock=lambda: at, max_tries=1)

            def handler(context: CallbackContext) -> None:
                keys.append(context.key or "")
                if len(keys) - 1 in fail:
                    raise RuntimeError("boom")

            receiver.on_any(handler)
            transport = httpx.ASGITransport(app=receiver)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
                for body in bodies:
                    await client.post(
                        PATH, content=body, headers={"Runflow-Signature": sign(body, OLD)}
                    )

    asyncio.run(work())
    return keys


def record_of(url: str, key: str) -> Any:
    async def work() -> Any:
        async with open_store(url, create=False) as opened:
            return await opened.get(key)

    return asyncio.run(work())


# --- inbox prune -------------------------------------------------------------------------------


def test_prune_keeps_tombstones_that_still_deduplicate(
    cli: Callable[..., Run], store: str, workdir: Path
) -> None:
    now = datetime.now(timezone.utc)
    bodies = [body_of(1), body_of(2)]
    old_keys = receive(store, bodies, at=now - 30 * DAY, fail=frozenset({1}))
    [recent] = receive(store, [body_of(3)], at=now - DAY)
    run = cli("inbox", "prune", "--older-than", "7d", "--json", "--store", store)
    assert run.code == 0, run.err
    assert json.loads(run.out) == {"pruned": 2, "tombstones_removed": 0}  # processed and dead
    tombstone = record_of(store, old_keys[0])
    assert (tombstone.state, tombstone.body, tombstone.pruned) == ("processed", b"", True)
    assert record_of(store, old_keys[1]).state == "dead"
    assert not record_of(store, recent).pruned
    shown = cli("inbox", "show", old_keys[0], "--json", "--store", store)
    assert json.loads(shown.out)["pruned_at"] is not None
    # A redelivery of the pruned callback is a duplicate: its handler does not run again.
    assert receive(store, bodies[:1], at=now) == []
    assert record_of(store, old_keys[0]).deliveries == 2
    # A dead tombstone cannot be retried: its body is gone.
    retry = cli("inbox", "retry", old_keys[1], "--store", store)
    assert (retry.code, "pruned" in retry.out) == (1, True)
    # Later, tombstones go after their own horizon.
    again = cli(
        "inbox", "prune", "--older-than", "1d", "--tombstones-older-than", "2d", "--store", store
    )
    assert again.code == 0
    assert "removed 1 tombstone(s)" in again.out  # the redelivered one was updated just now
    assert record_of(store, old_keys[1]) is None


def test_prune_state_and_bounds(cli: Callable[..., Run], store: str) -> None:
    now = datetime.now(timezone.utc)
    receive(store, [body_of(1), body_of(2)], at=now - 30 * DAY, fail=frozenset({1}))
    run = cli("inbox", "prune", "--older-than", "7d", "--state", "dead", "--json", "--store", store)
    assert json.loads(run.out) == {"pruned": 1, "tombstones_removed": 0}
    shorter = cli(
        "inbox", "prune", "--older-than", "7d", "--tombstones-older-than", "1d", "--store", store
    )
    assert shorter.code == 1
    assert "--tombstones-older-than" in shorter.err
    with pytest.raises(SystemExit):
        main(["inbox", "prune", "--older-than", "soon", "--store", store])
    with pytest.raises(SystemExit):
        main(["inbox", "prune", "--older-than", "7d", "--state", "failed", "--store", store])


# --- inbox retry: filters, --force, --dry-run --------------------------------------------------


def test_retry_selects_by_event_and_time_and_forces_processed_ones(
    cli: Callable[..., Run], store: str, workdir: Path
) -> None:
    now = datetime.now(timezone.utc)
    [early] = receive(store, [body_of(1, "batch.failed")], at=now - 3 * DAY)
    [late, other] = receive(
        store, [body_of(2, "batch.failed"), body_of(3, "batch.succeeded")], at=now - DAY
    )
    dry = cli(
        "inbox", "retry", "--state", "processed", "--event", "batch.failed", "--since", "2d",
        "--force", "--dry-run", "--store", store,
    )  # fmt: skip
    assert dry.code == 0, dry.err
    assert f"would retry {late}" in dry.out
    assert early not in dry.out
    assert other not in dry.out
    assert "1 callback(s) would be retried" in dry.out
    assert record_of(store, late).state == "processed"  # nothing changed
    refused = cli("inbox", "retry", late, "--store", store)
    assert refused.code == 1
    assert "--force" in refused.out
    forced = cli(
        "inbox", "retry", "--state", "processed", "--event", "batch.failed",
        "--until", (now - 2 * DAY).isoformat(), "--force",
        "--handler", "ops_handlers:handle", "--store", store,
    )  # fmt: skip
    assert forced.code == 0, forced.out + forced.err
    assert forced.out.strip() == f"{early}: processed"
    assert handled(workdir) == [f"{early} 2 retry"]  # one more attempt, recorded
    record = record_of(store, early)
    assert (record.state, record.attempts) == ("processed", 2)


def test_retry_needs_a_selection(cli: Callable[..., Run], store: str) -> None:
    receive(store, [body_of(1)], at=datetime.now(timezone.utc))
    run = cli("inbox", "retry", "--store", store)
    assert run.code == 1
    assert "--state" in run.err
    backwards = cli("inbox", "retry", "--since", "1h", "--until", "2h", "--store", store)
    assert backwards.code == 1
    with pytest.raises(SystemExit):
        main(["inbox", "retry", "--since", "yesterday-ish", "--store", store])


# --- serve --keep-rejected, inbox rejected, inbox replay-rejected --------------------------------


@contextlib.contextmanager
def serving(workdir: Path, *args: str, secret: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "runflow_callbacks", "serve", "--port", str(port), *args],
        cwd=workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "RUNFLOW_CALLBACK_SECRETS": secret},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        assert b"Traceback" not in output, output.decode(errors="replace")
        assert secret.encode() not in output


def test_a_wrong_secret_for_an_hour_is_one_command_to_recover(
    cli: Callable[..., Run], store: str, workdir: Path
) -> None:
    bodies = [body_of(seed) for seed in range(3)]
    args = ("--store", store, "--handler", "ops_handlers:handle", "--keep-rejected", "20")
    # Runflow signs with the new secret; the receiver was deployed with the old one.
    with serving(workdir, *args, secret=OLD) as url, httpx.Client(base_url=url) as client:
        answers = [
            client.post(
                PATH,
                content=body,
                headers={"Runflow-Signature": sign(body, NEW), "Authorization": "Bearer nope"},
            )
            for body in bodies
        ]
    assert [answer.status_code for answer in answers] == [401] * 3
    assert handled(workdir) == []

    listed = cli("inbox", "rejected", "--json", "--store", store)
    kept = json.loads(listed.out)
    assert [request["reason"] for request in kept] == ["signature_mismatch"] * 3
    assert all(not request["truncated"] and request["replayed_at"] is None for request in kept)
    table = cli("inbox", "rejected", "--store", store)
    assert "signature_mismatch" in table.out
    one = cli("inbox", "rejected", "--show", kept[0]["id"], "--json", "--store", store)
    detail = json.loads(one.out)
    assert detail["body"].encode() == bodies[-1]
    assert "authorization" not in detail["headers"]

    wrong = cli("inbox", "replay-rejected", kept[0]["id"], "--secret", OLD, "--store", store)
    assert (wrong.code, "still refused (signature_mismatch)" in wrong.out) == (1, True)
    replayed = cli(
        "inbox", "replay-rejected", "--all", "--secret", OLD, "--secret", NEW,
        "--handler", "ops_handlers:handle", "--store", store,
    )  # fmt: skip
    assert replayed.code == 0, replayed.out + replayed.err
    assert replayed.out.count("verified; processed") == 3
    assert len(handled(workdir)) == 3
    assert all(line.endswith(" 1 http") for line in handled(workdir))

    # Exactly once: again, nothing waits; by id, a duplicate that runs nothing.
    nothing = cli("inbox", "replay-rejected", "--all", "--secret", NEW, "--store", store)
    assert (nothing.code, "nothing to replay" in nothing.out) == (0, True)
    twice = cli(
        "inbox", "replay-rejected", kept[0]["id"], "--secret", NEW,
        "--handler", "ops_handlers:handle", "--store", store,
    )  # fmt: skip
    assert "duplicate" in twice.out
    assert len(handled(workdir)) == 3
    stats = json.loads(cli("inbox", "stats", "--json", "--store", store).out)
    assert (stats["processed"], stats["rejected"]) == (3, 3)
    marked = json.loads(cli("inbox", "rejected", "--json", "--store", store).out)
    assert all(request["replayed_key"] for request in marked)


def test_inbox_rejected_when_nothing_is_kept(cli: Callable[..., Run], store: str) -> None:
    receive(store, [body_of(1)], at=datetime.now(timezone.utc))
    run = cli("inbox", "rejected", "--store", store)
    assert (run.code, "--keep-rejected" in run.out) == (0, True)
    unknown = cli("inbox", "rejected", "--show", "77", "--store", store)
    assert unknown.code == 1
    assert "77" in unknown.err


# --- serve --retention -------------------------------------------------------------------------


def test_serve_prunes_in_the_background_and_still_answers_duplicate(
    store: str, workdir: Path
) -> None:
    now = datetime.now(timezone.utc)
    body = body_of(1)
    [key] = receive(store, [body], at=now - 30 * DAY)
    args = ("--store", store, "--handler", "ops_handlers:handle", "--retention", "7d")
    with serving(workdir, *args, secret=OLD) as url, httpx.Client(base_url=url) as client:
        deadline = time.monotonic() + 30
        while not record_of(store, key).pruned:
            assert time.monotonic() < deadline, "serve --retention never pruned"
            time.sleep(0.1)
        answer = client.post(PATH, content=body, headers={"Runflow-Signature": sign(body, OLD)})
    assert (answer.status_code, answer.json()["status"]) == (200, "duplicate")
    assert handled(workdir) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tombstone-retention", "30d"], "--tombstone-retention needs --retention"),
        (["--retention", "30d", "--tombstone-retention", "7d"], "must not be shorter"),
    ],
)
def test_serve_retention_flags_are_checked(
    cli: Callable[..., Run], store: str, args: list[str], message: str
) -> None:
    run = cli("serve", "--secret", OLD, "--store", store, *args)
    assert run.code == 1
    assert message in run.err
