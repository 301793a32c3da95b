"""Shared test configuration. Keep fixtures here small and generic."""

from __future__ import annotations
