"""Worker side of `SharedMemWorkerMapper`: serve the slots of the ring the manager names.

A worker blocks on its control pipe for ``("attach", ring, arena, nblocks, block_size)``,
attaches to both (never registering them with the resource tracker: the manager owns them),
then pops slot numbers from the ready ring. For each it reads the walker's descriptor, asks
the manager over the pipe for the call's extras if it has any, runs the segment on read-only
views of the walker's arrays, writes the result's new arrays into the walker's result block
(arrays it left in its input stay where they are), the result's descriptor into the slot's
output region, sends the result's extras or the failure over the pipe, and only then pushes
the slot to the done ring: a slot the manager pops has everything it needs. When the ready
ring is closed the worker says ``("detached", ring, None)`` (the manager may then trust every
slot header) and waits for the next ring or ``None`` (stop). A worker that cannot map the
arena says ``("detached", ring, reason)`` at once and serves nothing.

Slot status: `STATUS_OK`; `STATUS_FAILED` (the segment raised, or its result cannot be carried:
a `TaskFailure` follows on the pipe); `STATUS_PIPED` (the result needs ``out_nbytes`` bytes of
block or ``in_nbytes`` of descriptor, more than it has: it came whole over the pipe, as the
descriptor's one extra, and the manager makes room for the next ``map``; a segment never runs
twice for want of room); `STATUS_CORRUPT` (the input could not be read: the transport, not the
segment, is at fault; a `TaskFailure` says why).
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from .._ring import RingClosed, now_ns
from ..arena import ArenaMap
from ..codec import Codec, CodecRegistry
from ..memcopy import write_arrays
from ..pickling import dumps
from ..plain_values import Extra, encode_plain
from ..segment import Segment
from ..slot_format import NO_BLOCK, Layouts, pack_into, packed_size, unpack, values
from ..worker import Task, TaskFailure, Worker, run_timed
from ..worker_process import control_messages
from .calls import SCALAR_ENTRY, decode_call, encode_call

__all__ = ["ring_loop", "STATUS_OK", "STATUS_FAILED", "STATUS_PIPED", "STATUS_CORRUPT"]

STATUS_OK, STATUS_FAILED, STATUS_PIPED, STATUS_CORRUPT = 0, 1, 2, 3
#: the layout key and values of a result that comes whole over the pipe: one value, the descriptor's extra 0
_PIPED_LAYOUT = (1, (), (SCALAR_ENTRY,))
_PIPED_VALUES = encode_plain([Extra(0)], [])


class _Stopped(Exception):
    """The manager said stop while this worker waited for a walker's extras."""


class _Server:
    """Serves one ring and its arena until the ready ring is closed."""

    def __init__(self, worker: Worker, seg: Segment, arena: ArenaMap, conn: Connection,
                 segment_func: Callable[..., Any], reg: CodecRegistry, retry_on: tuple) -> None:
        self.worker, self.seg, self.arena, self.conn = worker, seg, arena, conn
        self.segment_func, self.reg, self.retry_on = segment_func, reg, retry_on
        self.layouts = Layouts(reg.by_name, arena.block_size)

    def extras(self, task: int, n: int) -> list:
        self.conn.send(("extras", task))
        msg = self.conn.recv()
        if msg is None:
            raise _Stopped()
        if type(msg) is not tuple or msg[:2] != ("extras", task) or len(msg[2]) != n:
            raise ValueError(f"the manager sent {msg!r:.100} for the {n} extras of task {task}")
        return msg[2]

    def serve(self) -> None:
        ring, arena = self.seg.ring, self.arena
        readonly, block_size = arena.readonly, arena.block_size
        views = ring.slot_views()
        pid = self.worker.pid
        while True:
            try:
                slot = ring.pop_ready(None)
            except RingClosed:
                return
            if slot is None:
                continue
            hdr, inp, out = views[slot]
            task = hdr.task_id
            hdr.worker_idx = self.worker.worker_idx
            hdr.worker_pid = pid  # the claim: the manager's timeout and loss checks read it
            hdr.t_start_ns = now_ns()
            hdr.t_end_ns = 0
            failure, extras, need = None, [], 0
            try:
                result_block, blocks, layout, raw, n_extras = unpack(inp, self.layouts, arena.nblocks)
                if result_block == NO_BLOCK:
                    raise ValueError("malformed slot descriptor: no result block")
                vals = values(raw, layout, self.extras(task, n_extras) if n_extras else [])
                # read-only views: a walker's input is never written, so it can always be run again
                args, kwargs = decode_call(layout, vals, [None if b == NO_BLOCK else (readonly, b * block_size)
                                                          for b in blocks])
            except _Stopped:
                raise
            except Exception as exc:  # the transport, not the segment function, is at fault
                status, failure = STATUS_CORRUPT, TaskFailure.capture(exc)
                t0 = t1 = now_ns()
            else:
                ok, result, _, t0, t1 = run_timed(self.worker, Task(self.segment_func, *args, **kwargs), self.retry_on)
                del args, kwargs
                if ok:
                    allowed = {b for b in blocks if b != NO_BLOCK}
                    try:
                        status, nbytes, need, extras = self.write_result(result, task, result_block, allowed, out,
                                                                          f"result of walker {hdr.walker_idx}")
                    except Exception as exc:  # the result itself can't be carried: the segment's problem
                        status, failure = STATUS_FAILED, TaskFailure.capture(exc)
                else:
                    status, failure = STATUS_FAILED, result
                del result
            if failure is not None:
                self.conn.send(("failed", task, failure))
                nbytes = 0
            elif extras:
                self.conn.send_bytes(extras)
            hdr.status = status
            hdr.out_nbytes = nbytes
            hdr.in_nbytes = need
            hdr.flags = 1 if extras else 0
            hdr.t_start_ns = t0
            hdr.t_end_ns = t1
            ring.push_done(slot)

    def write_result(self, result: Any, task: int, result_block: int, allowed: set[int], out: np.ndarray, where: str
                     ) -> tuple[int, int, int, bytes]:
        """Result arrays into the result block (those still in the walker's input blocks referenced
        there), its descriptor into ``out``; or, when they do not fit, the whole result over the pipe.
        Returns (status, descriptor bytes or block bytes needed, descriptor bytes needed, the
        pickled extras message or b"")."""
        arena = self.arena
        enc = encode_call(self.layouts, self.reg, (result,), {}, where=where, place=arena.placement(allowed))
        blocks = [result_block, *enc.refs]
        need = packed_size(len(blocks), enc.layout, enc.values)
        if enc.copy_bytes > arena.block_size or need > out.nbytes:
            pack_into(out, [result_block], self.layouts.make(_PIPED_LAYOUT), _PIPED_VALUES, 1)
            return STATUS_PIPED, enc.copy_bytes, need, _pickled(task, [result], where)
        extras = _pickled(task, enc.extras, where) if enc.extras else b""
        write_arrays(arena.block(result_block), enc.offsets, enc.copies, enc.largest)
        return STATUS_OK, pack_into(out, blocks, enc.layout, enc.values, len(enc.extras)), 0, extras


def _pickled(task: int, extras: list, where: str) -> bytes:
    """The pipe message with a result's extras."""
    try:
        return bytes(dumps(("result", task, extras)))  # keeps every array's byte order
    except Exception as exc:
        raise ValueError(f"{where}: a value that is neither an array nor plain cannot be pickled: "
                         f"{type(exc).__name__}: {exc}") from exc


def ring_loop(worker: Worker, conn: Connection, segment_func: Callable[..., Any], codecs: tuple[Codec, ...],
              retry_on: tuple[type[BaseException], ...] = ()) -> None:
    """Worker process main loop: attach to each ring and arena the manager names, serve, detach."""
    reg = CodecRegistry(codecs)
    for msg in control_messages(conn):
        _, ring_name, arena_name, nblocks, block_size = msg
        try:
            seg = Segment.attach(ring_name)
        except FileNotFoundError:  # renewed before this worker got to it: the next message names the new one
            conn.send(("detached", ring_name, None))
            continue
        try:
            try:
                arena = ArenaMap(arena_name, nblocks, block_size)
            except (OSError, ValueError) as exc:  # its name gone, no memory, no file descriptors
                conn.send(("detached", ring_name, f"cannot map arena {arena_name}: {type(exc).__name__}: {exc}"))
                continue
            try:
                _Server(worker, seg, arena, conn, segment_func, reg, retry_on).serve()
            except _Stopped:
                return
            finally:
                arena.close()  # the manager may retire the arena next: hold none of its pages
        finally:
            seg.close()
        conn.send(("detached", ring_name, None))  # the manager may now trust every slot header it reads
