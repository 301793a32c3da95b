"""Throwaway Redis and PostgreSQL servers for the store tests and the store benchmark.

Each context manager yields a URL: the one in ``RUNFLOW_TEST_REDIS_URL`` /
``RUNFLOW_TEST_POSTGRES_URL`` when set (CI starts the servers, see ``.ci/run``), otherwise a
private server started from the installed binaries and stopped on exit. When neither is
possible they raise :class:`ServerUnavailable` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from runflow_callbacks.testing.server import free_port, wait_for_port


def in_ci() -> bool:
    """True when ``CI`` is set: a test that would skip for a missing service fails instead."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def unavailable(what: str, why: str) -> NoReturn:
    """Skip the test because ``what`` is missing, locally; fail it in CI, which installs it."""
    message = f"{what} is not available: {why}"
    if in_ci():
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


if TYPE_CHECKING:
    from collections.abc import Iterator

    from runflow_callbacks.stores import CallbackStore

__all__ = [
    "PostgresCluster",
    "RedisServer",
    "ServerUnavailable",
    "postgres_cluster",
    "postgres_server",
    "redis_restartable",
    "redis_server",
]

START_SECONDS = 60


class ServerUnavailable(Exception):  # noqa: N818 - reads as a state, like TimeoutExpired
    """No URL is configured and no server could be started (the message says why)."""


class RedisServer:
    """A private ``redis-server`` on one port that can be stopped and started again.

    With ``durable`` it keeps an append-only file (fsynced on every write) in its directory, so
    that what was written before :meth:`restart` is still there after it.
    """

    def __init__(self, binary: str, workdir: Path, *, durable: bool = False) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        persistence = ("yes", "always") if durable else ("no", "everysec")
        self._argv = [
            *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", persistence[0], "--appendfsync", persistence[1]),
            *("--daemonize", "no", "--dir", str(workdir)),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._process = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port("127.0.0.1", self.port, timeout=START_SECONDS)
        except TimeoutError:
            self.stop()
            raise

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM: Redis closes every client connection)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - only a hung server
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the server and start it again on the same port (and files)."""
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_restartable() -> Iterator[RedisServer]:
    """A private, durable Redis server the caller may :meth:`~RedisServer.restart`.

    Never the configured ``RUNFLOW_TEST_REDIS_URL``: a shared server must not be restarted.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable("redis-server is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="runflow-redis-"))
    server = RedisServer(binary, workdir, durable=True)
    try:
        server.start()
    except (TimeoutError, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerUnavailable(f"redis-server did not start ({exc})") from None
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A Redis URL: ``RUNFLOW_TEST_REDIS_URL`` or a private ``redis-server`` (no persistence)."""
    configured = os.environ.get("RUNFLOW_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable("redis-server is not installed and RUNFLOW_TEST_REDIS_URL is unset")
    workdir = Path(tempfile.mkdtemp(prefix="runflow-redis-"))
    server = RedisServer(binary, workdir)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


class PostgresCluster:
    """A private throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) in its own directory.

    Run as the ``postgres`` user when we are root. :meth:`restart` stops it (``-m fast``: every
    session is terminated) and starts it again on the same data directory and port.
    """

    def __init__(self, bindir: Path, workdir: Path) -> None:
        as_root = os.geteuid() == 0
        if as_root and shutil.which("runuser") is None:
            raise ServerUnavailable("running as root without runuser to drop to postgres")
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        workdir.chmod(0o755)  # the postgres user must reach its directory
        self._run = workdir / "pg"
        self._run.mkdir()
        if as_root:
            shutil.chown(self._run, "postgres", "postgres")
        self._bindir, self._data, self.port = bindir, self._run / "data", free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._pg_ctl = [*self._prefix, str(bindir / "pg_ctl"), "-D", str(self._data)]

    def init(self) -> None:
        """Create the cluster's data directory."""
        initdb = [str(self._bindir / "initdb"), "-D", str(self._data), "-A", "trust"]
        subprocess.run(
            [*self._prefix, *initdb, "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=START_SECONDS,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self._run} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = ["-l", str(self._run / "log"), "-o", options, "-w", "-t", str(START_SECONDS)]
        subprocess.run(
            [*self._pg_ctl, *start, "start"],
            check=True,
            capture_output=True,
            timeout=START_SECONDS + 10,
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are terminated; ``immediate``: no shutdown)."""
        subprocess.run(
            [*self._pg_ctl, "-m", mode, "-w", "stop"],
            check=False,
            capture_output=True,
            timeout=60,
        )

    def restart(self) -> None:
        """Stop the server and start it again on the same data directory and port."""
        self.stop()
        self.start()

    def ensure_running(self) -> None:
        """Start the server unless it runs (a test may have left it stopped)."""
        status = subprocess.run(
            [*self._pg_ctl, "status"], check=False, capture_output=True, timeout=30
        )
        if status.returncode != 0:
            self.start()


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster the caller may :meth:`~PostgresCluster.restart`.

    Never the configured ``RUNFLOW_TEST_POSTGRES_URL``: a shared server must not be restarted.
    """
    bindir = _postgres_bin()
    if bindir is None:
        raise ServerUnavailable("no pg_ctl found")
    workdir = Path(tempfile.mkdtemp(prefix="runflow-pg-"))
    try:
        cluster = PostgresCluster(bindir, workdir)
        cluster.init()
        cluster.start()
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerUnavailable(f"the throwaway cluster did not start ({exc})") from None
    except ServerUnavailable:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    try:
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster.stop("immediate")
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL URL: ``RUNFLOW_TEST_POSTGRES_URL`` or a private throwaway cluster
    (``initdb`` + ``pg_ctl``, run as the ``postgres`` user when we are root)."""
    configured = os.environ.get("RUNFLOW_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    if _postgres_bin() is None:
        raise ServerUnavailable("no pg_ctl found and RUNFLOW_TEST_POSTGRES_URL is unset")
    with postgres_cluster() as cluster:
        yield cluster.url


def open_in(url: str, namespace: str) -> CallbackStore:
    """``open_store(url)`` in ``namespace`` (the memory store has no namespaces)."""
    from runflow_callbacks.stores import open_store

    return open_store(url) if url == "memory://" else open_store(url, namespace=namespace)
