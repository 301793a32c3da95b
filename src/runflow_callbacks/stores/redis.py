"""The Redis store: several receiver replicas on several machines share one Redis.

Every read-modify-write is one Lua script, so it is atomic on the server: two replicas
claiming the same key cannot both win. Layout under the namespace ``ns``:

- ``ns:cb:<key>``: a hash per callback (the body as raw bytes, times as integer microseconds;
  a tombstone has an empty body, headers ``{}`` and a ``pruned_at`` field);
- ``ns:order``: a sorted set of keys by received time (listing, by score range when filtered);
- ``ns:due``: a sorted set of keys by due time (``claim_due``; processed and dead leave it);
- ``ns:stats``: a hash of counters kept by the scripts;
- ``ns:rejected:<id>``: a hash per kept rejected request (the body as raw bytes), ``ns:rejected``
  a sorted set of the kept ids (scored by id) and ``ns:rejected_id`` the counter ids come from,
  so an id is never given twice even once the oldest requests are dropped.

Nothing needs migrating from a keyspace written by an earlier version: a hash without
``pruned_at`` is a callback that was never pruned, and the rejected-request keys appear with
the first one kept. ``prune`` works in pages (:data:`PRUNE_PAGE` keys of ``ns:order`` per
script, walked with ``ZSCAN``, which returns every key present throughout the walk whatever
else is written meanwhile), so no script holds the server for long; each page's script checks
each key's state, ``updated_at`` and ``pruned_at`` again before it changes anything. Expired
tombstones are removed in a first walk and callbacks pruned in a second, so a callback pruned
by a call is never removed by the same call. (A script that writes after ``ZSCAN`` needs Redis 5
or later, which replicates a script's effects rather than the script.)

A single Redis node (or a primary with replicas) is expected; the scripts touch several keys of
one namespace, which Redis Cluster would need in one hash slot. Durability is Redis's own:
configure ``appendonly yes`` (with ``appendfsync everysec`` or ``always``) so that a recorded
callback survives a Redis restart.

Script calls in flight together are batched (:mod:`~runflow_callbacks.stores._batch`): a batch
of several is sent as one ``MULTI``, its ``EVALSHA`` calls, ``EXEC``, in one write, and answered
by one read: one round trip instead of one per call. Each script still runs atomically and
answers for itself (an error in one is that call's error alone); ``MULTI``/``EXEC`` adds that
Redis runs none of them before ``EXEC`` has arrived, so a batch that failed while being sent
did not run, exactly as a lone command that failed while being sent (see
:meth:`RedisStore._run_batch`). A lone call is sent as it always was, one ``EVALSHA``.

A Redis restart (or an idle timeout, or a ``CLIENT KILL``) leaves the pooled connections dead.
Before a pooled connection is written to, the kernel is asked whether the server has closed it
(:func:`~runflow_callbacks.stores._net.readable_now`); a dead one is replaced by a fresh one,
so the first request after a restart succeeds. An operation that still fails with a connection
error on a connection taken from the pool is retried once, on a fresh connection, only when
that cannot run it twice: a read, or a write whose command (or batch) was never sent in full
(see :meth:`RedisStore._call`).
"""

from __future__ import annotations

import contextvars
import functools
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final

from runflow_callbacks.errors import ConfigurationError, StoreError
from runflow_callbacks.stores import (
    DEFAULT_NAMESPACE,
    PRUNABLE_STATES,
    Admission,
    Claim,
    Pruned,
    Recorded,
    RejectedRequest,
    StoreBase,
    StoredCallback,
    StoreStats,
    UnknownCallbackError,
    aware,
    check_lease,
    check_limit,
    check_namespace,
    check_prune,
    check_state,
    check_window,
    mask_url,
    rejected_id,
    scrub,
)
from runflow_callbacks.stores._batch import Batcher, Pending
from runflow_callbacks.stores._net import readable_now
from runflow_callbacks.stores._state import from_us, listed, new_token, record_from_row, to_us
from runflow_callbacks.stores._text import from_redis

try:
    import redis.asyncio as redis_asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import (
        AuthenticationError,
        AuthorizationError,
        BusyLoadingError,
        MaxConnectionsError,
        NoScriptError,
        RedisError,
        ResponseError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the Redis store needs redis-py: pip install 'runflow-callbacks[redis]'"
    ) from exc

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Sequence
    from datetime import datetime

    from redis.asyncio.connection import AbstractConnection

    from runflow_callbacks.stores import IncomingCallback, State

__all__ = ["RedisStore"]

# Helpers shared by every script. ``move`` and ``count_delivery`` keep the counters right.
_PRELUDE: Final = """
local function move(stats, from, to)
  if from then redis.call('HINCRBY', stats, 'state:' .. from, -1) end
  if to then redis.call('HINCRBY', stats, 'state:' .. to, 1) end
end
local function count_delivery(h, stats)
  -- Only deliveries after the first are duplicates: a callback first read back by
  -- reconciliation has none yet, and its first delivery is no duplicate.
  if redis.call('HINCRBY', h, 'deliveries', 1) > 1 then
    redis.call('HINCRBY', stats, 'duplicates', 1)
  end
end
local function claimable(h, state, now)
  if state == 'received' or state == 'failed' or state == 'unhandled' then return true end
  if state == 'processing' then
    local expires = redis.call('HGET', h, 'lease_expires_at')
    return (not expires) or tonumber(expires) <= now
  end
  return false
end
local function snapshot(h)
  -- The hash as {JSON of every field but the body, the body}: two bulk strings parse far
  -- faster client-side than an array of every field, and the body stays raw bytes.
  local flat = redis.call('HGETALL', h)
  local fields, body = {}, ''
  for i = 1, #flat, 2 do
    if flat[i] == 'body' then body = flat[i + 1] else fields[flat[i]] = flat[i + 1] end
  end
  return {cjson.encode(fields), body}
end
local function take(h, due, stats, key, state, now, expires, token)
  redis.call('HSET', h, 'state', 'processing', 'lease_token', token,
             'lease_expires_at', expires, 'updated_at', now)
  redis.call('HINCRBY', h, 'attempts', 1)
  redis.call('ZADD', due, expires, key)
  move(stats, state, 'processing')
end
"""

# KEYS: hash, order, due, stats. ARGV: key, received_at, source, field/value pairs...
_RECORD: Final = (
    _PRELUDE
    + """
local delivery = ARGV[3] == 'delivery'
if redis.call('EXISTS', KEYS[1]) == 1 then
  if delivery then
    redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
    count_delivery(KEYS[1], KEYS[4])
  end
  return {0, snapshot(KEYS[1])}
end
redis.call('HSET', KEYS[1], 'state', 'received', 'attempts', 0,
           'deliveries', delivery and 1 or 0, 'received_at', ARGV[2], 'updated_at', ARGV[2],
           'source', ARGV[3], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'received', 1)
if not delivery then redis.call('HINCRBY', KEYS[4], 'reconciled', 1) end
move(KEYS[4], nil, 'received')
return {1, snapshot(KEYS[1])}
"""
)

# KEYS: hash, order, due, stats.
# ARGV: key, received_at, source, now, lease expiry ('' to record only), token, field/value pairs...
# Answers {inserted, state, attempts, acquired}: no snapshot, the engine needs no more.
_RECORD_AND_CLAIM: Final = (
    _PRELUDE
    + """
local delivery = ARGV[3] == 'delivery'
local leased = ARGV[5] ~= ''
if redis.call('EXISTS', KEYS[1]) == 1 then
  if delivery then
    redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
    count_delivery(KEYS[1], KEYS[4])
  end
  local state = redis.call('HGET', KEYS[1], 'state')
  if state == 'unhandled' then
    -- A new arrival: whatever handler was missing may exist now.
    redis.call('HSET', KEYS[1], 'state', 'received', 'updated_at', ARGV[4])
    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
    move(KEYS[4], state, 'received')
    state = 'received'
  end
  local acquired = 0
  if leased and claimable(KEYS[1], state, tonumber(ARGV[4])) then
    take(KEYS[1], KEYS[3], KEYS[4], ARGV[1], state, ARGV[4], ARGV[5], ARGV[6])
    state, acquired = 'processing', 1
  end
  return {0, state, tonumber(redis.call('HGET', KEYS[1], 'attempts')), acquired}
end
if leased then
  redis.call('HSET', KEYS[1], 'state', 'processing', 'attempts', 1,
             'deliveries', delivery and 1 or 0, 'received_at', ARGV[2], 'updated_at', ARGV[4],
             'lease_token', ARGV[6], 'lease_expires_at', ARGV[5],
             'source', ARGV[3], unpack(ARGV, 7))
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'state', 'received', 'attempts', 0,
             'deliveries', delivery and 1 or 0, 'received_at', ARGV[2], 'updated_at', ARGV[2],
             'source', ARGV[3], unpack(ARGV, 7))
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'received', 1)
if not delivery then redis.call('HINCRBY', KEYS[4], 'reconciled', 1) end
move(KEYS[4], nil, leased and 'processing' or 'received')
return {1, leased and 'processing' or 'received', leased and 1 or 0, leased and 1 or 0}
"""
)

# KEYS: hash, due, stats. ARGV: key, now, lease expiry, token.
_CLAIM: Final = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {-1} end
if not claimable(KEYS[1], state, tonumber(ARGV[2])) then
  return {0, snapshot(KEYS[1])}
end
take(KEYS[1], KEYS[2], KEYS[3], ARGV[1], state, ARGV[2], ARGV[3], ARGV[4])
return {1, snapshot(KEYS[1])}
"""
)

# KEYS: hash, due, stats. ARGV: key, token, new state, now, error, retry_at ('' for none).
_FINISH: Final = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'processing' or redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], 'lease_token', 'lease_expires_at', 'next_attempt_at')
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'updated_at', ARGV[4])
if ARGV[3] == 'processed' then
  redis.call('HSET', KEYS[1], 'processed_at', ARGV[4])
  redis.call('ZREM', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[1], 'last_error', ARGV[5])
  if ARGV[3] == 'dead' then
    redis.call('ZREM', KEYS[2], ARGV[1])
  elseif ARGV[6] ~= '' then
    redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[6])
    redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
  else
    redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  end
end
move(KEYS[3], state, ARGV[3])
return 1
"""
)

# KEYS: hash, due, stats. ARGV: key, token, now.
_RELEASE: Final = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'processing' or redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], 'lease_token', 'lease_expires_at', 'next_attempt_at')
redis.call('HSET', KEYS[1], 'state', 'unhandled', 'updated_at', ARGV[3])
-- The claim ran no handler, so it gives its attempt back.
if tonumber(redis.call('HGET', KEYS[1], 'attempts')) > 0 then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
end
-- No due time: claim_due must not spin on a callback no handler takes.
redis.call('ZREM', KEYS[2], ARGV[1])
move(KEYS[3], state, 'unhandled')
return 1
"""
)

# KEYS: hash, due. ARGV: key, token, now, lease expiry.
_RENEW: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return -1 end
if state ~= 'processing' or redis.call('HGET', KEYS[1], 'lease_token') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'lease_expires_at', ARGV[4], 'updated_at', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""

# KEYS: due, stats. ARGV: hash prefix, now, lease expiry, limit, tokens...
_CLAIM_DUE: Final = (
    _PRELUDE
    + """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for i, key in ipairs(keys) do
  local h = ARGV[1] .. key
  local state = redis.call('HGET', h, 'state')
  if state and state ~= 'unhandled' and claimable(h, state, tonumber(ARGV[2])) then
    take(h, KEYS[1], KEYS[2], key, state, ARGV[2], ARGV[3], ARGV[4 + i])
    table.insert(out, {key, ARGV[4 + i], snapshot(h)})
  elseif not state or state == 'processed' or state == 'dead' or state == 'unhandled' then
    redis.call('ZREM', KEYS[1], key)
  end
end
return out
"""
)

# KEYS: hash, due, stats. ARGV: key, now, force ('1' or '').
# A processed callback is reset only when forced, keeping its attempts; a tombstone never.
_RESET: Final = (
    _PRELUDE
    + """
local state, pruned, expires = unpack(redis.call('HMGET', KEYS[1], 'state', 'pruned_at',
                                                 'lease_expires_at'))
if not state then return -1 end
if pruned then return 0 end
if state == 'processed' and ARGV[3] ~= '1' then return 0 end
if state == 'processing' and expires and tonumber(expires) > tonumber(ARGV[2]) then return 0 end
redis.call('HDEL', KEYS[1], 'lease_token', 'lease_expires_at', 'next_attempt_at', 'processed_at')
redis.call('HSET', KEYS[1], 'state', 'received', 'updated_at', ARGV[2])
if state ~= 'processed' then redis.call('HSET', KEYS[1], 'attempts', 0) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
move(KEYS[3], state, 'received')
return 1
"""
)

# KEYS: order. ARGV: hash prefix, cursor, count, before, now, states...
# One page of prune's second walk: the callbacks of ``states`` not yet pruned and last updated
# before ``before`` lose body and headers. Answers {next cursor, how many were pruned}.
_PRUNE: Final = """
local page = redis.call('ZSCAN', KEYS[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local before, states, pruned = tonumber(ARGV[4]), {}, 0
for i = 6, #ARGV do states[ARGV[i]] = true end
local found = page[2]
for i = 1, #found, 2 do
  local h = ARGV[1] .. found[i]
  local state, updated, gone = unpack(redis.call('HMGET', h, 'state', 'updated_at', 'pruned_at'))
  if state and not gone and states[state] and tonumber(updated) < before then
    redis.call('HSET', h, 'body', '', 'headers', '{}', 'pruned_at', ARGV[5])
    pruned = pruned + 1
  end
end
return {page[1], pruned}
"""

# KEYS: order, due, stats. ARGV: hash prefix, cursor, count, tombstones_before.
# One page of prune's first walk: tombstones last updated before the horizon go, with their
# place in every index and in the counters. Answers {next cursor, how many were removed}.
_REMOVE_TOMBSTONES: Final = """
local page = redis.call('ZSCAN', KEYS[1], ARGV[2], 'COUNT', tonumber(ARGV[3]))
local horizon, removed = tonumber(ARGV[4]), 0
local found = page[2]
for i = 1, #found, 2 do
  local key = found[i]
  local h = ARGV[1] .. key
  local state, updated, gone, deliveries, source = unpack(redis.call(
    'HMGET', h, 'state', 'updated_at', 'pruned_at', 'deliveries', 'source'))
  if state and gone and tonumber(updated) < horizon then
    redis.call('DEL', h)
    redis.call('ZREM', KEYS[1], key)
    redis.call('ZREM', KEYS[2], key)
    redis.call('HINCRBY', KEYS[3], 'received', -1)
    redis.call('HINCRBY', KEYS[3], 'state:' .. state, -1)
    local duplicates = (tonumber(deliveries) or 0) - 1
    if duplicates > 0 then redis.call('HINCRBY', KEYS[3], 'duplicates', -duplicates) end
    if source == 'reconcile' then redis.call('HINCRBY', KEYS[3], 'reconciled', -1) end
    removed = removed + 1
  end
end
return {page[1], removed}
"""

# KEYS: id counter, index of kept ids. ARGV: hash prefix, keep, then per request (oldest
# first) received_at, reason, path, headers, body, body_bytes. Every request takes the next
# id; only the newest ``keep`` of all those kept stay. Answers the last id given.
_KEEP_REJECTED: Final = """
local keep, n = tonumber(ARGV[2]), (#ARGV - 2) / 6
local last = redis.call('INCRBY', KEYS[1], n)
for i = math.max(1, n - keep + 1), n do  -- older ones would be dropped at once
  local id, at = string.format('%d', last - n + i), 2 + (i - 1) * 6
  redis.call('HSET', ARGV[1] .. id, 'received_at', ARGV[at + 1], 'reason', ARGV[at + 2],
             'path', ARGV[at + 3], 'headers', ARGV[at + 4], 'body', ARGV[at + 5],
             'body_bytes', ARGV[at + 6])
  redis.call('ZADD', KEYS[2], id, id)
end
local extra = redis.call('ZCARD', KEYS[2]) - keep
if extra > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('DEL', ARGV[1] .. id)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
return last
"""

# KEYS: the request's hash. ARGV: replayed_at, key. A request no longer kept stays gone.
_MARK_REPLAYED: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'replayed_at', ARGV[1], 'replayed_key', ARGV[2])
return 1
"""

#: At most this many script calls share one MULTI/EXEC: a burst is split rather than made to
#: wait behind one long batch (Redis runs a batch's scripts back to back, serving no one else).
MAX_BATCH: Final = 64
#: Batches sent at once before further calls wait for one to come back. A few overlap their
#: round trips; Redis runs commands one at a time, so more would only split the queue into
#: smaller batches.
MAX_IN_FLIGHT: Final = 4
#: Keys of ``ns:order`` one ``prune`` script looks at (a hint to ``ZSCAN``): short scripts,
#: so that callbacks recorded meanwhile wait little.
PRUNE_PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class _Eval:
    """One script call a batch can hold."""

    name: str
    keys: list[str]
    args: list[Any]


class _Discarded:
    """The answer of a call that Redis discarded unrun, with its whole ``MULTI``, because
    another call of the batch was refused: it is sent again."""


_DISCARDED: Final = _Discarded()

_TEXT_FIELDS: Final = ("kind", "subject_id", "event", "secret_id", "secret_label", "request_id")
_COLUMNS: Final = (
    *("key", "kind", "subject_id", "event", "body", "headers", "secret_id", "secret_label"),
    *("request_id", "received_at", "source", "state", "attempts", "deliveries", "last_error"),
    *("next_attempt_at", "lease_expires_at", "processed_at", "updated_at", "pruned_at"),
)
#: A kept rejected request's id as the store gives it: a positive integer, in its own form.


def _moment(value: str | None) -> datetime | None:
    return None if value is None else from_us(int(value))


def _to_record(key: str, fields: dict[str, str], body: bytes) -> StoredCallback:
    row: dict[str, object] = dict.fromkeys(_COLUMNS)
    row.update(fields)
    row.update(
        key=key, body=body, attempts=int(fields["attempts"]), deliveries=int(fields["deliveries"])
    )
    return record_from_row(row, _moment)


def _from_script(key: str, snapshot: list[bytes]) -> StoredCallback:
    """A record from a script's ``snapshot()``: ``[JSON of the fields, body]``.

    cjson copies the bytes of a string as they are (escaping only control characters), so the
    JSON is decoded as every stored string is (``from_redis``) before it is parsed.
    """
    return _to_record(key, json.loads(from_redis(snapshot[0])), snapshot[1])


def _from_hash(key: str, raw: dict[bytes, bytes]) -> StoredCallback:
    """A record from redis-py's ``HGETALL`` answer."""
    fields = {from_redis(name): from_redis(value) for name, value in raw.items() if name != b"body"}
    return _to_record(key, fields, raw[b"body"])


def _rejected_from_hash(request_id: str, raw: dict[bytes, bytes]) -> RejectedRequest:
    """A kept rejected request from redis-py's ``HGETALL`` answer (the body as it was)."""
    replayed_at, replayed_key = raw.get(b"replayed_at"), raw.get(b"replayed_key")
    return RejectedRequest(
        received_at=from_us(raw[b"received_at"]),
        reason=from_redis(raw[b"reason"]),
        path=from_redis(raw[b"path"]),
        headers=json.loads(raw[b"headers"]),
        body=raw[b"body"],
        body_bytes=int(raw[b"body_bytes"]),
        id=request_id,
        replayed_at=None if replayed_at is None else from_us(replayed_at),
        replayed_key=None if replayed_key is None else from_redis(replayed_key),
    )


async def _reply(connection: AbstractConnection) -> Any:
    """The next answer on ``connection``; an error answer (a script's, say) is returned."""
    try:
        return await connection.read_response()
    except ResponseError as exc:
        return exc


def _transaction_answers(replies: list[Any]) -> list[Any]:
    """Each call's answer from the replies to ``MULTI``, the calls, and ``EXEC``."""
    queued, executed = replies[1:-1], replies[-1]
    if isinstance(replies[0], ResponseError):
        # MULTI itself was refused, so every call ran (or was refused) on its own.
        return queued
    if isinstance(executed, list) and len(executed) == len(queued):
        return executed
    if not isinstance(executed, ResponseError):  # not what EXEC answers without WATCH
        raise RedisError(f"unexpected answer to EXEC: {type(executed).__name__}")
    # EXEC refused: nothing ran. Calls refused when queued get their error, and the others,
    # discarded with them, are sent again; without such calls, each one gets EXEC's error.
    if not any(isinstance(reply, ResponseError) for reply in queued):
        return [executed] * len(queued)
    return [reply if isinstance(reply, ResponseError) else _DISCARDED for reply in queued]


# --- reconnecting -------------------------------------------------------------------------


@dataclass
class _Attempt:
    """What one try of an operation did, as the pool and the connections report it."""

    reused: bool = False  # it ran on a pooled connection (one that had been idle)
    sent: bool = False  # a command of it was written out in full


# The try in progress in this task: redis-py runs a command in the caller's task, so the pool
# and the connection below see the object the operation set.
_ATTEMPT: Final[contextvars.ContextVar[_Attempt | None]] = contextvars.ContextVar(
    "runflow_callbacks_redis_attempt", default=None
)
# Connection errors that are answers, or no connection at all: a retry would change nothing.
_NOT_RETRIED: Final = (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    MaxConnectionsError,
)


_REPORTING: Final[dict[type[Any], type[Any]]] = {}


def _reporting(base: type[AbstractConnection]) -> type[AbstractConnection]:
    """``base`` (the connection class the URL asks for) reporting every command it has sent."""
    if base in _REPORTING:
        return _REPORTING[base]

    class Reporting(base):  # type: ignore[misc,valid-type] # a class chosen at run time
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            await super().send_packed_command(command, check_health)
            attempt = _ATTEMPT.get()
            if attempt is not None:
                attempt.sent = True

    Reporting.__name__ = Reporting.__qualname__ = f"Reporting{base.__name__}"
    _REPORTING[base] = Reporting
    return Reporting


class _Pool(redis_asyncio.BlockingConnectionPool):
    """redis-py's blocking pool, checking that a pooled connection is alive before lending it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.connection_class = _reporting(self.connection_class)

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        # redis-py checks the connection's read buffer, which only the event loop fills: after
        # a restart it may not have looked at the socket yet, and the request would go out on
        # a dead connection. The kernel knows; ask it (no I/O, no wait).
        if connection.is_connected and _closed_by_server(connection):
            await connection.disconnect()
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.reused = connection.is_connected
        await super().ensure_connection(connection)


def _closed_by_server(connection: AbstractConnection) -> bool:
    writer = getattr(connection, "_writer", None)  # redis-py keeps its stream there
    sock = None if writer is None else writer.get_extra_info("socket")
    if sock is None:
        return False  # nothing to ask: redis-py's own check stays
    try:
        return readable_now(sock.fileno())
    except (OSError, ValueError):
        return True


class RedisStore(StoreBase):
    """A :class:`~runflow_callbacks.stores.CallbackStore` in Redis (``redis://``, ``rediss://``).

    ``namespace`` prefixes every key (``<namespace>:...``). Up to ``max_connections``
    connections are opened on demand; a caller waits up to ``connection_wait`` for a free one.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        max_connections: int = 32,
        connection_wait: timedelta = timedelta(seconds=10),
    ) -> None:
        self.namespace = check_namespace(namespace)
        check_limit(max_connections, name="max_connections")
        self._url = url
        problem = None
        try:
            # A blocking pool: a burst above max_connections waits for a free connection (up
            # to connection_wait) instead of failing at once.
            pool = _Pool.from_url(
                url,
                max_connections=max_connections,
                timeout=connection_wait.total_seconds(),
                # Any string JSON allows, a lone surrogate too, is sent as these bytes and read
                # back with from_redis: plain UTF-8 for everything UTF-8 can encode.
                encoding="utf-8",
                encoding_errors="surrogatepass",
                # The store decides what is retried (see _call): redis-py would resend a
                # command whose answer was lost, which could run a script twice.
                retry=Retry(NoBackoff(), 0),
            )
        except (ValueError, TypeError, RedisError) as exc:  # redis-py parses the URL here
            problem = f"{type(exc).__name__}: {scrub(str(exc), url)}"
        if problem is not None:  # raised outside the handler: no chained driver message
            raise ConfigurationError(f"invalid Redis store URL {mask_url(url)!r} ({problem})")
        self._pool = pool
        self._client: Any = redis_asyncio.Redis(connection_pool=pool, decode_responses=False)
        prefix = f"{self.namespace}:"
        self._hash_prefix = f"{prefix}cb:"
        self._order, self._due, self._stats = f"{prefix}order", f"{prefix}due", f"{prefix}stats"
        self._rejected, self._rejected_id = f"{prefix}rejected", f"{prefix}rejected_id"
        self._rejected_prefix = f"{prefix}rejected:"
        self._scripts = {
            name: self._client.register_script(source)
            for name, source in (
                ("record", _RECORD),
                ("record_and_claim", _RECORD_AND_CLAIM),
                ("release", _RELEASE),
                ("claim", _CLAIM),
                ("finish", _FINISH),
                ("renew", _RENEW),
                ("claim_due", _CLAIM_DUE),
                ("reset", _RESET),
                ("prune", _PRUNE),
                ("remove_tombstones", _REMOVE_TOMBSTONES),
                ("keep_rejected", _KEEP_REJECTED),
                ("mark_replayed", _MARK_REPLAYED),
            )
        }
        self._batcher: Batcher[_Eval] = Batcher(
            self._run_batch,
            max_batch=MAX_BATCH,
            max_in_flight=min(MAX_IN_FLIGHT, max_connections),
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({mask_url(self._url)!r}, namespace={self.namespace!r})"

    def _hash(self, key: str) -> str:
        return self._hash_prefix + key

    async def _call(
        self, work: Callable[[], Awaitable[Any]], *, read_only: bool = False, batch: bool = False
    ) -> Any:
        """Run ``work`` (one script, command, pipeline or batch) and turn driver errors into
        :class:`StoreError` (without the URL's password).

        A connection error (``ConnectionError``/``TimeoutError``) on a connection taken from the
        pool is retried once, on a fresh connection, when the failed try certainly changed
        nothing: ``work`` is a read (``read_only``), or its command was never written out in
        full. Redis runs a command only once all of it has arrived, and every write here is
        one command (one script, atomic on the server) or one batch of them in ``MULTI`` and
        ``EXEC`` (none runs before ``EXEC`` has arrived), so a write that failed while being
        sent did not run. Once sent, its answer may have been lost after it ran: that is never
        retried (the caller gets StoreError, and Runflow delivers again later). Nothing else
        is retried, and nothing twice. A ``batch`` (see :meth:`_run_batch`) was queued before
        the store closed, and is still sent.
        """
        if self._closed and not batch:
            raise RuntimeError("this store is closed")
        error: RedisError | None = None
        for retry in (False, True):
            attempt = _Attempt()
            token = _ATTEMPT.set(attempt)
            try:
                return await work()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if (
                    not retry
                    and attempt.reused
                    and (read_only or not attempt.sent)
                    and not isinstance(exc, _NOT_RETRIED)
                ):
                    continue
                error = exc
            except RedisError as exc:
                error = exc
            finally:
                _ATTEMPT.reset(token)
            break
        assert error is not None
        raise self._error(error)

    def _error(self, error: BaseException) -> StoreError:
        """The :class:`StoreError` a driver error becomes (raised outside the driver's handler,
        so that no driver message rides along as its context). redis-py messages name host
        and port, not the password; scrub() makes sure."""
        text = " ".join(scrub(str(error), self._url).split())
        return StoreError(f"Redis store error: {type(error).__name__}: {text}")

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one script, in the next batch."""
        if self._closed:
            raise RuntimeError("this store is closed")
        return await self._batcher.call(_Eval(name, keys, args))

    async def _run_batch(self, batch: list[Pending[_Eval]]) -> None:
        """Send ``batch`` and answer each call.

        The batch is one try under :meth:`_call`'s rules (a batch is one command there: all of
        it runs once ``EXEC`` has arrived, or none), so it is retried as a whole, once, only
        when it certainly did not run. A call Redis answered with an error fails alone. A
        call that met an empty script cache (``NOSCRIPT``: Redis restarted or was flushed)
        did not run: the scripts are loaded and those calls sent once more, as redis-py's
        scripts do. So are calls discarded because another one was refused.
        """
        todo = batch
        loaded = False
        while todo := [pending for pending in todo if not pending.settled]:
            calls = [pending.op for pending in todo]
            try:
                answers = await self._call(functools.partial(self._exec, calls), batch=True)
            except StoreError as exc:
                for pending in todo:
                    pending.fail(StoreError(str(exc)))
                return
            again: list[Pending[_Eval]] = []
            for pending, answer in zip(todo, answers, strict=True):
                if answer is _DISCARDED or (isinstance(answer, NoScriptError) and not loaded):
                    again.append(pending)
                elif isinstance(answer, RedisError):
                    pending.fail(self._error(answer))
                else:
                    pending.resolve(answer)
            if any(isinstance(answer, NoScriptError) for answer in answers) and not loaded:
                loaded = True
                names = {pending.op.name for pending in again}
                try:
                    for name in names:
                        script = self._scripts[name]
                        script.sha = await self._call(
                            functools.partial(self._client.script_load, script.script), batch=True
                        )
                except StoreError as exc:
                    for pending in again:
                        pending.fail(StoreError(str(exc)))
                    return
            todo = again

    async def _exec(self, calls: list[_Eval]) -> list[Any]:
        """Send ``calls`` in one write, read every answer (an error answer in its place)."""
        connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            evals = [
                ("EVALSHA", self._scripts[call.name].sha, len(call.keys), *call.keys, *call.args)
                for call in calls
            ]
            if len(evals) == 1:  # a lone call: one command, as it always was
                await connection.send_packed_command(connection.pack_command(*evals[0]))
                return [await _reply(connection)]
            commands = [("MULTI",), *evals, ("EXEC",)]
            await connection.send_packed_command(connection.pack_commands(commands))
            replies = [await _reply(connection) for _ in commands]
        except BaseException:
            # Unread answers would be taken for the next command's: the connection goes.
            await connection.disconnect(nowait=True)
            raise
        finally:
            await self._pool.release(connection)
        return _transaction_answers(replies)

    @staticmethod
    def _fields(incoming: IncomingCallback) -> list[Any]:
        """The field/value pairs a new callback's hash starts with (absent values left out)."""
        fields: list[Any] = ["body", incoming.body, "headers", json.dumps(dict(incoming.headers))]
        for name in _TEXT_FIELDS:
            value = getattr(incoming, name)
            if value is not None:
                fields += [name, value]
        return fields

    async def record(self, incoming: IncomingCallback) -> Recorded:
        received_at = to_us(aware(incoming.received_at, name="received_at"))
        args: list[Any] = [incoming.key, received_at, incoming.source, *self._fields(incoming)]
        keys = [self._hash(incoming.key), self._order, self._due, self._stats]
        inserted, flat = await self._script("record", keys, args)
        return Recorded(_from_script(incoming.key, flat), inserted=bool(inserted))

    async def record_and_claim(
        self, incoming: IncomingCallback, *, now: datetime, lease: timedelta | None
    ) -> Admission:
        received_at = to_us(aware(incoming.received_at, name="received_at"))
        now = aware(now)
        lease = None if lease is None else check_lease(lease)
        token = "" if lease is None else new_token()
        expires = "" if lease is None else to_us(now + lease)
        args: list[Any] = [incoming.key, received_at, incoming.source, to_us(now), expires, token]
        args += self._fields(incoming)
        keys = [self._hash(incoming.key), self._order, self._due, self._stats]
        inserted, state, attempts, acquired = await self._script("record_and_claim", keys, args)
        return Admission(
            inserted=bool(inserted),
            state=state.decode(),
            attempts=int(attempts),
            token=token if acquired else None,
        )

    async def claim(self, key: str, *, now: datetime, lease: timedelta) -> Claim:
        now, lease = aware(now), check_lease(lease)
        token = new_token()
        answer = await self._script(
            "claim",
            [self._hash(key), self._due, self._stats],
            [key, to_us(now), to_us(now + lease), token],
        )
        if answer[0] == -1:
            raise UnknownCallbackError(key)
        record = _from_script(key, answer[1])
        return Claim(record, token if answer[0] == 1 else None)

    async def _finish(self, key: str, token: str, state: State, args: list[Any]) -> bool:
        answer = await self._script(
            "finish", [self._hash(key), self._due, self._stats], [key, token, state, *args]
        )
        if answer == -1:
            raise UnknownCallbackError(key)
        return bool(answer == 1)

    async def release(self, key: str, token: str, *, now: datetime) -> bool:
        answer = await self._script(
            "release", [self._hash(key), self._due, self._stats], [key, token, to_us(aware(now))]
        )
        if answer == -1:
            raise UnknownCallbackError(key)
        return bool(answer == 1)

    async def renew(self, key: str, token: str, *, now: datetime, lease: timedelta) -> bool:
        now, lease = aware(now), check_lease(lease)
        answer = await self._script(
            "renew", [self._hash(key), self._due], [key, token, to_us(now), to_us(now + lease)]
        )
        if answer == -1:
            raise UnknownCallbackError(key)
        return bool(answer == 1)

    async def complete(self, key: str, token: str, *, now: datetime) -> bool:
        return await self._finish(key, token, "processed", [to_us(aware(now)), "", ""])

    async def fail(
        self,
        key: str,
        token: str,
        *,
        now: datetime,
        error: str,
        retry_at: datetime | None,
        dead: bool = False,
    ) -> bool:
        retry = "" if retry_at is None or dead else to_us(aware(retry_at, name="retry_at"))
        state: State = "dead" if dead else "failed"
        return await self._finish(key, token, state, [to_us(aware(now)), error, retry])

    async def claim_due(self, *, now: datetime, lease: timedelta, limit: int) -> list[Claim]:
        now, lease = aware(now), check_lease(lease)
        check_limit(limit)
        tokens = [new_token() for _ in range(limit)]
        taken = await self._script(
            "claim_due",
            [self._due, self._stats],
            [self._hash_prefix, to_us(now), to_us(now + lease), limit, *tokens],
        )
        return [
            Claim(_from_script(from_redis(key), flat), token.decode()) for key, token, flat in taken
        ]

    async def get(self, key: str) -> StoredCallback | None:
        flat = await self._call(
            lambda: self._client.execute_command("HGETALL", self._hash(key)), read_only=True
        )
        return _from_hash(key, flat) if flat else None

    async def list_callbacks(
        self,
        *,
        limit: int | None = None,
        state: State | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[StoredCallback]:
        check_limit(limit)
        check_state(state)
        check_window(since, until)
        start, end = 0, None  # the ranks of the window in the received-order index
        if since is not None or until is not None:
            start, end = await self._call(
                functools.partial(self._window, since, until), read_only=True
            )
        found: list[StoredCallback] = []
        page = 500
        while (limit is None or len(found) < limit) and (end is None or start < end):
            # By rank, as ever (a score range with an offset would walk the offset each page).
            last = start + page - 1 if end is None else min(start + page, end) - 1
            keys: list[bytes] = await self._call(
                functools.partial(self._client.zrange, self._order, start, last),
                read_only=True,
            )
            if not keys:
                break
            start += page

            async def fetch(keys: list[bytes] = keys) -> list[Any]:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.execute_command("HGETALL", self._hash_prefix.encode() + key)
                    return list(await pipe.execute())

            for key, flat in zip(keys, await self._call(fetch, read_only=True), strict=True):
                if flat:
                    record = _from_hash(from_redis(key), flat)
                    if listed(record, state=state, event=event, since=since, until=until):
                        found.append(record)
        return found if limit is None else found[:limit]

    async def _window(
        self, since: datetime | None, until: datetime | None
    ) -> tuple[int, int | None]:
        """The ranks in ``ns:order`` of the first callback received at ``since`` or later and
        of the first received at ``until`` or later (None: no end): one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zcount(self._order, "-inf", "-inf" if since is None else f"({to_us(since)}")
            pipe.zcount(self._order, "-inf", "+inf" if until is None else f"({to_us(until)}")
            before_since, before_until = await pipe.execute()
        return int(before_since), None if until is None else int(before_until)

    async def stats(self) -> StoreStats:
        raw = await self._call(lambda: self._client.hgetall(self._stats), read_only=True)
        counts = {name.decode(): int(value) for name, value in raw.items()}
        return StoreStats(
            received=counts.get("received", 0),
            duplicates=counts.get("duplicates", 0),
            pending=counts.get("state:received", 0),
            processing=counts.get("state:processing", 0),
            processed=counts.get("state:processed", 0),
            failed=counts.get("state:failed", 0),
            dead=counts.get("state:dead", 0),
            unhandled=counts.get("state:unhandled", 0),
            reconciled=counts.get("reconciled", 0),
            rejected=counts.get("rejected", 0),
        )

    async def note_rejected(self, count: int = 1) -> None:
        check_limit(count, name="count")
        await self._call(lambda: self._client.hincrby(self._stats, "rejected", count))

    async def ready(self) -> None:
        # HINCRBY by 0 is a write: a replica or an out-of-memory server refuses it.
        await self._call(lambda: self._client.hincrby(self._stats, "rejected", 0))

    async def reset_for_retry(self, key: str, *, now: datetime, force: bool = False) -> bool:
        answer = await self._script(
            "reset",
            [self._hash(key), self._due, self._stats],
            [key, to_us(aware(now)), "1" if force else ""],
        )
        if answer == -1:
            raise UnknownCallbackError(key)
        return bool(answer == 1)

    async def prune(
        self,
        *,
        before: datetime,
        now: datetime,
        states: Collection[State] = PRUNABLE_STATES,
        tombstones_before: datetime | None = None,
    ) -> Pruned:
        before, now, chosen, tombstones_before = check_prune(before, now, states, tombstones_before)
        removed = 0
        # Old tombstones first, then the new ones: a callback pruned now is not removed now.
        if tombstones_before is not None:
            removed = await self._walk(
                "remove_tombstones",
                [self._order, self._due, self._stats],
                [to_us(tombstones_before)],
            )
        pruned = await self._walk("prune", [self._order], [to_us(before), to_us(now), *chosen])
        return Pruned(pruned=pruned, removed=removed)

    async def _walk(self, name: str, keys: list[str], args: list[Any]) -> int:
        """Run the paged script ``name`` over ``ns:order`` (``ZSCAN``, one page per call)
        until the walk ends; the sum of what the pages counted."""
        cursor: bytes | int = 0
        total = 0
        while True:
            cursor, count = await self._script(
                name, keys, [self._hash_prefix, cursor, PRUNE_PAGE, *args]
            )
            total += int(count)
            if cursor in {b"0", 0}:
                return total

    async def keep_rejected(self, requests: Sequence[RejectedRequest], *, keep: int) -> None:
        check_limit(keep, name="keep")
        args: list[Any] = [self._rejected_prefix, keep]
        for request in requests:
            args += [
                to_us(aware(request.received_at, name="received_at")),
                request.reason,
                request.path,
                json.dumps(dict(request.headers)),
                bytes(request.body),
                request.body_bytes,
            ]
        await self._script("keep_rejected", [self._rejected_id, self._rejected], args)

    async def list_rejected(self, *, limit: int | None = None) -> list[RejectedRequest]:
        check_limit(limit)
        ids: list[bytes] = await self._call(
            functools.partial(
                self._client.zrevrange, self._rejected, 0, -1 if limit is None else limit - 1
            ),
            read_only=True,
        )
        if not ids:
            return []

        async def fetch() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for request_id in ids:
                    pipe.execute_command("HGETALL", self._rejected_prefix.encode() + request_id)
                return list(await pipe.execute())

        flats = await self._call(fetch, read_only=True)
        return [  # one dropped since the index was read is left out
            _rejected_from_hash(request_id.decode(), flat)
            for request_id, flat in zip(ids, flats, strict=True)
            if flat
        ]

    async def get_rejected(self, request_id: str) -> RejectedRequest | None:
        if rejected_id(request_id) is None:
            return None  # no id the store gives
        flat = await self._call(
            lambda: self._client.execute_command("HGETALL", self._rejected_prefix + request_id),
            read_only=True,
        )
        return _rejected_from_hash(request_id, flat) if flat else None

    async def mark_replayed(self, request_id: str, *, key: str, now: datetime) -> bool:
        now = aware(now)
        if rejected_id(request_id) is None:
            return False
        answer = await self._script(
            "mark_replayed", [self._rejected_prefix + request_id], [to_us(now), key]
        )
        return bool(answer == 1)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._batcher.drain()  # calls already queued are answered first
        await self._client.aclose(close_connection_pool=True)
