"""Parallel copies and the arena's blocks (in-process checks)."""

from __future__ import annotations

import os
import threading

import numpy as np

from wemap.arena import Arena
from wemap.memcopy import copy_into, write_arrays


def test_parallel_copy_matches_numpy(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})  # three threads, whatever this machine has
    src = np.random.default_rng(0).random((700_000, 3))  # above the parallel size
    dst = np.empty_like(src)
    copy_into(dst, src)
    np.testing.assert_array_equal(dst, src)
    assert any(t.name.startswith("wemap-copy") for t in threading.enumerate()), "the copy ran on the thread pool"


def test_write_arrays_lays_out_contiguous_and_strided_arrays():
    block = np.zeros(4096, np.uint8)
    a, b = np.arange(10.0), np.arange(40.0).reshape(4, 10)[:, ::2]
    write_arrays(block, [0, 128], [a, b], b.nbytes)
    np.testing.assert_array_equal(np.ndarray(a.shape, a.dtype, block, 0), a)
    np.testing.assert_array_equal(np.ndarray(b.shape, b.dtype, block, 128), b)


def test_a_block_is_handed_out_again_only_once_nothing_uses_it():
    arena = Arena(4, 4096)
    try:
        taken = arena.take(4)
        assert len({k for k, _ in taken}) == 4 and arena.take(1) == []
        view = np.ndarray((10,), np.float64, taken[2][1], 64)
        del taken
        ((k, again),) = arena.take(1)
        assert k != 2, "the block a view still uses is not handed out"
        place = arena.placement()
        assert place.fields({"v": view}, []) == (("v", "<f8", (10,), 1, 64),) and place.refs == [2]
        del again
        assert len(arena.take(4)) == 3, "every block but the one still in use"
    finally:
        arena.retire()
