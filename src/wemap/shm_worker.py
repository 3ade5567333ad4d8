"""Worker side of `SharedMemWorkerMapper`: serve slots of the segment the manager names.

A worker blocks on its control pipe for ``("attach", name)``, attaches to that segment
(never registering it with the resource tracker: the manager owns it), then pops slot
indices from the ready ring, runs the walker found in the slot's input region (read-only
zero-copy views), writes the result into the slot's output region and pushes the index to
the done ring. When the manager closes the ready ring the worker detaches, says so on the
pipe (the manager may then trust every slot header), and waits for the next segment or
``None`` (stop).

Slot status written before each push: ``STATUS_OK``; ``STATUS_FAILED`` (the segment raised:
a pickled `TaskFailure` in the output region); ``STATUS_OVERFLOW`` (the result needs more
bytes than the region, given in ``out_nbytes``); ``STATUS_CORRUPT`` (the input could not be
read: the transport, not the segment function, is at fault); ``STATUS_NO_ARENA`` (the walker's
arrays are referenced in the result arena, which this worker could not map: the manager
sends it again copied into the slot).
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ._ring import RingClosed, data_address, now_ns
from .codec import (
    DATA_START,
    ARENA_REGION,
    IN_REGION,
    OUT_REGION,
    RESULT_REGION,
    CallLayout,
    Codec,
    CodecRegistry,
    decode_call,
    encode_call,
    read_descriptor,
    read_input_block,
    read_target,
    write_call,
    write_split,
)
from .pool import control_messages
from .result_arena import ArenaMaps
from .segment import Segment
from .worker import Task, TaskFailure, Worker, run_timed

__all__ = ["ring_loop", "serve_segment", "read_failure", "STATUS_OK", "STATUS_FAILED", "STATUS_OVERFLOW",
           "STATUS_CORRUPT", "STATUS_NO_ARENA"]

STATUS_OK, STATUS_FAILED, STATUS_OVERFLOW, STATUS_CORRUPT, STATUS_NO_ARENA = 0, 1, 2, 3, 4

logger = logging.getLogger(__name__)


def _region_ref(regions: tuple[np.ndarray, np.ndarray]) -> Callable[[np.ndarray], tuple[int, int] | None]:
    """Find arrays that already live in this slot (no-op or in-place segments) so they are not copied."""
    bounds = [(data_address(r), r.nbytes) for r in regions]

    def ref(arr: np.ndarray) -> tuple[int, int] | None:
        if not arr.flags.c_contiguous:
            return None
        addr = data_address(arr)
        for region, (base, size) in enumerate(bounds):
            if base <= addr and addr + arr.nbytes <= base + size and (addr - base) % 64 == 0:
                return region, addr - base
        return None

    return ref


_NO_REGION = np.empty(0, dtype=np.uint8)  # a region index a descriptor may not use


class _NoArena(Exception):
    """The walker's arrays are in a result arena this worker cannot map."""


def _arena_of(target, arenas: ArenaMaps, what: str) -> np.ndarray:
    """All of the arena the slot's result block is in, mapped here; ``_NoArena`` when it cannot be
    (the name gone, no memory, no file descriptors: the manager sends the walker copied into the slot)."""
    if target is None:
        raise ValueError(f"the walker {what} the result arena but its slot names none")
    try:
        return arenas.whole(target[0])
    except OSError as exc:
        raise _NoArena(f"cannot map result arena {target[0]}: {type(exc).__name__}: {exc}") from exc


def _input_regions(layout: CallLayout, regions: tuple, target, arenas: ArenaMaps) -> tuple:
    """The regions a walker's input may refer to: the slot's, and the result arena when its
    arrays are earlier results fed back by reference (mapped only then)."""
    if ARENA_REGION not in layout.regions:
        return regions
    return (*regions, _NO_REGION, _arena_of(target, arenas, "refers to"))


def _walker_regions(slot_regions: tuple, slot_ref, target, arenas: ArenaMaps) -> tuple[tuple, Callable]:
    """The walker's input and output regions, and the no-copy lookup over them: the slot's, or,
    when the manager wrote the walker into an input block of the arena, that block and the slot's
    output region (a result array still in its input then stays where it is, for the manager to hand out)."""
    inblock = read_input_block(slot_regions[IN_REGION])
    if inblock is None:
        return slot_regions, slot_ref
    whole = _arena_of(target, arenas, "is in an input block of")
    offset, size = inblock
    if offset + size > whole.nbytes:
        raise ValueError(f"input block ({offset}, {size} bytes) lies outside arena {target[0]} ({whole.nbytes} bytes)")
    regions = (whole[offset : offset + size], slot_regions[OUT_REGION])
    return regions, _region_ref(regions)


def _fit_failure(failure: TaskFailure, room: int) -> bytes:
    """Pickle ``failure`` in at most ``room`` bytes: trim the traceback (keeping its end) first, then the message."""
    data = pickle.dumps(failure)
    tb, msg, keep = failure.traceback, failure.exc_message, len(failure.exc_message)
    while len(data) > room:
        if tb:
            tb = tb[len(tb) // 2 :] if len(tb) > 64 else ""
        elif keep > 0:
            keep //= 2
        else:
            raise ValueError(f"a {failure.exc_type} report does not fit the {room}-byte output region")
        short = msg if keep == len(msg) else msg[:keep] + f" ... ({len(msg) - keep} more characters cut to fit the slot)"
        data = pickle.dumps(dataclasses.replace(failure, exc_message=short, traceback=tb))
    return data


def _write_failure(out: np.ndarray, failure: TaskFailure) -> int:
    data = _fit_failure(failure, out.nbytes - 8)
    out[:8] = np.frombuffer(len(data).to_bytes(8, "little"), dtype=np.uint8)
    out[8 : 8 + len(data)] = np.frombuffer(data, dtype=np.uint8)
    return 8 + len(data)


def read_failure(out: np.ndarray) -> TaskFailure:
    n = int.from_bytes(out[:8].tobytes(), "little")
    return pickle.loads(out[8 : 8 + n])


def _write_result(reg: CodecRegistry, result: Any, where: str, regions, local_ref, target, arenas: ArenaMaps):
    """Write ``result``: arrays into its result block when it has one that holds them, else into the
    output region. Returns (status, bytes used in the output region or needed there)."""
    out = regions[OUT_REGION]
    block = None
    if target is not None:
        try:
            block = arenas.block(*target)
        except (OSError, ValueError) as exc:  # the transport's problem: the output region still works
            logger.warning("cannot write %s into result block %s: %s; using the slot's output region", where, target, exc)
    if block is not None:
        # arrays still in the slot (a no-op, an in-place runner) are referenced there, not copied:
        # the manager's one copy out of the slot is then the only copy, as without a block
        enc = encode_call(reg, (result,), {}, where=where, region=RESULT_REGION, local_ref=local_ref, start=0)
        if enc.data_end <= block.nbytes and DATA_START + len(enc.descriptor) <= out.nbytes:
            write_split(enc, block, out)
            return STATUS_OK, DATA_START + len(enc.descriptor)
    enc = encode_call(reg, (result,), {}, where=where, region=OUT_REGION, local_ref=local_ref)
    if enc.nbytes > out.nbytes:
        return STATUS_OVERFLOW, enc.nbytes
    write_call(enc, out)
    return STATUS_OK, enc.nbytes


def serve_segment(
    worker: Worker,
    seg: Segment,
    segment_func: Callable[..., Any],
    reg: CodecRegistry,
    retry_on: tuple[type[BaseException], ...] = (),
    arenas: ArenaMaps | None = None,
) -> None:
    """Worker side: pop a slot, run its walker, write the result, push it back, until the ring closes."""
    arenas = arenas if arenas is not None else ArenaMaps()

    ring = seg.ring
    views = []
    for k in range(ring.nslots):  # per slot, once per segment: its views and its no-copy lookup
        regions = (ring.input_view(k), ring.output_view(k))
        views.append((ring.header_view(k), regions, _region_ref(regions)))
    while True:
        try:
            slot = ring.pop_ready(None)
        except RingClosed:
            return
        if slot is None:
            continue
        hdr, slot_regions, slot_ref = views[slot]
        regions, local_ref = slot_regions, slot_ref
        hdr["worker_idx"] = worker.worker_idx
        hdr["worker_pid"] = worker.pid  # the claim: the manager's timeout and loss checks read it
        hdr["t_start_ns"] = now_ns()
        hdr["t_end_ns"] = 0
        out = regions[OUT_REGION]
        unreadable, target = None, None  # the status of an input the worker could not read
        try:
            target = read_target(slot_regions[IN_REGION])
            regions, local_ref = _walker_regions(slot_regions, slot_ref, target, arenas)
            desc = read_descriptor(regions[IN_REGION])
            layout = reg.layout(desc.layout)  # parsed once here (a layout into the arena is not kept)
            args, kwargs = decode_call(reg, desc, _input_regions(layout, regions, target, arenas), copy=False,
                                       readonly=True, layout=layout)
        except Exception as exc:  # the transport, not the segment function, is at fault
            now = now_ns()  # a finished slot, for a salvage that reads the headers
            ok, result, t0, t1 = False, TaskFailure.capture(exc), now, now
            unreadable = STATUS_NO_ARENA if isinstance(exc, _NoArena) else STATUS_CORRUPT
            if unreadable == STATUS_NO_ARENA:
                logger.warning("%s", exc)
        else:
            ok, result, _, t0, t1 = run_timed(worker, Task(segment_func, *args, **kwargs), retry_on)
            del args, kwargs
        status = STATUS_OK
        if ok:
            try:
                status, nbytes = _write_result(reg, result, f"result of walker {int(hdr['walker_idx'])}", regions,
                                               local_ref, target, arenas)
            except Exception as exc:  # the result itself can't be carried: the segment's problem
                status, nbytes = STATUS_FAILED, _write_failure(out, TaskFailure.capture(exc))
        else:
            status, nbytes = unreadable if unreadable is not None else STATUS_FAILED, _write_failure(out, result)
        del result
        hdr["status"] = status
        hdr["out_nbytes"] = nbytes
        hdr["t_start_ns"] = t0
        hdr["t_end_ns"] = t1
        ring.push_done(slot)


def ring_loop(
    worker: Worker,
    conn: Connection,
    segment_func: Callable[..., Any],
    codecs: tuple[Codec, ...],
    retry_on: tuple[type[BaseException], ...] = (),
) -> None:
    """Worker process main loop: attach to each segment the manager names, serve it, detach."""
    reg = CodecRegistry(codecs)
    arenas = ArenaMaps()
    try:
        for _, name in control_messages(conn):
            try:
                seg = Segment.attach(name)
            except FileNotFoundError:  # renewed before this worker got to it: the next message names the new one
                conn.send(("detached", name))
                continue
            try:
                serve_segment(worker, seg, segment_func, reg, retry_on, arenas)
            finally:
                seg.close()
                arenas.close()  # the manager may retire its arena next: hold none of its pages
            conn.send(("detached", name))  # the manager may now trust every slot header it reads
    finally:
        arenas.close()
