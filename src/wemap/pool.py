"""Worker processes for the process mappers: start, handshake, death detection, bounded stop.

::

    manager                                    worker i (forkserver or spawn child)
    ───────                                    ────────────────────────────────────
    WorkerPool.start ── Process(args) ───────▶ worker_main: environment of start, faulthandler,
                                               ignore SIGINT,
                     ◀── ("ready", pid) ────── Worker.init() (once: e.g. an OpenMM Context)
    mapper's dispatch ── tasks ──────────────▶ loop(worker, conn, ...)   (pipe or ring)
    wait(conns + sentinels)  ◀── results ────
    lifeline (write end, never written) ─────▶ watcher thread: EOF ⇒ manager gone ⇒ os._exit
    WorkerPool.stop: ask ─ join(timeout) ─ terminate ─ join ─ kill ─ join   (always bounded)

Workers are never forked from the manager by default: a manager that has touched CUDA or holds
threads breaks forked children (openmm#1886), so everything a worker needs is pickled.

Every worker, a replacement included, runs in the manager's environment as of `WorkerPool.start`,
not the forkserver's, which dates from the first pool of the process. A library the forkserver
itself loaded (what the main module imports) read its variables then; ``spawn`` re-reads those too.
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import select
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

from .errors import WorkerException
from .faults import check_seconds
from .worker import Worker
from .worker_process import WorkerProcess, worker_main

__all__ = ["WorkerPool", "ABORT_STOP_TIMEOUT", "describe_exitcode", "default_start_method", "usable_cores",
           "multiprocessing_helper_pids"]

logger = logging.getLogger(__name__)

#: seconds an aborted map waits for workers before SIGTERM: they are mid-segment, not listening
ABORT_STOP_TIMEOUT = 0.25


def multiprocessing_helper_pids() -> set[int]:
    """Pids of multiprocessing's own helpers (forkserver, resource tracker), which outlive every pool by design."""
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    pids = set()
    fs = getattr(multiprocessing.forkserver, "_forkserver", None)
    if fs is not None and getattr(fs, "_forkserver_pid", None):
        pids.add(fs._forkserver_pid)
    rt = getattr(multiprocessing.resource_tracker, "_resource_tracker", None)
    if rt is not None and getattr(rt, "_pid", None):
        pids.add(rt._pid)
    return pids


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity (cpusets: SLURM, taskset), else every CPU."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_start_method() -> str:
    """``forkserver`` where the platform has it, else ``spawn``; never ``fork`` by default."""
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def describe_exitcode(exitcode: int | None) -> str:
    """Say how a process ended the way a user reads it: ``SIGKILL (signal 9)``, ``exit code 3``."""
    if exitcode is None:
        return "no exit code (still running)"
    if exitcode < 0:
        try:
            return f"{signal.Signals(-exitcode).name} (signal {-exitcode})"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _has_room(conn: Connection) -> bool:
    """Whether a short message to ``conn`` goes out without blocking (its buffer is at most a
    quarter full when it polls writable)."""
    room = select.poll()
    room.register(conn.fileno(), select.POLLOUT)
    return bool(room.poll(0))


class WorkerPool:
    """Start ``num_workers`` processes running ``loop(worker, conn, *loop_args)`` and stop them.

    ``start_timeout``: seconds every worker has to finish starting (its ``Worker.init``
    included), ``inf`` for no limit; ``stop_timeout``: seconds `stop` waits for workers to
    finish by themselves before ending them, finite (a stop always ends). Both are checked
    here, before any process starts.
    """

    def __init__(
        self,
        num_workers: int,
        loop: Callable[..., None],
        loop_args: tuple = (),
        *,
        worker_type: type[Worker] = Worker,
        worker_attributes: dict | None = None,
        worker_init: Callable | None = None,
        start_method: str | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 5.0,
        name: str = "wemap-worker",
    ) -> None:
        self.start_timeout = check_seconds("start_timeout", start_timeout)
        self.stop_timeout = check_seconds("stop_timeout", stop_timeout, zero=True, infinite=False)
        self.start_method = start_method or default_start_method()
        self.ctx = mp.get_context(self.start_method)
        self.num_workers = num_workers
        self.loop = loop
        self.loop_args = loop_args
        self.worker_args = (worker_type, num_workers, dict(worker_attributes or {}), worker_init)
        self.name = name
        self.workers: list[WorkerProcess] = []
        #: the manager's environment as of `start`, which every worker gets (a replacement too)
        self.environ: dict[str, str] = dict(os.environ)

    def spawn(self, idx: int) -> WorkerProcess:
        """Start worker ``idx`` (also used to replace a dead one); does not wait for it."""
        conn, child_conn = self.ctx.Pipe(duplex=True)
        lifeline_r, lifeline_w = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=worker_main,
            args=(self.environ, idx, self.worker_args, child_conn, lifeline_r, self.loop, self.loop_args),
            name=f"{self.name}-{idx}",
            daemon=True,
        )
        try:
            proc.start()
            child_conn.close()
            lifeline_r.close()
            wp = WorkerProcess(idx=idx, process=proc, conn=conn, lifeline=lifeline_w, pid=proc.pid)
            logger.info("started worker %d (pid %d, %s)", idx, proc.pid, self.start_method)
        except BaseException:
            # Interrupted (a Ctrl-C) before the caller holds it: end it here, or the traceback keeps it
            # running. A child whose pid never came back sees its lifeline close and exits by itself.
            for c in (conn, child_conn, lifeline_r, lifeline_w):
                c.close()
            if proc.pid:
                proc.kill()
                proc.join(1.0)
            raise
        return wp

    def start(self) -> None:
        """Start every worker and wait until each has run its ``Worker.init`` (bounded)."""
        self.environ = dict(os.environ)
        self.workers = []
        try:
            for i in range(self.num_workers):
                self.workers.append(self.spawn(i))  # one at a time: an interrupted start stops those started
            self.wait_ready(self.workers)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, workers: Sequence[WorkerProcess]) -> None:
        """Block until every worker in ``workers`` says ready; raise `WorkerException` otherwise."""
        deadline = time.monotonic() + self.start_timeout
        waiting = {w.conn: w for w in workers if not w.ready}
        by_sentinel = {w.sentinel: w for w in workers}
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(w.describe() for w in waiting.values())
                raise WorkerException(
                    f"{names} did not finish starting within {self.start_timeout:.3g} s "
                    f"(start_timeout); a slow Worker.init or import may need a larger value"
                )
            ready = wait(list(waiting) + [w.sentinel for w in waiting.values()],
                         timeout=None if math.isinf(remaining) else remaining)
            for r in ready:
                w = waiting.get(r) or by_sentinel[r]
                if w.conn not in waiting:
                    continue
                try:
                    kind, payload = w.conn.recv()
                except (EOFError, OSError):
                    code = w.exitcode()
                    hint = (
                        f". Its stderr has the cause; a common one: workers start with {self.start_method!r} "
                        f"and import your main module, so a script must create the mapper under "
                        f"`if __name__ == '__main__':`"
                        if code == 1
                        else ""
                    )
                    raise WorkerException(
                        f"{w.describe()} died while starting: {describe_exitcode(code)}{hint}",
                        worker_idx=w.idx,
                        pid=w.pid,
                        exitcode=code,
                    ) from None
                if kind == "init_failed":
                    w.init_failed = True
                    raise WorkerException(
                        f"{w.describe()} failed in Worker.init: {payload.exc_type}: {payload.exc_message}\n\n"
                        f"Traceback in the worker:\n{payload.traceback}",
                        worker_idx=w.idx,
                        pid=w.pid,
                    )
                w.ready = True
                del waiting[w.conn]

    def stop(self, timeout: float | None = None) -> None:
        """Ask, join with a timeout (default ``stop_timeout``), terminate, kill: every step bounded; idempotent.

        A worker still in its ``Worker.init`` reads no request to stop, so it is not waited for.
        Interrupted (a second Ctrl-C), it still kills and reaps every worker: none is left holding a GPU.
        """
        workers, self.workers = self.workers, []
        try:
            self._stop_gently(workers, self.stop_timeout if timeout is None else timeout)
        finally:
            self._reap(workers)

    @staticmethod
    def _stop_gently(workers: list[WorkerProcess], timeout: float) -> None:
        for w in workers:
            try:
                if _has_room(w.conn):  # a worker that stopped reading (frozen) may have left its pipe full
                    w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for w in workers:
            if w.ready:
                w.process.join(max(0.0, deadline - time.monotonic()))
        for step in ("terminate", "kill"):
            alive = [w for w in workers if w.process.is_alive()]
            for w in alive:
                if w.ready or step == "kill":
                    logger.warning("%s did not stop in time; sending %s", w.describe(), step)
                else:
                    logger.info("%s is still starting; sending %s", w.describe(), step)
                getattr(w.process, step)()
            for w in alive:
                w.process.join(1.0)

    @staticmethod
    def _reap(workers: list[WorkerProcess]) -> None:
        for w in workers:
            if w.process.is_alive():
                w.process.kill()
        for w in workers:
            w.reap(1.0)
            if w.process.is_alive():
                logger.error("%s is still alive after SIGKILL", w.describe())
            else:
                w.process.close()
        if workers:
            logger.debug("stopped %d worker(s)", len(workers))

    def respawn(self, w: WorkerProcess, attempts: int = 3) -> WorkerProcess:
        """Reap a dead worker and start a ready replacement with the same index (same device).

        A replacement that dies or is not ready within ``start_timeout`` (the worker it replaces was,
        so it is frozen or stuck) is ended and started again, up to ``attempts`` times; one whose
        ``Worker.init`` raises is a bug and fails at once.
        """
        w.reap(0.5)
        for attempt in range(1, attempts + 1):
            new = self.spawn(w.idx)
            self.workers[w.idx] = new
            try:
                self.wait_ready([new])
                return new
            except WorkerException as exc:
                if new.init_failed or attempt == attempts:
                    raise
                if exc.exitcode is None:  # alive, not ready within start_timeout
                    new.process.kill()
                logger.warning("replacement %s; starting another (%d of %d)", exc, attempt + 1, attempts)
                new.reap(1.0)
        raise AssertionError("unreachable")
