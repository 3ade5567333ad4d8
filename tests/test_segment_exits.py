"""A segment that leaves the way a program leaves (``sys.exit``, ``raise KeyboardInterrupt``) has
failed, like one that raises anything else: `TaskException` with its traceback, run once, on every
mapper. A signal is not the segment's doing: a worker given SIGTERM is lost and its walker re-run,
a worker ignores SIGINT (the manager owns Ctrl-C), and in `Mapper`, where segments run in the
manager, a Ctrl-C or SIGTERM during a segment stops the map as it stops any other code.
"""

from __future__ import annotations

import signal
import threading

import exitfuncs
import pytest
from faultfuncs import read_runs
from mappers import MAPPERS

from wemap import Mapper, TaskException

pytestmark = pytest.mark.timeout(60)

N = 4
VICTIM = 1
WORKER_MAPPERS = [name for name in MAPPERS if name in ("WorkerMapper", "SharedMemWorkerMapper")]


@pytest.fixture(params=WORKER_MAPPERS)
def worker_mapper_cls(request):
    return MAPPERS[request.param]


def per_walker(runs, **extra) -> dict:
    return {"victim": [VICTIM] * N, "runs": [str(runs)] * N, "walker_idx": list(range(N))} | {
        k: [v] * N for k, v in extra.items()
    }


def runs_of(runs, walker: int) -> int:
    return sum(1 for w, _ in read_runs(runs) if w == walker)


@pytest.mark.parametrize(
    "func, exc_type, message, line",
    [
        (exitfuncs.exit_at, "SystemExit", "3", "sys.exit(3)"),
        (exitfuncs.interrupt_at, "KeyboardInterrupt", "the segment stops itself", "raise KeyboardInterrupt"),
    ],
    ids=["sys.exit", "KeyboardInterrupt"],
)
def test_segment_exit_is_a_task_exception_run_once(mapper_cls, func, exc_type, message, line, tmp_path):
    runs = tmp_path / "runs"
    with mapper_cls(segment_func=func, num_workers=2, max_retries=2) as m:
        with pytest.raises(TaskException) as info:
            m.map(list(range(N)), **per_walker(runs))
    exc = info.value
    assert (exc.exc_type, exc.exc_message, exc.walker_idx) == (exc_type, message, VICTIM)
    assert line in exc.traceback and f"in {func.__name__}" in exc.traceback
    assert runs_of(runs, VICTIM) == 1  # not taken for a crash: no re-run


def test_segment_exit_in_a_thread_of_mapper(tmp_path):
    """Off the main thread no signal handler runs, so a KeyboardInterrupt there is the segment's."""
    runs = tmp_path / "runs"
    caught: list[BaseException] = []

    def run() -> None:
        with Mapper(segment_func=exitfuncs.interrupt_at) as m:
            try:
                m.map(list(range(N)), **per_walker(runs))
            except BaseException as exc:  # noqa: BLE001 - the test looks at what came out
                caught.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert len(caught) == 1 and isinstance(caught[0], TaskException), caught
    assert caught[0].exc_type == "KeyboardInterrupt"


def test_ctrl_c_during_a_mapper_segment_interrupts_the_map(tmp_path):
    """In `Mapper` a real Ctrl-C (SIGINT) lands in whatever segment runs: it is the user's, not the
    segment's, and comes out as KeyboardInterrupt; the mapper cleans up and starts again."""
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    runs = tmp_path / "runs"
    m = Mapper(segment_func=exitfuncs.signal_self_at)
    m.init()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            m.map(list(range(N)), **per_walker(runs, signum=exitfuncs.SIGINT))
        assert not isinstance(info.value, TaskException)
        assert [w for w, _ in read_runs(runs)] == [0, VICTIM]  # stopped there, nothing after it
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the map
        assert m.map(list(range(N)), **per_walker(runs, signum=exitfuncs.SIGINT)) == list(range(N))
    finally:
        m.cleanup()


def test_sigterm_during_a_mapper_segment_stops_the_map(tmp_path):
    runs = tmp_path / "runs"
    with Mapper(segment_func=exitfuncs.signal_self_at) as m:
        with pytest.raises(SystemExit) as info:
            m.map(list(range(N)), **per_walker(runs, signum=exitfuncs.SIGTERM))
    assert not isinstance(info.value, TaskException)
    assert info.value.code == 128 + signal.SIGTERM
    assert [w for w, _ in read_runs(runs)] == [0, VICTIM]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigterm_to_a_worker_loses_the_walker_and_reruns_it(worker_mapper_cls, tmp_path):
    runs = tmp_path / "runs"
    with worker_mapper_cls(segment_func=exitfuncs.signal_self_at, num_workers=2, max_retries=2) as m:
        out = m.map(list(range(N)), **per_walker(runs, signum=exitfuncs.SIGTERM))
        assert out == list(range(N))
        assert runs_of(runs, VICTIM) == 2 and m.recovered_segments == 1
        pids = {p for w, p in read_runs(runs) if w == VICTIM}
        assert len(pids) == 2  # the second run on another process: the first one died


def test_sigint_to_a_worker_is_ignored(worker_mapper_cls, tmp_path):
    runs = tmp_path / "runs"
    with worker_mapper_cls(segment_func=exitfuncs.signal_self_at, num_workers=2) as m:
        assert m.map(list(range(N)), **per_walker(runs, signum=exitfuncs.SIGINT)) == list(range(N))
        assert runs_of(runs, VICTIM) == 1 and m.recovered_segments == 0
