"""Behaviour specific to SharedMemWorkerMapper (the shared contract is in test_contract.py)."""

from __future__ import annotations

import os
import pickle
import stat

import numpy as np
import pytest
import segfuncs

import wemap
from wemap import SharedMemWorkerMapper, TaskException

pytestmark = pytest.mark.timeout(60)


def walkers(n, n_atoms, seed0=0):
    return [segfuncs.make_walker(n_atoms, seed=seed0 + i, weight=1.0 / n) for i in range(n)]


def test_walkers_match_reference_and_segment_is_private():
    ws = walkers(5, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(ws, [3] * 5)
        name = m.segment_name
        assert name.startswith(f"wemap_{os.getpid()}_")
        mode = stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode)
        assert mode == 0o600
    assert out == [segfuncs.displace(w, 3) for w in ws]
    assert not os.path.exists(f"/dev/shm/{name}")


def test_hard_slot_size_names_the_field_before_writing(tmp_path):
    big = segfuncs.make_walker(10_000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1, slot_size=100_000) as m:
        with pytest.raises(ValueError, match=r"walker 1 .*slot_size is 100000.*'positions'"):
            m.map([segfuncs.make_walker(10), big], [1, 1])
        assert m.segment_name is None, "nothing was written: the segment was never made"


def test_object_dtype_is_rejected_naming_the_field():
    w = wemap.Walker({"positions": np.zeros((3, 3)), "labels": np.array(["a", None], dtype=object)}, 1.0)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        with pytest.raises(ValueError, match=r"walker 0.*'labels'.*object"):
            m.map([w], [1])


def test_slots_regrow_between_cycles():
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        small = walkers(4, 10)
        assert m.map(small, [1] * 4) == [segfuncs.displace(w, 1) for w in small]
        first = m.segment_name
        big = walkers(4, 50_000, seed0=10)
        assert m.map(big, [1] * 4) == [segfuncs.displace(w, 1) for w in big]
        assert m.segment_name != first
        assert not os.path.exists(f"/dev/shm/{first}"), "the outgrown segment is unlinked"


def test_results_larger_than_inputs_regrow_and_rerun():
    with SharedMemWorkerMapper(segment_func=segfuncs.grow, num_workers=2) as m:
        out = m.map(walkers(3, 100), [200_000] * 3)
    assert [o.state["extra"].shape for o in out] == [(200_000,)] * 3


def test_more_walkers_than_slots_stream_through():
    ws = walkers(11, 200)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2, num_slots=2) as m:
        out = m.map(ws, [2] * 11)
        assert m._segment.ring.nslots == 2
    assert out == [segfuncs.displace(w, 2) for w in ws]


def test_noop_result_is_not_copied_and_zero_copy_views():
    ws = walkers(2, 500)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=1, zero_copy=True) as m:
        out = m.map(ws, [1, 1])
        ring = m._segment.ring
        inputs = [ring.input_view(s) for s in range(ring.nslots)]
        for w, o in zip(ws, out):
            np.testing.assert_array_equal(o.state["positions"], w.state["positions"])
            addr = o.state["positions"].__array_interface__["data"][0]
            assert any(
                r.__array_interface__["data"][0] <= addr < r.__array_interface__["data"][0] + r.nbytes for r in inputs
            ), "the echoed walker's arrays are still those of its input region: nothing was copied"
            assert not o.state["positions"].flags.writeable
        del out, inputs, ring


def test_copied_results_are_independent_of_the_segment():
    ws = walkers(2, 100)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=1) as m:
        out = m.map(ws, [1, 1])
    assert out[0].state["positions"].flags.writeable
    np.testing.assert_array_equal(out[1].state["velocities"], ws[1].state["velocities"])


def test_inputs_are_read_only_in_the_worker():
    with SharedMemWorkerMapper(segment_func=segfuncs.modify_in_place, num_workers=1) as m:
        with pytest.raises(TaskException, match="read-only"):
            m.map(walkers(1, 10), [1])


def test_wepy_walkers_travel_as_arrays():
    wepy_walker = pytest.importorskip("wepy.walker")
    w = wepy_walker.Walker(wepy_walker.WalkerState(positions=np.ones((4, 3)), time=1.5), 0.5)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=1) as m:
        (out,) = m.map([w], [1])
    assert type(out) is wepy_walker.Walker and type(out.state) is wepy_walker.WalkerState
    np.testing.assert_array_equal(out.state["positions"], np.ones((4, 3)))
    assert out.state["time"] == 1.5 and out.weight == 0.5


def test_zero_copy_results_survive_more_walkers_than_slots():
    ws = walkers(6, 300)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1, num_slots=2, zero_copy=True) as m:
        out = m.map(ws, [1] * 6)
        assert out == [segfuncs.displace(w, 1) for w in ws], "a slot reused in the same map kept its old result"
        del out


def test_finished_walker_waiting_to_be_collected_is_not_timed_out():
    class SlowCollect(SharedMemWorkerMapper):
        """A manager busy elsewhere (copying large results, starved of CPU) between two pops."""

        def _collect(self, *args):
            import time

            time.sleep(1.2)
            return super()._collect(*args)

    # walkers 0 and 1 end at ~1 s; the second one popped is collected only after the first one's slow
    # collect, at ~2.2 s: past the 2 s timeout counted from its start, while its worker runs walker 2
    # or 3 (1.5 s, ending at ~2.5 s), which must not be killed for it
    ws = walkers(4, 50)
    with SlowCollect(segment_func=segfuncs.sleep_then_displace, num_workers=2, task_timeout=2.0,
                     first_task_timeout=2.0, max_retries=0) as m:
        out = m.map(ws, [1.0, 1.0, 1.5, 1.5])
    assert out == [segfuncs.displace(w, 1) for w in ws]


def test_long_exception_message_is_cut_to_fit_the_slot():
    with SharedMemWorkerMapper(segment_func=segfuncs.raise_long, num_workers=1, slot_size=4096) as m:
        with pytest.raises(TaskException, match=r"ValueError: bad walker: x+ \.\.\. \(\d+ more characters cut") as info:
            m.map([0], [10_000], walker_idx=[4], cycle_idx=[2])
    assert info.value.walker_idx == 4 and info.value.cycle_idx == 2


@pytest.mark.parametrize("zero_copy, shared", [(False, False), (True, False), (False, True)])
def test_structured_arrays_keep_their_fields(zero_copy, shared, monkeypatch):
    from wemap import shm_mapper

    monkeypatch.setattr(shm_mapper, "SHARED_RESULTS_MIN_BYTES", 0 if shared else 2**40)
    atoms = np.zeros(3, dtype=[("x", "<f8"), ("id", "<i4")])
    atoms["x"], atoms["id"] = [1.5, 2.5, 3.5], [7, 8, 9]
    w = wemap.Walker({"atoms": atoms, "positions": np.ones((3, 3))}, 1.0)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=1, zero_copy=zero_copy) as m:
        (out,) = m.map([w], [1])
        assert out.state["atoms"].dtype == atoms.dtype
        np.testing.assert_array_equal(out.state["atoms"], atoms)
        del out


def test_worker_told_to_attach_a_segment_already_gone_says_detached_and_goes_on():
    """The manager may renew a segment before a worker reads the message naming the old one."""
    import multiprocessing as mp

    from wemap.segment import segment_name
    from wemap.shm_worker import ring_loop

    here, there = mp.Pipe()
    gone = segment_name()
    here.send(("attach", gone))
    here.send(None)
    ring_loop(wemap.Worker(0, 1), there, segfuncs.echo, ())
    assert here.recv() == ("detached", gone)


@pytest.fixture
def shared_results_for_any_size(monkeypatch):
    """Result blocks, and inputs by reference, for the small walkers of these tests too (by default
    from 128 KiB and 384 KiB a walker)."""
    from wemap import shm_mapper

    monkeypatch.setattr(shm_mapper, "SHARED_RESULTS_MIN_BYTES", 0)
    monkeypatch.setattr(shm_mapper, "REFER_MIN_BYTES", 0)


def _arena_holds(m, arr) -> bool:
    return m._arena.holds(arr)


def test_results_are_written_by_the_workers_into_shared_blocks(shared_results_for_any_size):
    ws = walkers(4, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(ws, [2] * 4)
        arena = m._arena.name
        assert os.path.exists(f"/dev/shm/{arena}")
        for o in out:
            assert _arena_holds(m, o.state["positions"]) and o.state["positions"].flags.writeable
    assert out == [segfuncs.displace(w, 2) for w in ws]
    assert not os.path.exists(f"/dev/shm/{arena}"), "the arena's name goes with cleanup"
    out[0].state["positions"][0, 0] = 42.0  # still the caller's memory after cleanup
    assert out[0].state["positions"][0, 0] == 42.0


def _populate_works() -> bool:
    import mmap

    from wemap.result_arena import _MADV_POPULATE_WRITE

    m = mmap.mmap(-1, 4096)
    try:
        m.madvise(_MADV_POPULATE_WRITE)
        return True
    except (AttributeError, OSError, TypeError):
        return False
    finally:
        m.close()


@pytest.mark.skipif(not _populate_works(), reason="no MADV_POPULATE_WRITE (Linux 5.14+)")
def test_the_manager_maps_the_whole_arena_when_it_makes_it():
    """The cycles after the arena is made write walkers into blocks the manager has not touched: mapped
    at once, they take no page faults (without it, one per 4 KiB of every walker, for cycles)."""
    import resource

    ws = walkers(8, 10_000)  # 480 kB a walker: input blocks
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=2) as m:
        m.map(ws, [1] * 8)  # makes the arena
        assert m._arena is not None
        for _ in range(2):  # each cycle takes blocks the last one did not use
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            out = m.map(ws, [1] * 8)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
            del out
            assert faults < 117, f"{faults} page faults in a cycle (one walker's arrays are 117 pages)"


def test_result_blocks_are_reused_only_once_dropped(shared_results_for_any_size):
    ws = walkers(3, 500)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        kept = [m.map(ws, [c] * 3) for c in range(4)]  # more cycles than the arena's two cycles of blocks
        copies = [[o.state["positions"].copy() for o in out] for out in kept]
        for c, out in enumerate(kept):
            assert out == [segfuncs.displace(w, c) for w in ws], f"cycle {c}'s results were overwritten"
            for o, before in zip(out, copies[c]):
                np.testing.assert_array_equal(o.state["positions"], before)
        in_blocks = [sum(_arena_holds(m, o.state["positions"]) for o in out) for out in kept]
        assert in_blocks[:2] == [3, 3] and in_blocks[2:] == [0, 0], "blocks in use are not handed out again"
        del kept, copies, out, o
        again = m.map(ws, [9] * 3)
        assert all(_arena_holds(m, o.state["positions"]) for o in again), "dropped blocks are reused"
        del again


def test_killed_worker_with_shared_results(shared_results_for_any_size, tmp_path):
    ws = walkers(6, 300)
    with SharedMemWorkerMapper(segment_func=segfuncs.kill_once, num_workers=2) as m:
        out = m.map(ws, [1] * 6, marker_dir=[str(tmp_path)] * 6, victim=[3] * 6, walker_idx=range(6))
        assert m.recovered_segments == 1
    assert out == [segfuncs.displace(w, 1) for w in ws]


def test_no_op_results_are_the_managers_copy_in_and_nobody_copies_them_out(shared_results_for_any_size, monkeypatch):
    """The manager writes each walker into an input block of the arena: a result still in its input
    (a no-op) is handed out where it is, a private, writable copy of the walker that went in."""
    ws = walkers(3, 400)
    before = [w.state["positions"].copy() for w in ws]
    copies = _count_copies_in(monkeypatch)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=2) as m:
        out = m.map(ws, [1] * 3)
        assert m._arena is not None, "the arena was made for these walkers"
        assert all(_arena_holds(m, a) for o in out for a in o.state.values() if isinstance(a, np.ndarray))
        assert sorted(copies) == sorted(a.nbytes for w in ws for a in w.state.values() if isinstance(a, np.ndarray)), \
            "each array is copied once, in, and never out"
        assert out == ws and all(o.state["positions"].flags.writeable for o in out)
        assert all(o.state["positions"] is not w.state["positions"] for o, w in zip(out, ws)), "copies, not the inputs"
        for o in out:
            o.state["positions"][:] = -1.0  # the caller's own memory: the walkers that went in are untouched
        for w, b in zip(ws, before):
            np.testing.assert_array_equal(w.state["positions"], b)
        again = m.map(ws, [1] * 3)  # while the first results are held: other blocks
        assert again == ws and all((o.state["positions"] == -1.0).all() for o in out)
        del out, again


def test_a_result_partly_left_in_its_input_block_and_partly_too_big_for_its_result_block(shared_results_for_any_size):
    """Unchanged arrays stay in the input block; a new one too big for the result block comes through
    the (regrown) slot and is copied out on its own."""
    ws = walkers(2, 300)  # 14 kB of arrays: the result block has 64 KiB of headroom, the extra is 160 kB
    with SharedMemWorkerMapper(segment_func=segfuncs.grow, num_workers=1) as m:
        out = m.map(ws, [20_000, 20_000])
        for o in out:
            assert _arena_holds(m, o.state["positions"]) and not _arena_holds(m, o.state["extra"])
            assert o.state["extra"].flags.writeable and o.state["positions"].flags.writeable
    assert out == [segfuncs.grow(w, 20_000) for w in ws]


def test_a_walker_in_its_input_block_is_not_in_its_slot(shared_results_for_any_size):
    """The slot's input region holds only the head naming the block: the worker reads the walker there."""
    from wemap.codec import read_descriptor, read_input_block

    ws = walkers(2, 300)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        out = m.map(ws, [1, 1])
        ring = m._segment.ring
        heads = [read_input_block(ring.input_view(k)) for k in range(ring.nslots)]
        assert all(h is not None and h[1] == m._arena.block_size for h in heads[:2])
        with pytest.raises(ValueError, match="descriptor out of range"):
            read_descriptor(ring.input_view(0))  # no walker in the slot itself
    assert out == [segfuncs.displace(w, 1) for w in ws]


def test_walkers_of_128_kib_or_more_use_shared_blocks_by_default():
    ws = walkers(2, 3_000)  # 144 kB of arrays each
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(ws, [1, 1])
        assert m._arena is not None and all(_arena_holds(m, o.state["velocities"]) for o in out)
        small = m.map(walkers(2, 2_000), [1, 1])  # 96 kB
        assert not any(_arena_holds(m, o.state["velocities"]) for o in small), "small results are copied"
    assert out == [segfuncs.displace(w, 1) for w in ws]
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1, shared_results=False) as m:
        assert m.map(ws, [1, 1]) == out and m._arena is None


def test_outgrown_arena_loses_its_name_and_its_results_live_on(shared_results_for_any_size):
    small, large = walkers(2, 200), walkers(2, 5000, seed0=10)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        first = m.map(small, [1, 1])
        old = m._arena.name
        second = m.map(large, [1, 1])
        assert m._arena.name != old and not os.path.exists(f"/dev/shm/{old}")
        third = m.map(small, [1, 1])
    assert first == third == [segfuncs.displace(w, 1) for w in small]
    assert second == [segfuncs.displace(w, 1) for w in large]


def test_no_room_for_result_blocks_falls_back_to_copies(shared_results_for_any_size, monkeypatch):
    """A small /dev/shm (Docker's 64 MB) leaves no room for the arena: results are copied, nothing fails."""
    from wemap import shm_mapper

    monkeypatch.setattr(shm_mapper, "_shm_budget", lambda: 10_000)
    ws = walkers(3, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(ws, [1] * 3)
        assert m._arena is None
    assert out == [segfuncs.displace(w, 1) for w in ws]


def test_retired_arena_is_unmapped_everywhere_once_its_results_go(shared_results_for_any_size):
    """A retired arena's pages are freed only when no process maps it: workers must let go too."""
    def mapped(pid, name):
        with open(f"/proc/{pid}/maps") as f:
            return name in f.read()

    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        first = m.map(walkers(2, 200), [1, 1])
        old = m._arena.name
        m.map(walkers(2, 5000), [1, 1])  # outgrows the arena: a new one, the old one retired
        pids = [w.pid for w in m._pool.workers]
        assert mapped(os.getpid(), old), "the kept results still map the retired arena"
        del first
        assert not mapped(os.getpid(), old)
        assert not any(mapped(pid, old) for pid in pids), "a worker still maps the retired arena"


def _count_copies_in(monkeypatch) -> list[int]:
    """Sizes of the arrays the manager copies into slots from now on."""
    from wemap import codec

    seen: list[int] = []
    real, real_arrays = codec.copy_into, codec.copy_arrays

    def counting(dst, src):
        seen.append(src.nbytes)
        real(dst, src)

    def counting_arrays(dst, offsets, arrays):  # the one-call copy of a walker's arrays
        real_arrays(dst, offsets, arrays)
        seen.extend(a.nbytes for a in arrays)

    monkeypatch.setattr(codec, "copy_into", counting)
    monkeypatch.setattr(codec, "copy_arrays", counting_arrays)
    return seen


def test_results_fed_back_go_to_the_workers_by_reference(shared_results_for_any_size, monkeypatch):
    """A WE loop maps last cycle's results: their arrays are in the arena already, so nothing is copied in."""
    ws = walkers(4, 1000)
    copies = _count_copies_in(monkeypatch)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        first = m.map(ws, [1] * 4)
        assert sorted(copies) == sorted(a.nbytes for w in ws for a in w.state.values() if isinstance(a, np.ndarray))
        copies.clear()
        clones = [first[0], first[0], first[1], first[2]]  # resampling shares a clone's arrays
        second = m.map(clones, [2] * 4)
        assert copies == [], "the box too is in the arena: handed back where the walker's input block had it"
        assert all(_arena_holds(m, o.state["positions"]) for o in second)
        expect1 = [segfuncs.displace(w, 1) for w in ws]
        assert first == expect1, "the walkers fed back are unchanged"
        expect2 = [segfuncs.displace(expect1[k], 2) for k in (0, 0, 1, 2)]
        assert second == expect2
        del first, clones  # the arena holds two cycles: what goes in and what comes out
        third = m.map(second, [3] * 4)
        assert copies == [] and all(_arena_holds(m, o.state["positions"]) for o in third)
    assert third == [segfuncs.displace(w, 3) for w in expect2]


def test_walkers_fed_back_survive_a_killed_worker(shared_results_for_any_size, tmp_path):
    ws = walkers(6, 300)
    with SharedMemWorkerMapper(segment_func=segfuncs.kill_once, num_workers=2) as m:
        kw = {"marker_dir": [str(tmp_path)] * 6, "victim": [3] * 6, "walker_idx": range(6)}
        first = m.map(ws, [0] * 6, marker_dir=[str(tmp_path / "none")] * 6, victim=[-1] * 6, walker_idx=range(6))
        second = m.map(first, [1] * 6, **kw)  # the victim's input is read again from the arena
        assert m.recovered_segments == 1
    assert second == [segfuncs.displace(segfuncs.displace(w, 0), 1) for w in ws]


def test_walkers_from_an_outgrown_arena_or_strided_are_copied(shared_results_for_any_size, monkeypatch):
    ws = walkers(3, 200)
    copies = _count_copies_in(monkeypatch)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        first = m.map(ws, [1] * 3)
        old_arena = m._arena.name
        big = [segfuncs.grow(w, 5000) for w in first]  # arrays of the first arena plus a new, larger one
        copies.clear()
        second = m.map(big, [1] * 3)
        assert m._arena.name != old_arena, "outgrown"
        assert len(copies) == 3 * 4, "arrays of a retired arena are copied, not referenced"
        strided = [wemap.Walker({**o.state, "positions": o.state["positions"][::2]}, o.weight) for o in second]
        copies.clear()
        third = m.map(strided, [1] * 3)
        # the strided positions; the velocities, and the box and extra that displace handed back where
        # the walkers' input blocks had them, go by reference
        assert len(copies) == 3
    assert second == [segfuncs.displace(w, 1) for w in big]
    assert third == [segfuncs.displace(w, 1) for w in strided]


def test_a_worker_maps_the_whole_arena_at_once():
    """Populated at attach: writing every page afterwards takes (almost) no page faults."""
    import resource
    from multiprocessing.shared_memory import SharedMemory

    from wemap import result_arena
    from wemap.segment import _open_untracked

    if result_arena._MADV_POPULATE_WRITE is None:
        pytest.skip("no MADV_POPULATE_WRITE on this platform")
    owner = SharedMemory(create=True, size=16 * 2**20)
    try:
        def faults_writing(populate: bool) -> int:
            shm = _open_untracked(owner.name)
            if populate:
                try:
                    shm._mmap.madvise(result_arena._MADV_POPULATE_WRITE)
                except OSError:
                    shm.close()
                    pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
                shm.close()
                maps = result_arena.ArenaMaps()
                buf = maps.whole(owner.name)
            else:
                maps, buf = None, np.frombuffer(shm.buf, dtype=np.uint8)
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            buf[::4096] = 1
            after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            del buf
            if maps is not None:
                maps.close()
            else:
                shm.close()
            return after - before

        pages = owner.size // 4096
        assert faults_writing(populate=False) >= pages // 2, "unpopulated: a fault a page (the control)"
        assert faults_writing(populate=True) < pages // 20
    finally:
        owner.close()
        owner.unlink()


def test_by_default_only_walkers_of_384_kib_or_more_go_by_reference(monkeypatch):
    from wemap import shm_mapper

    monkeypatch.setattr(shm_mapper, "SHARED_RESULTS_MIN_BYTES", 0)  # result blocks for both sizes
    copies = _count_copies_in(monkeypatch)
    assert 48 * 6_000 < shm_mapper.REFER_MIN_BYTES <= 48 * 10_000
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        for n_atoms, referenced in ((10_000, True), (6_000, False)):  # 480 kB and 288 kB of arrays
            first = m.map(walkers(2, n_atoms), [1, 1])
            copies.clear()
            second = m.map(first, [1, 1])
            assert all(_arena_holds(m, o.state["positions"]) for o in second)
            assert (copies == []) == referenced, (n_atoms, copies)
            del first, second


def _fds_on_unlinked_arenas(pid: int) -> list[str]:
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if "wemap_" in target and "(deleted)" in target:
            fds.append(target)
    return fds


def test_workers_let_go_of_an_outgrown_arena_within_one_segment(shared_results_for_any_size):
    """More walkers each cycle replace the arena but not the slots: no worker may keep the old one's pages."""
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        out = m.map(walkers(2, 2000), [1] * 2)
        arenas = {m._arena.name}
        for n in (4, 8):
            out = m.map(out + out, [1] * n)  # fed back, then the arena is outgrown
            arenas.add(m._arena.name)
        assert len(arenas) == 3, "the arena was replaced twice"
        del out
        pid = m._pool.workers[0].pid
        assert _fds_on_unlinked_arenas(pid) == []


def test_a_worker_that_cannot_map_the_arena_gets_its_walker_copied(shared_results_for_any_size, caplog):
    """Nothing lost, a clear warning, a new arena, and the worker's first real segment keeps its longer timeout."""
    ws = walkers(2, 1000)
    slow = {"seconds": [1.0, 1.0]}  # each worker process's first segment sleeps 1 s: under 10 s, over 0.5 s
    with SharedMemWorkerMapper(segment_func=segfuncs.slow_first_displace, num_workers=1, task_timeout=0.5,
                               first_task_timeout=10.0, max_retries=0) as m:
        first = m.map(ws, [1, 1], **slow)
        arena = m._arena.name
        os.unlink(f"/dev/shm/{arena}")  # a name gone (systemd RemoveIPC, a stray rm) ...
        w = m._pool.workers[0]
        os.kill(w.pid, 9)  # ... and a worker that must map it anew
        w.process.join(10)
        with caplog.at_level("WARNING", logger="wemap.shm_mapper"):
            second = m.map(first, [1, 1], **slow)
        assert any("walkers are copied into the slots from now on" in r.getMessage() for r in caplog.records)
        assert arena in caplog.text
        assert m._arena is None, "the arena whose name is gone is replaced"
        third = m.map(second, [1, 1], **slow)
        assert m._arena is not None and m._arena.name != arena
    assert second == [segfuncs.displace(segfuncs.displace(w, 1), 1) for w in ws]
    assert third == [segfuncs.displace(w, 1) for w in second]


def test_a_worker_that_cannot_map_the_arena_gets_a_new_walker_through_its_slot(shared_results_for_any_size, caplog):
    """New walkers are written into input blocks of the arena; a worker that cannot map it loses none."""
    ws = walkers(2, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        m.map(ws, [1, 1])
        arena = m._arena.name
        os.unlink(f"/dev/shm/{arena}")
        w = m._pool.workers[0]
        os.kill(w.pid, 9)
        w.process.join(10)
        with caplog.at_level("WARNING", logger="wemap.shm_mapper"):
            out = m.map(ws, [2, 2])
        assert arena in caplog.text and m._arena is None
    assert out == [segfuncs.displace(w, 2) for w in ws]


@pytest.mark.parametrize("layout", [(1, (), (("walker", (("positions",),)),)), 5, (1, (), (("walker", "fields"),)),
                                    [], (2, (), (("walker", ()),))])
def test_a_malformed_descriptor_is_named_as_such_before_any_arena_is_mapped(layout):
    """The worker parses a walker's layout (which says whether it refers to the arena) before it maps anything."""
    from wemap.codec import CodecRegistry
    from wemap.result_arena import ArenaMaps
    from wemap.shm_worker import _input_regions

    arenas = ArenaMaps()
    with pytest.raises(ValueError, match="malformed slot descriptor"):
        _input_regions(CodecRegistry().layout(pickle.dumps(layout)), (np.zeros(64, np.uint8),) * 2,
                       ("wemap_0_nothing", 0, 64), arenas)
