"""Test kit for code that receives Runflow callbacks."""

from __future__ import annotations

from runflow_callbacks.testing.server import free_port, serve_in_thread, wait_for_port

__all__ = ["free_port", "serve_in_thread", "wait_for_port"]
