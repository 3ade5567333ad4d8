"""Parallel copies and the result-block pool (pure in-process checks)."""

from __future__ import annotations

import gc

import numpy as np

from wemap.memcopy import BlockPool, copy_into, copy_of


def test_parallel_copy_matches_numpy(monkeypatch):
    import wemap.memcopy as memcopy

    monkeypatch.setattr(memcopy, "_threads", lambda: 3)  # the threaded path, whatever this machine has
    submitted = []
    pool = memcopy._executor()
    real_submit = pool.submit
    monkeypatch.setattr(pool, "submit", lambda *a, **k: submitted.append(a) or real_submit(*a, **k))
    src = np.random.default_rng(0).random((700_000, 3))  # above the parallel threshold
    dst = np.empty_like(src)
    copy_into(dst, src)
    np.testing.assert_array_equal(dst, src)
    assert len(submitted) == 3, "a large copy is split across the pool's threads"
    out = copy_of(src)
    assert out is not src and not np.shares_memory(out, src)
    np.testing.assert_array_equal(out, src)


def test_block_is_reused_only_when_no_array_uses_it():
    pool = BlockPool()
    a = pool.take(1 << 20)
    view = np.ndarray((1000,), np.float64, buffer=a)
    del a
    b = pool.take(1 << 20)
    assert not np.shares_memory(b, view), "a block whose array is alive is never handed out again"
    del view, b
    gc.collect()
    pool.trim(keep_bytes=1 << 30)  # the end of a cycle: within one, nothing is dropped and nothing looked for again
    c = pool.take(1 << 20)
    assert len(pool._blocks[1 << 20]) == 2, "an idle block is reused, not a new one allocated"
    del c


def _count_idle_checks(monkeypatch) -> list[int]:
    from wemap.memcopy import ReusableMemory

    calls = [0]
    idle = ReusableMemory.idle

    def counted(self):
        calls[0] += 1
        return idle(self)

    monkeypatch.setattr(ReusableMemory, "idle", counted)
    return calls


def test_a_cycle_of_takes_costs_about_one_check_each_however_many_walkers(monkeypatch):
    """A WE loop of 2,000 walkers holding the last cycle's results: no scan from the first block per take."""
    from wemap.result_arena import ResultArena

    n = 2000
    calls = _count_idle_checks(monkeypatch)
    pool, held = BlockPool(), []
    arena = ResultArena(2 * n, 4096)
    try:
        for cycle in range(4):
            calls[0] = 0
            now = [pool.take(1 << 12) for _ in range(n)]
            blocks = arena.take(n)
            assert all(b is not None for b in blocks)
            assert calls[0] <= 6 * n, f"cycle {cycle}: {calls[0]} idle checks for {n} takes"
            assert len({id(b) for b in now}) == n and len({b[1] for b in blocks}) == n
            pool.trim(keep_bytes=2 * n * (1 << 12))
            held = [now, blocks]  # this cycle's results, kept through the next cycle as a WE loop keeps them
        assert len(pool._blocks[1 << 12]) <= 3 * n
    finally:
        del held, blocks
        arena.retire()


def test_trim_frees_idle_blocks_beyond_the_budget_and_keeps_live_ones():
    pool = BlockPool()
    blocks = [pool.take(1 << 16) for _ in range(4)]
    held = np.ndarray((10,), np.uint8, buffer=blocks[0])
    del blocks
    pool.trim(keep_bytes=1 << 16)
    kept = pool._blocks[1 << 16]
    assert len(kept) == 2, "the live block and one idle block within the budget"
    assert any(np.shares_memory(np.frombuffer(k.memory, np.uint8), held) for k in kept)
