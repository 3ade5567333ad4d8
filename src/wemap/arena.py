"""The arena: blocks of shared memory that hold every walker's arrays, handed out and taken back.

The manager makes one arena (a shared-memory segment named like the ring's) of equal blocks
and hands a block out as a uint8 array: a walker the user made is copied into one, and each
walker gets a fresh one its worker writes the result into. A block is free again once nothing
refers to that array or any view of it (`ReusableMemory`): results handed to the caller are
such views, so the caller owns them for as long as they keep them, and a result fed into the
next ``map`` is found in its block (`Arena.placement`) and sent by reference.

An arena that is outgrown is *retired*: its name goes at once, its memory with the last view
of it; walkers still in it are copied into the new one when they are mapped again. Workers
map the whole arena once (`ArenaMap`) and read and write blocks by number.
"""

from __future__ import annotations

import logging
import mmap
import sys
import weakref
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from ._arrays import Placement, data_address
from .segment import close_or_hand_over, create_reserved, discard, open_untracked, unlink_owned
from .slot_format import dtype_description

__all__ = ["Arena", "ArenaMap", "ReusableMemory", "PAGE"]

logger = logging.getLogger(__name__)

PAGE = 4096
_UINT8 = np.dtype(np.uint8)
#: madvise advice that maps every page of a shared mapping at once (Linux 5.14; EINVAL before)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if sys.platform.startswith("linux") else None)


def populate(shm: SharedMemory) -> None:
    """Map all of an arena into this process now, not a page fault at a time over its first cycles."""
    if _MADV_POPULATE_WRITE is None:
        return
    try:
        shm._mmap.madvise(_MADV_POPULATE_WRITE)  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError) as exc:  # an older kernel: faults as before
        logger.debug("cannot populate arena %s: %s", shm.name, exc)


class ReusableMemory:
    """Memory handed out as a new uint8 array each time, reusable once nothing refers to that array.

    The array is made over a memoryview, so it is not a view of another array and numpy makes
    it the ``base`` of every view carved from it; a weak reference to it dies with the last
    such view.
    """

    __slots__ = ("memory", "_handed")

    def __init__(self, memory: memoryview) -> None:
        self.memory = memory
        self._handed: weakref.ref | None = None

    def idle(self) -> bool:
        return self._handed is None or self._handed() is None

    def handed(self) -> np.ndarray | None:
        """The array last handed out, while something still refers to it."""
        return None if self._handed is None else self._handed()

    def hand_out(self) -> np.ndarray:
        array = np.frombuffer(self.memory, _UINT8)
        self._handed = weakref.ref(array)
        return array


def idle_from(blocks: list[ReusableMemory], start: int) -> Iterator[int]:
    """Indices of the idle ``blocks``, looking from ``start`` round to just before it, once.

    Blocks are handed out in turn, so the ones free again lie just past the last one taken:
    a cycle's takes cost about one check each instead of a scan from the first block.
    """
    count = len(blocks)
    start = start % count if count else 0
    for step in range(count):
        k = start + step
        if k >= count:
            k -= count
        if blocks[k].idle():
            yield k


class Arena:
    """Manager side: ``nblocks`` blocks of ``block_size`` bytes (a multiple of a page) in one segment."""

    def __init__(self, nblocks: int, block_size: int, *, shm_dir: str = "/dev/shm") -> None:
        """Create and reserve the arena; `ShmSpaceError` (leaving nothing behind) when it does not fit."""
        if nblocks <= 0 or block_size <= 0 or block_size % PAGE:
            raise ValueError(f"an arena needs blocks of whole pages: got {nblocks} blocks of {block_size} bytes")
        size = nblocks * block_size
        shm = create_reserved(size, f"the arena ({nblocks} blocks of {block_size:,} bytes)", shm_dir)
        try:
            populate(shm)
        except BaseException:
            discard(shm)
            raise
        self._shm: SharedMemory | None = shm
        self.name = shm.name
        self.block_size = block_size
        self.nblocks = nblocks
        self.size = size
        mem = shm.buf
        self._base = data_address(mem)
        self._blocks = [ReusableMemory(mem[k * block_size : (k + 1) * block_size]) for k in range(nblocks)]
        self._next = 0
        del mem
        logger.debug("arena %s: %d blocks x %d bytes", self.name, nblocks, block_size)

    def idle_count(self) -> int:
        return sum(b.idle() for b in self._blocks)

    def take(self, n: int) -> list[tuple[int, np.ndarray]]:
        """``n`` idle blocks as (number, array), or fewer when fewer are idle. The caller holds the
        arrays while its cycle runs, which keeps them from being handed out twice."""
        taken: list[tuple[int, np.ndarray]] = []
        if n > 0:
            blocks = self._blocks
            for k in idle_from(blocks, self._next):
                taken.append((k, blocks[k].hand_out()))
                self._next = k + 1
                if len(taken) == n:
                    break
        return taken

    def handed(self, k: int) -> np.ndarray | None:
        """Block ``k``'s array while something holds it (a result referring to it keeps it so)."""
        return self._blocks[k].handed() if self._shm is not None and 0 <= k < self.nblocks else None

    def placement(self) -> Placement:
        """A `Placement` for one call: arrays already in a block of this live arena are referred to."""
        return Placement(dtype_description, self._base, self.size if self._shm is not None else 0, self.block_size)

    def retire(self) -> None:
        """Remove the name now; the memory goes with the last view of it. Idempotent."""
        shm, self._shm = self._shm, None
        if shm is None:
            return
        self._blocks = []
        unlink_owned(shm)
        close_or_hand_over(shm)  # results still using it keep the mapping until they go
        logger.debug("arena %s retired", self.name)

    def __repr__(self) -> str:
        state = "retired" if self._shm is None else f"{self.nblocks - self.idle_count()} in use"
        return f"<Arena {self.name} {self.nblocks} x {self.block_size} bytes, {state}>"


class ArenaMap:
    """Worker side: all of arena ``name``, mapped once (untracked: the manager owns it)."""

    def __init__(self, name: str, nblocks: int, block_size: int) -> None:
        shm = open_untracked(name)
        if shm.size < nblocks * block_size:
            shm.close()
            raise ValueError(f"arena {name} has {shm.size} bytes, not the {nblocks} x {block_size} the manager said")
        populate(shm)
        self._shm = shm
        self.name, self.nblocks, self.block_size = name, nblocks, block_size
        self.buf = np.frombuffer(shm.buf, dtype=np.uint8, count=nblocks * block_size)
        # views carved from it are read-only too (numpy asks a read-only array for a writable buffer first)
        self.readonly = memoryview(self.buf).toreadonly()
        self._base = data_address(self.buf)

    def block(self, k: int) -> np.ndarray:
        bs = self.block_size
        return self.buf[k * bs : (k + 1) * bs]

    def placement(self, allowed: set[int]) -> Placement:
        """A `Placement` for one result: arrays still in one of the ``allowed`` blocks are referred to."""
        return Placement(dtype_description, self._base, self.buf.nbytes, self.block_size, allowed)

    def close(self) -> None:
        """Let go of the arena: the mapping goes now, or with the last view of it still alive here."""
        self.buf = self.readonly = None  # type: ignore[assignment]
        if not close_or_hand_over(self._shm):
            logger.debug("arena %s still has views in this worker", self.name)
