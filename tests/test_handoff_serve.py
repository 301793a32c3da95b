"""``runflow-callbacks serve --hand-off celery|procrastinate``, as a user runs it.

``serve`` records each callback and queues its job; the ready worker apps of
``runflow_callbacks.handoff.workers`` (configured by ``RUNFLOW_CALLBACK_*`` variables) run the
handler: ``celery -A runflow_callbacks.handoff.workers:celery_app worker`` on a real Redis
broker, ``procrastinate --app=runflow_callbacks.handoff.workers.procrastinate_app worker`` on
a real PostgreSQL database. Each callback, delivered twice over real HTTP, runs once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from runflow_callbacks import sign
from runflow_callbacks.cli import main
from runflow_callbacks.testing import PayloadFactory, free_port, wait_for_port
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "whsec_handoff_serve_0123456789"
PATH = "/callbacks/runflow"
HANDLERS = textwrap.dedent(
    """
    import os

    def handle(context):
        with open(os.environ["HANDOFF_LOG"], "a") as log:
            log.write(f"{context.key} {context.attempt}\\n")
    """
)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "handoff_handlers.py").write_text(HANDLERS)
    monkeypatch.chdir(tmp_path)
    for name in ("RUNFLOW_CALLBACK_STORE", "RUNFLOW_CALLBACK_BROKER", "RUNFLOW_CALLBACK_HAND_OFF"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@contextlib.contextmanager
def running(command: list[str], workdir: Path, env: dict[str, str], log: Path) -> Iterator[None]:
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text
    assert SECRET not in text


def environment(workdir: Path, **variables: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
        "RUNFLOW_CALLBACK_SECRETS": SECRET,
        "RUNFLOW_CALLBACK_HANDLER": "handoff_handlers:handle",
        "HANDOFF_LOG": str(workdir / "handled.log"),
        **variables,
    }


def deliver_twice(url: str, bodies: list[bytes]) -> list[tuple[int, str]]:
    answers = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for body in bodies * 2:
            answer = client.post(
                PATH, content=body, headers={"Runflow-Signature": sign(body, SECRET)}
            )
            answers.append((answer.status_code, answer.json().get("status", "")))
    return answers


def wait_for_runs(workdir: Path, count: int, *, timeout: float = 60) -> list[str]:
    log = workdir / "handled.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= count:
            time.sleep(0.5)  # a doubled run would show by now
            return log.read_text().splitlines()
        time.sleep(0.1)
    pytest.fail(f"only {len(lines)} of {count} handler runs")


def serve_command(port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "runflow_callbacks", "serve", "--port", str(port), *args]


@pytest.mark.redis
@pytest.mark.slow
def test_serve_hands_off_to_celery_workers_and_each_callback_runs_once(
    workdir: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = urlunsplit(urlsplit(redis_url)._replace(path="/8"))
    queue = f"q_{uuid.uuid4().hex[:10]}"
    store = f"sqlite:///{workdir / 'callbacks.db'}"
    env = environment(workdir, RUNFLOW_CALLBACK_STORE=store, RUNFLOW_CALLBACK_BROKER=broker)
    port = free_port()
    bodies = [dumps_payload(PayloadFactory(seed=seed).batch()) for seed in range(5)]
    worker = [
        sys.executable, "-m", "celery", "-A", "runflow_callbacks.handoff.workers:celery_app",
        "worker", "--pool=solo", "--without-gossip", "--without-mingle", "--without-heartbeat",
        "-Q", queue,
    ]  # fmt: skip
    serve = serve_command(
        port, "--hand-off", "celery", "--handler", "handoff_handlers:handle",
        "--hand-off-queue", queue, "--store", store,
    )  # fmt: skip
    with (
        running(serve, workdir, env, workdir / "serve.log"),
        running(worker, workdir, env, workdir / "worker.log"),
    ):
        wait_for_port("127.0.0.1", port, timeout=30)
        answers = deliver_twice(f"http://127.0.0.1:{port}", bodies)
        runs = wait_for_runs(workdir, len(bodies))
    assert answers[: len(bodies)] == [(200, "recorded")] * len(bodies)
    assert {status for status, _ in answers} == {200}
    assert len(runs) == len(bodies) == len({line.split()[0] for line in runs})
    capsys.readouterr()
    assert main(["inbox", "stats", "--json", "--store", store]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["processed"], stats["duplicates"]) == (len(bodies), len(bodies))
    assert "hand-off to celery" in (workdir / "serve.log").read_text()


@pytest.mark.postgres
@pytest.mark.slow
def test_serve_hands_off_to_procrastinate_workers_and_each_callback_runs_once(
    workdir: Path, postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import psycopg

    name = f"s_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    database = urlunsplit(urlsplit(postgres_url)._replace(path=f"/{name}"))
    try:
        env = environment(workdir, RUNFLOW_CALLBACK_STORE=database)
        app = ["--app=runflow_callbacks.handoff.workers.procrastinate_app"]
        schema = subprocess.run(
            [sys.executable, "-m", "procrastinate", *app, "schema", "--apply"],
            cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert schema.returncode == 0, schema.stdout + schema.stderr
        port = free_port()
        bodies = [dumps_payload(PayloadFactory(seed=seed).run()) for seed in range(4)]
        worker = [sys.executable, "-m", "procrastinate", *app, "worker"]
        serve = serve_command(
            port, "--hand-off", "procrastinate", "--handler", "handoff_handlers:handle",
            "--store", database,
        )  # fmt: skip
        with (
            running(serve, workdir, env, workdir / "serve.log"),
            running(worker, workdir, env, workdir / "worker.log"),
        ):
            wait_for_port("127.0.0.1", port, timeout=30)
            answers = deliver_twice(f"http://127.0.0.1:{port}", bodies)
            runs = wait_for_runs(workdir, len(bodies))
        assert answers[: len(bodies)] == [(200, "recorded")] * len(bodies)
        assert len(runs) == len(bodies) == len({line.split()[0] for line in runs})
        capsys.readouterr()
        assert main(["inbox", "stats", "--json", "--store", database]) == 0
        stats = json.loads(capsys.readouterr().out)
        assert (stats["processed"], stats["duplicates"]) == (len(bodies), len(bodies))
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hand-off", "celery"], "--broker"),
        (["--hand-off", "procrastinate"], "PostgreSQL store"),
        (["--hand-off", "celery", "--broker", "redis://127.0.0.1:1/0", "--inbox"], "--inbox"),
        (["--hand-off-queue", "q"], "needs --hand-off"),
        (["--hand-off", "procrastinate", "--broker", "redis://x/0"], "--broker is for"),
        (
            ["--hand-off", "celery", "--broker", "redis://x/0", "--handler", "nope:handle"],
            "--handler",
        ),
    ],
)
def test_hand_off_settings_are_checked_before_serving(
    workdir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    store = f"sqlite:///{workdir / 'callbacks.db'}"
    code = main(["serve", "--secret", SECRET, "--store", store, *args])
    err = capsys.readouterr().err
    assert code == 1, err
    assert message in err
    assert SECRET not in err


def test_the_worker_apps_say_which_variable_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from runflow_callbacks.errors import ConfigurationError
    from runflow_callbacks.handoff import workers

    monkeypatch.delenv("RUNFLOW_CALLBACK_BROKER", raising=False)
    monkeypatch.setenv("RUNFLOW_CALLBACK_STORE", "memory://")
    with pytest.raises(ConfigurationError, match="RUNFLOW_CALLBACK_BROKER"):
        workers.__getattr__("celery_app")
    with pytest.raises(AttributeError):
        workers.__getattr__("nothing")
