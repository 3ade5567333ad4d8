"""Segment and init functions that report what environment a worker sees (module level, so
worker processes import them by reference)."""

from __future__ import annotations

import os
import signal

import wemap


def env_at_init(worker) -> dict:
    """``worker_init``: the environment ``Worker.init`` runs in."""
    return dict(os.environ)


def report(names, marker=None, **kwargs):
    """The values of ``names`` here and at this worker's init; kill the worker first, once, when
    ``marker`` names a file this call is the first to create (so a replacement worker reports)."""
    if marker is not None:
        try:
            open(marker, "x").close()  # atomic: of workers starting at once, one is first
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    at_init = wemap.current_worker().resource
    return [(os.environ.get(n), at_init.get(n)) for n in names]
