"""How the backends keep any string JSON allows, exactly, in columns made for UTF-8 text.

A signed body may hold any JSON string: a lone surrogate (``"\\udcff"``), which UTF-8 cannot
encode, or ``"\\u0000"``, which PostgreSQL ``text`` refuses. Those strings end up in the key,
``subject_id``, ``event`` and the other text columns (and in ``last_error``, which may quote
them). Each backend stores what it can hold as it is, so every row written before this module
existed reads back unchanged and ordinary values stay readable in ``sqlite3``/``psql``/
``redis-cli``, and only the rest in a reversible form that can never be mistaken for plain text:

- **SQLite** keeps a string with a surrogate as a ``BLOB`` of its ``surrogatepass`` UTF-8 bytes.
  SQLite types values, not columns: a ``BLOB`` never equals a ``TEXT``, so the key lookups stay
  exact and the two forms cannot collide. (SQLite ``TEXT`` holds NUL as it is.)
- **Redis** is binary-safe: every string is written as its ``surrogatepass`` UTF-8 bytes and read
  back the same way. Those bytes are plain UTF-8 for every string UTF-8 can encode, and invalid
  UTF-8 (so never an earlier row) otherwise.
- **PostgreSQL** ``text`` holds neither, so a string with a surrogate or a NUL is written as
  :data:`PG_MARK` (the noncharacter U+FDD0, which Unicode reserves for internal use) followed by
  the string with each backslash doubled and each NUL or surrogate written ``\\uXXXX`` (four
  lowercase hex digits); everything else is kept as it is. A plain string that starts with the
  mark is escaped too, so distinct strings always stay distinct. (The one thing this changes
  for rows written before: a value that starts with U+FDD0 is looked up in its escaped form,
  so such a *key* would no longer be found by key. No key the engine makes starts so: they
  start with ``batch:``, ``run:`` or ``sha256:``.)

Headers need none of this: they are kept as ``json.dumps`` writes them, which is ASCII.
"""

from __future__ import annotations

import re
from typing import Final, overload

__all__ = [
    "PG_MARK",
    "from_postgres",
    "from_redis",
    "from_sqlite",
    "to_postgres",
    "to_sqlite",
]

#: Starts the escaped form of a string PostgreSQL ``text`` cannot hold as it is.
PG_MARK: Final = "\ufdd0"
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_NOT_PG_TEXT: Final = re.compile("[\x00\ud800-\udfff]")
_PG_ESCAPED: Final = re.compile("[\\\\\x00\ud800-\udfff]")
_PG_FORM: Final = re.compile(r"(?:[^\\]|\\\\|\\u[0-9a-f]{4})*", re.DOTALL)
_PG_ESCAPE: Final = re.compile(r"\\(\\|u[0-9a-f]{4})")


def _pg_escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\u{ord(char):04x}"


def _pg_unescape(match: re.Match[str]) -> str:
    escape = match.group(1)
    return "\\" if escape == "\\" else chr(int(escape[1:], 16))


@overload
def to_sqlite(value: str) -> str | bytes: ...
@overload
def to_sqlite(value: str | None) -> str | bytes | None: ...
def to_sqlite(value: str | None) -> str | bytes | None:
    """``value`` as SQLite stores it: itself, or a ``BLOB`` when it holds a lone surrogate."""
    if value is None or value.isascii() or not _SURROGATE.search(value):
        return value
    return value.encode("utf-8", "surrogatepass")


def from_sqlite(value: str | bytes | None) -> str | None:
    """The inverse of :func:`to_sqlite`."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return value


def from_redis(value: bytes) -> str:
    """A string as Redis hands it back; the client writes every string the same way
    (``encoding_errors="surrogatepass"``)."""
    return value.decode("utf-8", "surrogatepass")


@overload
def to_postgres(value: str) -> str: ...
@overload
def to_postgres(value: str | None) -> str | None: ...
def to_postgres(value: str | None) -> str | None:
    """``value`` as PostgreSQL ``text`` stores it: itself, or :data:`PG_MARK` + it escaped."""
    if value is None:
        return None
    if value.startswith(PG_MARK) or _NOT_PG_TEXT.search(value):
        return PG_MARK + _PG_ESCAPED.sub(_pg_escape, value)
    return value


def from_postgres(value: str | None) -> str | None:
    """The inverse of :func:`to_postgres`.

    A stored value that starts with the mark but is not in the escaped form (a backslash not
    starting ``\\\\`` or ``\\uXXXX``) was written as plain text by an earlier version and is
    handed back as it is. Only an earlier row that starts with U+FDD0 (a noncharacter no
    Runflow id or event holds) and whose every backslash starts such an escape would read
    back differently.
    """
    if value is None or not value.startswith(PG_MARK):
        return value
    escaped = value[len(PG_MARK) :]
    if not _PG_FORM.fullmatch(escaped):
        return value
    return _PG_ESCAPE.sub(_pg_unescape, escaped)
