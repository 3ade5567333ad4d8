"""What one running `SharedMemWorkerMapper` owns: workers, their watcher, the ring and the arena.

Made by ``init``, ended by ``cleanup``. The ring has a slot per walker and is made again when a
``map`` has more walkers, when its descriptors outgrow it, when the arena is replaced (workers
learn the arena's name when they attach to a ring) and after a worker is lost (it may have died
inside a ring operation).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .._ring import SlotHeader
from ..arena import PAGE, Arena
from ..codec import CodecRegistry
from ..errors import WorkerException
from ..faults import RetryPolicy
from ..pickling import dumps
from ..pool import ABORT_STOP_TIMEOUT, WorkerPool, describe_exitcode
from ..segment import Segment
from ..slot_format import Layouts
from ..worker_process import WorkerProcess, send_within
from .recovery import Recovery
from .watcher import Watcher

if TYPE_CHECKING:
    from .cycle import Cycle

__all__ = ["Transport"]

logger = logging.getLogger(__name__)

#: smallest slot region (a descriptor of a few fields is about 200 bytes)
MIN_REGION = 1024


class Transport:
    """The shared-memory side of one mapper run (see the module docstring)."""

    def __init__(self, pool: WorkerPool, registry: CodecRegistry, policy: RetryPolicy) -> None:
        self.pool, self.registry, self.policy = pool, registry, policy
        self.recovery = Recovery(self)
        self.segment: Segment | None = None
        self.views: list[tuple[SlotHeader, np.ndarray, np.ndarray]] = []  # per slot: header, input, output
        self.arena: Arena | None = None
        self.layouts = Layouts(registry.by_name, 0)
        self.min_block, self.min_region = PAGE, MIN_REGION
        self.inbox: dict[int, list[tuple]] = {}  # worker idx -> results and failures read ahead
        self.detached: dict[int, str | None] = {}  # worker idx -> why it left the ring unasked (None: asked)
        self._renew = False
        self._arena_failures = 0
        self._ring_lock = threading.Lock()  # the watcher interrupts the ring this closes
        self.watcher = Watcher(self._interrupt)
        self._watch_workers()

    # -- plumbing for the cycle and recovery ---------------------------------------------------
    @property
    def ring(self):
        assert self.segment is not None
        return self.segment.ring

    def pool_workers(self) -> list[WorkerProcess]:
        return self.pool.workers

    def worker_count(self) -> int:
        return self.pool.num_workers

    def header(self, i: int) -> SlotHeader:
        return self.views[i][0]

    def _interrupt(self) -> None:
        with self._ring_lock:
            if self.segment is not None:
                self.segment.ring.interrupt_done()

    def _watch_workers(self) -> None:
        ws = self.pool.workers
        self.watcher.watch([w.sentinel for w in ws] + [w.conn.fileno() for w in ws])

    # -- pipes ---------------------------------------------------------------------------------
    def drain(self, w: WorkerProcess, cycle: Cycle | None) -> None:
        """Read everything worker ``w`` has written (EOFError or OSError: it is gone)."""
        while w.conn.poll(0):
            self._dispatch(w, w.conn.recv(), cycle)

    def _dispatch(self, w: WorkerProcess, msg: Any, cycle: Cycle | None) -> None:
        kind = msg[0] if type(msg) is tuple and msg else None
        if kind == "extras":  # a worker took a walker with values that are neither arrays nor plain
            task = msg[1]
            ok = cycle is not None and type(task) is int and 0 <= task < len(cycle.encoded)
            enc = cycle.encoded[task] if ok else None  # type: ignore[union-attr]
            # a worker that asked for them reads them at once: one that has not within half its
            # timeout is frozen or stuck, and is killed, so that neither it nor the other workers
            # waiting for their own extras keep the manager in write for ever (nor past their timeouts)
            limit = self.recovery.limit(w)
            deadline = None if limit is None else time.monotonic() + limit / 2
            if not send_within(w.conn, dumps(("extras", task, enc.extras if enc is not None else [])), deadline):
                assert limit is not None
                self.recovery.kill(w, limit, f"did not read the values of its walker (slot {task}) that travel "
                                             f"over its pipe within half its task_timeout of {limit} s")
        elif kind == "detached":
            self.detached[w.idx] = msg[2]
        elif kind in ("result", "failed"):
            self.inbox.setdefault(w.idx, []).append(msg)
        else:
            raise WorkerException(f"{w.describe()} sent {msg!r:.100}, which is no message of the ring protocol",
                                  worker_idx=w.idx, pid=w.pid)

    def message(self, widx: int, kind: str, task: int, cycle: Cycle | None = None) -> tuple:
        """The ``kind`` message of ``task`` from worker ``widx`` (sent before it pushed the slot)."""
        box = self.inbox.setdefault(widx, [])
        while True:
            for k, msg in enumerate(box):
                if msg[0] == kind and msg[1] == task:
                    return box.pop(k)
            w = self.pool.workers[widx]
            self._dispatch(w, w.conn.recv(), cycle)

    # -- the ring and the arena ----------------------------------------------------------------
    def new_arena(self, nblocks: int, block_size: int) -> None:
        old, self.arena = self.arena, None
        if old is not None:
            old.retire()
        block_size = max(self.min_block, -(-max(1, block_size) // PAGE) * PAGE)
        self.arena = Arena(nblocks, block_size)
        self.layouts = Layouts(self.registry.by_name, block_size)
        self._renew = True
        logger.info("arena %s: %d blocks of %d bytes", self.arena.name, nblocks, block_size)

    def arena_broken(self, reason: str) -> None:
        """A worker could not map the arena (its name removed, no memory): a new one, once per map."""
        self._arena_failures += 1
        if self._arena_failures > 1:
            raise WorkerException(f"workers could not map two arenas in a row; the last time: {reason}")
        logger.warning("%s; making a new arena", reason)
        if self.arena is not None:
            self.arena.retire()
            self.arena = None

    def outgrown(self, block_bytes: int, desc_bytes: int, specs: list) -> None:
        """Results did not fit their blocks or slots (they came over the pipe): larger ones next time."""
        logger.info("%d result(s) did not fit (largest: %d bytes of arrays, %d of descriptor; walker %d of "
                    "cycle %d): they came over the pipe; the next map makes room", len(specs), block_bytes,
                    desc_bytes, specs[0].walker_idx, specs[0].cycle_idx)
        self.min_block = max(self.min_block, block_bytes)
        self.min_region = max(self.min_region, 2 * desc_bytes)

    def fit_ring(self, nslots: int, desc_bytes: int) -> None:
        """A ring of ``nslots`` slots whose regions hold descriptors of ``desc_bytes`` (made anew when needed)."""
        region = max(self.min_region, 1 << (2 * desc_bytes + 256 - 1).bit_length())  # room to vary: a power of two
        seg = self.segment
        if (seg is not None and not self._renew and seg.ring.nslots >= nslots and seg.ring.region_size >= region
                and not seg.ring.ready_closed):
            return
        if seg is not None:
            nslots, region = max(nslots, seg.ring.nslots), max(region, seg.ring.region_size)
            self.close_ring()
            self.recovery.await_detached()
        self.drop_ring()
        seg = Segment.create(nslots, region)
        views = seg.ring.slot_views()
        with self._ring_lock:
            self.segment, self.views = seg, views
        self._renew = False
        logger.info("ring %s: %d slots of 2 x %d bytes", seg.name, nslots, region)
        for w in list(self.pool.workers):
            self._attach(w)

    def _attach(self, w: WorkerProcess, attempts: int = 3) -> None:
        """Tell worker ``w`` to serve the ring and the arena; a worker found dead is replaced first."""
        assert self.segment is not None and self.arena is not None
        a = self.arena
        for _ in range(attempts):
            try:
                w.conn.send(("attach", self.segment.name, a.name, a.nblocks, a.block_size))
            except (OSError, ValueError):
                logger.warning("%s is gone (%s) before attaching; starting a replacement",
                               w.describe(), describe_exitcode(w.exitcode()))
                w = self._replace(w)
                continue
            self.recovery.attached_now(w)
            return
        raise Recovery.death(w)

    def close_ring(self) -> None:
        if self.segment is not None:
            self.segment.ring.close_ready()
            self._renew = True

    def drop_ring(self) -> None:
        seg = self.segment
        with self._ring_lock:
            self.segment, self.views = None, []
        if seg is not None:
            seg.unlink()
            seg.close()

    # -- workers -------------------------------------------------------------------------------
    def _replace(self, w: WorkerProcess) -> WorkerProcess:
        self.inbox.pop(w.idx, None)
        self.detached.pop(w.idx, None)
        self.recovery.attached.discard(w.idx)  # its replacement serves no ring until it is told to
        new = self.pool.respawn(w)
        self._watch_workers()
        return new

    def respawn(self, dead: list[WorkerProcess]) -> None:
        for w in dead:
            logger.warning("%s is gone (%s); starting a replacement", w.describe(), describe_exitcode(w.exitcode()))
            self._replace(w)
        self._renew = self._renew or bool(dead)

    def replace_dead_idle_workers(self, cycle: Cycle) -> None:
        """Before walkers go out: a worker that died since the last ``map`` is replaced, its ring renewed."""
        if self.watcher.pending:
            self.respawn(cycle.events())

    def stop(self, abort: bool, stop_timeout: float) -> None:
        self.watcher.close()
        arena, self.arena = self.arena, None
        try:
            if arena is not None:
                arena.retire()
        except Exception as exc:  # the workers and the ring must go whatever happened here
            logger.warning("could not retire arena %s: %s", arena.name, exc)
        seg = self.segment
        if seg is not None:
            seg.ring.close_ready()
        try:
            self.pool.stop(ABORT_STOP_TIMEOUT if abort else stop_timeout)
        finally:
            self.drop_ring()
