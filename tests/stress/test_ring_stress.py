"""Multi-process stress test of the slot ring: 4 producers, 4 consumers, 10^6 stamped slots.

Producers take a free slot from the *done* ring (the free list), stamp it with
(producer, sequence, checksum) in both the slot header and the input region, and push
it on the *ready* ring; consumers pop it, verify the stamp, record it and give the slot
back. So both rings have several producers and several consumers. The parent then
checks exactly-once delivery per producer and that each consumer saw every producer's
items in order (DPDK's ring stress test, across processes).
"""

from __future__ import annotations

import os
import time
import traceback

import numpy as np
import pytest

from wemap._ring import RingClosed, SlotHeader
from wemap.segment import Segment

pytestmark = [pytest.mark.stress, pytest.mark.slow]

N_PRODUCERS = 4
N_CONSUMERS = 4
TOTAL = 1_000_000
NSLOTS = 64  # enough that producers rarely wait for a free slot
WAIT = 60.0  # seconds any single pop may take before the test calls it a hang
KEY = 0x9E3779B97F4A7C15


def _stamp(p: int, seq: int) -> int:
    return ((p << 40) ^ seq ^ KEY) & 0xFFFFFFFFFFFFFFFF


def _views(seg: Segment) -> tuple[list[SlotHeader], list[np.ndarray]]:
    """Per slot: the header and the input region as uint64 words (made once, as the mapper does)."""
    ring = seg.ring
    heads = [ring.header(s) for s in range(ring.nslots)]
    inputs = [ring.input_view(s).view(np.uint64) for s in range(ring.nslots)]
    return heads, inputs


def _producer(seg: Segment, p: int, count: int, results) -> None:
    try:
        ring = seg.ring
        heads, inputs = _views(seg)
        pop_free, push_ready = ring.pop_done, ring.push_ready
        h = x = None
        for seq in range(count):
            slot = pop_free(WAIT)
            if slot is None:
                raise TimeoutError(f"producer {p}: no free slot for {WAIT} s at seq {seq}")
            h, x = heads[slot], inputs[slot]
            h.reset(p, seq, 0)  # task_id, cycle
            x[0] = p
            x[1] = seq
            x[2] = _stamp(p, seq)
            push_ready(slot)
        del heads, inputs, h, x
        results.put(("producer", p, None))
    except BaseException:
        results.put(("producer", p, traceback.format_exc()))
    finally:
        seg.close()


def _consumer(seg: Segment, c: int, results) -> None:
    try:
        ring = seg.ring
        heads, inputs = _views(seg)
        pop_ready, push_free = ring.pop_ready, ring.push_done
        got: list[list[int]] = [[] for _ in range(N_PRODUCERS)]
        last = [-1] * N_PRODUCERS
        while True:
            try:
                slot = pop_ready(WAIT)
            except RingClosed:
                break
            if slot is None:
                raise TimeoutError(f"consumer {c}: nothing for {WAIT} s")
            h, x = heads[slot], inputs[slot]
            p, seq = h.task_id, h.cycle
            if not (p < N_PRODUCERS and int(x[0]) == p and int(x[1]) == seq and int(x[2]) == _stamp(p, seq)):
                raise AssertionError(f"consumer {c}: torn slot {slot}: header ({p}, {seq}), input {x[:3]}")
            if seq <= last[p]:
                raise AssertionError(f"consumer {c}: producer {p} seq {seq} after {last[p]}")
            last[p] = seq
            got[p].append(seq)
            x[2] = 0  # a second delivery of the same stamp would now fail the check
            push_free(slot)
        del heads, inputs
        results.put(("consumer", c, [np.asarray(g, dtype=np.int64) for g in got]))
    except BaseException:
        results.put(("consumer", c, traceback.format_exc()))
    finally:
        seg.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "method, nslots",
    [("forkserver", NSLOTS), ("spawn", 6)],  # 6 slots: producers block on the free list too
)
def test_mpmc_processes_exactly_once(method, nslots):
    import multiprocessing as mp

    ctx = mp.get_context(method)
    per_producer = TOTAL // N_PRODUCERS
    results = ctx.Queue()
    procs = []
    with Segment.create(nslots, 64) as seg:
        try:
            for s in range(nslots):
                seg.ring.push_done(s)  # every slot starts free
            t0 = time.perf_counter()
            consumers = [ctx.Process(target=_consumer, args=(seg, c, results)) for c in range(N_CONSUMERS)]
            producers = [ctx.Process(target=_producer, args=(seg, p, per_producer, results))
                         for p in range(N_PRODUCERS)]
            procs = consumers + producers
            for proc in procs:
                proc.start()

            outcome = {}
            while len([k for k in outcome if k[0] == "producer"]) < N_PRODUCERS:
                kind, idx, payload = results.get(timeout=240)
                outcome[(kind, idx)] = payload
                if isinstance(payload, str):
                    pytest.fail(f"{kind} {idx} failed:\n{payload}")
            seg.ring.close_ready()  # consumers drain what is left, then stop
            while len(outcome) < N_PRODUCERS + N_CONSUMERS:
                kind, idx, payload = results.get(timeout=120)
                outcome[(kind, idx)] = payload
                if isinstance(payload, str):
                    pytest.fail(f"{kind} {idx} failed:\n{payload}")
            elapsed = time.perf_counter() - t0
            for proc in procs:
                proc.join(30)
                assert proc.exitcode == 0, (proc.name, proc.exitcode)
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
                    proc.join(5)
            results.close()
            results.join_thread()

        # exactly once, per producer; order already checked per consumer, re-check here
        for p in range(N_PRODUCERS):
            parts = [outcome[("consumer", c)][p] for c in range(N_CONSUMERS)]
            for part in parts:
                assert np.all(np.diff(part) > 0)
            seqs = np.sort(np.concatenate(parts))
            assert seqs.size == per_producer, f"producer {p}: {seqs.size} delivered"
            assert np.array_equal(seqs, np.arange(per_producer)), f"producer {p}: lost or duplicated"
        # every slot is back on the free list exactly once
        free = []
        while (s := seg.ring.pop_done(0)) is not None:
            free.append(s)
        assert sorted(free) == list(range(nslots))
        rate = TOTAL / elapsed
        print(f"\n{method}: {TOTAL} items, {N_PRODUCERS}x{N_CONSUMERS} processes, {nslots} slots "
              f"on {os.cpu_count()} CPUs: {elapsed:.1f} s ({rate:,.0f}/s)")
