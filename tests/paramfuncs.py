"""Segment and init functions for the parameter tests (module level, so workers import them)."""

from __future__ import annotations

import time


def identity(x, **kwargs):
    """Return the walker as it came: what arrives is what the mapper carried both ways."""
    return x


def hang_in_init(worker) -> None:
    """A ``worker_init`` that never finishes (within a test's lifetime)."""
    time.sleep(600)
