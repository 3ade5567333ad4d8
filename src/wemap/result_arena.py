"""Shared memory for result walkers, written by the workers, owned by whoever keeps the results.

Copying every result out of its slot is the manager's largest cost after the copy in, and
it is serial: one manager, many workers. So the manager hands each walker a *result block*
of a shared-memory arena; the worker writes the result's arrays straight into it (the one
copy a result gets, done by the workers in parallel), and the manager returns views of the
block. The views are the caller's: writable, valid for as long as they are referenced.

A block is handed out again only when nothing refers to any array of it (each block is a
`wemap.memcopy.ReusableMemory`, as `BlockPool`'s are). Results fed back into the next
`map` (what a WE loop does with its walkers, clones included) are already in shared memory:
their arrays go to the workers by reference (`ResultArena.ref`), not copied into a slot, so
such a cycle copies each walker once, when a worker writes its result. The caller holds the
walkers it passes to `map`, which keeps their blocks from being handed out meanwhile.
Other walkers are written by the manager into an *input block* instead of their slot, so a
result array the segment hands back unchanged (a no-op) is already in a block the caller can
have: nobody copies it out. The arena holds three blocks a walker: the input block, the result
block, and the result of the cycle before, which the caller may still hold while it maps the
next; blocks it lacks are the slots' work (copies). A retired arena
(outgrown, or its mapper cleaned up) loses its name at once and its memory when the last
view of it goes.

Arena names follow the segments' (``wemap_<pid>_<16 hex>``), so the stale-segment sweep and
the resource tracker clean up after a manager that died.
"""

from __future__ import annotations

import logging
import mmap
import sys
from multiprocessing.shared_memory import SharedMemory
from typing import NamedTuple

import numpy as np

from ._ring import data_address
from .codec import ARENA_REGION, TARGET_NAME_MAX, pack_input_block, pack_target
from .memcopy import ReusableMemory, idle_from
from .segment import _discard, _open_untracked, close_or_hand_over, create_reserved, unlink_owned

__all__ = ["ResultArena", "ArenaMaps", "ArenaBlock"]

logger = logging.getLogger(__name__)

#: madvise advice that maps every page of a shared mapping at once (Linux 5.14; EINVAL before)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None)


def _populate(shm: SharedMemory) -> None:
    """Map all of an arena into this process now, not a page fault at a time over its first cycles.

    Results land in whichever block is idle and inputs are read from where the last cycle put
    them, so without this every worker faults in every page of the arena by and by, and the
    first several cycles of a run are slower (bench/README.md). The manager, which writes
    walkers into the blocks and hands the results out, maps it at once too: at 10k atoms it
    otherwise took about 940 page faults a cycle for the first cycles after the arena was made.
    """
    if _MADV_POPULATE_WRITE is None:
        return
    try:
        shm._mmap.madvise(_MADV_POPULATE_WRITE)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError) as exc:  # an older kernel: faults as before
        logger.debug("cannot populate arena %s: %s", shm.name, exc)

class ArenaBlock(NamedTuple):
    """A block handed out for one walker: its memory, and the input-region fields that name it
    as the walker's result block (`wemap.codec.pack_target`) or as its input block
    (`wemap.codec.pack_input_block`)."""

    array: np.ndarray
    target: bytes
    pointer: bytes


class ResultArena:
    """Manager side: ``nblocks`` blocks of ``block_size`` bytes in one shared-memory segment."""

    def __init__(self, nblocks: int, block_size: int, *, shm_dir: str = "/dev/shm") -> None:
        """Create and reserve the arena; `ShmSpaceError` (leaving nothing behind) when it does not fit."""
        if nblocks <= 0 or block_size <= 0:
            raise ValueError(f"a result arena needs blocks: got {nblocks} blocks of {block_size} bytes")
        block_size = (block_size + 4095) & ~4095  # page-aligned blocks: no false sharing between workers
        size = nblocks * block_size
        shm = create_reserved(size, f"the result arena ({nblocks} blocks of {block_size:,} bytes)", shm_dir)
        name = shm.name
        assert len(name.encode()) <= TARGET_NAME_MAX, name
        try:
            _populate(shm)  # a fraction of a second for a GiB: an interrupt may land meanwhile
        except BaseException:
            _discard(shm)
            raise
        self._shm: SharedMemory | None = shm
        self.name = name
        self.block_size = block_size
        self.nblocks = nblocks
        self.size = size
        mem = shm.buf
        self._base = data_address(mem)
        self._blocks = [ReusableMemory(mem[k * block_size : (k + 1) * block_size]) for k in range(nblocks)]
        self._targets = [pack_target(name, k * block_size, block_size) for k in range(nblocks)]
        self._pointers = [pack_input_block(k * block_size, block_size) for k in range(nblocks)]
        self._next = 0  # where the next take starts looking
        del mem
        logger.debug("result arena %s: %d blocks x %d bytes", name, nblocks, block_size)

    def take(self, n: int) -> list[ArenaBlock | None]:
        """``n`` idle blocks, each with the input-region fields naming it; None for those past the last idle one.

        One pass over the blocks (`wemap.memcopy.idle_from`), from where the last call stopped.
        The caller holds the returned blocks while the cycle runs, which keeps them from being
        handed out twice.
        """
        taken: list[ArenaBlock | None] = []
        if n > 0:
            blocks, targets, pointers, make = self._blocks, self._targets, self._pointers, tuple.__new__
            for k in idle_from(blocks, self._next):
                # tuple.__new__: the NamedTuple's own __new__ is interpreted Python, twice the cost
                taken.append(make(ArenaBlock, (blocks[k].hand_out(), targets[k], pointers[k])))
                self._next = k + 1
                if len(taken) == n:
                    break
        return taken + [None] * (n - len(taken))

    def holds(self, arr: np.ndarray) -> bool:
        """Whether ``arr``'s data lies in this arena."""
        addr = data_address(arr)
        return self._base <= addr < self._base + self.size

    def holds_any(self, arrays: list[np.ndarray]) -> bool:
        """Whether the data of any of ``arrays`` lies in this arena."""
        base = self._base
        end = base + self.size
        for arr in arrays:
            if base <= data_address(arr) < end:
                return True
        return False

    def ref(self, arr: np.ndarray) -> tuple[int, int] | None:
        """``(ARENA_REGION, offset)`` for a contiguous array wholly inside this live arena, else None
        (a `wemap.codec.encode_call` ``local_ref``: such an array is referenced, not copied)."""
        if self._shm is None or not arr.flags.c_contiguous:
            return None
        offset = data_address(arr) - self._base
        if 0 <= offset and offset + arr.nbytes <= self.size:
            return ARENA_REGION, offset
        return None

    def in_use(self) -> int:
        """How many blocks something still refers to."""
        return sum(not b.idle() for b in self._blocks)

    def any_in_use(self) -> bool:
        """Whether something still refers to any block (stops at the first: in a WE loop, at once)."""
        for b in self._blocks:
            if not b.idle():
                return True
        return False

    def retire(self) -> None:
        """Remove the name now; the memory goes with the last view of it. Idempotent."""
        shm, self._shm = self._shm, None
        if shm is None:
            return
        self._blocks, self._targets, self._pointers = [], [], []
        unlink_owned(shm)
        close_or_hand_over(shm)  # results still using it keep the mapping until they go
        logger.debug("result arena %s retired", self.name)

    def __repr__(self) -> str:
        state = "retired" if self._shm is None else f"{self.in_use()} in use"
        return f"<ResultArena {self.name} {self.nblocks} x {self.block_size} bytes, {state}>"


class ArenaMaps:
    """Worker side: the arena this worker writes results into, attached once, untracked.

    The manager uses one arena at a time, so a worker keeps only the one it last wrote into
    and drops the others (a retired arena's memory is freed only once no process maps it);
    `close` drops them all, as a worker does whenever it leaves a segment.
    """

    KEEP = 1

    def __init__(self) -> None:
        self._maps: dict[str, tuple[SharedMemory, np.ndarray]] = {}

    def whole(self, name: str) -> np.ndarray:
        """A uint8 view of all of arena ``name``, mapped here once (inputs referenced in it are read from it)."""
        entry = self._maps.get(name)
        if entry is None:
            shm = _open_untracked(name)
            _populate(shm)
            entry = (shm, np.frombuffer(shm.buf, dtype=np.uint8))
            self._maps[name] = entry
            while len(self._maps) > self.KEEP:
                self._drop(next(iter(self._maps)))
        return entry[1]

    def block(self, name: str, offset: int, size: int) -> np.ndarray:
        """A writable uint8 view of ``size`` bytes at ``offset`` of arena ``name``."""
        buf = self.whole(name)
        if offset + size > buf.nbytes:
            raise ValueError(f"result block ({offset}, {size} bytes) lies outside arena {name} ({buf.nbytes} bytes)")
        return buf[offset : offset + size]

    def _drop(self, name: str) -> None:
        shm, buf = self._maps.pop(name)
        del buf  # our own view would keep the mapping exported
        if not close_or_hand_over(shm):  # the fd goes now, the mapping with the last view
            logger.debug("arena %s still has views in this worker", name)

    def close(self) -> None:
        for name in list(self._maps):
            self._drop(name)
