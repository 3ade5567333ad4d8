"""A worker process: what runs in the child (`worker_main`), and the manager's handle on it.

`worker_main` is the target `wemap.pool.WorkerPool` starts every worker with (pickled by reference).
"""

from __future__ import annotations

import faulthandler
import math
import os
import select
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .worker import TaskFailure, Worker

__all__ = ["WorkerProcess", "worker_main", "control_messages", "send_within", "EXIT_ORPHANED", "EXIT_INIT_FAILED"]

#: exit status of a worker that noticed its manager is gone
EXIT_ORPHANED = 75
#: exit status of a worker whose ``Worker.init`` raised
EXIT_INIT_FAILED = 76


def control_messages(conn: Connection) -> Iterator[Any]:
    """Worker side: the manager's messages, until it says stop (``None``) or is gone (EOF)."""
    try:
        while (msg := conn.recv()) is not None:
            yield msg
    except EOFError:
        pass


@dataclass
class WorkerProcess:
    """The manager's handle on one worker process."""

    idx: int
    process: Any
    conn: Connection
    lifeline: Connection
    pid: int = 0
    ready: bool = False
    init_failed: bool = False  # its Worker.init raised
    served: bool = False  # it finished a segment: past its first-segment allowance
    timed_out: float | None = None  # the timeout it was killed for
    active_at: int = 0  # when (``now_ns``) it last attached, took or finished a walker (shared-memory mapper)

    @property
    def sentinel(self) -> int:
        return self.process.sentinel

    def exitcode(self, grace: float = 0.5) -> int | None:
        """The exit code, waiting briefly for the process to be reaped after its sentinel fired."""
        self.process.join(grace)
        return self.process.exitcode

    def describe(self) -> str:
        return f"worker {self.idx} (pid {self.pid})"

    def reap(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the process to end, and close the pipes to it."""
        self.process.join(grace)
        self.conn.close()
        self.lifeline.close()


def _watch_lifeline(lifeline: Connection) -> None:
    """Exit the worker as soon as the manager's end of the lifeline closes (manager died)."""
    try:
        lifeline.poll(None)
    except (OSError, EOFError):
        pass
    os._exit(EXIT_ORPHANED)


def worker_main(
    environ: dict[str, str],
    idx: int,
    worker_args: tuple[type[Worker], int, dict, Callable | None],
    conn: Connection,
    lifeline: Connection,
    loop: Callable[..., None],
    loop_args: tuple,
) -> None:
    """Run worker ``idx`` (``worker_args``: its class, num_workers, attributes, worker_init): say
    ``("ready", pid)`` once ``Worker.init`` is done, then ``loop``."""
    # A forkserver child has the environment of the forkserver's start: the manager's replaces it.
    os.environ.clear()
    os.environ.update(environ)
    faulthandler.enable()
    # Ctrl-C reaches the whole process group; the manager owns the shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="wemap-lifeline", daemon=True).start()
    worker_type, *args = worker_args
    worker = worker_type(idx, *args)
    try:
        worker.init()
    except Exception as exc:
        conn.send(("init_failed", TaskFailure.capture(exc)))
        os._exit(EXIT_INIT_FAILED)
    conn.send(("ready", os.getpid()))
    try:
        loop(worker, conn, *loop_args)
    finally:
        worker.cleanup()


#: a message this small fits the empty pipe of a worker waiting for it (a socket buffer holds
#: about 200 KiB), so sending it never blocks
_FITS_THE_PIPE = 64 * 1024


def send_within(conn: Connection, payload: memoryview, deadline: float | None) -> bool:
    """Send ``payload`` as ``conn.send_bytes`` does, giving up at ``deadline`` (``time.monotonic``).

    Returns False when the worker had not read it all by then: it is frozen or stuck (a worker
    waiting for a message waits in ``recv``) and must be killed, so a message left half-sent does
    not matter. A message larger than the pipe would otherwise block the manager for ever in ``write``.
    """
    n = len(payload)
    if deadline is None or n <= _FITS_THE_PIPE:
        conn.send_bytes(payload)
        return True
    # multiprocessing's framing, what recv_bytes reads: a 4-byte big-endian length (-1, then 8 bytes, past 2 GiB)
    header = struct.pack("!i", n) if n <= 0x7FFFFFFF else struct.pack("!iQ", -1, n)
    fd = conn.fileno()
    writable = select.poll()
    writable.register(fd, select.POLLOUT)
    os.set_blocking(fd, False)
    try:
        for part in (memoryview(header), memoryview(payload).cast("B")):
            while part:
                try:
                    part = part[os.write(fd, part):]
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not writable.poll(math.ceil(remaining * 1000)):
                        return False
    finally:
        os.set_blocking(fd, True)
    return True
