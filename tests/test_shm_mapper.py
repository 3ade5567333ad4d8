"""Behaviour specific to SharedMemWorkerMapper (the shared contract is in test_contract.py).

Everything is observed from outside: results, the names of its shared memory under /dev/shm,
which mapping an array's memory lies in (/proc/self/maps), processes and their counters.
"""

from __future__ import annotations

import fractions
import os
import stat
import time

import faultfuncs
import numpy as np
import psutil
import pytest
import segfuncs

import wemap
from wemap import SharedMemWorkerMapper, ShmSpaceError, TaskException, WorkerException
from wemap.shm.recovery import Recovery

pytestmark = pytest.mark.timeout(60)


def walkers(n, n_atoms, seed0=0):
    return [segfuncs.make_walker(n_atoms, seed=seed0 + i, weight=1.0 / n) for i in range(n)]


def mapping_of(arr: np.ndarray) -> str:
    """The file (or "" for anonymous memory) of the mapping the array's first byte lies in."""
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return parts[5] if len(parts) > 5 else ""
    raise AssertionError("the address is in no mapping")


def in_arena(arr: np.ndarray, name: str) -> bool:
    return mapping_of(arr).startswith(f"/dev/shm/{name}")


def test_walkers_match_reference_and_shared_memory_is_private():
    ws = walkers(5, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(ws, [3] * 5)
        names = [m.segment_name, m.arena_name]
        for name in names:
            assert name.startswith(f"wemap_{os.getpid()}_")
            assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600
    assert out == [segfuncs.displace(w, 3) for w in ws]
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)


def test_results_live_in_the_arena_writable_and_outlive_cleanup():
    ws = walkers(4, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(ws, [2] * 4)
        arena = m.arena_name
        assert all(in_arena(o.state["positions"], arena) and o.state["positions"].flags.writeable for o in out)
    assert out == [segfuncs.displace(w, 2) for w in ws]
    assert not os.path.exists(f"/dev/shm/{arena}"), "the arena's name goes with cleanup"
    out[0].state["positions"][0, 0] = 42.0  # still the caller's memory after cleanup
    assert out[0].state["positions"][0, 0] == 42.0


@pytest.mark.parametrize("n_atoms", [1, 1000, 30_000])
def test_a_no_op_result_is_a_private_copy_of_the_walker_made_once(n_atoms):
    """Every size takes the one path: the manager copies the walker into a block, the result is that copy."""
    ws = walkers(3, n_atoms)
    before = [w.state["positions"].copy() for w in ws]
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=2) as m:
        out = m.map(ws, [1] * 3)
        assert out == ws
        assert all(in_arena(o.state["positions"], m.arena_name) and o.state["positions"].flags.writeable for o in out)
        assert not any(np.shares_memory(o.state["positions"], w.state["positions"]) for o, w in zip(out, ws))
        for o in out:
            o.state["positions"][:] = -1.0
        for w, b in zip(ws, before):
            np.testing.assert_array_equal(w.state["positions"], b)
        again = m.map(ws, [1] * 3)  # while the first results are held: other blocks
        assert again == ws and all((o.state["positions"] == -1.0).all() for o in out)


def test_results_fed_back_go_by_reference_clones_included():
    """A WE loop maps last cycle's results: a no-op hands back the very memory it got, copied by nobody;
    8 walkers cloned to 16 each come back right (walkers 8-15 were once a step ahead)."""
    ws = walkers(8, 500)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        first = m.map(ws, [1] * 8)
        clones = first + first
        second = m.map(clones, [1] * 16)
        assert second == [segfuncs.displace(w, 1) for w in clones]
        assert first == [segfuncs.displace(w, 1) for w in ws], "the walkers fed back are unchanged"
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=2) as m:
        first = m.map(ws, [1] * 8)
        second = m.map(first + first, [1] * 16)
        for k, o in enumerate(second):
            assert np.shares_memory(o.state["positions"], first[k % 8].state["positions"]), "fed back by reference"


def test_results_kept_are_never_overwritten():
    ws = walkers(3, 500)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        kept = [m.map(ws, [c] * 3) for c in range(6)]  # more cycles than the arena's three blocks a walker
        for c, out in enumerate(kept):
            assert out == [segfuncs.displace(w, c) for w in ws], f"cycle {c}'s results were overwritten"


def test_results_larger_than_their_blocks_come_over_the_pipe_once_and_the_next_map_has_room(tmp_path):
    runs, ws = str(tmp_path / "runs"), walkers(3, 100)
    kwargs = {"runs": [runs] * 3, "walker_idx": [0, 1, 2]}
    with SharedMemWorkerMapper(segment_func=segfuncs.grow, num_workers=2) as m:
        out = m.map(ws, [200_000] * 3, **kwargs)
        assert [o.state["extra"].shape for o in out] == [(200_000,)] * 3
        assert out == [segfuncs.grow(w, 200_000) for w in ws]
        assert sorted(w for w, _ in faultfuncs.read_runs(runs)) == [0, 1, 2], "each segment ran once"
        small = m.arena_name
        again = m.map(out, [200_000] * 3, **kwargs)
        assert m.arena_name != small, "the next map made an arena its results fit"
        assert again == [segfuncs.grow(w, 200_000) for w in out]
        assert sorted(w for w, _ in faultfuncs.read_runs(runs)) == [0, 0, 1, 1, 2, 2]


def test_a_result_over_the_pipe_keeps_its_byte_order():
    with SharedMemWorkerMapper(segment_func=segfuncs.grow_swapped, num_workers=1) as m:
        (out,) = m.map(walkers(1, 100), [100_000])  # larger than its block: it comes over the pipe
    assert out.state["extra"].dtype == np.dtype(">f8")
    assert np.array_equal(out.state["extra"], np.arange(0, 200_000, 2))


def test_more_and_larger_walkers_make_a_new_ring_and_arena():
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=2) as m:
        small = walkers(4, 10)
        first = m.map(small, [1] * 4)
        ring, arena = m.segment_name, m.arena_name
        big = walkers(8, 50_000, seed0=10)
        assert m.map(big, [1] * 8) == [segfuncs.displace(w, 1) for w in big]
        assert m.segment_name != ring and m.arena_name != arena
        assert not os.path.exists(f"/dev/shm/{ring}") and not os.path.exists(f"/dev/shm/{arena}")
        assert m.map(first, [1] * 4) == [segfuncs.displace(w, 1) for w in first], "walkers of a retired arena"
    assert first == [segfuncs.displace(w, 1) for w in small]


def test_object_dtype_is_rejected_naming_the_field_before_anything_is_made():
    w = wemap.Walker({"positions": np.zeros((3, 3)), "labels": np.array(["a", None], dtype=object)}, 1.0)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        with pytest.raises(ValueError, match=r"walker 0.*'labels'.*object"):
            m.map([w], [1])
        assert m.segment_name is None and m.arena_name is None


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


def test_structured_arrays_keep_their_fields():
    atoms = np.zeros(3, dtype=[("x", "<f8"), ("id", "<i4")])
    atoms["x"], atoms["id"] = [1.5, 2.5, 3.5], [7, 8, 9]
    w = wemap.Walker({"atoms": atoms, "positions": np.ones((3, 3))}, 1.0)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=1) as m:
        (out,) = m.map([w], [1])
        again = m.map([out], [1])[0]
    for o in (out, again):
        assert o.state["atoms"].dtype == atoms.dtype
        np.testing.assert_array_equal(o.state["atoms"], atoms)


def test_values_that_are_neither_arrays_nor_plain_travel_over_the_pipe():
    """Sets, fractions, numpy scalars and odd objects in a walker, as arguments and in results, fed back too."""
    state = {"positions": np.arange(6.0).reshape(2, 3), "tags": {"a", "b"}, "ratio": fractions.Fraction(1, 3),
             "t": np.float32(2.5), "n": 3, "name": "w0", "nested": {"k": (1, [2.0, None])}}
    w = wemap.Walker(state, 0.5)
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=2) as m:
        out = m.map([w, w], [fractions.Fraction(2, 3), 1])
        again = m.map(out, [1, 1])
    for o in out + again:
        assert o == w and type(o.state["t"]) is np.float32 and o.state["tags"] == {"a", "b"}


def test_values_over_the_pipe_do_not_make_the_manager_read_every_slot_again(monkeypatch):
    """With task_timeout set, a worker asking for its walker's piped values (or sending its result's)
    changes no deadline: the slot headers are read once a map, not once a message (n walkers each)."""
    calls = []
    scan = Recovery.check_timeouts

    def counted(self, *args, **kwargs):
        calls.append(args)
        return scan(self, *args, **kwargs)

    monkeypatch.setattr(Recovery, "check_timeouts", counted)
    ws = [wemap.Walker({"x": np.arange(3.0), "tags": {"w", i}}, 1.0) for i in range(80)]
    with SharedMemWorkerMapper(segment_func=segfuncs.echo, num_workers=2, task_timeout=300.0) as m:
        m.map(ws, [0] * 80)
        calls.clear()
        assert m.map(ws, [0] * 80) == ws
    assert len(calls) <= 2, f"the slot headers were scanned {len(calls)} times during one map of 80 walkers"


def test_keywords_of_earlier_versions_warn_and_change_nothing():
    with pytest.warns(DeprecationWarning, match="zero_copy, shared_results.*ignored"):
        m = SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1, zero_copy=True, shared_results=False)
    assert "zero_copy" not in m.attributes
    ws = walkers(2, 100)
    with m:
        out = m.map(ws, [1, 1])
        assert all(in_arena(o.state["positions"], m.arena_name) for o in out)


def test_too_little_shared_memory_is_a_clear_error_before_any_walker_goes(monkeypatch):
    """As in a container with Docker's 64 MB /dev/shm: ShmSpaceError naming the bytes and --shm-size."""
    real = os.statvfs

    def small(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 100, 100, *st[5:]))

    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        monkeypatch.setattr(os, "statvfs", small)
        with pytest.raises(ShmSpaceError, match=r"arena.*needs [\d,]+ bytes.*--shm-size"):
            m.map(walkers(4, 10_000), [1] * 4)


@pytest.mark.slow
def test_a_killed_worker_is_noticed_at_once():
    """No poll: the sentinel wakes the manager. The other walker sleeps 30 s; the map fails long before."""
    with SharedMemWorkerMapper(segment_func=segfuncs.kill_on, num_workers=2, max_retries=0) as m:
        t0 = time.monotonic()
        with pytest.raises(WorkerException, match="SIGKILL"):
            m.map([1, 2], [1, 1])  # walker 1 kills its worker at once
        assert time.monotonic() - t0 < 5.0


@pytest.mark.slow
def test_the_manager_sleeps_while_segments_run():
    """The manager's thread blocks in one wait: a handful of context switches over 2 s of segments."""
    with SharedMemWorkerMapper(segment_func=segfuncs.sleep_for, num_workers=2) as m:
        m.map([0, 1], [0.0, 0.0])
        me = psutil.Process()
        before = me.num_ctx_switches().voluntary
        m.map([0, 1], [2.0, 2.0])
        switches = me.num_ctx_switches().voluntary - before
    assert switches < 15, f"{switches} voluntary context switches during 2 s of segments"


def test_killed_worker_with_walkers_fed_back(tmp_path):
    ws = walkers(6, 300)
    with SharedMemWorkerMapper(segment_func=segfuncs.kill_once, num_workers=2) as m:
        first = m.map(ws, [0] * 6, marker_dir=[str(tmp_path / "none")] * 6, victim=[-1] * 6, walker_idx=range(6))
        second = m.map(first, [1] * 6, marker_dir=[str(tmp_path)] * 6, victim=[3] * 6, walker_idx=range(6))
        assert m.recovered_segments == 1
    assert second == [segfuncs.displace(segfuncs.displace(w, 0), 1) for w in ws]


def test_a_worker_that_cannot_map_the_arena_loses_nothing(tmp_path, caplog):
    """The arena's name removed (systemd RemoveIPC, a stray rm) and a worker that must map it anew: a new arena."""
    ws = walkers(2, 1000)
    with SharedMemWorkerMapper(segment_func=segfuncs.displace, num_workers=1) as m:
        first = m.map(ws, [1, 1])
        arena = m.arena_name
        os.unlink(f"/dev/shm/{arena}")
        (victim,) = [p for p in psutil.Process().children(recursive=True) if p.pid not in
                     wemap.pool.multiprocessing_helper_pids()]
        victim.kill()
        victim.wait(10)
        with caplog.at_level("WARNING"):
            second = m.map(first, [1, 1])
        assert m.arena_name != arena and f"cannot map arena {arena}" in caplog.text
    assert second == [segfuncs.displace(segfuncs.displace(w, 1), 1) for w in ws]


def test_worker_told_to_attach_a_ring_already_gone_says_detached_and_goes_on():
    """The manager may renew a ring before a worker reads the message naming the old one."""
    import multiprocessing as mp

    from wemap.segment import segment_name
    from wemap.shm.worker_loop import ring_loop

    here, there = mp.Pipe()
    gone = segment_name()
    here.send(("attach", gone, segment_name(), 1, 4096))
    here.send(None)
    ring_loop(wemap.Worker(0, 1), there, segfuncs.echo, ())
    assert here.recv() == ("detached", gone, None)
