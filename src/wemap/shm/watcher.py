"""The manager's one wait: a thread that sleeps until a worker dies, writes, or a deadline passes.

The manager blocks in the ring's futex for "a result is done"; this thread blocks in
``multiprocessing.connection.wait`` on the workers' sentinels and pipes and on one deadline
(the earliest moment a ``task_timeout`` can expire), and when one of them fires it interrupts
the manager's wait (`wemap._ring.Ring.interrupt_done`). Nothing wakes periodically: a SIGKILLed
worker's sentinel wakes it at once, and with no ``task_timeout`` there is no deadline at all.

Each descriptor it watches fires once and is then left alone until the manager re-arms it
(`rearm`, `watch`), so a dead worker's sentinel, which stays readable, cannot spin it. Signals
are blocked in this thread, so Ctrl-C goes to the manager's thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait

__all__ = ["Watcher"]

logger = logging.getLogger(__name__)


class Watcher:
    """Wakes the manager (``wake()``) when a watched file descriptor is ready or the deadline passes."""

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._armed: set[int] = set()
        self._fired: set[int] = set()
        self._deadline: float | None = None  # time.monotonic()
        self._timer_fired = False
        self._stop = False
        #: whether anything fired since the last `take` (read without the lock: a stale False only
        #: means the manager's wait, interrupted meanwhile, returns at once)
        self.pending = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._thread = threading.Thread(target=self._run, name="wemap-watcher", daemon=True)
        self._thread.start()

    def watch(self, fds: Iterable[int]) -> None:
        """Watch exactly ``fds`` from now on (after workers were started or replaced)."""
        with self._lock:
            self._armed = set(fds)
        self._poke()

    def rearm(self, fds: Iterable[int]) -> None:
        with self._lock:
            self._armed.update(fds)
        self._poke()

    @property
    def deadline(self) -> float | None:
        """The moment it fires next (``time.monotonic()``), None once fired or when there is none."""
        return self._deadline

    def set_deadline(self, deadline: float | None) -> None:
        """Fire once at ``deadline`` (``time.monotonic()``), None for no deadline."""
        with self._lock:
            if deadline == self._deadline:
                return
            self._deadline = deadline
        self._poke()

    def take(self) -> tuple[set[int], bool]:
        """What fired since the last call: (descriptors, whether the deadline passed)."""
        with self._lock:
            fired, timer = self._fired, self._timer_fired
            self._fired, self._timer_fired, self.pending = set(), False, False
        return fired, timer

    def close(self) -> None:
        with self._lock:
            self._stop = True
        self._poke()
        self._thread.join(5.0)
        os.close(self._r)
        os.close(self._w)

    def _poke(self) -> None:
        try:
            os.write(self._w, b"x")
        except BlockingIOError:  # full of pokes already: it will look again
            pass

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while True:
            with self._lock:
                if self._stop:
                    return
                armed, deadline = list(self._armed), self._deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready = wait([self._r, *armed], timeout)
            except (OSError, ValueError) as exc:  # a descriptor closed under us: the manager will re-arm
                logger.debug("watcher: %s", exc)
                ready = list(armed)
            fired = False
            with self._lock:
                if self._r in ready:
                    os.read(self._r, 4096)
                for fd in ready:
                    if fd != self._r and fd in self._armed:
                        self._armed.discard(fd)
                        self._fired.add(fd)
                        fired = True
                if (not ready and self._deadline is not None and self._deadline == deadline
                        and time.monotonic() >= deadline):
                    self._deadline = None
                    self._timer_fired = fired = True
                if fired:
                    self.pending = True
            if fired:
                self._wake()
