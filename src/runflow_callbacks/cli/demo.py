"""``runflow-callbacks demo``: the README's main job.

The demo first walks through signatures (below), then runs the receiver at work: a fake
Runflow delivering to ``runflow-callbacks serve`` on SQLite
(:mod:`runflow_callbacks.cli._demo_run`).
``--signatures-only`` stops after the first part.

The signature walk-through signs a realistic ``batch.partial_succeeded`` callback the way
Runflow does, verifies it during a secret rotation (reporting which secret matched), parses
it, then shows copies rewritten in transit (``Z`` timestamps, a re-serialized body) rejected
with the reason and a hint. That part is deterministic: fixed seed, fixed clock.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from runflow_callbacks.errors import ConfigurationError, VerificationError

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from runflow_callbacks.verifier import Verifier

__all__ = ["register", "run_demo", "show_signatures"]

_FIXED_TIME = datetime(2026, 5, 6, 10, 0, 1, 250000, tzinfo=timezone.utc)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` to the command line."""
    parser = subparsers.add_parser(
        "demo",
        help="the receiver at work: fake Runflow, serve on SQLite, restarts, reconcile",
        description=run_demo.__doc__,
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=20,
        metavar="N",
        help="how many batch callbacks the first stream delivers (default: 20)",
    )
    parser.add_argument(
        "--workdir",
        type=_directory,
        metavar="DIR",
        help="keep the SQLite store and logs in DIR (default: a temporary directory)",
    )
    parser.add_argument(
        "--signatures-only",
        action="store_true",
        help="only sign, verify and reject sample callbacks (no servers)",
    )
    parser.set_defaults(func=run_demo)


def _directory(text: str) -> Path:
    # The type of --workdir. pathlib is imported here, when the option is given, because every
    # command pays for what this module imports at the top.
    from pathlib import Path  # noqa: PLC0415

    return Path(text)


def _make_workdir(path: Path) -> None:
    """Create ``--workdir`` now, so that a directory that cannot be made is one line of error
    before the demo starts, not a traceback halfway through."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(
            f"--workdir {path}: cannot create the directory: {reason}"
        ) from None


def _check(verifier: Verifier, title: str, body: bytes, signature: str) -> None:
    from runflow_callbacks.diagnose import diagnose_mismatch  # noqa: PLC0415 - pydantic
    from runflow_callbacks.models import BatchCallbackPayload, parse_callback  # noqa: PLC0415

    print(f"\n{title} ({len(body)} bytes)")
    try:
        secret = verifier.verify(body, signature)
    except VerificationError as exc:
        print(f"  rejected ({exc.code}): {exc}")
        hint = diagnose_mismatch(body, signature, verifier.secrets)
        if hint is not None:
            print(f"  hint: {hint}")
        return
    payload = parse_callback(body)
    print(f"  verified with secret {secret.name!r} (position {secret.position})")
    if isinstance(payload, BatchCallbackPayload) and payload.output is not None:
        out = payload.output
        print(
            f"  {type(payload).__name__} {payload.event} {payload.batch_id}: "
            f"{out.succeeded} succeeded, {out.failed} failed of {out.total}"
        )


def run_demo(args: argparse.Namespace) -> int:
    """Sign and verify sample callbacks, then run a fake Runflow delivering to ``serve`` on
    SQLite: a stream of callbacks, forged ones rejected, duplicates, a receiver restart,
    reconcile and the inbox summary. Exits 0 when every batch was handled exactly once."""
    if args.batches < 1:
        raise ConfigurationError("--batches must be at least 1")
    if args.workdir is not None and not args.signatures_only:
        _make_workdir(args.workdir)
    print("0. Signatures")
    print("-------------")
    show_signatures()
    if args.signatures_only:
        return 0
    # The receiver at work needs the whole stack (servers, stores, the fake Runflow).
    from runflow_callbacks.cli import _demo_run  # noqa: PLC0415

    return _demo_run.run(batches=args.batches, workdir=args.workdir)


def show_signatures() -> None:
    """Sign a sample batch callback, verify it during a rotation, reject rewritten copies."""
    # The sample comes from the test kit, which imports pydantic: loaded for the demo only.
    from runflow_callbacks.testing.factories import PayloadFactory  # noqa: PLC0415
    from runflow_callbacks.verifier import Secret, Verifier, sign  # noqa: PLC0415

    old = Secret("whsec_demo_old_2f6b1c0e9d8a7f65", label="old")
    new = Secret("whsec_demo_new_8c3e5a7b9d1f2460", label="new")
    verifier = Verifier([old, new])
    factory = PayloadFactory(seed=7, clock=lambda: _FIXED_TIME)
    body = factory.body(factory.batch("batch.partial_succeeded", item_count=3))
    signature = sign(body, new)
    print(f"Runflow signs the raw body with the current secret {new!r}")
    print(f"  Runflow-Signature: {signature}")
    print(f"  receiver configured with {len(verifier.secrets)} secrets (rotation): old, new")

    _check(verifier, "1. the body exactly as sent", body, signature)
    rewritten_z = body.replace(b"+00:00", b"Z")
    _check(verifier, "2. timestamps rewritten with Z", rewritten_z, signature)
    compact = json.dumps(json.loads(body), separators=(",", ":")).encode()
    _check(verifier, "3. body re-serialized by a framework", compact, signature)
    _check(verifier, "4. header with a sha256= prefix", body, f"sha256={signature}")
