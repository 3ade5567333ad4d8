"""Segment and init functions for the parameter tests (module level, so workers import them)."""

from __future__ import annotations

import time


def identity(x, **kwargs):
    """Return the walker as it came: what arrives is what the mapper carried both ways."""
    return x


def hang_in_init(worker) -> None:
    """A ``worker_init`` that never finishes (within a test's lifetime)."""
    time.sleep(600)


def freeze_once_when_armed(worker) -> None:
    """A ``worker_init`` that stops its own process (SIGSTOP: frozen, not dead) once, the first time
    it runs after the file ``arm`` appears in ``worker.attributes["marker_dir"]``."""
    import os
    import signal

    d = worker.attributes["marker_dir"]
    if os.path.exists(os.path.join(d, "arm")):
        try:
            open(os.path.join(d, "frozen"), "x").close()
        except FileExistsError:
            return
        os.kill(os.getpid(), signal.SIGSTOP)


def kill_once_at(x, victim, marker_dir, **kwargs):
    """SIGKILL this worker the first time walker ``victim`` runs; return ``x``."""
    import os
    import signal

    if kwargs.get("walker_idx") == victim:
        try:
            open(os.path.join(marker_dir, "killed"), "x").close()
        except FileExistsError:
            return x
        os.kill(os.getpid(), signal.SIGKILL)
    return x
