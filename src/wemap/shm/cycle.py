"""One ``map`` call of `SharedMemWorkerMapper`: its walkers encoded, written, pushed, collected.

Walker ``i`` of the call uses slot ``i`` (the ring has a slot per walker: a slot holds only a
descriptor). Its arrays that are not in the arena yet are copied into an input block, once;
a fresh result block is handed to the worker; the result comes back as views of the blocks it
lies in (its result block, or its input's, for arrays the segment handed back unchanged).
A walker whose worker is lost runs again, from the same input; a result that did not fit its
block came whole over the worker's pipe, and the next ``map`` has room for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._arrays import Placement
from .._ring import now_ns
from ..errors import WorkerException
from ..faults import Attempts
from ..mapper import TaskSpec
from ..memcopy import write_arrays
from ..slot_format import NO_BLOCK, dtype_description, pack_into, packed_size, unpack, values
from .calls import decode_call, encode_call
from .worker_loop import STATUS_CORRUPT, STATUS_FAILED, STATUS_OK, STATUS_PIPED

if TYPE_CHECKING:
    from ..worker_process import WorkerProcess
    from .transport import Transport

__all__ = ["Cycle"]

RETRY = "retry"


class Cycle:
    """The walkers of one ``map`` call on their way through shared memory."""

    def __init__(self, transport: Transport, specs: list[TaskSpec], segment_times: dict[int, list[float]]) -> None:
        n = len(specs)
        self.m, self.specs, self.times = transport, specs, segment_times
        self.results: list[Any] = [None] * n
        self.encoded: list[Placement | None] = [None] * n
        self.inputs: list[tuple[int, np.ndarray] | None] = [None] * n  # (block, its array): the copy in
        self.outputs: list[tuple[int, np.ndarray] | None] = [None] * n  # (block, its array): for the result
        self.written = [False] * n  # its input block holds its arrays
        self.attempts = Attempts(transport.policy)
        self.in_flight: set[int] = set()
        self.pushed_at: dict[int, int] = {}
        self.piped: list[tuple[int, int, int]] = []  # (task, block bytes, descriptor bytes) a result needed
        self.broken: str | None = None  # why a worker could not map the arena

    def run(self) -> list[Any]:
        todo = list(range(len(self.specs)))
        while todo:
            self.prepare(todo)
            todo = self.stream(todo)
        if self.piped:
            self.m.outgrown(max(b for _, b, _ in self.piped), max(d for _, _, d in self.piped),
                            [self.specs[i] for i, _, _ in self.piped])
        return self.results

    # -- before the walkers go ---------------------------------------------------------------
    def encode(self, i: int) -> Placement:
        spec = self.specs[i]
        arena = self.m.arena
        return encode_call(self.m.layouts, self.m.registry, spec.args, spec.kwargs,
                           where=f"walker {spec.walker_idx} (cycle {spec.cycle_idx})",
                           place=arena.placement() if arena is not None else Placement(dtype_description))

    def prepare(self, todo: list[int]) -> None:
        """Encode ``todo`` (every walker checked before anything is written), then fit the arena and ring to it."""
        m, n = self.m, len(self.specs)
        m.replace_dead_idle_workers(self)
        if self.broken is not None:
            m.arena_broken(self.broken)
            self.broken = None
        while True:
            for i in todo:
                self.encoded[i] = self.encode(i)
            size = max(m.min_block, max(max(e.copy_bytes, e.array_bytes) for e in self._encoded(todo)))
            want = [i for i in todo if self.outputs[i] is None]
            want += [i for i in todo if self.inputs[i] is None and self.encoded[i].copies]  # type: ignore[union-attr]
            arena = m.arena
            if arena is not None and size <= arena.block_size:
                blocks = arena.take(len(want))
                if len(blocks) == len(want):
                    break
                del blocks
            # no arena yet, or one too small or too full: a new one, and every walker laid out again in it
            self.inputs, self.outputs, self.written = [None] * n, [None] * n, [False] * n
            m.new_arena(max(3 * n, 2 * len(todo)), max(size, arena.block_size if arena is not None else 0))
        for i, block in zip(want, blocks):
            if self.outputs[i] is None:
                self.outputs[i] = block
            else:
                self.inputs[i] = block
        need = max(packed_size(len(e.refs) + 1, e.layout, e.values) for e in self._encoded(todo))
        m.fit_ring(n, need)

    def _encoded(self, todo: list[int]) -> list[Placement]:
        return [e for e in (self.encoded[i] for i in todo) if e is not None]

    # -- on their way ------------------------------------------------------------------------
    def push(self, i: int) -> None:
        m, enc, spec = self.m, self.encoded[i], self.specs[i]
        assert enc is not None and self.outputs[i] is not None
        inp = self.inputs[i]
        if inp is not None and not self.written[i]:
            write_arrays(inp[1], enc.offsets, enc.copies, enc.largest)
            self.written[i] = True
        hdr, region, _ = m.views[i]
        pack_into(region, [inp[0] if inp is not None else NO_BLOCK, *enc.refs], enc.layout, enc.values,
                  len(enc.extras), self.outputs[i][0])
        hdr.reset(i, spec.cycle_idx & 0xFFFF_FFFF_FFFF_FFFF, spec.walker_idx)
        self.in_flight.add(i)
        self.pushed_at[i] = now_ns()
        m.recovery.pushed(self.pushed_at[i])
        m.ring.push_ready(i)

    def stream(self, todo: list[int]) -> list[int]:
        """Push ``todo`` and collect every result; returns the walkers lost with a worker (to run again)."""
        m = self.m
        ring, watcher = m.ring, m.watcher
        for i in todo:
            self.push(i)
        m.recovery.rescan(self)
        while self.in_flight:
            epoch = ring.done_epoch()  # an interrupt after this ends the wait below at once
            if watcher.pending:
                dead = self.events()
                if dead or self.broken is not None:
                    return m.recovery.salvage(self, dead)
                continue
            slot = ring.pop_done(None, epoch)
            if slot is None:
                continue
            if slot not in self.in_flight:
                raise WorkerException(f"a worker returned slot {slot}, which held no walker: the ring is corrupt")
            self.in_flight.discard(slot)
            if self.collect(slot) == RETRY:
                self.push(slot)
        watcher.set_deadline(None)
        return []

    def events(self) -> list[WorkerProcess]:
        """What woke the watcher: the workers that died; pipes read, and timeouts checked when the
        deadline passed or a worker died (a message alone changes no deadline: see `Recovery`)."""
        m = self.m
        fds, timer = m.watcher.take()
        dead = [w for w in m.pool_workers() if not w.process.is_alive()]
        for w in m.pool_workers():
            if w in dead or w.conn.fileno() not in fds:
                continue
            try:
                m.drain(w, self)
            except (EOFError, OSError):
                dead.append(w)
                continue
            m.watcher.rearm([w.conn.fileno()])
        reasons = [r for r in m.detached.values() if r]
        if reasons:
            self.broken = reasons[0]
        if timer or dead or m.recovery.overdue():
            m.recovery.rescan(self)
        return dead + [w for w in m.pool_workers() if w not in dead and not w.process.is_alive()]

    # -- back --------------------------------------------------------------------------------
    def collect(self, i: int) -> str | None:
        """Take walker ``i``'s finished slot: None, or `RETRY` (``retry_on``)."""
        m, spec = self.m, self.specs[i]
        hdr = m.views[i][0]
        task, widx, pid, status = hdr.task_id, hdr.worker_idx, hdr.worker_pid, hdr.status
        t0, t1 = hdr.t_start_ns, hdr.t_end_ns
        if task != i or not 0 <= widx < m.worker_count():
            raise WorkerException(f"slot {i} (walker {spec.walker_idx}, cycle {spec.cycle_idx}): its header says task "
                                  f"{task} of worker {widx}; the segment is corrupt", worker_idx=widx, pid=pid,
                                  walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx)
        m.recovery.finished(widx, pid, t1)
        self.times[widx].append(max(0, t1 - t0) * 1e-9)
        try:
            if status == STATUS_OK or status == STATUS_PIPED:
                extras = m.message(widx, "result", i, self)[2] if hdr.flags else []
                self.results[i] = self.decode_result(i, extras)
                if status == STATUS_PIPED:
                    self.piped.append((i, hdr.out_nbytes, hdr.in_nbytes))
                return None
            if status not in (STATUS_FAILED, STATUS_CORRUPT):
                raise ValueError(f"unknown status {status}")
            failure = m.message(widx, "failed", i, self)[2]
        except (ValueError, TypeError, IndexError, KeyError, EOFError, OSError) as exc:
            raise WorkerException(f"{_where(i, spec, widx, pid)}: {exc}; the segment is corrupt", worker_idx=widx,
                                  pid=pid, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx) from exc
        if status == STATUS_CORRUPT:
            raise WorkerException(f"{_where(i, spec, widx, pid)}: the worker could not read the walker from its "
                                  f"descriptor ({failure.exc_type}: {failure.exc_message}); the segment is corrupt",
                                  worker_idx=widx, pid=pid, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx)
        self.attempts.failed(i, failure, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx, worker_idx=widx, pid=pid)
        return RETRY

    def decode_result(self, i: int, extras: list) -> Any:
        """The result in slot ``i``'s output region, as views of the blocks it may lie in (checked)."""
        m = self.m
        _, blocks, layout, raw, n_extras = unpack(m.views[i][2], m.layouts, m.arena.nblocks)
        if n_extras != len(extras):
            raise ValueError(f"its result has {n_extras} extras, {len(extras)} came over the pipe")
        own = {self.outputs[i][0]: self.outputs[i][1]}  # type: ignore[index]
        if self.inputs[i] is not None:
            own[self.inputs[i][0]] = self.inputs[i][1]  # type: ignore[index]
        for b in self.encoded[i].refs:  # type: ignore[union-attr]
            held = m.arena.handed(b)
            if held is not None:
                own[b] = held
        bases = []
        for b in blocks:
            if b == NO_BLOCK:
                bases.append(None)
            elif b in own:
                bases.append((own[b], 0))
            else:
                raise ValueError(f"its result refers to block {b}, which is neither its result block nor its input's")
        args, _ = decode_call(layout, values(raw, layout, extras), bases)
        if len(args) != 1:
            raise ValueError(f"its result descriptor holds {len(args)} values, not one")
        return args[0]


def _where(i: int, spec: TaskSpec, widx: int, pid: int) -> str:
    return f"slot {i} (walker {spec.walker_idx}, cycle {spec.cycle_idx}) from worker {widx} (pid {pid})"
