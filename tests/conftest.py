"""Shared test configuration: real Redis and PostgreSQL servers for the store tests.

``redis_url`` and ``postgres_url`` are session fixtures. They use ``RUNFLOW_TEST_REDIS_URL`` /
``RUNFLOW_TEST_POSTGRES_URL`` when set (CI starts the servers, see ``.ci/run``); otherwise they
start a private throwaway server from the installed binaries (``servers.py``); otherwise the
test is skipped, except when ``CI`` is true, where a missing server fails the run.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest

from servers import ServerUnavailable, postgres_server, redis_server, unavailable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path


def _serve(what: str, server: AbstractContextManager[str]) -> Iterator[str]:
    try:
        url = server.__enter__()
    except ServerUnavailable as exc:
        unavailable(what, str(exc))
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server URL: ``RUNFLOW_TEST_REDIS_URL`` or a private ``redis-server``."""
    yield from _serve("Redis", redis_server())


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL: ``RUNFLOW_TEST_POSTGRES_URL`` or a private throwaway cluster."""
    yield from _serve("PostgreSQL", postgres_server())


@pytest.fixture
def namespace() -> str:
    """A fresh store namespace (table name or key prefix), so tests never see each other."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a store on each backend in turn (SQLite in a fresh directory)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'callbacks.db'}"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
