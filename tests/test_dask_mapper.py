"""DaskMapper beyond the shared contract (tests/test_contract.py runs that on it too).

Lost workers, what cleanup leaves, clusters the user owns, per-worker init and the data
path. Every cluster here is a LocalCluster of 2 single-thread processes on 127.0.0.1; the
autouse fixture in conftest.py fails a test that leaves any of its processes behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import faultfuncs
import numpy as np
import psutil
import pytest
import segfuncs

distributed = pytest.importorskip("distributed")  # before wemap.dask_mapper, which imports it

from wemap import TaskException, WorkerException  # noqa: E402
from wemap.dask_mapper import DaskMapper  # noqa: E402

pytestmark = pytest.mark.timeout(60)

N = 6


def walkers(n=N):
    return [segfuncs.make_walker(200, seed=i, weight=1 / n) for i in range(n)]


def cycle_kwargs(cycle, n=N):
    return {"walker_idx": range(n), "cycle_idx": [cycle] * n}


@pytest.fixture
def user_cluster():
    """A cluster the test owns, as a user would: the mapper must leave it running."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()


def wemap_plugins(dask_worker):
    return sorted(name for name in dask_worker.plugins if name.startswith("wemap-"))


def worker_index(dask_worker):
    state = [p for n, p in dask_worker.plugins.items() if n.startswith("wemap-worker-")]
    return state[0].worker.worker_idx if state else None


@pytest.mark.timeout(90)
def test_killed_worker_mid_map_gives_the_same_walkers(tmp_path):
    ws = walkers()
    with DaskMapper(segment_func=segfuncs.kill_once, num_workers=2) as m:
        for cycle in range(3):  # the worker running walker 4 is SIGKILLed in cycle 1 of 3
            victim = 4 if cycle == 1 else -1
            out = m.map(ws, [2] * N, marker_dir=[str(tmp_path)] * N, victim=[victim] * N, **cycle_kwargs(cycle))
            assert out == [segfuncs.displace(w, 2) for w in ws]
            ws = out
        assert m.recovered_segments == 1
        assert sorted(m.worker_segment_times) == [0, 1], "the restarted worker keeps its index"
        m.client.wait_for_workers(2, timeout=30)
        assert sorted(m.client.run(worker_index).values()) == [0, 1]


@pytest.mark.timeout(90)
def test_walker_killing_every_worker_exceeds_the_retry_budget():
    m = DaskMapper(segment_func=segfuncs.kill_on, num_workers=2, max_retries=1)
    with m, pytest.raises(WorkerException) as info:
        m.map(range(4), [2] * 4, walker_idx=range(4), cycle_idx=[7] * 4)
    exc = info.value
    assert exc.walker_idx == 2 and exc.cycle_idx == 7 and exc.exitcode == -signal.SIGKILL
    assert "walker 2 of cycle 7 was lost 2 time(s), more than max_retries=1" in str(exc)
    assert "SIGKILL" in str(exc)
    with pytest.raises(RuntimeError, match="after cleanup"):  # the failed map closed it
        m.map(range(4), [2] * 4, walker_idx=range(4), cycle_idx=[7] * 4)


def test_retry_on_reruns_a_raising_walker(tmp_path):
    ws = walkers()
    with DaskMapper(segment_func=segfuncs.flaky_once, num_workers=2, retry_on=(segfuncs.Flaky,)) as m:
        out = m.map(ws, [1] * N, marker_dir=[str(tmp_path)] * N, victim=[1] * N, **cycle_kwargs(0))
        assert m.recovered_segments == 1
    assert out == [segfuncs.displace(w, 1) for w in ws]


def test_cleanup_ends_every_process_and_is_idempotent():
    m = DaskMapper(segment_func=segfuncs.who, num_workers=2)
    m.init()
    pids = {pid for _, _, pid, _ in m.map(range(8))}
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert pids and pids <= children, "workers are child processes of the manager"
    m.cleanup()
    m.cleanup()
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
        assert time.monotonic() < deadline, "worker processes still running after cleanup"
        time.sleep(0.05)
    assert m.client is None


def test_failed_map_stops_a_segment_still_running():
    """A raising walker ends the map at once, even while another walker sleeps for 60 s."""
    m = DaskMapper(segment_func=segfuncs.hang_always, num_workers=2)
    m.init()
    t0 = time.monotonic()
    with pytest.raises(TaskException) as info:  # walker 1 is not a Walker: displace() raises
        m.map([walkers(1)[0], 5], [1, 1], victim=[0, 0], walker_idx=[0, 1], cycle_idx=[0, 0])
    assert info.value.walker_idx == 1 and info.value.exc_type == "AttributeError"
    assert time.monotonic() - t0 < 15
    from conftest import wait_for_no_children

    assert wait_for_no_children() == []


def test_user_client_cluster_address_and_scheduler_file_are_left_running(user_cluster, tmp_path):
    cluster, client = user_cluster
    scheduler_file = tmp_path / "scheduler.json"
    client.write_scheduler_file(str(scheduler_file))
    for target in (client, cluster, cluster.scheduler_address, str(scheduler_file)):
        with DaskMapper(target, segment_func=segfuncs.add) as m:
            assert m.num_workers == 2
            assert m.map(range(4), [10] * 4) == [10, 11, 12, 13]
            assert sorted(m.worker_segment_times) == [0, 1]
        assert m.client is None
        assert client.status == "running"
        assert len(client.scheduler_info()["workers"]) == 2
        assert client.submit(segfuncs.add, 1, 2).result() == 3
        assert all(p == [] for p in client.run(wemap_plugins).values()), "worker plugins unregistered"
        assert all(p == [] for p in client.run(wemap_plugins, nanny=True).values()), "nanny plugins too"


def test_resources_are_advertised_and_required(user_cluster):
    with DaskMapper(segment_func=segfuncs.who, num_workers=2, resources={"GPU": 1}) as m:
        infos = m.client.scheduler_info()["workers"].values()
        assert [w["resources"] for w in infos] == [{"GPU": 1}, {"GPU": 1}]
        assert [x for x, *_ in m.map(range(6))] == list(range(6))
    _, client = user_cluster  # its workers have no GPU resource: an error at init, not a hang
    m = DaskMapper(client, segment_func=segfuncs.add, resources={"GPU": 1})
    with pytest.raises(ValueError, match=r"resources=\{'GPU': 1\}"):
        m.init()
    m.cleanup()
    assert client.status == "running"


def test_worker_init_runs_once_per_worker(tmp_path):
    log = tmp_path / "inits.txt"
    with DaskMapper(segment_func=segfuncs.who, num_workers=2, worker_init=_InitLog(str(log))) as m:
        seen = set()
        for _ in range(3):
            seen |= {(idx, pid) for _, idx, pid, _ in m.map(range(8))}
    lines = log.read_text().split()
    assert sorted(lines) == sorted(f"{idx}:{pid}" for idx, pid in seen)
    assert sorted(int(line.split(":")[0]) for line in lines) == [0, 1]


class _InitLog:
    """A picklable ``worker_init`` that appends ``idx:pid`` to a file (module level for pickling)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, worker):
        with open(self.path, "a") as f:
            f.write(f"{worker.worker_idx}:{os.getpid()}\n")
        return worker.worker_idx


def test_current_worker_is_the_plugins_worker():
    with DaskMapper(segment_func=segfuncs.device_of, num_workers=2, worker_type=segfuncs.DeviceWorker,
                    worker_attributes={"devices": [4, 7]}) as m:
        out = m.map(range(6))
        by_index = m.client.run(worker_index)
    assert sorted(by_index.values()) == [0, 1]
    assert {d for _, d in out} <= {"4", "7"}


def test_a_worker_joining_later_gets_the_next_index(user_cluster):
    cluster, client = user_cluster
    with DaskMapper(client, segment_func=segfuncs.who) as m:
        cluster.scale(3)
        client.wait_for_workers(3, timeout=30)
        deadline = time.monotonic() + 10
        while sorted(i for i in client.run(worker_index).values() if i is not None) != [0, 1, 2]:
            assert time.monotonic() < deadline, client.run(worker_index)
            time.sleep(0.1)
        out = m.map(range(12))
        assert {idx for _, idx, _, _ in out} <= {0, 1, 2}


def test_walker_arrays_leave_the_pickle_as_frames():
    """What Dask does with a wemap.Walker argument or result: arrays become separate frames."""
    walker = segfuncs.make_walker(100_000)
    header, frames = distributed.protocol.serialize(walker)
    sizes = sorted(memoryview(f).nbytes for f in frames)
    assert sizes[-2:] == [walker["positions"].nbytes, walker["velocities"].nbytes]
    assert sizes[0] < 1000, "the pickle itself holds no array data"
    back = distributed.protocol.deserialize(header, frames)
    assert back == walker


def test_arrays_round_trip_through_the_cluster():
    ws = [segfuncs.make_walker(50_000, seed=i) for i in range(4)]
    with DaskMapper(segment_func=segfuncs.echo, num_workers=2) as m:
        out = m.map(ws, [1] * 4)
    assert out == ws
    assert all(isinstance(o["positions"], np.ndarray) for o in out)


def test_importing_wemap_does_not_import_dask():
    code = "import sys, wemap; sys.exit(bool({'dask', 'distributed'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


SIGNAL_SCRIPT = """
import os, signal, sys
# inherited SIGINT-ignored from a background shell: restore what an interactive run has
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
import faultfuncs
import segfuncs
from wemap.dask_mapper import DaskMapper

if __name__ == "__main__":
    m = DaskMapper(segment_func=segfuncs.sleep_marked, num_workers=2)
    m.init()
    m.map([1], [0.0])
    print(*m.client.run(os.getpid).values(), flush=True)
    try:
        m.map([1, 2, 3], [60, 60, 60], marker_dir=[{markers!r}] * 3)
    finally:
        print("cleaned", faultfuncs.mapper_state(m), flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.slow
def test_signal_to_manager_during_map_ends_the_workers(signum, tmp_path):
    script = SIGNAL_SCRIPT.format(tests=os.path.dirname(__file__), markers=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2, proc.stderr.read()
        faultfuncs.wait_for_markers(str(tmp_path), 2)  # both workers are into a segment
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "cleaned closed" in out, err
    assert ("KeyboardInterrupt" if signum == signal.SIGINT else "SIGTERM") in err
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
def test_map_with_every_worker_gone_raises_instead_of_hanging(user_cluster):
    cluster, _ = user_cluster
    with DaskMapper(cluster, segment_func=segfuncs.sleep_for, start_timeout=2.0, max_retries=0) as m:
        threading_timer = __import__("threading").Timer(1.0, cluster.scale, args=(0,))
        threading_timer.start()
        t0 = time.monotonic()
        with pytest.raises(WorkerException, match=r"no Dask worker has been left to run walkers \[0, 1\] of cycle 0"):
            m.map([1, 2], [30, 30])
        threading_timer.join()
    assert time.monotonic() - t0 < 20
    cluster.scale(2)
    cluster.wait_for_workers(2, timeout=30)


def test_scheduler_file_that_never_appears_times_out(tmp_path):
    m = DaskMapper(str(tmp_path / "never-written.json"), num_workers=1, start_timeout=1.0, segment_func=segfuncs.add)
    t0 = time.monotonic()
    with pytest.raises(WorkerException, match="did not appear"):
        m.init()
    assert time.monotonic() - t0 < 10
    m.cleanup()


def test_failed_init_leaves_no_client_of_ours():
    cluster = distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    try:
        m = DaskMapper(cluster.scheduler_address, start_timeout=1.0, segment_func=segfuncs.add)
        with pytest.raises(WorkerException, match="could not start"):
            m.init()
        assert m.client is None
        assert not cluster.scheduler.clients.keys() - {"fire-and-forget"}
        m.cleanup()
    finally:
        cluster.close()


def test_unpicklable_argument_names_the_walker(user_cluster):
    cluster, _ = user_cluster
    with DaskMapper(cluster, segment_func=segfuncs.echo) as m:
        with pytest.raises(ValueError, match=r"walker 1 .*cannot be sent to a Dask worker"):
            m.map([1, segfuncs.Unpicklable(), 3], [0, 0, 0])


def test_several_segments_per_worker_are_warned_about(caplog):
    cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                                       dashboard_address=None, resources={"GPU": 2},
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    try:
        with caplog.at_level("WARNING", logger="wemap.dask_mapper"):
            with DaskMapper(cluster, segment_func=segfuncs.add, resources={"GPU": 1}) as m:
                assert m.map([1, 2], [3, 4]) == [4, 6]
        assert "can run several segments at once" in caplog.text
    finally:
        cluster.close()


def report_exit(pid, exitcode):
    """Publish an exit report from a Dask worker, as a nanny's ExitReporter does."""
    from wemap.dask_worker import EXIT_TOPIC

    distributed.get_worker().log_event(EXIT_TOPIC, {"pid": pid, "exitcode": exitcode})


def test_exit_report_arriving_late_wakes_the_lookup_without_polling(monkeypatch):
    """A nanny's exit report that comes after a KilledWorker is waited for on the event
    subscription: the scheduler's event log is read once, not polled until the report is there."""
    from wemap.dask_events import EXIT_REPORT_WAIT, WorkerDeaths
    from wemap.dask_worker import EXIT_TOPIC

    reads, first_read = [], threading.Event()
    get_events = distributed.Client.get_events

    def counted(self, *args, **kwargs):
        out = get_events(self, *args, **kwargs)
        reads.append(args)
        first_read.set()
        return out

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) \
            as cluster, distributed.Client(cluster, set_as_default=False) as client:
        deaths = WorkerDeaths(client, "wemap-segment-test-")
        monkeypatch.setattr(distributed.Client, "get_events", counted)
        found = {}

        def look_up() -> None:
            t0 = time.monotonic()
            found.update(code=deaths.exitcode(4242), seconds=time.monotonic() - t0)

        lookup = threading.Thread(target=look_up)
        lookup.start()
        assert first_read.wait(30)
        # the task reaches the scheduler after the subscription, on the same stream from the client
        client.submit(report_exit, 4242, -signal.SIGKILL, pure=False).result(timeout=30)
        lookup.join(30)
        deaths.close()
    assert found["code"] == -signal.SIGKILL
    assert reads[0] == (EXIT_TOPIC,)
    # read once more only when the report came after the wait's bound (a loaded machine); polling reads many times
    assert len(reads) == 1 or (len(reads) == 2 and found["seconds"] >= EXIT_REPORT_WAIT), (reads, found)


def test_a_closed_listener_hears_nothing_through_the_next_one():
    """distributed keeps a topic's handler after unsubscribe_topic: the next listener on the same client must
    not take a closed one's for the user's and pass every event on to it (for the client's life)."""
    from wemap.dask_events import WorkerDeaths

    event = {"action": "remove-worker", "processing-tasks": ["wemap-segment-t-1"], "worker": "w"}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) \
            as cluster, distributed.Client(cluster, set_as_default=False) as client:
        first = WorkerDeaths(client, "wemap-segment-t-")
        first.close()
        second = WorkerDeaths(client, "wemap-segment-t-")
        deadline = time.monotonic() + 30
        while not second.lost:  # until its subscription has reached the scheduler
            assert time.monotonic() < deadline, "the listener heard nothing"
            client.log_event("all", event)
            time.sleep(0.05)
        second.close()
    assert not first.lost
