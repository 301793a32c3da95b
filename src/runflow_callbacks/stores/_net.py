"""What the network backends share: telling a dead pooled connection before writing to it."""

from __future__ import annotations

import select

__all__ = ["readable_now"]


def readable_now(fileno: int) -> bool:
    """Whether the socket ``fileno`` has something to read, an end of stream or an error, now.

    A zero-timeout poll: it neither waits nor reads. Neither Redis nor PostgreSQL ever sends
    anything unprompted on an idle connection of a store (no pub/sub, no LISTEN), except the
    goodbye of a server that ends the session (a shutdown, a restart, an idle timeout, a kill)
    and the close after it. So an idle connection that is readable is one the server ended,
    and the kernel knows it even when the event loop has not looked at the socket yet.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fileno, select.POLLIN | select.POLLPRI)  # HUP and ERR always count
        return bool(poller.poll(0))
    readable, _, broken = select.select([fileno], [], [fileno], 0)  # pragma: no cover - Windows
    return bool(readable or broken)  # pragma: no cover - Windows
