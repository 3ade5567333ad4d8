"""How often a walker runs and for how long: ``max_retries``, ``retry_on`` and ``task_timeout``.

A walker that keeps failing runs exactly ``max_retries + 1`` times, whether it raises an exception
listed in ``retry_on`` or kills its worker, on every mapper; runs are counted through a file the
segment appends to (they happen in other processes). ``task_timeout`` works on its own: a worker's
first segment then gets ten times it (`RetryPolicy`), later ones ``task_timeout``.
"""

from __future__ import annotations

import re
import time

import faultfuncs
import pytest

from wemap import TaskException, TaskTimeout, WorkerException
from wemap.faults import Attempts, RetryPolicy
from wemap.worker import TaskFailure

pytestmark = pytest.mark.timeout(90)

N = 6
WALKER_IDX = list(range(10, 10 + N))
CYCLE = 7
VICTIM = WALKER_IDX[3]


def cycle_args(**per_walker) -> dict:
    return {"walker_idx": WALKER_IDX, "cycle_idx": [CYCLE] * N} | {k: [v] * N for k, v in per_walker.items()}


def runs_of(runs, walker: int = VICTIM) -> int:
    return sum(1 for w, _ in faultfuncs.read_runs(runs) if w == walker)


# -- the policy itself -------------------------------------------------------------------------


def test_first_segment_limit_defaults_to_ten_times_task_timeout():
    policy = RetryPolicy(task_timeout=2.0)
    assert policy.timeout_for(first_segment=True) == 20.0
    assert policy.timeout_for(first_segment=False) == 2.0


def test_each_limit_set_alone_or_together():
    assert RetryPolicy(task_timeout=2.0, first_task_timeout=3.0).timeout_for(first_segment=True) == 3.0
    assert RetryPolicy(task_timeout=2.0, first_task_timeout=3.0).timeout_for(first_segment=False) == 2.0
    assert RetryPolicy(first_task_timeout=3.0).timeout_for(first_segment=True) == 3.0
    assert RetryPolicy(first_task_timeout=3.0).timeout_for(first_segment=False) is None
    assert RetryPolicy().timeout_for(first_segment=True) is None
    assert RetryPolicy().timeout_for(first_segment=False) is None


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"max_retries": -1}, ValueError, "max_retries must be >= 0"),
        ({"task_timeout": 0}, ValueError, "positive"),
        ({"task_timeout": -1.0}, ValueError, "positive"),
        ({"first_task_timeout": 0}, ValueError, "positive"),
        ({"retry_on": (ValueError, 3)}, TypeError, "exception types"),
        ({"retry_on": (int,)}, TypeError, "exception types"),
    ],
)
def test_policy_rejects_bad_limits(kwargs, error, match):
    with pytest.raises(error, match=match):
        RetryPolicy(**kwargs)


def test_policy_accepts_zero_retries_and_exception_types():
    policy = RetryPolicy(max_retries=0, retry_on=(faultfuncs.Retryable,), task_timeout=0.5)
    assert policy.max_retries == 0 and policy.retry_on == (faultfuncs.Retryable,)


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_attempts_allow_max_retries_reruns_of_a_lost_walker(max_retries):
    attempts = Attempts(RetryPolicy(max_retries=max_retries))
    where = dict(walker_idx=13, cycle_idx=7, worker="worker 0 (pid 1)", worker_idx=0, pid=1, exitcode=-9,
                 reason="died: SIGKILL")
    for _ in range(max_retries):  # two walkers, each with a budget of its own
        attempts.lost(5, **where)  # re-run it
        attempts.lost(6, **where)
    with pytest.raises(WorkerException,
                       match=rf"lost {max_retries + 1} time\(s\), more than max_retries={max_retries}"):
        attempts.lost(5, **where)
    assert attempts.recovered == 2 * max_retries


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_attempts_allow_max_retries_reruns_of_a_retryable_exception(max_retries):
    attempts = Attempts(RetryPolicy(max_retries=max_retries, retry_on=(faultfuncs.Retryable,)))
    failure = TaskFailure.capture(faultfuncs.Retryable("still failing"), (faultfuncs.Retryable,))
    where = dict(walker_idx=13, cycle_idx=7, worker_idx=0, pid=1)
    for _ in range(max_retries):
        attempts.failed(5, failure, **where)  # re-run it
    with pytest.raises(TaskException) as info:
        attempts.failed(5, failure, **where)
    assert info.value.exc_type == "Retryable" and info.value.walker_idx == 13
    assert attempts.recovered == max_retries


def test_attempts_never_retry_an_exception_not_listed():
    attempts = Attempts(RetryPolicy(max_retries=3, retry_on=(faultfuncs.Retryable,)))
    with pytest.raises(TaskException):
        attempts.failed(5, TaskFailure.capture(ValueError("bad")), walker_idx=13, cycle_idx=7, worker_idx=0, pid=1)
    assert attempts.recovered == 0


# -- every mapper, end to end -----------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 2])
def test_walker_always_raising_a_retryable_exception_runs_max_retries_plus_one_times(mapper_cls, max_retries, tmp_path):
    runs = tmp_path / "runs"
    with mapper_cls(segment_func=faultfuncs.raise_retryable_at, num_workers=2, max_retries=max_retries,
                    retry_on=(faultfuncs.Retryable,)) as m:
        with pytest.raises(TaskException) as info:
            m.map(list(range(N)), **cycle_args(victim=VICTIM, runs=str(runs)))
    exc = info.value
    assert exc.exc_type == "Retryable" and (exc.walker_idx, exc.cycle_idx) == (VICTIM, CYCLE)
    assert runs_of(runs) == max_retries + 1


def test_walker_raising_retryable_exceptions_within_the_budget_succeeds(mapper_cls, tmp_path):
    runs = tmp_path / "runs"
    with mapper_cls(segment_func=faultfuncs.fail_first_at, num_workers=2, max_retries=2,
                    retry_on=(faultfuncs.Retryable,)) as m:
        out = m.map(list(range(N)), **cycle_args(victim=VICTIM, runs=str(runs), failures=2))
        assert m.recovered_segments == 2
    assert out == list(range(N))
    assert runs_of(runs) == 3


@pytest.mark.parametrize("max_retries", [0, 1])
@pytest.mark.slow
def test_walker_killing_its_worker_every_time_runs_max_retries_plus_one_times(process_mapper_cls, max_retries,
                                                                               tmp_path):
    runs = tmp_path / "runs"
    with process_mapper_cls(segment_func=faultfuncs.kill_at, num_workers=2, max_retries=max_retries) as m:
        with pytest.raises(WorkerException) as info:
            m.map(list(range(N)), **cycle_args(victim=VICTIM, runs=str(runs)))
    assert (info.value.walker_idx, info.value.cycle_idx) == (VICTIM, CYCLE)
    assert runs_of(runs) == max_retries + 1
    pids = {pid for w, pid in faultfuncs.read_runs(runs) if w == VICTIM}
    assert len(pids) == max_retries + 1, "a new worker each time"


# -- task_timeout alone -----------------------------------------------------------------------


@pytest.mark.slow
def test_task_timeout_alone_gives_first_segments_ten_times_and_bounds_later_ones(timeout_process_mapper_cls):
    with timeout_process_mapper_cls(segment_func=faultfuncs.slow_first, num_workers=2, task_timeout=1.0,
                                    max_retries=0) as m:
        # every worker's first segment takes 2.5 s: past task_timeout, within the first segment's 10 s
        assert m.map(list(range(N)), **cycle_args(seconds=2.5, victim=-1)) == list(range(N))
        assert m.recovered_segments == 0
        t0 = time.monotonic()
        with pytest.raises(TaskTimeout) as info:  # a later segment that hangs (12 s) is killed after 1 s
            m.map(list(range(N)), **cycle_args(seconds=0.0, victim=VICTIM, hang=12.0))
        assert time.monotonic() - t0 < 10
    exc = info.value
    assert (exc.walker_idx, exc.cycle_idx) == (VICTIM, CYCLE)
    assert re.search(r"task_timeout \(1 s\)", exc.args[0]), exc.args[0]


@pytest.mark.slow
def test_task_timeout_alone_bounds_a_first_segment_at_ten_times(timeout_process_mapper_cls):
    first = WALKER_IDX[0]  # one worker: the first walker is its first segment
    with timeout_process_mapper_cls(segment_func=faultfuncs.slow_first, num_workers=1, task_timeout=0.3,
                                    max_retries=0) as m:
        t0 = time.monotonic()
        with pytest.raises(TaskTimeout) as info:  # a first segment that hangs (15 s) is killed after 3 s
            m.map(list(range(N)), **cycle_args(seconds=0.0, victim=first, hang=15.0))
        assert time.monotonic() - t0 < 12
    assert (info.value.walker_idx, info.value.cycle_idx) == (first, CYCLE)
    assert re.search(r"task_timeout \(3 s\)", info.value.args[0]), info.value.args[0]


@pytest.mark.slow
def test_a_later_segment_in_the_same_map_gets_task_timeout_not_the_first_segments(timeout_process_mapper_cls):
    """One worker: its first walker (the first segment, 60 s allowed) is done at once, the second hangs;
    it is killed after task_timeout (1 s), not after the first segment's 60 s."""
    victim = WALKER_IDX[1]
    with timeout_process_mapper_cls(segment_func=faultfuncs.slow_first, num_workers=1, task_timeout=1.0,
                                    first_task_timeout=60.0, max_retries=0) as m:
        t0 = time.monotonic()
        with pytest.raises(TaskTimeout) as info:
            m.map(list(range(N)), **cycle_args(seconds=0.0, victim=victim, hang=80.0))
        assert time.monotonic() - t0 < 30
    assert (info.value.walker_idx, info.value.cycle_idx) == (victim, CYCLE)
    assert re.search(r"task_timeout \(1 s\)", info.value.args[0]), info.value.args[0]


@pytest.mark.slow
def test_each_replacement_gets_a_first_segments_allowance_and_later_ones_task_timeout(timeout_process_mapper_cls,
                                                                                       tmp_path):
    """One worker, replaced every map: walker VICTIM hangs on its first run (a later segment: killed after
    task_timeout, 0.5 s, not first_task_timeout, 30 s), and runs again on the replacement, whose first
    segment takes 1 s (past task_timeout: it must not be killed). What is known of each worker is its own."""
    pids = set()
    with timeout_process_mapper_cls(segment_func=faultfuncs.slow_first_hang_once, num_workers=1, task_timeout=0.5,
                                    first_task_timeout=30.0, max_retries=1) as m:
        for cycle in range(4):
            runs = tmp_path / f"runs-{cycle}"
            t0 = time.monotonic()
            out = m.map(list(range(N)), [1.0] * N, [VICTIM] * N, [str(runs)] * N, walker_idx=WALKER_IDX,
                        cycle_idx=[cycle] * N)
            assert time.monotonic() - t0 < 20, f"cycle {cycle}: the hung walker was not killed after task_timeout"
            assert out == list(range(N))
            assert m.recovered_segments == cycle + 1
            assert runs_of(runs) == 2
            pids |= {pid for w, pid in faultfuncs.read_runs(runs) if w == VICTIM}
    assert len(pids) == 5, "a new worker each cycle"

