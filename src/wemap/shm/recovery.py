"""What `SharedMemWorkerMapper` does when a worker dies, freezes or overruns ``task_timeout``.

A worker that dies may have died inside a ring operation, so its ring is abandoned: the ready
ring is closed, the other workers finish the walkers they hold and leave it, the slot headers
(written before each push) say which walkers completed, and the rest run again on a fresh ring
(charged to the walker when a worker held it, see `wemap.faults.Attempts`). The arena is kept:
workers never write a walker's input, so every input is still intact.

``task_timeout`` is a timer, not a poll: the next moment a timeout can expire is computed from
the slot headers (when each walker was pushed, when its worker took it) and the watcher thread
wakes the manager then. A worker that runs a walker past its timeout is killed; so is one that,
running none, took none for as long while a walker waited (frozen: SIGSTOP, a cgroup freeze),
or did not leave a closed ring that long.

The headers are read again only when that moment passes or a worker dies, not on every message
from a worker: a worker taking a walker only moves the moment later, so the deadline a scan set
is never late. A push, or a collected walker (its worker's limit may shorten once it is past its
first segment), can bring the moment closer: each moves the deadline forward at once, without a
scan (`pushed`, `finished`), and the scan it then wakes makes it exact.
"""

from __future__ import annotations

import logging
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING

from .._ring import now_ns
from ..errors import WorkerException
from ..pool import describe_exitcode
from ..worker_process import WorkerProcess

if TYPE_CHECKING:
    from .cycle import Cycle
    from .transport import Transport

__all__ = ["Recovery"]

logger = logging.getLogger(__name__)


class Recovery:
    """One run's (``init`` to ``cleanup``) record of its workers, and what to do when one is lost."""

    def __init__(self, mapper: Transport) -> None:
        self.m = mapper
        self.attached: set[int] = set()  # worker indices serving the current ring
        p = mapper.policy
        limits = [t for t in (p.timeout_for(first_segment=True), p.timeout_for(first_segment=False)) if t is not None]
        #: the shortest timeout; None: no timeouts, and nothing to keep per walker
        self.shortest: float | None = min(limits) if limits else None

    def attached_now(self, w: WorkerProcess) -> None:
        self.attached.add(w.idx)
        w.active_at = now_ns()  # it has to attach before it can take a walker

    def finished(self, widx: int, pid: int, t_end: int) -> None:
        """Worker ``widx``'s walker, finished at ``t_end``, was collected: none of its timeouts expires
        before ``t_end`` plus its limit (shorter, now it is past its first segment, when ``task_timeout`` is)."""
        if self.shortest is None:
            return
        w = self.m.pool_workers()[widx]
        if w.pid != pid:  # replaced since: what was known of it went with its handle
            return
        w.served = True
        w.active_at = max(w.active_at, t_end)
        self._expect(t_end, self.limit(w))

    def pushed(self, t_ns: int) -> None:
        """A walker went into the ready ring at ``t_ns``: an idle worker may be late from then on."""
        self._expect(t_ns, self.shortest)

    # -- timeouts ----------------------------------------------------------------------------
    def rescan(self, cycle: Cycle | None) -> None:
        """Read the slot headers: kill the workers past their timeouts, set the watcher's deadline."""
        self.m.watcher.set_deadline(self.check_timeouts(cycle))

    def overdue(self) -> bool:
        """Whether the deadline has passed (its timer may not have fired yet: the watcher was busy)."""
        deadline = self.m.watcher.deadline
        return deadline is not None and time.monotonic() >= deadline

    def _expect(self, t_ns: int, limit: float | None) -> None:
        """A timeout may expire ``limit`` seconds after ``t_ns`` (``now_ns``): the deadline is no later."""
        if limit is None:
            return
        at = time.monotonic() + (t_ns + int(limit * 1e9) - now_ns()) * 1e-9
        deadline = self.m.watcher.deadline
        if deadline is None or at < deadline:
            self.m.watcher.set_deadline(at)

    def limit(self, w: WorkerProcess | None) -> float | None:
        """The limit of the segment worker ``w`` runs (its first, or a later one)."""
        return self.m.policy.timeout_for(first_segment=w is None or not w.served)

    def kill(self, w: WorkerProcess, limit: float, what: str) -> None:
        logger.error("%s %s; killing it", w.describe(), what)
        w.timed_out = limit
        w.process.kill()
        w.process.join(1.0)

    def check_timeouts(self, cycle: Cycle | None, idle_since: int | None = None) -> float | None:
        """Kill every worker past its timeout; return when (``time.monotonic()``) to look again, or None.

        ``idle_since``: the ready ring was closed then, and workers running no walker must leave
        it within their timeout (else only a walker waiting in the ring makes an idle worker late).
        """
        policy = self.m.policy
        if policy.task_timeout is None and policy.first_task_timeout is None:
            return None
        now = now_ns()
        workers = self.m.pool_workers()
        by_pid = {w.pid: w for w in workers}
        busy: set[int] = set()
        waiting: tuple[int, int] | None = None  # (pushed at, task) of the walker waiting longest
        due: list[int] = []
        for i in (cycle.in_flight if cycle is not None else ()):
            hdr = self.m.header(i)
            pid, t0, t1 = hdr.worker_pid, hdr.t_start_ns, hdr.t_end_ns
            if not pid or not t0:  # not taken yet: it waits in the ready ring
                pushed = cycle.pushed_at[i]
                if waiting is None or pushed < waiting[0]:
                    waiting = (pushed, i)
                continue
            w = by_pid.get(pid)
            if w is None:  # a worker replaced since
                continue
            w.active_at = max(w.active_at, t0, t1)
            if t1:  # finished and waiting to be collected
                continue
            busy.add(pid)
            limit = self.limit(w)
            if limit is None or w.timed_out is not None:
                continue
            if now - t0 > limit * 1e9:
                spec = cycle.specs[i]
                self.kill(w, limit, f"ran walker {spec.walker_idx} of cycle {spec.cycle_idx} past its "
                                     f"{limit:.3g} s timeout")
            else:
                due.append(t0 + int(limit * 1e9))
        since, doing = None, ""
        if waiting is not None:
            spec = cycle.specs[waiting[1]]  # type: ignore[union-attr]
            since = waiting[0]
            doing = (f"took no walker within its {{:.3g}} s timeout while walker {spec.walker_idx} of cycle "
                     f"{spec.cycle_idx} waited in the ready ring (frozen or stuck?)")
        elif idle_since is not None:
            since = idle_since
            doing = "did not leave the closed ready ring within its {:.3g} s timeout (frozen or stuck?)"
        if since is not None:
            for w in workers:
                limit = self.limit(w)
                if w.pid in busy or w.timed_out is not None or limit is None:
                    continue
                start = max(since, w.active_at)
                if now - start > limit * 1e9:
                    self.kill(w, limit, doing.format(limit))
                else:
                    due.append(start + int(limit * 1e9))
        if not due:
            return None
        return time.monotonic() + max(0, min(due) - now) * 1e-9

    # -- a lost worker -----------------------------------------------------------------------
    def salvage(self, cycle: Cycle, dead: list[WorkerProcess]) -> list[int]:
        """A worker is gone (or cannot map the arena): stop the ring, let the others finish, keep what
        completed; returns the walkers to run again."""
        self.m.close_ring()
        dead = self.await_detached(dead, cycle)
        lost: list[int] = []
        for i in sorted(cycle.in_flight):
            hdr = self.m.header(i)
            if hdr.status >= 0 and hdr.t_end_ns > 0:
                if cycle.collect(i) is not None:
                    lost.append(i)
                continue
            pid = hdr.worker_pid
            if not pid:  # still queued: no worker was left to take it, so it runs again uncharged
                lost.append(i)
                continue
            w = next((w for w in dead if w.pid == pid), None)
            spec = cycle.specs[i]
            code = w.exitcode() if w else None
            limit = next((v.timed_out for v in [*dead, *self.m.pool_workers()] if v.pid == pid), None)
            if limit is not None:
                reason, timed_out = f"ran past task_timeout ({limit:.3g} s) and was killed", True
            else:
                reason, timed_out = f"died: {describe_exitcode(code)}", False
            cycle.attempts.lost(i, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx,
                                worker=w.describe() if w else f"worker (pid {pid})", worker_idx=w.idx if w else -1,
                                pid=pid, exitcode=code, reason=reason, timed_out=timed_out)
            lost.append(i)
        cycle.in_flight.clear()
        self.m.respawn(dead)
        return lost

    def await_detached(self, dead: list[WorkerProcess] = (), cycle: Cycle | None = None  # type: ignore[assignment]
                       ) -> list[WorkerProcess]:
        """Block until every live worker has left the closed ring; return every worker that died.

        Workers finish the walkers they hold first (answered and collected as usual); ``task_timeout``
        still applies to those, so a hung segment cannot hang the wait.
        """
        m = self.m
        dead = list(dead)
        waiting = {w.conn: w for w in m.pool_workers()
                   if w not in dead and w.idx in self.attached and w.idx not in m.detached}
        self.attached.clear()
        m.detached.clear()
        by_sentinel = {w.sentinel: w for w in waiting.values()}
        closed_at = now_ns()
        while waiting:
            again = self.check_timeouts(cycle, idle_since=closed_at)
            timeout = None if again is None else max(0.0, again - time.monotonic())
            for r in wait(list(waiting) + list(by_sentinel), timeout=timeout):
                w = waiting.get(r) or by_sentinel.get(r)  # type: ignore[call-overload]
                if w is None or w.conn not in waiting:
                    continue
                if r is w.conn:
                    try:
                        m.drain(w, cycle)
                    except (EOFError, OSError):
                        pass
                    else:
                        if w.idx not in m.detached:
                            continue
                        m.detached.pop(w.idx)
                        del waiting[w.conn], by_sentinel[w.sentinel]
                        continue
                dead.append(w)
                del waiting[w.conn], by_sentinel[w.sentinel]
        return dead

    @staticmethod
    def death(w: WorkerProcess) -> WorkerException:
        """A worker that died while idle (before it could serve a ring)."""
        code = w.exitcode()
        return WorkerException(f"{w.describe()} died while idle: {describe_exitcode(code)}",
                               worker_idx=w.idx, pid=w.pid, exitcode=code)
