"""``runflow-callbacks fake-runflow``: serve the fake Runflow under uvicorn.

::

    runflow-callbacks fake-runflow --port 8010 --api-key rf_local --secret whsec_local \\
        --retry-delays 0.5,1,2 --max-attempts 4 --attempt-timeout 3

Then create a finished batch (its callback is delivered at once) and follow its story::

    curl -X POST localhost:8010/_fake/batches -d '{"callback_url": "http://localhost:8000/cb"}'
    RUNFLOW_API_URL=http://localhost:8010 RUNFLOW_API_KEY=rf_local \\
        runflow-callbacks history --batch <id>

While it serves, every delivery attempt is one line on stdout as it ends
(:func:`format_attempt`), flushed at once, like ``stripe listen``::

    2026-12-01 21:04:05.123Z  delivery 5b0c…  batch.failed  batch 0190…  attempt 1/5  HTTP 401  4 ms
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Final

from runflow_callbacks.cli._common import (
    SECRETS_ENV_VARIABLE,
    add_secret_options,
    port_number,
    secrets_from_args,
    shown,
)
from runflow_callbacks.cli.history import format_time
from runflow_callbacks.defaults import (
    API_KEY_ENV,
    FAKE_ATTEMPT_TIMEOUT_S,
    FAKE_MAX_ATTEMPTS,
    FAKE_RETRY_DELAYS_S,
)
from runflow_callbacks.errors import ConfigurationError

if TYPE_CHECKING:
    from runflow_callbacks.testing.fake.state import Attempt, Delivery

__all__ = ["format_attempt", "parse_delays", "register", "run_fake_runflow"]

#: uvicorn's log levels (``uvicorn.config.LOG_LEVELS``), spelled out: importing uvicorn to build
#: the parser would cost every command.
_LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug", "trace")


def parse_delays(text: str) -> tuple[float, ...]:
    """``"0.5,1,2"`` -> ``(0.5, 1.0, 2.0)``; anything else is a :class:`ConfigurationError`."""
    try:
        delays = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigurationError(
            f"--retry-delays must be comma-separated seconds like 0.5,1,2, got {text!r}"
        ) from None
    if any(delay < 0 or delay != delay for delay in delays):  # noqa: PLR0124 - NaN check
        raise ConfigurationError("--retry-delays must not contain negative or NaN delays")
    return delays


def format_attempt(delivery: Delivery, attempt: Attempt) -> str:
    """The line ``fake-runflow`` prints when an attempt ends.

    When it started (UTC, milliseconds), the delivery's id, the event, the batch or run id,
    ``attempt n/max``, the receiver's HTTP status (or why there was none: the timeout or
    connection error, escaped by :func:`shown`), and how long the attempt took.
    """
    event = delivery.subject.payload.get("event")
    outcome = (
        f"HTTP {attempt.status_code}"
        if attempt.status_code is not None
        else shown(attempt.error_message or None, missing="no answer")
    )
    latency = "-" if attempt.response_time_ms is None else f"{attempt.response_time_ms} ms"
    return "  ".join(
        (
            format_time(attempt.created_at),
            f"delivery {delivery.id}",
            shown(event if isinstance(event, str) else None, missing="?"),
            f"{delivery.subject.kind} {delivery.subject.id}",
            f"attempt {attempt.attempt_number}/{delivery.max_attempts}",
            outcome,
            latency,
        )
    )


def _print_attempt(delivery: Delivery, attempt: Attempt) -> None:
    print(format_attempt(delivery, attempt), flush=True)


def _delays(text: str) -> tuple[float, ...]:
    # The type of --retry-delays: argparse shows an ArgumentTypeError's own message.
    try:
        return parse_delays(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--retry-delays ")) from None


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fake-runflow`` to the command line."""
    parser = subparsers.add_parser(
        "fake-runflow",
        help="serve a fake Runflow that delivers callbacks and answers the delivery API",
        description=(
            "Serve the fake Runflow: POST /_fake/batches or /_fake/runs creates a finished batch "
            "or run and delivers its callback (signed, retried, recorded); the API answers "
            "delivery history, redeliveries and callback secrets. Each delivery attempt is "
            "one line on stdout as it ends: the time (UTC), the delivery id, the event, the "
            "batch or run id, attempt n/max, the HTTP status or the connection error, and the "
            "latency. Needs uvicorn."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=port_number,
        default=8010,
        help="port (default: 8010; 0: any free port, named in uvicorn's log)",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"the Bearer key the API accepts (default: ${API_KEY_ENV}; required)",
    )
    add_secret_options(
        parser,
        purpose=(
            "the callback secret the fake signs its deliveries with (whsec_...; one only; "
            "with none, it delivers them unsigned)."
        ),
    )
    parser.add_argument(
        "--retry-delays",
        type=_delays,
        default=FAKE_RETRY_DELAYS_S,
        metavar="S1,S2,...",
        help="seconds before each retry; the last doubles beyond the list (default: 1,2,4,8)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=FAKE_MAX_ATTEMPTS,
        metavar="N",
        help=f"attempts per delivery (default: {FAKE_MAX_ATTEMPTS})",
    )
    parser.add_argument(
        "--attempt-timeout",
        type=float,
        default=FAKE_ATTEMPT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"per-attempt timeout (default: {FAKE_ATTEMPT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        default="info",
        choices=_LOG_LEVELS,
        help="uvicorn log level (default: info)",
    )
    parser.set_defaults(func=run_fake_runflow)


def run_fake_runflow(args: argparse.Namespace) -> int:
    """Build the fake from the options and serve it until interrupted."""
    api_key = args.api_key or os.environ.get(API_KEY_ENV)
    if not api_key:
        raise ConfigurationError(f"--api-key (or {API_KEY_ENV}) is required")
    secret = None
    if args.secrets or os.environ.get(SECRETS_ENV_VARIABLE, "").strip(" ,"):
        secrets = secrets_from_args(args)
        if len(secrets) != 1:
            raise ConfigurationError(
                f"fake-runflow installs exactly one initial secret, got {len(secrets)}"
            )
        secret = secrets[0].reveal()
    from runflow_callbacks.testing.fake import FakeRunflow  # noqa: PLC0415 - starlette, httpx

    fake = FakeRunflow(
        api_key=api_key,
        secret=secret,
        retry_delays_s=args.retry_delays,
        max_attempts=args.max_attempts,
        attempt_timeout_s=args.attempt_timeout,
    )
    fake.engine.on_attempt = _print_attempt
    try:
        import uvicorn  # noqa: PLC0415 - optional dependency, needed only to serve
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigurationError(
            "fake-runflow needs uvicorn: pip install 'runflow-callbacks[serve]'"
        ) from None
    signing = "signs with the given secret" if secret else "sends unsigned callbacks"
    delays = ",".join(f"{delay:g}" for delay in args.retry_delays)
    print(
        f"fake Runflow on http://{args.host}:{args.port} ({signing}; "
        f"{args.max_attempts} attempts, retries after {delays} s)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(fake, host=args.host, port=args.port, log_level=args.log_level)
    return 0
