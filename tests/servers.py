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
from typing import TYPE_CHECKING

from runflow_callbacks.testing.server import free_port, serve_process

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["ServerUnavailable", "postgres_server", "redis_server"]

START_SECONDS = 60


class ServerUnavailable(Exception):  # noqa: N818 - reads as a state, like TimeoutExpired
    """No URL is configured and no server could be started (the message says why)."""


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
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="runflow-redis-")
    argv = [
        *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", "no", "--daemonize", "no", "--dir", workdir),
    ]
    try:
        with serve_process(argv, port=port, startup_timeout=START_SECONDS):
            yield f"redis://127.0.0.1:{port}/0"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL URL: ``RUNFLOW_TEST_POSTGRES_URL`` or a private throwaway cluster
    (``initdb`` + ``pg_ctl``, run as the ``postgres`` user when we are root)."""
    configured = os.environ.get("RUNFLOW_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    bindir = _postgres_bin()
    if bindir is None:
        raise ServerUnavailable("no pg_ctl found and RUNFLOW_TEST_POSTGRES_URL is unset")
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        raise ServerUnavailable("running as root without runuser to drop to postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    workdir = Path(tempfile.mkdtemp(prefix="runflow-pg-"))
    workdir.chmod(0o755)  # the postgres user must reach its directory
    run = workdir / "pg"
    run.mkdir()
    if as_root:
        shutil.chown(run, "postgres", "postgres")
    data, port = run / "data", free_port()
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=START_SECONDS,
        )
        options = f"-p {port} -k {run} -c listen_addresses=127.0.0.1 -c fsync=off"
        start = ["-l", str(run / "log"), "-o", options, "-w", "-t", str(START_SECONDS), "start"]
        subprocess.run(
            [*pg_ctl, *start],
            check=True,
            capture_output=True,
            timeout=START_SECONDS + 10,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        raise ServerUnavailable(f"the throwaway cluster did not start ({exc})") from None
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True, timeout=30
            )
        shutil.rmtree(workdir, ignore_errors=True)
