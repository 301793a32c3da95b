"""pytest plugin (entry point ``pytest11``): fixtures for testing callback endpoints."""

from __future__ import annotations
