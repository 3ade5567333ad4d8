"""Fault injection: killed workers, hung segments, signals to the manager, corrupt slots.

Each test asserts the walkers that come back are exactly the fault-free ones (or that the
named exception comes), and the autouse fixture checks no process and no segment of ours
remains.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import faultfuncs
import psutil
import pytest
import segfuncs
from mappers import MAPPERS

import wemap
from wemap import TaskException, TaskTimeout, WorkerException

PROCESS_MAPPERS = [name for name in MAPPERS if name not in ("Mapper", "DaskMapper")]  # Dask: tests/test_dask_mapper.py
pytestmark = pytest.mark.timeout(90)

N = 6


@pytest.fixture(params=PROCESS_MAPPERS)
def mapper_cls(request):
    return MAPPERS[request.param]


def walkers(n=N):
    return [segfuncs.make_walker(200, seed=i, weight=1 / n) for i in range(n)]


def cycle_kwargs(cycle, n=N):
    return {"walker_idx": range(n), "cycle_idx": [cycle] * n}


def test_killed_worker_mid_segment_is_replaced_and_walker_rerun(mapper_cls, tmp_path):
    ws = walkers()
    with mapper_cls(segment_func=segfuncs.kill_once, num_workers=2) as m:
        for cycle in range(3):  # the fault comes in cycle 1 of 3
            victim = 4 if cycle == 1 else -1
            out = m.map(ws, [2] * N, marker_dir=[str(tmp_path)] * N, victim=[victim] * N, **cycle_kwargs(cycle))
            assert out == [segfuncs.displace(w, 2) for w in ws]
            ws = out
        assert m.recovered_segments == 1
        assert sorted(m.worker_segment_times) == [0, 1]


def test_same_walker_killing_every_worker_exceeds_retries(mapper_cls):
    with mapper_cls(segment_func=segfuncs.kill_on, num_workers=2, max_retries=1) as m:
        with pytest.raises(WorkerException) as info:
            m.map(range(4), [2] * 4, walker_idx=range(4), cycle_idx=[7] * 4)
    exc = info.value
    assert not isinstance(exc, TaskTimeout)
    assert exc.walker_idx == 2 and exc.cycle_idx == 7 and exc.exitcode == -signal.SIGKILL
    assert "walker 2 of cycle 7 was lost 2 time(s), more than max_retries=1" in str(exc)
    assert "SIGKILL" in str(exc)


@pytest.mark.slow
def test_hung_segment_is_killed_and_rerun(mapper_cls, tmp_path):
    ws = walkers()
    with mapper_cls(segment_func=segfuncs.hang_once, num_workers=2, task_timeout=1.0, first_task_timeout=3.0) as m:
        t0 = time.monotonic()
        out = m.map(ws, [1] * N, marker_dir=[str(tmp_path)] * N, victim=[2] * N, **cycle_kwargs(0))
        assert time.monotonic() - t0 < 30
    assert out == [segfuncs.displace(w, 1) for w in ws]


@pytest.mark.slow
def test_segment_always_hanging_raises_task_timeout(mapper_cls):
    with mapper_cls(segment_func=segfuncs.hang_always, num_workers=2, task_timeout=0.5,
                    first_task_timeout=0.5, max_retries=1) as m:
        with pytest.raises(TaskTimeout, match=r"walker 3 of cycle 5 .*task_timeout \(0.5 s\)") as info:
            m.map(walkers(), [1] * N, victim=[3] * N, **cycle_kwargs(5))
    assert info.value.walker_idx == 3


def test_exception_is_not_retried_unless_opted_in(mapper_cls, tmp_path):
    ws = walkers()
    args = dict(marker_dir=[str(tmp_path / "a")] * N, victim=[1] * N, **cycle_kwargs(0))
    (tmp_path / "a").mkdir()
    with mapper_cls(segment_func=segfuncs.flaky_once, num_workers=2) as m:
        with pytest.raises(TaskException, match="Flaky"):
            m.map(ws, [1] * N, **args)
    (tmp_path / "b").mkdir()
    args["marker_dir"] = [str(tmp_path / "b")] * N
    with mapper_cls(segment_func=segfuncs.flaky_once, num_workers=2, retry_on=(segfuncs.Flaky,)) as m:
        out = m.map(ws, [1] * N, **args)
        assert m.recovered_segments == 1
    assert out == [segfuncs.displace(w, 1) for w in ws]


def test_mapper_retry_on_in_process(tmp_path):
    ws = walkers()
    with wemap.Mapper(segment_func=segfuncs.flaky_once, retry_on=(segfuncs.Flaky,)) as m:
        out = m.map(ws, [1] * N, marker_dir=[str(tmp_path)] * N, victim=[0] * N, **cycle_kwargs(0))
    assert out == [segfuncs.displace(w, 1) for w in ws]


MANAGER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    # a manager started from a non-interactive shell in the background inherits SIGINT
    # ignored; an interactive user's manager has Python's handler, so install it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    import faultfuncs, psutil, segfuncs, wemap
    from wemap.pool import multiprocessing_helper_pids

    if __name__ == "__main__":
        m = getattr(wemap, {mapper!r})(segment_func=segfuncs.sleep_marked, num_workers=2)
        m.init()
        m.map([1], [0.0])
        pids = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in multiprocessing_helper_pids()]
        print(getattr(m, "segment_name", None), *pids, flush=True)
        try:
            m.map([1, 2, 3], [60, 60, 60], marker_dir=[{markers!r}] * 3)
        finally:
            print("cleaned", faultfuncs.mapper_state(m), flush=True)
    """
)


def start_manager_mid_map(mapper_cls, markers) -> tuple[subprocess.Popen, str, list[int]]:
    """A child manager whose workers are each into a 60 s segment: (process, segment, worker pids)."""
    script = MANAGER_SCRIPT.format(tests=os.path.dirname(__file__), mapper=mapper_cls.__name__, markers=str(markers))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline().split()
    if not first:
        proc.kill()
        pytest.fail(f"the child manager did not start: {proc.communicate()[1]}")
    faultfuncs.wait_for_markers(str(markers), 2)  # both workers are into a segment
    return proc, first[0], [int(p) for p in first[1:]]


def assert_gone(pids: list[int], segment: str, timeout: float = 15.0) -> None:
    """Every worker ends and the segment is unlinked within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        left = segment != "None" and os.path.exists(f"/dev/shm/{segment}")
        if not alive and not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not alive, f"workers outlived their manager: {alive}"
    assert not left, f"segment {segment} left behind"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_signal_to_manager_during_map_cleans_up(mapper_cls, signum, tmp_path):
    proc, segment, pids = start_manager_mid_map(mapper_cls, tmp_path)
    try:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "cleaned closed" in out, err
    expected = "KeyboardInterrupt" if signum == signal.SIGINT else "SIGTERM"
    assert expected in err
    assert_gone(pids, segment, timeout=0.0)  # cleanup finished before the manager exited


def test_killed_manager_leaves_no_worker_and_no_segment(mapper_cls, tmp_path):
    proc, segment, pids = start_manager_mid_map(mapper_cls, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert_gone(pids, segment)


SHM = MAPPERS["SharedMemWorkerMapper"]


def test_corrupt_slot_header_is_a_worker_exception():
    ws = walkers(2)
    with SHM(segment_func=segfuncs.corrupt_headers, num_workers=1) as m:
        m.map(ws, [""] * 2)  # sizes the segment; an empty name corrupts nothing
        with pytest.raises(WorkerException, match=r"header says task 999999.*corrupt"):
            m.map(ws, [m.segment_name] * 2)


def test_corrupt_input_descriptor_is_a_worker_exception():
    ws = walkers(2)
    with SHM(segment_func=segfuncs.corrupt_other_inputs, num_workers=1) as m:
        m.map(ws, ["unused"] * 2, walker_idx=[5, 6])  # sizes the segment, corrupts nothing
        with pytest.raises(WorkerException, match=r"walker 1.*could not read the walker.*corrupt"):
            m.map(ws, [m.segment_name] * 2, walker_idx=[0, 1])


@pytest.mark.slow
def test_worker_dying_while_idle_leaves_the_next_map_working(mapper_cls):
    ws = walkers(2)
    with mapper_cls(segment_func=segfuncs.die_after_returning, num_workers=2) as m:
        out = m.map(ws, [1.0, 1.0], victim=[0, 0], **cycle_kwargs(0, 2))  # walker 0's worker dies idle
        assert out == ws
        for cycle in (1, 2):
            out = m.map(ws, [0.0, 0.0], victim=[-1, -1], **cycle_kwargs(cycle, 2))
            assert out == ws
        assert sorted(m.worker_segment_times) == [0, 1]


@pytest.mark.slow
def test_two_hung_workers_both_time_out(mapper_cls):
    t0 = time.monotonic()
    with mapper_cls(segment_func=segfuncs.sleep_for, num_workers=2, task_timeout=1.0, first_task_timeout=1.0,
                    max_retries=0) as m:
        with pytest.raises(TaskTimeout, match=r"task_timeout \(1 s\)"):
            m.map(range(3), [60, 0.5, 60])
    assert time.monotonic() - t0 < 20, "a second hung worker was never checked against task_timeout"


def test_walkers_no_worker_took_are_not_charged(mapper_cls, tmp_path):
    """One worker: when it dies, the walkers still queued behind the victim were never started."""
    with mapper_cls(segment_func=segfuncs.kill_once_each, num_workers=1, max_retries=0) as m:
        with pytest.raises(WorkerException) as info:
            m.map(walkers(4), [1] * 4, marker_dir=[str(tmp_path)] * 4, victims=[(1,)] * 4, **cycle_kwargs(0, 4))
    exc = info.value
    assert exc.walker_idx == 1 and exc.exitcode == -signal.SIGKILL and exc.pid > 0
    assert "walker 1 of cycle 0 was lost 1 time(s)" in str(exc)
    (tmp_path / "b").mkdir()
    ws = walkers(4)
    with mapper_cls(segment_func=segfuncs.kill_once_each, num_workers=1, max_retries=1) as m:
        out = m.map(ws, [1] * 4, marker_dir=[str(tmp_path / "b")] * 4, victims=[(1, 2)] * 4, **cycle_kwargs(0, 4))
    assert out == [segfuncs.displace(w, 1) for w in ws]


INTERRUPTED_TWICE = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.path.insert(0, {tests!r})
    import psutil, segfuncs, wemap
    from wemap.pool import multiprocessing_helper_pids

    if __name__ == "__main__":
        m = getattr(wemap, {mapper!r})(segment_func=segfuncs.sleep_for, num_workers=2)
        m.init()
        pids = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in multiprocessing_helper_pids()]

        def interrupt_twice():
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)  # lands while the first interrupt is stopping the workers
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_twice, daemon=True).start()
        try:
            m.map([1, 2], [60, 60])
        except KeyboardInterrupt as exc:
            held = exc  # an interactive session keeps the last exception, and its frames
            time.sleep(0.5)
            alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            print("alive", *alive, flush=True)
    """
)


@pytest.mark.slow
def test_second_interrupt_while_stopping_still_ends_every_worker(mapper_cls):
    script = INTERRUPTED_TWICE.format(tests=os.path.dirname(__file__), mapper=mapper_cls.__name__)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "alive" in proc.stdout, proc.stderr
    assert proc.stdout.split() == ["alive"], f"workers outlived two interrupts: {proc.stdout}"


def test_worker_killed_between_cycles_is_not_charged(mapper_cls):
    with mapper_cls(segment_func=segfuncs.who, num_workers=2, max_retries=0) as m:
        pids = {pid for _, _, pid, _ in m.map(range(4))}
        victim = psutil.Process(min(pids))
        victim.kill()
        victim.wait(10)
        out = m.map(range(4))  # max_retries=0: any walker charged with the death would fail the map
    assert [x for x, *_ in out] == [0, 1, 2, 3]
    assert victim.pid not in {pid for _, _, pid, _ in out}


def test_unpicklable_argument_names_the_walker(mapper_cls):
    with mapper_cls(segment_func=segfuncs.echo, num_workers=2) as m:
        with pytest.raises(ValueError, match=r"walker 1 .*refuses to be pickled"):
            m.map([1, segfuncs.Unpicklable(), 3], [0, 0, 0])


@pytest.mark.slow
def test_finished_worker_is_not_timed_out_while_a_replacement_starts(mapper_cls, tmp_path):
    """Replacing the killed worker takes 2 s (worker_init): walker 1 finished meanwhile and must be kept."""
    with mapper_cls(segment_func=segfuncs.killed_then_slow, num_workers=2, worker_init=segfuncs.slow_init,
                    task_timeout=2.5, first_task_timeout=2.5, max_retries=1) as m:
        assert m.map([0, 1], [str(tmp_path)] * 2) == [0, 1]
    assert len((tmp_path / "ran-1").read_text().split()) == 1, \
        "walker 1 ran again: its worker was killed after it finished"


def test_mapper_retry_sees_the_original_input(tmp_path):
    with wemap.Mapper(segment_func=segfuncs.mutate_then_flaky, retry_on=(segfuncs.Flaky,)) as m:
        state = {"x": 0}
        assert m.map([state], [str(tmp_path)]) == [1]


def test_recovered_worker_deaths_leave_the_slots_their_size(tmp_path):
    """A segment renewed after a lost worker is made again at the size it had, not 25% larger each time
    (a long run with occasional OOM kills would grow it until /dev/shm was full)."""
    ws = walkers(4)
    with SHM(segment_func=segfuncs.kill_once, num_workers=2) as m:
        m.map(ws, [1] * 4, marker_dir=[str(tmp_path)] * 4, victim=[-1] * 4, **cycle_kwargs(0, 4))
        size = os.stat(f"/dev/shm/{m.segment_name}").st_size
        for cycle in range(1, 5):
            marker = tmp_path / f"cycle{cycle}"
            marker.mkdir()
            out = m.map(ws, [1] * 4, marker_dir=[str(marker)] * 4, victim=[cycle % 4] * 4, **cycle_kwargs(cycle, 4))
            assert out == [segfuncs.displace(w, 1) for w in ws]
        assert m.recovered_segments == 4
        assert os.stat(f"/dev/shm/{m.segment_name}").st_size == size
