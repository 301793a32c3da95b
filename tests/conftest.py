"""Shared test configuration: real Redis and PostgreSQL servers for the store tests.

``redis_url`` and ``postgres_url`` are session fixtures. They use ``RUNFLOW_TEST_REDIS_URL`` /
``RUNFLOW_TEST_POSTGRES_URL`` when set (CI starts the servers, see ``.ci/run``); otherwise they
start a private throwaway server from the installed binaries; otherwise the test is skipped,
except when ``CI`` is true, where a missing server fails the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

from runflow_callbacks.testing import free_port, wait_for_port

if TYPE_CHECKING:
    from collections.abc import Iterator

_SERVER_START_SECONDS = 60


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def _unavailable(what: str, why: str) -> NoReturn:
    message = f"{what} is not available: {why}"
    if _in_ci():
        pytest.fail(f"{message} (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server URL: ``RUNFLOW_TEST_REDIS_URL`` or a private ``redis-server``."""
    configured = os.environ.get("RUNFLOW_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("Redis", "redis-server is not installed and RUNFLOW_TEST_REDIS_URL is unset")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="runflow-redis-")
    process = subprocess.Popen(
        [
            *(binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--daemonize", "no", "--dir", workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=_SERVER_START_SECONDS)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - only a hung server
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    found = shutil.which("pg_ctl")
    if candidates:
        return candidates[-1].parent
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL: ``RUNFLOW_TEST_POSTGRES_URL`` or a private throwaway cluster."""
    configured = os.environ.get("RUNFLOW_TEST_POSTGRES_URL")
    if configured:
        yield configured
        return
    bindir = _postgres_bin()
    if bindir is None:
        _unavailable("PostgreSQL", "no pg_ctl found and RUNFLOW_TEST_POSTGRES_URL is unset")
    as_root = os.geteuid() == 0
    if as_root and shutil.which("runuser") is None:
        _unavailable("PostgreSQL", "running as root without runuser to drop to postgres")
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    workdir = Path(tempfile.mkdtemp(prefix="runflow-pg-"))
    workdir.chmod(0o755)  # the postgres user must reach its directory
    run = workdir / "pg"
    run.mkdir()
    if as_root:
        shutil.chown(run, "postgres", "postgres")
    data, port = run / "data", free_port()
    try:
        subprocess.run(
            [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
            check=True,
            capture_output=True,
            timeout=_SERVER_START_SECONDS,
        )
        options = f"-p {port} -k {run} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *(*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(run / "log")),
                *("-o", options, "-w", "-t", str(_SERVER_START_SECONDS), "start"),
            ],
            check=True,
            capture_output=True,
            timeout=_SERVER_START_SECONDS + 10,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        _unavailable("PostgreSQL", f"the throwaway cluster did not start ({exc})")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
                timeout=30,
            )
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def namespace() -> str:
    """A fresh store namespace (table name or key prefix), so tests never see each other."""
    return f"t_{uuid.uuid4().hex[:16]}"
