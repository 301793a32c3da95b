"""Every default of runflow-callbacks, in one light module (standard library imports only).

The library's options (:class:`~runflow_callbacks.options.ReceiverOptions`), the command line's
flags and the README all take their defaults from here, so that ``runflow-callbacks --help``
can show them without importing pydantic, httpx or starlette.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "DEFAULT_API_URL",
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_CALLBACK_PATH",
    "DEFAULT_HANDLER_TIMEOUT",
    "DEFAULT_HEAD_TIMEOUT",
    "DEFAULT_KEEP_REJECTED_BYTES",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_TRIES",
    "DEFAULT_MAX_UNVERIFIED_BYTES",
    "DEFAULT_NAMESPACE",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_SIGNATURE_HEADER",
    "DEFAULT_STORE_URL",
    "DEFAULT_TOMBSTONE_RETENTION",
    "ENV_PREFIX",
    "FAKE_ATTEMPT_TIMEOUT_S",
    "FAKE_MAX_ATTEMPTS",
    "FAKE_RETRY_DELAYS_S",
    "NAMESPACE_ENV",
    "SECRETS_ENV",
    "STORE_ENV",
]

#: The header carrying the signature (org-level webhooks: an assumption, see the README).
DEFAULT_SIGNATURE_HEADER: Final = "Runflow-Signature"
#: The path Runflow callbacks are received on unless told otherwise.
DEFAULT_CALLBACK_PATH: Final = "/callbacks/runflow"
#: 16 MiB: a batch callback carries every item's output inline, so it can be large.
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
#: How long a client may take to send a callback body once its headers arrived.
DEFAULT_BODY_TIMEOUT: Final = timedelta(seconds=30)
#: The most bytes of bodies not yet verified that one receiver holds at once (64 MiB).
DEFAULT_MAX_UNVERIFIED_BYTES: Final = 64 * 1024 * 1024
#: How long a client may take to send a request's head (serve).
DEFAULT_HEAD_TIMEOUT: Final = timedelta(seconds=10)
#: Concurrent connections and requests ``serve`` takes before answering 503.
DEFAULT_MAX_CONNECTIONS: Final = 256
#: How long a claim holds a callback before another replica may take it over.
DEFAULT_LEASE: Final = timedelta(minutes=5)
#: Handler tries before a callback moves to the dead letter.
DEFAULT_MAX_TRIES: Final = 8
#: How long one handler run may take before it is cancelled and counted as failed.
DEFAULT_HANDLER_TIMEOUT: Final = timedelta(minutes=15)
#: How often an idle inbox worker looks for due callbacks.
DEFAULT_POLL_INTERVAL: Final = timedelta(seconds=1)
#: How long a SQLite store waits for another process's write lock.
DEFAULT_BUSY_TIMEOUT: Final = timedelta(seconds=30)
#: How long ``prune`` keeps the tombstone of a pruned callback (it still deduplicates).
DEFAULT_TOMBSTONE_RETENTION: Final = timedelta(days=90)
#: The most body bytes kept over all kept rejected requests (``keep_rejected``).
DEFAULT_KEEP_REJECTED_BYTES: Final = 16 * 1024 * 1024
#: Where ``serve`` keeps callbacks when no ``--store`` is given.
DEFAULT_STORE_URL: Final = "sqlite:///./runflow-callbacks.db"
#: Table name (SQLite, PostgreSQL) or key prefix (Redis) used when none is given.
DEFAULT_NAMESPACE: Final = "runflow_callbacks"

#: Every environment variable of the receiver starts with this prefix (those of the Runflow
#: API, below, with ``RUNFLOW_API_``).
ENV_PREFIX: Final = "RUNFLOW_CALLBACK_"
#: The callback secrets, comma-separated, oldest first.
SECRETS_ENV: Final = ENV_PREFIX + "SECRETS"
#: The store URL of ``serve``, ``inbox`` and ``reconcile`` when no ``--store`` is given.
STORE_ENV: Final = ENV_PREFIX + "STORE"
#: The store namespace when no ``--namespace`` is given.
NAMESPACE_ENV: Final = ENV_PREFIX + "NAMESPACE"

#: The Runflow API the client talks to unless told otherwise.
DEFAULT_API_URL: Final = "https://api.runflow.io"
#: The Runflow API's address when no ``--api-url`` is given.
API_URL_ENV: Final = "RUNFLOW_API_URL"
#: The Runflow API key when none is passed (``api_key=``, ``--api-key``).
API_KEY_ENV: Final = "RUNFLOW_API_KEY"

# The fake Runflow of ``runflow_callbacks.testing`` (and ``runflow-callbacks fake-runflow``).
#: Our choice of schedule (Runflow documents "exponential" without numbers): 1, 2, 4, 8 s.
FAKE_RETRY_DELAYS_S: Final = (1.0, 2.0, 4.0, 8.0)
#: Attempts per delivery, the first included.
FAKE_MAX_ATTEMPTS: Final = 5
#: How long one delivery attempt waits for the receiver's answer.
FAKE_ATTEMPT_TIMEOUT_S: Final = 5.0
