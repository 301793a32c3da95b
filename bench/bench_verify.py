"""What verifying and parsing one callback costs, next to the floor and the peers.

Bodies of exactly 1 KiB, 64 KiB, 1 MiB and 4 MiB, written the way Runflow writes them
(:func:`runflow_callbacks.wire.dumps_payload`; metadata pads each body to its size), in five
shapes:

* ``short``: batch items of a few short fields with a nested output
  (``{"run_id", "status", "output": {"image_urls": [url]}}``),
* ``urls``: batch items as ``PayloadFactory`` makes them, with long presigned output URLs,
* ``failed``: a ``batch.partial_succeeded`` whose every other item failed with an error object,
* ``metadata``: ``short`` items plus a nested metadata object (ids, an order, tags, a trace),
* ``run``: a ``run.completed`` callback whose output is a long list of segments.

Per shape and size, microseconds per call of:

* ``floor``: stdlib ``hmac.digest`` one-shot over the body plus ``hmac.compare_digest``,
* ``verify``: our :func:`runflow_callbacks.verify` (header parsing included),
* ``incremental``: an :class:`IncrementalVerifier` fed 64 KiB chunks, then ``verify``,
* ``verify + parse``: ``verify`` then :func:`parse_callback` into typed models (a large
  batch's items and a large run's output are built on first use, so this is what a handler
  that reads the envelope and the counts pays),
* ``(reference) verify + parse + read the items``: the same, then reading the batch's
  ``output.items`` or the run's ``output`` (what a handler that walks every item pays),
* ``(reference) verify + parse, defer_items=False``: everything built during the parse,
* ``(reference) verify + msgspec typed Structs``: ``verify`` then msgspec decoding the whole
  body into typed Structs (UUIDs, datetimes, every item): what typed parsing can cost at best,
* the peers, each with its own scheme on the same body: ``standardwebhooks``
  ``Webhook.verify`` (returns a parsed, untyped dict), ``svix`` ``Webhook.verify``, ``stripe``
  ``WebhookSignature.verify_header``.

Each row is the best of ``--repeat`` rounds (the rows interleaved within a round), a round
running each call for about ``--round-ms`` milliseconds with the garbage collector on (as in a
server: it charges each parser for the collections its objects trigger). Ratios are to
``floor`` and to ``standardwebhooks`` in the same run. Targets: ``verify`` within 1.10x of the
floor; ``verify + parse`` of a batch at most 0.40x of ``standardwebhooks`` at 1 KiB and 0.30x
from 64 KiB, of a run callback at most 0.50x at 1 KiB and 0.40x from 64 KiB.

    python bench/bench_verify.py [--repeat 7] [--round-ms 40] [--shapes urls,run] [--sizes 1,64]
"""

from __future__ import annotations

import argparse
import base64
import gc
import hmac
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import UUID  # noqa: TC003 - msgspec reads the annotations at run time

import msgspec

from runflow_callbacks import (
    BatchCallbackPayload,
    IncrementalVerifier,
    RunCallbackPayload,
    parse_callback,
    sign,
    verify,
)
from runflow_callbacks.testing.factories import PayloadFactory
from runflow_callbacks.wire import dumps_payload

if TYPE_CHECKING:
    from collections.abc import Callable

SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024, "1 MiB": 1024 * 1024, "4 MiB": 4 * 1024 * 1024}
CHUNK_BYTES = 64 * 1024
SECRET = "whsec_bench_4f1c2a9e7b3d5f6081a2c3d4"
VERIFY_TARGET = 1.10
# verify + parse as a share of standardwebhooks: (at 1 KiB, from 64 KiB on).
BATCH_TARGETS = (0.40, 0.30)
RUN_TARGETS = (0.50, 0.40)
SMALL_SIZE = 2048  # at most this is "1 KiB" for the targets
_FIXED = datetime(2026, 5, 6, 10, 0, 1, tzinfo=timezone.utc)
_BATCH_ID = "0190f2a4-0000-7000-8000-000000000002"
_RUN_ID = "0190f2a4-0000-7000-8000-000000000001"
_ENVELOPE = {
    "duration_ms": 106581,
    "created_at": "2026-05-06T09:58:14.419000+00:00",
    "completed_at": "2026-05-06T10:00:01+00:00",
}
_METADATA = {
    "customer_id": "cus_0190f2a4",
    "order": {"id": 42, "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]},
    "tags": ["nightly", "eu-west", "priority"],
    "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
}


def _fit(size: int, build: Callable[[int, int], bytes]) -> bytes:
    """``build(count, pad)`` with the most units that fit in ``size``, padded to exactly it."""
    low, high = 0, 1
    while len(build(high, 0)) <= size:
        low, high = high, high * 2
    while high - low > 1:  # the most units that still fit
        middle = (low + high) // 2
        low, high = (middle, high) if len(build(middle, 0)) <= size else (low, middle)
    body = build(low, size - len(build(low, 0)))
    if len(body) != size:
        raise RuntimeError(f"could not build a body of {size} bytes")
    return body


def batch_body(size: int) -> bytes:
    """A ``batch.succeeded`` callback of exactly ``size`` bytes (``urls``; metadata pads it)."""
    factory = PayloadFactory(seed=size, clock=lambda: _FIXED)

    def build(count: int, pad: int) -> bytes:
        factory.rng.seed(size)
        payload = factory.batch("batch.succeeded", item_count=count, metadata={"pad": "x" * pad})
        return factory.body(payload)

    return _fit(size, build)


def _short_item(index: int) -> dict[str, Any]:
    return {
        "run_id": f"3c90c3cc-0d44-4b50-8888-{index:012d}",
        "status": "succeeded",
        "output": {"image_urls": [f"https://cdn.example.com/img/{index}.png"]},
    }


def _failed_item(index: int) -> dict[str, Any]:
    if index % 2 == 0:
        return {**_short_item(index), "error": None}
    return {
        "run_id": f"3c90c3cc-0d44-4b50-8888-{index:012d}",
        "status": "failed",
        "output": None,
        "error": {"code": "model_error", "message": "the model raised an error while generating"},
    }


def _batch(event: str, items: list[dict[str, Any]], metadata: dict[str, Any]) -> bytes:
    failed = sum(item["status"] == "failed" for item in items)
    output = {
        "items": items,
        "succeeded": len(items) - failed,
        "failed": failed,
        "cancelled": 0,
        "total": len(items),
    }
    status = event.removeprefix("batch.")
    payload = {"event": event, "batch_id": _BATCH_ID, "status": status, "output": output}
    return dumps_payload({**payload, **_ENVELOPE, "metadata": metadata})


def _segment(index: int) -> dict[str, Any]:
    return {"id": index, "start": index * 2.5, "end": index * 2.5 + 2.25, "text": "the quick fox"}


def _run(segments: int, metadata: dict[str, Any]) -> bytes:
    output = {"model": "whisper-large-v3", "segments": [_segment(i) for i in range(segments)]}
    payload = {"event": "run.completed", "run_id": _RUN_ID, "status": "succeeded"}
    return dumps_payload({**payload, "output": output, **_ENVELOPE, "metadata": metadata})


SHAPES: dict[str, Callable[[int], bytes]] = {
    "short": lambda size: _fit(
        size,
        lambda n, pad: _batch(
            "batch.succeeded", [_short_item(i) for i in range(n)], {"pad": "x" * pad}
        ),
    ),
    "urls": batch_body,
    "failed": lambda size: _fit(
        size,
        lambda n, pad: _batch(
            "batch.partial_succeeded", [_failed_item(i) for i in range(n)], {"pad": "x" * pad}
        ),
    ),
    "metadata": lambda size: _fit(
        size,
        lambda n, pad: _batch(
            "batch.succeeded",
            [_short_item(i) for i in range(n)],
            {**_METADATA, "pad": "x" * pad},
        ),
    ),
    "run": lambda size: _fit(size, lambda n, pad: _run(n, {**_METADATA, "pad": "x" * pad})),
}
RUN_SHAPES = frozenset({"run"})


# --- msgspec typed Structs: the reference for typed parsing ------------------------------------


class _Item(msgspec.Struct):
    run_id: str
    status: str
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class _BatchOutput(msgspec.Struct):
    items: list[_Item] | None = None
    succeeded: int | None = None
    failed: int | None = None
    cancelled: int | None = None
    total: int | None = None


class _Envelope(msgspec.Struct):
    event: str | None = None
    status: str | None = None
    duration_ms: int | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None
    metadata: dict[str, Any] | None = None


class _BatchStruct(_Envelope):
    batch_id: UUID | None = None
    output: _BatchOutput | None = None


class _RunStruct(_Envelope):
    run_id: UUID | None = None
    output: Any = None


_TYPED: dict[bool, msgspec.json.Decoder[Any]] = {
    False: msgspec.json.Decoder(_BatchStruct),
    True: msgspec.json.Decoder(_RunStruct),
}


def _ours(body: bytes, *, run: bool) -> dict[str, Callable[[], object]]:
    signature = sign(body, SECRET)
    key, expected = SECRET.encode(), bytes.fromhex(signature)
    chunks = [body[i : i + CHUNK_BYTES] for i in range(0, len(body), CHUNK_BYTES)]
    typed = _TYPED[run]

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

    def and_read() -> object:
        verify(body, signature, SECRET)
        payload = parse_callback(body)
        if isinstance(payload, RunCallbackPayload):
            return payload.output
        assert isinstance(payload, BatchCallbackPayload)
        assert payload.output is not None
        return payload.output.items

    def eager() -> object:
        verify(body, signature, SECRET)
        return parse_callback(body, defer_items=False)

    def msgspec_typed() -> object:
        verify(body, signature, SECRET)
        return typed.decode(body)

    return {
        "floor": floor,
        "verify": lambda: verify(body, signature, SECRET),
        "incremental (64 KiB chunks)": incremental,
        "verify + parse": verify_and_parse,
        "(reference) verify + parse + read the items": and_read,
        "(reference) verify + parse, defer_items=False": eager,
        "(reference) verify + msgspec typed Structs": msgspec_typed,
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
    ratio: float | None  # to the floor
    shape: str = "urls"
    peer_ratio: float | None = None  # to standardwebhooks


def measure(
    sizes: dict[str, int] = SIZES,
    *,
    shapes: list[str] | None = None,
    repeat: int = 7,
    round_ms: float = 40.0,
) -> list[Row]:
    """Time every row at every shape and size; best of ``repeat`` interleaved rounds."""
    gc.enable()  # as in a server; each round starts from a collected heap
    rows: list[Row] = []
    for label, size in sizes.items():
        for shape in shapes or list(SHAPES):
            body = SHAPES[shape](size)
            funcs: dict[str, Callable[[], object] | None] = {
                **_ours(body, run=shape in RUN_SHAPES),
                **_peers(body),
            }
            best: dict[str, float] = {}
            for _ in range(repeat):
                for name, func in funcs.items():
                    if func is not None:
                        gc.collect()
                        micros = _per_call_us(func, round_ms)
                        best[name] = min(best.get(name, micros), micros)
            floor, standard = best["floor"], best.get("standardwebhooks")
            for name in funcs:
                micros_or_none = best.get(name)
                ratio = peer = None
                if micros_or_none is not None:
                    ratio = micros_or_none / floor
                    peer = None if standard is None else micros_or_none / standard
                rows.append(Row(label, name, micros_or_none, ratio, shape, peer))
    return rows


def verdicts(rows: list[Row]) -> list[str]:
    """One line per target, shape and size: met or missed, and by how much."""
    lines: list[str] = []
    by_key = {(row.shape, row.size, row.name): row for row in rows}
    sizes = {row.size: row for row in rows}
    for size in sizes:
        for shape in dict.fromkeys(row.shape for row in rows):
            ours = by_key.get((shape, size, "verify"))
            if ours is None:
                continue
            if ours.ratio is not None:
                met = "met" if ours.ratio <= VERIFY_TARGET else "MISSED"
                lines.append(
                    f"{size}: verify is {ours.ratio:.2f}x the floor on {shape} "
                    f"(target <= {VERIFY_TARGET:.2f}x): {met}"
                )
            parsed = by_key[(shape, size, "verify + parse")]
            if parsed.peer_ratio is not None:
                small, large = RUN_TARGETS if shape in RUN_SHAPES else BATCH_TARGETS
                target = small if _bytes(size) <= SMALL_SIZE else large
                met = "met" if parsed.peer_ratio <= target else "MISSED"
                lines.append(
                    f"{size}: verify + parse takes {parsed.peer_ratio:.2f}x standardwebhooks "
                    f"on {shape} (target <= {target:.2f}x): {met}"
                )
    return lines


def _bytes(label: str) -> int:
    number, unit = label.split()
    return int(float(number) * {"B": 1, "KiB": 1024, "MiB": 1024 * 1024}[unit])


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows."""
    lines = [
        "| shape | body | what | µs per call | ratio to floor | ratio to standardwebhooks |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        micros = "not installed" if row.micros is None else f"{row.micros:,.1f}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}x"
        peer = "" if row.peer_ratio is None else f"{row.peer_ratio:.2f}x"
        lines.append(f"| {row.shape} | {row.size} | {row.name} | {micros} | {ratio} | {peer} |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per shape, one line per row: ratio to standardwebhooks (and to the floor) per size."""
    sizes = list(dict.fromkeys(row.size for row in rows))
    out: list[str] = []
    for shape in dict.fromkeys(row.shape for row in rows):
        out += [
            f"**{shape}**",
            "",
            "| what | " + " | ".join(sizes) + " |",
            "|---|" + "---:|" * len(sizes),
        ]
        cells: dict[str, dict[str, str]] = {}
        for row in rows:
            if row.shape != shape:
                continue
            if row.micros is None or row.ratio is None:
                cells.setdefault(row.name, {})[row.size] = "not installed"
                continue
            peer = "" if row.peer_ratio is None else f"{row.peer_ratio:.2f} / "
            cells.setdefault(row.name, {})[row.size] = f"{peer}{row.ratio:.2f}x"
        for name, by_size in cells.items():
            out.append(f"| {name} | " + " | ".join(by_size.get(s, "") for s in sizes) + " |")
        standard = {
            r.size: r.micros for r in rows if r.shape == shape and r.name == "standardwebhooks"
        }
        if any(value is not None for value in standard.values()):
            out.append(
                "| standardwebhooks, µs per call | "
                + " | ".join(f"{standard[s]:,.1f}" if standard.get(s) else "" for s in sizes)
                + " |"
            )
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=7, help="rounds per row (best is kept)")
    parser.add_argument("--round-ms", type=float, default=40.0, help="duration of one round")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    parser.add_argument(
        "--sizes", default="1,64,1024,4096", help="comma-separated sizes in KiB (1,64,1024,4096)"
    )
    args = parser.parse_args(argv)
    sizes = {_label(int(kib)): int(kib) * 1024 for kib in args.sizes.split(",")}
    rows = measure(sizes, shapes=args.shapes.split(","), repeat=args.repeat, round_ms=args.round_ms)
    print(table(rows))
    print()
    print(summary(rows))
    print("\n".join(verdicts(rows)))
    return 0


def _label(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"


if __name__ == "__main__":
    raise SystemExit(main())
