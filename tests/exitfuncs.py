"""Segment functions that leave the way a program leaves: ``sys.exit``, ``raise KeyboardInterrupt``,
or a signal sent to the process that runs them.

Module level, so worker processes import them by reference; every run is logged to the file
``runs`` (see `faultfuncs.log_run`) so a test counts how often a walker ran, wherever it ran.
"""

from __future__ import annotations

import signal
import sys

from faultfuncs import log_run, read_runs


def exit_at(x, victim, runs=None, **kwargs):
    """``sys.exit(3)`` at walker ``victim``."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        sys.exit(3)
    return x


def interrupt_at(x, victim, runs=None, **kwargs):
    """``raise KeyboardInterrupt`` at walker ``victim``: the segment's own doing, no signal involved."""
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim:
        raise KeyboardInterrupt("the segment stops itself")
    return x


def signal_self_at(x, victim, signum, runs=None, **kwargs):
    """Send signal ``signum`` to this thread on walker ``victim``'s first run, then return ``x``:
    what a user's Ctrl-C or a batch system's SIGTERM does to a running segment.

    ``raise_signal`` delivers it before it returns: by then the default action has ended the
    process, or a Python handler is due at the next bytecode (raising, it ends the segment),
    or the signal was ignored and the segment goes on.
    """
    log_run(runs, kwargs.get("walker_idx"))
    if kwargs.get("walker_idx") == victim and sum(1 for w, _ in read_runs(runs) if w == victim) == 1:
        signal.raise_signal(signum)
    return x


SIGINT, SIGTERM = int(signal.SIGINT), int(signal.SIGTERM)
