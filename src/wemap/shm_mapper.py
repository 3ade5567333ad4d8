"""`SharedMemWorkerMapper`: walker arrays travel through a shared-memory slot ring, not pickles.

::

    manager (map)                          segment (/dev/shm/wemap_<pid>_<token>, 0600)          worker i
    ─────────────                          ─────────────────────────────────────────            ────────
    encode walker → copy arrays ──────▶  slot k: [header | input region | output region]
    push_ready(k) ──────────────────────▶ ready ring ─────────────────────────────────────▶  pop_ready → k
                                                                                             views of input (read-only)
                                                                                             segment_func(walker, ...)
                                                                                             result → output region
    pop_done → k ◀───────────────────────  done ring  ◀─────────────────────────────────────  push_done(k)
    rebuild walker (views of its result block, or of the slot)

Slots are sized from the largest walker of the first cycle (or ``slot_size``, a hard limit)
and regrown between cycles; more walkers than slots stream through them. Workers block in a
futex on the ready ring; the manager blocks on the done ring in slices that also check
worker liveness. Results are written by the workers straight into blocks of a shared
*result arena* (`wemap.result_arena`) that the manager returns views of, so the manager copies
each walker once, in, and the copies out run in the workers, in parallel. The manager writes
such walkers into *input blocks* of the arena rather than their slots (the slot names the block),
so a result array the segment leaves in its input (a no-op) is handed out where it is. A worker
never writes a walker's input (slot region or block), so a walker can always be re-run. Each worker also keeps its control pipe: ``("attach", name)`` when the segment is
(re)made, ``None`` to stop.

Failure paths: a segment that raises comes back as a pickled failure in the output region →
`TaskException`; a worker that dies → `WorkerException` naming worker, pid, walker, cycle and
exit code or signal. Any exception out of ``map`` stops every worker and unlinks the segment.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from collections.abc import Callable, Mapping
from multiprocessing.connection import wait
from typing import Any


from .codec import (
    IN_REGION,
    OUT_REGION,
    Codec,
    CodecRegistry,
    decode_call,
    encode_call,
    read_descriptor,
    write_call,
    write_pointer,
)
from .errors import WorkerException
from .mapper import MapperBase, TaskSpec, resolve_start_method
from .memcopy import BlockPool
from .pool import ABORT_STOP_TIMEOUT, WorkerPool, WorkerProcess, describe_exitcode
from ._ring import now_ns
from .faults import Attempts
from .result_arena import ResultArena
from .segment import Segment, _free_bytes, remove_stale_segments
from .shm_worker import (
    STATUS_CORRUPT,
    STATUS_FAILED,
    STATUS_NO_ARENA,
    STATUS_OK,
    STATUS_OVERFLOW,
    read_failure,
    ring_loop,
)
from .worker import Worker

__all__ = ["SharedMemWorkerMapper"]

logger = logging.getLogger(__name__)

#: headroom over the largest input when slots are sized automatically (results may be larger)
AUTO_HEADROOM = 1.25
AUTO_EXTRA = 64 * 1024
#: automatic slot count: at most this share of the free /dev/shm, and at most this many bytes
SLOT_BUDGET_FRACTION = 0.25
SLOT_BUDGET_MAX = 4 * 2**30
#: walkers with fewer array bytes than this (about 2,700 atoms of positions and velocities) have
#: their results copied by the manager: since the slot format's layouts are parsed once, the
#: arena wins from 3k atoms with new arrays on 2 vCPUs shared by three processes (10k: 161-181 vs
#: 190-238 µs a task), ties fed back and with a no-op, and at 1k atoms ties or loses by a few µs
#: (bench/shared_results.py, bench/README.md)
SHARED_RESULTS_MIN_BYTES = 128 * 2**10
#: fed-back walkers send their arrays by reference from this size on (about 8,200 atoms): below
#: it the second encoding costs more than the manager's copy in saves. Fed back on 2 workers,
#: interleaved, two runs each: 10k atoms 0.0096/0.0086 vs 0.0120/0.0106 s a cycle at 48 walkers,
#: 0.093/0.077 vs 0.107/0.099 at 500, even at 8; 6k atoms even; 3k atoms 0.0069/0.0064 vs
#: 0.0049/0.0048 at 48 walkers
REFER_MIN_BYTES = 384 * 2**10


def _shm_free() -> int:
    """Bytes free in ``/dev/shm`` (``SLOT_BUDGET_MAX`` when it cannot be read)."""
    free = _free_bytes("/dev/shm")
    return SLOT_BUDGET_MAX if free is None else free


def _shm_budget() -> int:
    """Bytes of ``/dev/shm`` one pool of slots or of result blocks may plan for (a share of what is free)."""
    return min(SLOT_BUDGET_MAX, int(_shm_free() * SLOT_BUDGET_FRACTION))


class SharedMemWorkerMapper(MapperBase):
    """Persistent worker processes fed through a shared-memory slot ring; nothing large is pickled.

    Takes `WorkerMapper`'s arguments, in wepy's order (``num_workers, worker_type,
    worker_attributes, segment_func``; the rest keyword-only; unknown keywords become mapper
    `attributes`), and these:

    - ``codecs``: extra `Codec` objects tried before the built-ins (walker types of your own).
    - ``slot_size``: bytes of each slot's input and output region. ``None`` (default) sizes the
      slots from the first cycle's largest walker and regrows them between cycles; a number is
      a hard limit (a walker that does not fit → ``ValueError`` naming the field).
    - ``num_slots``: slots in the ring (default: one per walker of the first cycle, within a
      quarter of the free ``/dev/shm`` and 4 GiB, and at least two per worker); more walkers
      than slots stream through them.
    - ``zero_copy``: return results as read-only views into the segment, valid until the next
      ``map`` call, instead of one copy each. With more walkers than slots, a result whose slot
      is needed again in the same ``map`` is copied out first.
    - ``shared_results``: (default) for walkers of 128 KiB or more, the workers write each result
      into a block of shared memory that the manager returns views of (writable, valid for as
      long as they are referenced; a block is reused once nothing refers to it), so a result
      is copied once, by a worker, instead of twice. The manager writes these walkers into blocks
      too, so result arrays the segment hands back unchanged (a no-op) are returned where they
      are, copied by nobody. ``False``, smaller walkers, or results the blocks cannot take: the
      manager copies each result out of its slot into private memory. Walkers of 384 KiB or
      more that are results of an earlier ``map`` still in the arena (a WE loop feeding its
      walkers back, clones included) are not copied in: the worker reads them where they are.

    The segment function receives read-only views of the walker's arrays (copy them before
    modifying them in place).

    ``start_method`` defaults to forkserver (spawn where there is none). With ``"fork"``, workers
    inherit the manager's mapping of the result arena, so a retired arena's pages stay allocated
    until the workers that were forked while it lived exit.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        worker_type: type | None = None,
        worker_attributes: Mapping[str, Any] | None = None,
        segment_func: Callable[..., Any] | None = None,
        *,
        worker_init: Callable[[Worker], Any] | None = None,
        codecs: list[Codec] | tuple[Codec, ...] = (),
        slot_size: int | None = None,
        num_slots: int | None = None,
        zero_copy: bool = False,
        shared_results: bool = True,
        start_method: str | None = None,
        proc_start_method: str | None = None,
        start_timeout: float = 120.0,
        stop_timeout: float = 5.0,
        liveness_interval: float = 0.2,
        max_retries: int = 2,
        retry_on: tuple[type[BaseException], ...] = (),
        task_timeout: float | None = None,
        first_task_timeout: float | None = None,
        **mapper_attributes: Any,
    ) -> None:
        super().__init__(
            segment_func, num_workers, worker_type, worker_attributes, worker_init,
            max_retries=max_retries, retry_on=retry_on, task_timeout=task_timeout,
            first_task_timeout=first_task_timeout, mapper_attributes=mapper_attributes,
        )
        if slot_size is not None and slot_size <= 0:
            raise ValueError(f"slot_size must be a positive number of bytes, got {slot_size!r}")
        if num_slots is not None and num_slots <= 0:
            raise ValueError(f"num_slots must be a positive integer, got {num_slots!r}")
        self.codecs = tuple(codecs)
        self._registry = CodecRegistry(self.codecs)
        self.slot_size = slot_size
        self.num_slots = num_slots
        self.zero_copy = zero_copy
        self.shared_results = shared_results
        self._arena: ResultArena | None = None
        self._result_blocks: list = []  # per task of the running cycle: an ArenaBlock or None
        self._input_blocks: list = []  # per task: the ArenaBlock the manager wrote the walker into, or None
        self.start_method = resolve_start_method(start_method, proc_start_method)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.liveness_interval = liveness_interval
        self._pool: WorkerPool | None = None
        self._segment: Segment | None = None
        self._attached: set[int] = set()  # worker indices serving the current segment
        self._served: set[int] = set()  # pids that finished a segment (past their first-segment allowance)
        self._timed_out: dict[int, float] = {}  # pid -> the timeout it was killed for
        self._active_at: dict[int, int] = {}  # pid -> when (now_ns) it was last seen taking or finishing a walker
        self._blocks = BlockPool()  # memory for result walkers, reused once they are dropped
        self._refer = True  # fed-back walkers go by reference; off once a worker cannot map the arena
        self._arena_unmappable = False  # a worker could not map the arena: replace it after the cycle
        self._encoded: list = []  # this cycle's encoded walkers
        self._views: list = []  # per slot: (header, input region, output region) views of the segment

    @property
    def segment_name(self) -> str | None:
        """Name of the current shared-memory segment (under ``/dev/shm`` on Linux), if any."""
        return self._segment.name if self._segment is not None else None

    # -- lifecycle ---------------------------------------------------------------------------
    def _start(self) -> None:
        self._attached, self._served, self._timed_out, self._active_at = set(), set(), {}, {}
        self._refer, self._arena_unmappable = True, False
        for name in remove_stale_segments():
            logger.warning("removed stale segment %s left by a dead process", name)
        pool = WorkerPool(
            self._worker_count(),
            ring_loop,
            (self.segment_func, self.codecs, self.policy.retry_on),
            worker_type=self.worker_factory,
            worker_attributes=self.worker_attributes,
            worker_init=self.worker_init,
            start_method=self.start_method,
            start_timeout=self.start_timeout,
            stop_timeout=self.stop_timeout,
        )
        pool.check_picklable(
            segment_func=self.segment_func,
            worker_type=self.worker_type,
            worker_attributes=self.worker_attributes,
            worker_init=self.worker_init,
            codecs=self.codecs,
        )
        pool.start()
        self._pool = pool

    def _stop(self, abort: bool) -> None:
        self._blocks.clear()
        self._result_blocks, self._input_blocks = [], []
        arena, self._arena = self._arena, None
        try:
            if arena is not None:
                arena.retire()
        except Exception as exc:  # the workers and the segment must go whatever happened here
            logger.warning("could not retire result arena %s: %s", arena.name, exc)
        seg, self._segment, self._views = self._segment, None, []
        if seg is not None:
            seg.ring.close_ready()
        pool, self._pool = self._pool, None
        try:
            if pool is not None:
                pool.stop(ABORT_STOP_TIMEOUT if abort else self.stop_timeout)
        finally:
            if seg is not None:
                seg.unlink()
                seg.close()

    # -- segment -----------------------------------------------------------------------------
    def _ensure_segment(self, region_needed: int, n_tasks: int, fresh: bool = False) -> None:
        """Make (or regrow, or with ``fresh`` renew) the segment so every slot region holds ``region_needed`` bytes."""
        seg = self._segment
        if seg is not None and seg.ring.region_size >= region_needed and not fresh and not seg.ring.ready_closed:
            return  # (a ring closed by a salvage that lost nothing is renewed: its workers have left it)
        if self.slot_size is not None:
            region = int(self.slot_size)
        elif seg is not None and region_needed <= seg.ring.region_size:
            region = seg.ring.region_size  # renewed after a lost worker, not outgrown: the same size again
        else:
            region = int(region_needed * AUTO_HEADROOM) + AUTO_EXTRA
        nslots = self.num_slots or self._default_slots(region, n_tasks)
        if seg is not None:  # renewing never shrinks: the re-queued walkers are not a cycle's worth
            region = max(region, seg.ring.region_size)
            nslots = max(nslots, seg.ring.nslots) if self.num_slots is None else nslots
            logger.info("new segment: slots of %d bytes (were %d)", region, seg.ring.region_size)
            self._segment, self._views = None, []
            seg.ring.close_ready()
            seg.unlink()
            seg.close()
            self._await_detached()
        seg = Segment.create(nslots, region)
        self._segment = seg
        r = seg.ring
        self._views = [(r.header_view(k), r.input_view(k), r.output_view(k)) for k in range(r.nslots)]
        logger.info("segment %s: %d slots x 2 x %d bytes (%.1f MiB)", seg.name, nslots, seg.ring.region_size,
                    seg.size / 2**20)
        assert self._pool is not None
        for w in list(self._pool.workers):
            self._attach(w, seg.name)

    def _attach(self, w: WorkerProcess, name: str, attempts: int = 3) -> None:
        """Tell worker ``w`` to serve segment ``name``; a worker found dead is replaced first."""
        for _ in range(attempts):
            try:
                w.conn.send(("attach", name))
            except (OSError, ValueError):
                logger.warning("%s is gone (%s) before serving %s; starting a replacement",
                               w.describe(), describe_exitcode(w.exitcode()), name)
                w = self._pool.respawn(w)
                continue
            self._attached.add(w.idx)
            self._active_at[w.pid] = now_ns()  # it has to attach before it can take a walker
            return
        raise self._death(w, None)

    def _default_slots(self, region: int, n_tasks: int) -> int:
        """One slot per walker, so the manager writes every walker before it waits, within a budget.

        The budget (``SLOT_BUDGET_FRACTION`` of free ``/dev/shm``, at most ``SLOT_BUDGET_MAX``)
        keeps large systems streaming through fewer slots; never fewer than two per worker.
        """
        budget = _shm_budget()
        fit = max(1, budget // (2 * region + 4096))
        return max(1, min(n_tasks, max(fit, 2 * self._worker_count())))

    def _ensure_arena(self, block_needed: int, n_tasks: int) -> ResultArena | None:
        """The result arena, made or outgrown here: three blocks a walker within the shared-memory budget
        (its input block, its result block, and the result of the cycle before that the caller holds)."""
        arena = self._arena
        want = 3 * n_tasks
        if arena is not None and arena.block_size >= block_needed and arena.nblocks >= want:
            return arena
        # the slots come first: leave them room to be made again twice as large (results that
        # overflow, walkers that grow), so the arena never turns a regrow into a ShmSpaceError
        seg_size = self._segment.size if self._segment is not None else 0
        budget = min(_shm_budget(), max(0, _shm_free() - 3 * seg_size))
        if arena is not None:
            budget += arena.size  # it goes if it is replaced
        nblocks = min(want, budget // max(1, block_needed))
        if arena is not None and arena.block_size >= block_needed and arena.nblocks >= nblocks:
            return arena  # as large as the budget allows
        if arena is not None:
            self._arena = None
            arena.retire()
        if nblocks < 1:
            logger.info("no room in /dev/shm for result blocks of %d bytes: results are copied by the manager",
                        block_needed)
            return None
        try:
            self._arena = ResultArena(nblocks, block_needed)
        except Exception as exc:  # only an optimisation: never a reason for a map to fail
            logger.warning("no result arena (%s: %s): results are copied by the manager", type(exc).__name__, exc)
            return None
        return self._arena

    def _take_blocks(self, specs: list[TaskSpec], encoded: list) -> None:
        """Per task, a result block for the worker to write into (None: the output region, copied here),
        and for a walker not already in the arena an input block that the manager writes it into
        instead of its slot (None: the slot).

        A walker in an input block is in memory the manager can hand out: a result array the
        segment left in its input (a no-op; box vectors a runner hands back unchanged) is then
        returned where it is, neither copied by the worker nor out of the slot by the manager.
        """
        n = len(encoded)
        self._result_blocks, self._input_blocks = [None] * n, [None] * n
        need = max(e.array_bytes for e in encoded)
        if self.zero_copy or not self.shared_results or need < SHARED_RESULTS_MIN_BYTES:
            return
        arena = self._ensure_arena(need + AUTO_EXTRA, n)
        if arena is None:
            return
        held = arena.any_in_use()  # an input can be an earlier result in the arena only if some block is held
        self._result_blocks = arena.take(n)
        referred = self._refer_to_arena(specs, encoded, held)
        if not self._refer:  # a worker could not map the arena: walkers go through the slots
            return
        size = arena.block_size
        wanted = [i for i, (enc, block) in enumerate(zip(encoded, self._result_blocks))
                  if block is not None and i not in referred and enc.nbytes <= size]
        for i, block in zip(wanted, arena.take(len(wanted))):
            self._input_blocks[i] = block

    def _refer_to_arena(self, specs: list[TaskSpec], encoded: list, any_held: bool = True) -> set[int]:
        """Walkers (of ``REFER_MIN_BYTES`` or more) whose arrays are earlier results still in the arena
        send those by reference; returns their tasks. ``any_held``: whether any block of the arena
        was referred to before this cycle's takes (if not, no walker can be in it).

        Only walkers with a result block: its field names the arena to the worker. The arena is
        settled for this cycle by now, so no reference can outlive the arena it points into.
        """
        arena = self._arena
        referred: set[int] = set()
        if arena is None or not self._refer or not any_held:
            return referred
        for i, (enc, block) in enumerate(zip(encoded, self._result_blocks)):
            if block is not None and enc.array_bytes >= REFER_MIN_BYTES and arena.holds_any(enc.arrays):
                spec = specs[i]
                encoded[i] = encode_call(self._registry, spec.args, spec.kwargs, region=IN_REGION, local_ref=arena.ref,
                                         where=f"walker {spec.walker_idx} (cycle {spec.cycle_idx})")
                referred.add(i)
        return referred

    # -- map ---------------------------------------------------------------------------------
    def _run(self, specs: list[TaskSpec]) -> list[Any]:
        try:
            return self._run_cycle(specs)
        except BaseException:
            self._abort()
            raise

    def _encode(self, specs: list[TaskSpec]):
        encoded = []
        for spec in specs:
            where = f"walker {spec.walker_idx} (cycle {spec.cycle_idx})"
            enc = encode_call(self._registry, spec.args, spec.kwargs, where=where, region=IN_REGION)
            if self.slot_size is not None and enc.nbytes > self.slot_size:
                field, fbytes = enc.largest_field
                raise ValueError(
                    f"{where} needs {enc.nbytes} bytes but slot_size is {self.slot_size}: "
                    f"its largest field {field!r} alone is {fbytes} bytes; raise slot_size or leave it "
                    f"None to size slots automatically"
                )
            encoded.append(enc)
        return encoded

    def _run_cycle(self, specs: list[TaskSpec]) -> list[Any]:
        encoded = self._encode(specs)  # every walker checked before anything is written
        self._encoded = encoded  # _collect may send a walker again, encoded otherwise
        self._ensure_segment(max(e.nbytes for e in encoded), len(specs))
        self._take_blocks(specs, encoded)
        results: list[Any] = [None] * len(specs)
        attempts = Attempts(self.policy)
        todo = list(range(len(specs)))
        try:
            while todo:
                overflow, lost = self._stream(specs, encoded, todo, results, attempts)
                todo = sorted(lost + [i for i, _ in overflow])
                if overflow:
                    need = max(n for _, n in overflow)
                    if self.slot_size is not None:
                        i, n = overflow[0]
                        raise ValueError(
                            f"the result of walker {specs[i].walker_idx} (cycle {specs[i].cycle_idx}) needs {n} "
                            f"bytes, more than slot_size={self.slot_size}; raise slot_size or leave it None"
                        )
                    logger.warning(
                        "%d result(s) did not fit the %d-byte slots (largest %d bytes): regrowing and re-running them",
                        len(overflow), self._segment.ring.region_size, need,
                    )
                    self._ensure_segment(need, len(todo), fresh=True)
                elif lost:
                    self._ensure_segment(self._segment.ring.region_size, len(todo), fresh=True)
        finally:
            self.recovered_segments += attempts.recovered
            self._result_blocks, self._input_blocks = [], []  # the results hold the blocks they use; the rest are free
            self._encoded = []
            if self._arena_unmappable and self._arena is not None:  # its name may be gone: make a new one
                self._arena.retire()
                self._arena = None
            self._arena_unmappable = False
        # keep about one cycle of idle result blocks: the next cycle's results reuse them
        self._blocks.trim(keep_bytes=2 * sum(e.array_bytes for e in encoded))  # references included
        return results

    def _stream(self, specs, encoded, todo, results, attempts: Attempts):
        """Push walkers through the slots until all are back or a worker is lost.

        Returns (overflowed results as (task, bytes needed), tasks lost with a worker).
        """
        ring = self._segment.ring
        views = self._views
        blocks, inputs = self._result_blocks, self._input_blocks
        pending = deque(todo)
        free = deque(range(ring.nslots))
        in_flight: dict[int, int] = {}
        held: dict[int, int] = {}  # zero_copy: slot -> task whose result is still a view of it
        overflow: list[tuple[int, int]] = []
        queued_at = [0] * ring.nslots  # per slot: when (now_ns) its walker was pushed to the ready ring
        next_check = time.monotonic() + self.liveness_interval
        while pending or in_flight:
            while pending and not free and held:  # more walkers than slots: move a held result out first
                slot, i = held.popitem()
                self._copy_out(slot, i, results)
                free.append(slot)
            while pending and free:
                slot, i = free.popleft(), pending.popleft()
                spec = specs[i]
                hdr, inp, _ = views[slot]
                target, into = blocks[i], inputs[i]
                if into is not None:  # the walker into its input block, the slot told where it is
                    write_call(encoded[i], into.array)
                    write_pointer(inp, target.target, into.pointer)
                else:
                    write_call(encoded[i], inp, target.target if target is not None else None)
                # task_id, cycle, walker_idx, worker_idx, worker_pid, t_start, t_end, in_nbytes, out_nbytes,
                # status, flags: one assignment, in the order of the C struct wm_slot_header
                hdr[()] = (i, spec.cycle_idx, spec.walker_idx, -1, 0, 0, 0, encoded[i].nbytes, 0, -1, 0)
                in_flight[slot] = i
                queued_at[slot] = now_ns()
                ring.push_ready(slot)
            slot = ring.pop_done(self.liveness_interval)
            if slot is not None:
                i = in_flight.pop(slot, None)
                if i is None:
                    raise WorkerException(f"a worker returned slot {slot}, which held no walker: the segment is corrupt")
                if self._collect(slot, i, specs, results, overflow, attempts):
                    pending.appendleft(i)  # a retried exception (retry_on)
                    free.append(slot)
                elif self.zero_copy and results[i] is not None:
                    held[slot] = i
                else:
                    free.append(slot)
            if time.monotonic() >= next_check or slot is None:
                next_check = time.monotonic() + self.liveness_interval
                dead = self._dead_workers(in_flight, queued_at)
                if dead:
                    lost = self._salvage(dead, in_flight, specs, results, overflow, attempts)
                    return overflow, lost + list(pending)
        return overflow, []

    def _collect(self, slot: int, i: int, specs, results, overflow, attempts: Attempts) -> bool:
        """Take a finished slot's result; True when the walker must run again (``retry_on``)."""
        hdr, inp, out = self._views[slot]
        task_id, _, _, widx, pid, t0, t1, _, out_nbytes, status, _ = hdr.item()
        spec = specs[i]
        if task_id != i or not 0 <= widx < self._worker_count():
            raise WorkerException(
                f"slot {slot} (walker {spec.walker_idx}, cycle {spec.cycle_idx}): its header says task {task_id} "
                f"of worker {widx}; the segment is corrupt", worker_idx=widx, pid=pid,
                walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx)
        target, into = self._result_blocks[i], self._input_blocks[i]
        if into is not None:
            inp = into.array
        regions = (inp, out) if target is None else (inp, out, target.array)
        if status == STATUS_NO_ARENA:  # it ran nothing and lost nothing: send it again, copied in
            try:
                message = read_failure(regions[OUT_REGION]).exc_message
            except (ValueError, TypeError, IndexError, KeyError, AttributeError, pickle.UnpicklingError, EOFError):
                message = "it could not map the result arena"
            if self._refer:
                logger.warning("worker %d (pid %d): %s; walkers are copied into the slots from now on, and the "
                               "arena is replaced after this cycle", widx, pid, message)
            self._refer = False  # for this init: a worker that cannot map one arena may not map the next
            self._arena_unmappable = True
            self._input_blocks[i] = None
            self._encoded[i] = encode_call(self._registry, spec.args, spec.kwargs, region=IN_REGION,
                                           where=f"walker {spec.walker_idx} (cycle {spec.cycle_idx})")
            return True
        self._served.add(pid)  # past its first segment (what its timeout allows)
        self._active_at[pid] = max(self._active_at.get(pid, 0), t1)
        self._worker_segment_times[widx].append(max(0, t1 - t0) * 1e-9)
        try:
            if status == STATUS_CORRUPT:
                failure = read_failure(regions[OUT_REGION])
                raise ValueError(f"the worker could not read the walker from its input region "
                                 f"({failure.exc_type}: {failure.exc_message})")
            if status == STATUS_FAILED:
                failure = read_failure(regions[OUT_REGION])
            elif status == STATUS_OVERFLOW:
                overflow.append((i, out_nbytes))
                return False
            elif status == STATUS_OK:
                out_args, _ = decode_call(self._registry, read_descriptor(regions[OUT_REGION]), regions,
                                          copy=not self.zero_copy, readonly=True, pool=self._blocks,
                                          owned_input=into is not None)
                results[i] = out_args[0]
                return False
            else:
                raise ValueError(f"unknown status {status}")
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, pickle.UnpicklingError, EOFError) as exc:
            where = f"slot {slot} (walker {spec.walker_idx}, cycle {spec.cycle_idx}) from worker {widx} (pid {pid})"
            raise WorkerException(f"{where}: {exc}; the segment is corrupt", worker_idx=widx, pid=pid,
                                  walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx) from exc
        attempts.failed(i, failure, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx, worker_idx=widx, pid=pid)
        return True

    def _copy_out(self, slot: int, i: int, results: list) -> None:
        """Replace task ``i``'s zero-copy result by a copy, so its slot can take another walker."""
        _, inp, out = self._views[slot]
        out_args, _ = decode_call(self._registry, read_descriptor(out), (inp, out), copy=True, readonly=True,
                                  pool=self._blocks)
        results[i] = out_args[0]

    def _dead_workers(self, in_flight: dict[int, int], queued_at: list[int]) -> list[WorkerProcess]:
        """Workers whose process ended; first kill any that kept a walker past its timeout."""
        assert self._pool is not None
        busy, oldest = self._kill_overtime(in_flight, queued_at)
        if oldest is not None:
            hdr = self._segment.ring.header_view(oldest)
            self._kill_stalled(self._pool.workers, busy, queued_at[oldest],
                               f"took no walker within its {{:.3g}} s timeout while walker {int(hdr['walker_idx'])} "
                               f"of cycle {int(hdr['cycle'])} waited in the ready ring")
        workers = self._pool.workers
        ready = wait([w.sentinel for w in workers], timeout=0)
        return [w for w in workers if w.sentinel in ready]

    def _kill_overtime(self, in_flight: dict[int, int], queued_at: list[int] | None = None
                       ) -> tuple[set[int], int | None]:
        """Kill every worker still running a walker past its ``task_timeout`` (``first_task_timeout``).

        Returns the pids running a walker, and the slot of the walker that has waited longest for
        a worker to take it (by ``queued_at``, per slot when it was pushed; None: none waits).
        """
        busy: set[int] = set()
        oldest: int | None = None
        if not in_flight or (self.policy.task_timeout is None and self.policy.first_task_timeout is None):
            return busy, oldest
        workers = self._pool.workers
        ring = self._segment.ring
        now = now_ns()
        for slot in in_flight:
            hdr = ring.header_view(slot)
            pid, t0, t1 = int(hdr["worker_pid"]), int(hdr["t_start_ns"]), int(hdr["t_end_ns"])
            if not pid or not t0:  # not claimed yet: it waits in the ready ring
                if queued_at is not None and (oldest is None or queued_at[slot] < queued_at[oldest]):
                    oldest = slot
                continue
            if self._active_at.get(pid, 0) < max(t0, t1):
                self._active_at[pid] = max(t0, t1)
            if t1:  # finished and waiting to be collected
                continue
            busy.add(pid)
            limit = self.policy.timeout_for(first_segment=pid not in self._served)
            if limit is not None and now - t0 > limit * 1e9 and pid not in self._timed_out:
                w = next((w for w in workers if w.pid == pid), None)
                if w is not None:
                    logger.error("%s ran walker %d of cycle %d past its %.3g s timeout; killing it",
                                 w.describe(), int(hdr["walker_idx"]), int(hdr["cycle"]), limit)
                    self._timed_out[pid] = limit
                    w.process.kill()
                    w.process.join(1.0)
        return busy, oldest

    def _kill_stalled(self, workers: list[WorkerProcess], busy: set[int], since: int, doing: str) -> None:
        """Kill each of ``workers`` that, running no walker, has done nothing for its whole timeout although
        it had something to do from ``since`` (``now_ns``): a walker to take, or a closed ring to leave
        (``doing`` says which, its ``{}`` the timeout, for the log).

        A live worker that runs no walker sleeps in the ready ring and takes a walker (or leaves a
        closed ring) at once; one that did neither for as long as a walker may run is frozen
        (SIGSTOP, a cgroup freeze) or stuck, and would keep the walkers waiting for ever. It is
        killed at the deadline `WorkerMapper` gives a walker it hands a worker, and what it kept
        waiting runs on the others and its replacement, uncharged (it held no walker).
        """
        now = now_ns()
        for w in workers:
            if w.pid in busy or w.pid in self._timed_out:
                continue
            limit = self.policy.timeout_for(first_segment=w.pid not in self._served)
            if limit is None or now - max(since, self._active_at.get(w.pid, 0)) <= limit * 1e9:
                continue
            logger.error("%s %s (frozen or stuck?); killing it", w.describe(), doing.format(limit))
            self._timed_out[w.pid] = limit
            w.process.kill()
            w.process.join(1.0)

    def _salvage(self, dead: list[WorkerProcess], in_flight, specs, results, overflow, attempts: Attempts) -> list[int]:
        """A worker is gone: stop the ring, let the others finish, keep what completed, re-queue the rest.

        The dead process may have died inside a ring operation, so the segment is abandoned and
        a fresh one made; slot headers (written before each push) say which walkers completed.
        """
        seg = self._segment
        seg.ring.close_ready()
        dead = self._await_detached(dead, in_flight)
        lost: list[int] = []
        for slot, i in sorted(in_flight.items()):
            hdr = seg.ring.header_view(slot)
            if int(hdr["status"]) >= 0 and int(hdr["t_end_ns"]) > 0:
                if self._collect(slot, i, specs, results, overflow, attempts):
                    lost.append(i)
                continue
            pid = int(hdr["worker_pid"])
            if not pid:  # still queued: no worker was left to take it, so it runs again uncharged
                lost.append(i)
                continue
            w = next((w for w in dead if w.pid == pid), None)
            spec = specs[i]
            code = w.exitcode() if w else None
            if pid in self._timed_out:
                reason, timed_out = f"ran past task_timeout ({self._timed_out[pid]:.3g} s) and was killed", True
            else:
                reason, timed_out = f"died: {describe_exitcode(code)}", False
            attempts.lost(i, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx,
                          worker=w.describe() if w else f"worker (pid {pid or 'unknown'})",
                          worker_idx=w.idx if w else -1, pid=pid, exitcode=code, reason=reason, timed_out=timed_out)
            lost.append(i)
        in_flight.clear()
        for w in dead:
            logger.warning("%s is gone (%s); starting a replacement", w.describe(), describe_exitcode(w.exitcode()))
            self._pool.respawn(w)
        return lost

    def _await_detached(self, dead: list[WorkerProcess] = (), in_flight: dict[int, int] | None = None
                        ) -> list[WorkerProcess]:
        """Block until every live worker has left the closed ring; return every worker that died.

        Workers finish the walkers they hold first; ``task_timeout`` still applies to those
        (``in_flight``: slot -> task), so a hung segment cannot hang the wait.
        """
        assert self._pool is not None
        dead = list(dead)
        waiting = {w.conn: w for w in self._pool.workers if w not in dead and w.idx in self._attached}
        self._attached.clear()
        by_sentinel = {w.sentinel: w for w in waiting.values()}
        closed_at = now_ns()
        while waiting:
            ready = wait(list(waiting) + list(by_sentinel), timeout=self.liveness_interval)
            if not ready:
                busy, _ = self._kill_overtime(in_flight or {})
                self._kill_stalled(list(waiting.values()), busy, closed_at,
                                   "did not leave the closed ready ring within its {:.3g} s timeout")
            for r in ready:
                w = waiting.get(r) or by_sentinel.get(r)
                if w is None or w.conn not in waiting:
                    continue
                try:
                    if r is w.conn:
                        w.conn.recv()
                        del waiting[w.conn]
                        del by_sentinel[w.sentinel]
                        continue
                except (EOFError, OSError):
                    pass
                dead.append(w)
                del waiting[w.conn]
                del by_sentinel[w.sentinel]
        return dead

    def _death(self, w: WorkerProcess, held: tuple[int, int] | None) -> WorkerException:
        code = w.exitcode()
        doing = f"while running walker {held[0]} of cycle {held[1]}" if held else "while idle"
        return WorkerException(
            f"{w.describe()} died {doing}: {describe_exitcode(code)}",
            worker_idx=w.idx, pid=w.pid, exitcode=code,
            walker_idx=held[0] if held else None, cycle_idx=held[1] if held else None,
        )
