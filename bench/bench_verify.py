"""What verifying (and parsing) one callback costs, next to the floor and the peers.

Bodies of exactly 1 KiB, 64 KiB and 1 MiB are batch callbacks written the way Runflow writes
them (``PayloadFactory``; metadata pads each body to its size). Per size, microseconds per call
of:

* ``floor``: stdlib ``hmac.digest`` one-shot over the body plus ``hmac.compare_digest``,
* ``verify``: our :func:`runflow_callbacks.verify` (header parsing included),
* ``incremental``: an :class:`IncrementalVerifier` fed 64 KiB chunks, then ``verify``,
* ``verify + parse``: ``verify`` then :func:`parse_callback` into typed models (a batch's
  items are built on first use, so this is what a handler that reads the envelope and the
  counts pays),
* ``(reference) verify + parse + read the items``: the same, then reading ``output.items``
  (what a handler that walks every item pays),
* ``(reference) verify + parse, defer_items=False``: every item built during the parse,
* ``(reference) JSON parse alone``: ``pydantic_core.from_json`` over the body (every value
  built as a Python object),
* the peers, each with its own scheme on the same body: ``standardwebhooks``
  ``Webhook.verify`` (returns a parsed, untyped dict), ``svix`` ``Webhook.verify``, ``stripe``
  ``WebhookSignature.verify_header``.

Each row is the best of ``--repeat`` rounds (the rows interleaved within a round), a round
running each call for about ``--round-ms`` milliseconds; the ratio is to ``floor``.
Targets: ``verify`` within 1.10x of the floor at every size; ``verify + parse`` at most 0.5x
of ``standardwebhooks``.

    python bench/bench_verify.py [--repeat 7] [--round-ms 40]
"""

from __future__ import annotations

import argparse
import base64
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pydantic_core import from_json

from runflow_callbacks import (
    BatchCallbackPayload,
    IncrementalVerifier,
    parse_callback,
    sign,
    verify,
)
from runflow_callbacks.testing.factories import PayloadFactory

if TYPE_CHECKING:
    from collections.abc import Callable

SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024}
CHUNK_BYTES = 64 * 1024
SECRET = "whsec_bench_4f1c2a9e7b3d5f6081a2c3d4"
VERIFY_TARGET = 1.10
PARSE_TARGET = 0.5
_FIXED = datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc)


def batch_body(size: int) -> bytes:
    """A ``batch.succeeded`` callback of exactly ``size`` bytes (metadata pads it)."""
    factory = PayloadFactory(seed=size, clock=lambda: _FIXED)

    def build(count: int, pad: int) -> bytes:
        factory.rng.seed(size)
        payload = factory.batch("batch.succeeded", item_count=count, metadata={"pad": "x" * pad})
        return factory.body(payload)

    low, high = 0, 1
    while len(build(high, 0)) <= size:
        low, high = high, high * 2
    while high - low > 1:  # the most items that still fit
        middle = (low + high) // 2
        low, high = (middle, high) if len(build(middle, 0)) <= size else (low, middle)
    body = build(low, size - len(build(low, 0)))
    if len(body) != size:
        raise RuntimeError(f"could not build a body of {size} bytes")
    return body


def _ours(body: bytes) -> dict[str, Callable[[], object]]:
    signature = sign(body, SECRET)
    key, expected = SECRET.encode(), bytes.fromhex(signature)
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]

    def floor() -> object:
        return hmac.compare_digest(hmac.digest(key, body, "sha256"), expected)

    def incremental() -> object:
        verifier = IncrementalVerifier(SECRET)
        for chunk in chunks:
            verifier.update(chunk)
        return verifier.verify(signature)

    def verify_and_parse() -> object:
        verify(body, signature, SECRET)
        return parse_callback(body)

    def and_read_items() -> object:
        verify(body, signature, SECRET)
        payload = parse_callback(body)
        assert isinstance(payload, BatchCallbackPayload)
        assert payload.output is not None
        return payload.output.items

    return {
        "floor": floor,
        "verify": lambda: verify(body, signature, SECRET),
        "incremental (64 KiB chunks)": incremental,
        "verify + parse": verify_and_parse,
        "(reference) verify + parse + read the items": and_read_items,
        "(reference) verify + parse, defer_items=False": lambda: (
            verify(body, signature, SECRET),
            parse_callback(body, defer_items=False),
        ),
        "(reference) JSON parse alone": lambda: from_json(body, cache_strings="keys"),
    }


def _peers(body: bytes) -> dict[str, Callable[[], object] | None]:
    """Each peer verifying the same body with its own scheme (None when not installed)."""
    peers: dict[str, Callable[[], object] | None] = {}
    key = "whsec_" + base64.b64encode(b"bench-key-0123456789abcdef").decode()
    text = body.decode()
    try:
        from standardwebhooks.webhooks import Webhook as StandardWebhook
    except ImportError:
        peers["standardwebhooks"] = None
    else:
        standard = StandardWebhook(key)
        headers = _signed_headers(
            standard.sign("msg_1", datetime.now(timezone.utc), text), "webhook-"
        )
        peers["standardwebhooks"] = lambda: standard.verify(body, headers)
    try:
        from svix.webhooks import Webhook as SvixWebhook
    except ImportError:
        peers["svix"] = None
    else:
        svix = SvixWebhook(key)
        svix_headers = _signed_headers(
            svix.sign("msg_1", datetime.now(timezone.utc), text), "svix-"
        )
        peers["svix"] = lambda: svix.verify(body, svix_headers)
    try:
        import stripe
    except ImportError:
        peers["stripe"] = None
    else:
        header = stripe.WebhookSignature.generate_signature_header(text, SECRET)
        peers["stripe"] = lambda: stripe.WebhookSignature.verify_header(body, header, SECRET, 300)
    return peers


def _signed_headers(signature: str, prefix: str) -> dict[str, str]:
    return {
        f"{prefix}id": "msg_1",
        f"{prefix}timestamp": str(int(time.time())),
        f"{prefix}signature": signature,
    }


def _per_call_us(func: Callable[[], object], round_ms: float) -> float:
    func()
    calls, start = 0, time.perf_counter()
    deadline = start + round_ms / 1000
    while True:
        func()
        calls += 1
        now = time.perf_counter()
        if now >= deadline:
            return (now - start) / calls * 1e6


@dataclass
class Row:
    size: str
    name: str
    micros: float | None
    ratio: float | None


def measure(sizes: dict[str, int] = SIZES, *, repeat: int = 7, round_ms: float = 40.0) -> list[Row]:
    """Time every row at every size; best of ``repeat`` interleaved rounds."""
    rows: list[Row] = []
    for label, size in sizes.items():
        body = batch_body(size)
        funcs: dict[str, Callable[[], object] | None] = {**_ours(body), **_peers(body)}
        best: dict[str, float] = {}
        for _ in range(repeat):
            for name, func in funcs.items():
                if func is not None:
                    micros = _per_call_us(func, round_ms)
                    best[name] = min(best.get(name, micros), micros)
        floor = best["floor"]
        for name in funcs:
            micros_or_none = best.get(name)
            ratio = None if micros_or_none is None else micros_or_none / floor
            rows.append(Row(label, name, micros_or_none, ratio))
    return rows


def verdicts(rows: list[Row]) -> list[str]:
    """One line per target and size: met or missed, and by how much."""
    lines: list[str] = []
    by_key = {(row.size, row.name): row for row in rows}
    for size in dict.fromkeys(row.size for row in rows):
        ours = by_key[(size, "verify")]
        if ours.ratio is not None:
            met = "met" if ours.ratio <= VERIFY_TARGET else "MISSED"
            lines.append(
                f"{size}: verify is {ours.ratio:.2f}x the floor "
                f"(target <= {VERIFY_TARGET:.2f}x): {met}"
            )
        parsed, standard = by_key[(size, "verify + parse")], by_key.get((size, "standardwebhooks"))
        if standard is not None and standard.micros is not None and parsed.micros is not None:
            share = parsed.micros / standard.micros
            met = "met" if share <= PARSE_TARGET else "MISSED"
            lines.append(
                f"{size}: verify + parse takes {share:.2f}x standardwebhooks "
                f"(target <= {PARSE_TARGET:.2f}x): {met}"
            )
    return lines


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = ["| body | what | µs per call | ratio to floor |", "|---|---|---:|---:|"]
    for row in rows:
        micros = "not installed" if row.micros is None else f"{row.micros:,.1f}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(f"| {row.size} | {row.name} | {micros} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=7, help="rounds per row (best is kept)")
    parser.add_argument("--round-ms", type=float, default=40.0, help="duration of one round")
    args = parser.parse_args(argv)
    rows = measure(repeat=args.repeat, round_ms=args.round_ms)
    print(table(rows))
    print()
    print("\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
