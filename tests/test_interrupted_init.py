"""A Ctrl-C that lands while ``init`` starts the workers leaves no worker behind, even while the
interrupted frames are kept (an interactive session keeps the last traceback), and the mapper can
be started again. `tests/stress/test_init_interrupts.py` interrupts ``init`` at random points."""

from __future__ import annotations

import logging
import signal

import pytest
from conftest import our_children, wait_for_no_children
from interruptfuncs import CtrlCOnPickle, add

from wemap import SharedMemWorkerMapper, WorkerMapper

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("cls", [WorkerMapper, SharedMemWorkerMapper], ids=lambda c: c.__name__)
@pytest.mark.parametrize("while_starting", [1, 2], ids=["worker 1", "worker 2"])
def test_ctrl_c_while_starting_a_worker_ends_those_started(cls, while_starting):
    m = cls(segment_func=add, num_workers=3,
            worker_attributes={"ctrl_c": CtrlCOnPickle(while_starting + 2)})
    with pytest.raises(KeyboardInterrupt) as info:
        m.init()
    held = info  # the traceback and the frames it holds stay alive, as sys.last_traceback would keep them
    left = wait_for_no_children(timeout=5.0)
    assert not left, f"workers outlived an interrupted init: {[p.pid for p in left]}"
    m.init()  # the same mapper starts cleanly afterwards (its attribute pickles quietly now)
    try:
        assert m.map([1, 2, 3], [1, 1, 1]) == [2, 3, 4]
    finally:
        m.cleanup()
    assert not our_children() and held is not None


class _CtrlCOnLog(logging.Handler):
    """Sends this process a real SIGINT when the pool logs ``message``: a Ctrl-C at that point of init."""

    def __init__(self, message: str) -> None:
        super().__init__(logging.DEBUG)
        self.message = message

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.message):
            signal.raise_signal(signal.SIGINT)


@pytest.fixture
def ctrl_c_on_log():
    pool_logger = logging.getLogger("wemap.pool")
    handlers, level = [], pool_logger.level

    def arm(message: str) -> None:
        handlers.append(_CtrlCOnLog(message))
        pool_logger.addHandler(handlers[-1])
        pool_logger.setLevel(logging.DEBUG)

    yield arm
    for h in handlers:
        pool_logger.removeHandler(h)
    pool_logger.setLevel(level)


@pytest.mark.parametrize("cls", [WorkerMapper, SharedMemWorkerMapper], ids=lambda c: c.__name__)
@pytest.mark.parametrize("worker", [0, 1])
def test_ctrl_c_just_after_a_worker_started_ends_it(cls, worker, ctrl_c_on_log):
    """The interrupt lands in the pool's own code with a worker's process started and its handles in
    the interrupted frame: that worker, and those before it, are ended before the interrupt goes on."""
    ctrl_c_on_log(f"started worker {worker} (pid")
    m = cls(segment_func=add, num_workers=2)
    with pytest.raises(KeyboardInterrupt) as info:
        m.init()
    left = wait_for_no_children(timeout=5.0)
    assert not left, f"workers outlived an interrupted init: {[p.pid for p in left]}"
    assert info.traceback  # held until here, as an interactive session holds the last one
