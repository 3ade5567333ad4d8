"""A worker process: what runs in the child (`worker_main`), and the manager's handle on it.

`worker_main` is the target `wemap.pool.WorkerPool` starts every worker with (pickled by reference).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .worker import TaskFailure, Worker

__all__ = ["WorkerProcess", "worker_main", "control_messages", "EXIT_ORPHANED", "EXIT_INIT_FAILED"]

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
    extra: dict = field(default_factory=dict)

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
