"""The mapper contract (wepy's work-mapper interface), checked for every mapper class.

A new mapper joins by adding one entry to MAPPERS.
"""

from __future__ import annotations

import functools
import os
import pickle
import time

import numpy as np
import pytest
import segfuncs

import wemap
from wemap import Mapper, TaskException, WorkerException

pytestmark = pytest.mark.timeout(60)


def started(cls, func, num_workers=2, **kw):
    m = cls(segment_func=func, num_workers=num_workers, **kw)
    m.init()
    return m


def test_results_in_input_order(mapper_cls):
    with mapper_cls(segment_func=segfuncs.slow_reverse, num_workers=2) as m:
        n = 6
        assert m.map(range(n), [n] * n) == [10 * x for x in range(n)]


def test_generators_and_kwargs(mapper_cls):
    with mapper_cls(segment_func=segfuncs.with_kwargs, num_workers=2) as m:
        out = m.map(
            (x for x in range(5)),
            cycle_idx=(7 for _ in range(5)),
            walker_idx=(i for i in range(5)),
            scale=iter([2] * 5),
        )
    assert out == [(x, 7, x, 2) for x in range(5)]


def test_walkers_round_trip(mapper_cls):
    walkers = [segfuncs.make_walker(100, seed=i, weight=0.25) for i in range(4)]
    with mapper_cls(segment_func=segfuncs.displace, num_workers=2) as m:
        out = m.map(walkers, [10] * 4)
    expected = [segfuncs.displace(w, 10) for w in walkers]
    assert out == expected
    assert all(isinstance(w, wemap.Walker) for w in out)


def test_timing_dict_last_cycle_only(mapper_cls):
    m = started(mapper_cls, segfuncs.add)
    try:
        n_workers = m.num_workers if mapper_cls is not Mapper else 1
        m.map(range(6), range(6))
        times = m.worker_segment_times
        assert sorted(times) == list(range(n_workers))
        assert sum(len(v) for v in times.values()) == 6
        assert all(isinstance(t, float) and t >= 0 for v in times.values() for t in v)
        m.map([1], [2])
        times = m.worker_segment_times
        assert sorted(times) == list(range(n_workers)), "every worker index present, idle ones too"
        assert sum(len(v) for v in times.values()) == 1, "last cycle only"
    finally:
        m.cleanup()


def test_task_exception_carries_the_failure(mapper_cls):
    m = started(mapper_cls, segfuncs.fail_on)
    with pytest.raises(TaskException) as info:
        m.map(range(4), [2] * 4, cycle_idx=[5] * 4, walker_idx=range(4))
    exc = info.value
    assert exc.exc_type == "ValueError"
    assert exc.exc_message == "walker value 2 is bad"
    assert "fail_on" in exc.traceback and "raise ValueError" in exc.traceback
    assert exc.walker_idx == 2 and exc.cycle_idx == 5
    assert exc.worker_idx is not None and exc.pid is not None
    assert "walker 2" in str(exc) and "cycle 5" in str(exc)
    assert isinstance(pickle.loads(pickle.dumps(exc)), TaskException)
    m.cleanup()
    m.cleanup()


def test_task_exception_stops_workers(process_mapper_cls):
    m = started(process_mapper_cls, segfuncs.fail_on)
    with pytest.raises(TaskException):
        m.map(range(4), [1] * 4)
    from conftest import wait_for_no_children

    assert wait_for_no_children() == []
    with pytest.raises(RuntimeError, match="after cleanup"):
        m.map([1], [1])


@pytest.mark.parametrize(
    "func, expect",
    [(segfuncs.kill_on, "SIGKILL"), (segfuncs.exit_on, "exit code 3")],
    ids=["sigkill", "os._exit"],
)
@pytest.mark.slow
def test_worker_death_raises_not_hangs(process_mapper_cls, func, expect):
    m = started(process_mapper_cls, func)
    t0 = time.monotonic()
    with pytest.raises(WorkerException) as info:
        m.map(range(4), [1] * 4, cycle_idx=[3] * 4, walker_idx=range(4))
    assert time.monotonic() - t0 < 10
    exc = info.value
    assert expect in str(exc)
    assert exc.walker_idx == 1 and exc.cycle_idx == 3
    assert f"worker {exc.worker_idx}" in str(exc) and f"pid {exc.pid}" in str(exc)
    assert exc.exitcode == (-9 if expect == "SIGKILL" else 3)
    m.cleanup()


def test_cleanup_idempotent_and_lifecycle_errors(mapper_cls):
    m = mapper_cls(segment_func=segfuncs.add, num_workers=2)
    with pytest.raises(RuntimeError, match="before init"):
        m.map([1], [2])
    m.init()
    with pytest.raises(RuntimeError, match="twice"):
        m.init()
    assert m.map([1], [2]) == [3]
    m.cleanup()
    m.cleanup()
    with pytest.raises(RuntimeError, match="after cleanup"):
        m.map([1], [2])
    m.init()  # a mapper can be started again, as wepy does for a second run
    assert m.map([1, 2], [2, 2]) == [3, 4]
    m.cleanup()


def test_mismatched_lengths_rejected_before_work(mapper_cls, tmp_path):
    path = tmp_path / "ran.txt"
    with mapper_cls(segment_func=segfuncs.record, num_workers=2) as m:
        with pytest.raises(ValueError, match=r"different lengths.*#0: 3.*'path': 2"):
            m.map([1, 2, 3], path=[str(path)] * 2)
        with pytest.raises(TypeError, match="iterable"):
            m.map(5)
    assert not path.exists()


def test_init_requires_segment_func(mapper_cls):
    with pytest.raises(ValueError, match="segment_func"):
        mapper_cls(num_workers=1).init()


def test_num_workers_from_init(process_mapper_cls):
    m = process_mapper_cls()
    m.init(segment_func=segfuncs.who, num_workers=3)
    try:
        out = m.map(range(12))
        assert sorted(m.worker_segment_times) == [0, 1, 2]
        assert {o[1] for o in out} <= {0, 1, 2}
    finally:
        m.cleanup()


def test_worker_init_runs_once_per_worker(mapper_cls):
    with mapper_cls(segment_func=segfuncs.who, num_workers=2, worker_init=segfuncs.make_token) as m:
        first = m.map(range(10))
        second = m.map(range(10))
    tokens = {}
    for _, idx, pid, resource in first + second:
        assert resource[0] == idx
        tokens.setdefault((idx, pid), set()).add(resource[1])
    assert all(len(t) == 1 for t in tokens.values()), "resource built once per worker and reused"


def test_worker_subclass_injects_device(mapper_cls):
    with mapper_cls(
        segment_func=segfuncs.device_of,
        num_workers=2,
        worker_type=segfuncs.DeviceWorker,
        worker_attributes={"devices": [4, 7]},
    ) as m:
        out = m.map(range(6))
    assert {d for _, d in out} <= {"4", "7"}
    assert [x for x, _ in out] == list(range(6))


def test_failing_worker_init_is_reported(process_mapper_cls):
    m = process_mapper_cls(segment_func=segfuncs.add, num_workers=2, worker_init=segfuncs.failing_init)
    with pytest.raises(WorkerException, match=r"Worker.init: RuntimeError: no GPU for worker"):
        m.init()
    m.cleanup()


def test_unpicklable_segment_func_is_a_clear_error(process_mapper_cls):
    m = process_mapper_cls(segment_func=lambda x: x, num_workers=1)
    with pytest.raises(TypeError, match="cannot be pickled.*module level"):
        m.init()
    m.cleanup()


def test_an_unpicklable_mapper_keyword_is_a_clear_error_naming_it(process_mapper_cls):
    """Extra keywords travel to every worker (as ``mapper_attributes``): checked as the other arguments are."""
    m = process_mapper_cls(segment_func=segfuncs.add, num_workers=1, on_done=lambda: None)
    with pytest.raises(TypeError, match="mapper_attributes.*cannot be pickled.*module level"):
        m.init()
    m.cleanup()


def test_partial_and_bound_methods_work(process_mapper_cls):
    with process_mapper_cls(segment_func=functools.partial(segfuncs.add, b=100), num_workers=2) as m:
        assert m.map(range(3)) == [100, 101, 102]


def test_empty_map(mapper_cls):
    with mapper_cls(segment_func=segfuncs.add, num_workers=2) as m:
        assert m.map([], []) == []


def test_workers_are_separate_processes(process_mapper_cls):
    with process_mapper_cls(segment_func=segfuncs.who, num_workers=2) as m:
        pids = {pid for _, _, pid, _ in m.map(range(8))}
    assert os.getpid() not in pids


def test_arrays_survive(mapper_cls):
    arrays = [np.arange(i, i + 5, dtype=np.float32) for i in range(3)]
    with mapper_cls(segment_func=segfuncs.add, num_workers=2) as m:
        out = m.map(arrays, [np.float32(1)] * 3)
    for a, o in zip(arrays, out):
        np.testing.assert_array_equal(o, a + 1)


def test_current_worker_is_per_thread():
    """Two threads running segments at once (a Dask worker with two threads) each see their own worker."""
    import threading

    from wemap.worker import _set_current

    seen, barrier = {}, threading.Barrier(2)

    def run(name):
        w = wemap.Worker(len(seen), 2)
        _set_current(w)
        barrier.wait()
        seen[name] = wemap.current_worker() is w
        _set_current(None)

    threads = [threading.Thread(target=run, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": True, "b": True}
    assert wemap.current_worker() is None
