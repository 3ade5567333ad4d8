"""Errors name the walker and cycle a user acts on: the right ones, in the attributes and in the text.

Walker indices 10..17 of cycle 7, the failing walker at position 3 (walker 13): a walker index
swapped with the cycle (7), taken from the position (3) or off by one (12, 14) shows, and so does
any other number the text gives as a walker or a cycle. `SharedMemWorkerMapper` writes both into
each slot's header; what its workers and its timeout checks say about a walker is read from there.
"""

from __future__ import annotations

import logging
import re
import signal

import faultfuncs
import pytest
from mappers import MAPPERS

from wemap import TaskException, TaskTimeout, WorkerException

pytestmark = pytest.mark.timeout(90)

N = 8
WALKER_IDX = list(range(10, 10 + N))
CYCLE = 7
VICTIM = WALKER_IDX[3]


def where(**extra) -> dict:
    """The per-walker keywords of one cycle: walkers 10..17 of cycle 7, failing at walker 13."""
    return {"victim": [VICTIM] * N, "walker_idx": WALKER_IDX, "cycle_idx": [CYCLE] * N} | {
        k: [v] * N for k, v in extra.items()
    }


def assert_names_only(text: str, walker: int, cycle: int) -> None:
    """``text`` names walker ``walker`` and cycle ``cycle``, and no other walker or cycle."""
    walkers = [int(n) for n in re.findall(r"\bwalkers? (\d+)", text)]
    cycles = [int(n) for n in re.findall(r"\bcycle (\d+)", text)]
    assert walkers and set(walkers) == {walker}, f"walkers named {walkers}, expected only {walker}: {text!r}"
    assert cycles and set(cycles) == {cycle}, f"cycles named {cycles}, expected only {cycle}: {text!r}"


def assert_located(exc: Exception, walker: int = VICTIM, cycle: int = CYCLE) -> None:
    assert (exc.walker_idx, exc.cycle_idx) == (walker, cycle)
    assert_names_only(exc.args[0], walker, cycle)


def test_task_exception_names_the_failing_walker_and_cycle(mapper_cls):
    with mapper_cls(segment_func=faultfuncs.raise_at, num_workers=2) as m:
        with pytest.raises(TaskException) as info:
            m.map(list(range(N)), **where())
    exc = info.value
    assert_located(exc)
    assert (exc.exc_type, exc.exc_message) == ("ValueError", "the input is bad")
    assert exc.worker_idx in range(2 if mapper_cls is not MAPPERS["Mapper"] else 1)
    assert f"worker {exc.worker_idx} (pid {exc.pid})" in exc.args[0]


def test_killed_worker_names_the_walker_cycle_and_process(process_mapper_cls, tmp_path):
    runs = tmp_path / "runs"
    with process_mapper_cls(segment_func=faultfuncs.kill_at, num_workers=2, max_retries=0) as m:
        with pytest.raises(WorkerException) as info:
            m.map(list(range(N)), **where(runs=str(runs)))
    exc = info.value
    assert_located(exc)
    assert exc.exitcode == -signal.SIGKILL and "SIGKILL" in exc.args[0]
    victim_pids = [pid for w, pid in faultfuncs.read_runs(runs) if w == VICTIM]
    assert victim_pids == [exc.pid], "the exception names the process that ran the walker and died"
    assert f"pid {exc.pid}" in exc.args[0]


def test_a_result_that_cannot_travel_names_its_walker_and_cycle(process_mapper_cls):
    """The worker, not the segment, finds the result cannot be sent: what it says names the walker too."""
    with process_mapper_cls(segment_func=faultfuncs.unsendable_at, num_workers=2) as m:
        with pytest.raises(TaskException) as info:
            m.map(list(range(N)), **where())
    exc = info.value
    assert_located(exc)
    assert "refuses to be pickled" in exc.exc_message


@pytest.mark.slow
def test_timed_out_segment_names_its_walker_and_cycle_in_the_error_and_the_log(timeout_process_mapper_cls, caplog):
    with timeout_process_mapper_cls(segment_func=faultfuncs.hang_at, num_workers=2, task_timeout=1.0,
                                    first_task_timeout=1.0, max_retries=0) as m:
        with caplog.at_level(logging.WARNING, logger="wemap"), pytest.raises(TaskTimeout) as info:
            m.map(list(range(N)), **where())
    assert_located(info.value)
    killed = [r.getMessage() for r in caplog.records if "past its" in r.getMessage()]
    assert killed, "the kill is logged"
    for text in killed:
        assert_names_only(text, VICTIM, CYCLE)
