"""Segment functions and workers for the tests; module level so worker processes can import them."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from multiprocessing.connection import Connection

import faultfuncs
import numpy as np

import wemap


def add(a, b):
    return a + b


def echo(walker, segment_length, **kwargs):
    """Return the walker unchanged (a pure-transport segment)."""
    return walker


def slow_reverse(x, n):
    """Finish later inputs first, so ordering is not an accident of timing."""
    time.sleep(0.02 * (n - x))
    return x * 10


def with_kwargs(x, *, cycle_idx, walker_idx, scale=1):
    return (x, cycle_idx, walker_idx, scale)


def fail_on(x, bad, **kwargs):
    if x == bad:
        raise ValueError(f"walker value {x} is bad")
    return x


def kill_on(x, bad, **kwargs):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return x


def exit_on(x, bad, **kwargs):
    if x == bad:
        os._exit(3)
    return x


def who(x):
    w = wemap.current_worker()
    return (x, w.worker_idx, w.pid, w.resource)


def make_token(worker):
    return (worker.worker_idx, uuid.uuid4().hex)


def failing_init(worker):
    raise RuntimeError(f"no GPU for worker {worker.worker_idx}")


class DeviceWorker(wemap.Worker):
    """A wepy-style worker that injects its device index into every task."""

    def run_task(self, task):
        return task(DeviceIndex=str(self.attributes["devices"][self.worker_idx % len(self.attributes["devices"])]))


def device_of(x, DeviceIndex):
    return (x, DeviceIndex)


def record(x, path):
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return x


def sleep_for(x, seconds):
    time.sleep(seconds)
    return x


def sleep_marked(x, seconds, marker_dir=None):
    """`sleep_for`, having first left the file ``started-<x>`` in ``marker_dir``: the segment is under way."""
    if marker_dir is not None:
        open(os.path.join(marker_dir, f"started-{x}"), "w").close()
    return sleep_for(x, seconds)


def displace(walker, segment_length, **kwargs):
    """Deterministic 'dynamics' on wemap walkers: shift positions, scale velocities."""
    state = dict(walker.state)
    state["positions"] = walker.state["positions"] + 0.001 * segment_length
    state["velocities"] = walker.state["velocities"] * 0.5
    return wemap.Walker(state, walker.weight)


def make_walker(n_atoms: int, seed: int = 0, weight: float = 1.0) -> wemap.Walker:
    rng = np.random.default_rng(seed)
    return wemap.Walker(
        {
            "positions": rng.random((n_atoms, 3)),
            "velocities": rng.random((n_atoms, 3)),
            "box_vectors": np.eye(3) * 3.0,
            "time": float(seed),
        },
        weight,
    )


def grow(walker, n_extra, runs=None, **kwargs):
    """Return a walker larger than the one given (results need not fit the input's slot); each run
    logged in file ``runs`` when given (`faultfuncs.read_runs`)."""
    faultfuncs.log_run(runs, kwargs.get("walker_idx"))
    state = dict(walker.state)
    state["extra"] = np.arange(n_extra, dtype=np.float64)
    return wemap.Walker(state, walker.weight)


def grow_swapped(walker, n_extra, **kwargs):
    """`grow`, the extra array big-endian and strided (what numpy's own pickling reloads as native)."""
    state = dict(walker.state)
    state["extra"] = np.arange(2 * n_extra, dtype=">f8")[::2]
    return wemap.Walker(state, walker.weight)


def modify_in_place(walker, segment_length, **kwargs):
    walker.state["positions"] += 1.0
    return walker


def _first_time(marker_dir, x) -> bool:
    """True exactly once per (marker_dir, x), across processes (O_EXCL create)."""
    try:
        fd = os.open(os.path.join(marker_dir, f"once-{x}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _stop_at_extras_recv(marker: str) -> None:
    """From now on, this process SIGSTOPs itself when its worker loop next waits to read a walker's
    extras (``Connection.recv`` called by the worker's ``_Server.extras``), the marker written first."""
    original = Connection.recv

    def recv(self):
        if sys._getframe(1).f_code.co_name == "extras":
            Connection.recv = original
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return original(self)

    Connection.recv = recv


def freeze_waiting_for_extras(walker, marker_dir, victim, **kwargs):
    """Return ``walker``; after walker ``victim`` (the first time), this worker freezes once it has
    asked the manager for its next walker's extras and waits to read them."""
    if kwargs.get("walker_idx") == victim and _first_time(marker_dir, "freeze"):
        _stop_at_extras_recv(os.path.join(marker_dir, "frozen"))
    return walker


def kill_once(walker, segment_length, marker_dir, victim, **kwargs):
    """SIGKILL the worker the first time it runs walker ``victim``; otherwise `displace`."""
    if kwargs.get("walker_idx") == victim and _first_time(marker_dir, victim):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return displace(walker, segment_length)


def hang_once(walker, segment_length, marker_dir, victim, **kwargs):
    if kwargs.get("walker_idx") == victim and _first_time(marker_dir, victim):
        time.sleep(60)
    return displace(walker, segment_length)


def hang_always(walker, segment_length, victim, **kwargs):
    if kwargs.get("walker_idx") == victim:
        time.sleep(60)
    return displace(walker, segment_length)


class Flaky(Exception):
    pass


def flaky_once(walker, segment_length, marker_dir, victim, **kwargs):
    if kwargs.get("walker_idx") == victim and _first_time(marker_dir, victim):
        raise Flaky("transient failure")
    return displace(walker, segment_length)


def corrupt_headers(walker, segment_name, **kwargs):
    """Scribble on every slot header's task id, as a stray write into the segment would."""
    from wemap.segment import Segment

    if segment_name:
        with Segment.attach(segment_name) as seg:
            for slot in range(seg.ring.nslots):
                seg.ring.header(slot).task_id = 999_999
    return walker


def corrupt_other_inputs(walker, segment_name, **kwargs):
    """Point every other slot's input descriptor outside its region."""
    from wemap.segment import Segment

    if kwargs.get("walker_idx") != 0:
        return walker
    time.sleep(0.3)  # the manager has filled the other slots by now
    with Segment.attach(segment_name) as seg:
        for slot in range(seg.ring.nslots):
            view = seg.ring.input_view(slot)
            view[:8] = np.frombuffer((2**40).to_bytes(8, "little"), dtype=np.uint8)
            del view
    return walker


def kill_once_each(walker, segment_length, marker_dir, victims, **kwargs):
    """SIGKILL the worker the first time it runs each walker in ``victims``; otherwise `displace`."""
    x = kwargs.get("walker_idx")
    if x in victims and _first_time(marker_dir, x):
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    return displace(walker, segment_length)


def die_after_returning(walker, segment_length, victim, **kwargs):
    """Walker ``victim`` comes back at once and its worker is SIGKILLed 0.3 s later, while idle;
    the others take ``segment_length`` seconds."""
    if kwargs.get("walker_idx") == victim:
        threading.Thread(target=lambda: (time.sleep(0.3), os.kill(os.getpid(), signal.SIGKILL)), daemon=True).start()
        return walker
    time.sleep(segment_length)
    return walker


def raise_long(x, n_chars, **kwargs):
    raise ValueError("bad walker: " + "x" * n_chars)


def sleep_then_displace(walker, seconds, **kwargs):
    time.sleep(seconds)
    return displace(walker, 1)


def mutate_then_flaky(state, marker_dir, **kwargs):
    """Change the input in place, then fail the first time: a retry must not see the change."""
    state["x"] += 1
    if _first_time(marker_dir, "mutate"):
        raise Flaky("transient failure after changing the input")
    return state["x"]


def slow_init(worker):
    time.sleep(2.0)


def killed_then_slow(x, marker_dir, **kwargs):
    """Walker 0's first run is SIGKILLed after 0.5 s; every run of walker 1 takes 1.5 s. Runs are logged."""
    with open(os.path.join(marker_dir, f"ran-{x}"), "a") as f:
        f.write(f"{os.getpid()}\n")
    if x == 0 and _first_time(marker_dir, "kill"):
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1.5)
    return x


class Unpicklable:
    def __reduce__(self):
        raise ValueError("this object refuses to be pickled")


_FIRST_CALL = [True]


def slow_first_displace(walker, segment_length, seconds, **kwargs):
    """`displace`, after sleeping ``seconds`` on the process's first call (a context being built)."""
    if _FIRST_CALL[0]:
        _FIRST_CALL[0] = False
        time.sleep(seconds)
    return displace(walker, segment_length)


class InfoArray(np.ndarray):
    """An ndarray subclass with an attribute of its own that survives slicing, arithmetic and pickling."""

    def __new__(cls, values, info=None):
        obj = np.asarray(values).view(cls)
        obj.info = info
        return obj

    def __array_finalize__(self, obj):
        if obj is not None:
            self.info = getattr(obj, "info", None)

    def __reduce__(self):
        rebuild, args, state = super().__reduce__()
        return rebuild, args, (state, self.info)

    def __setstate__(self, state):
        base, self.info = state
        super().__setstate__(base)


def scale(walker, factor, **kwargs):
    """An array, or every array of a wemap walker's state, times ``factor`` (subclasses stay what they are)."""
    if isinstance(walker, np.ndarray):
        return walker * factor
    return wemap.Walker({k: v * factor if isinstance(v, np.ndarray) else v for k, v in walker.state.items()},
                        walker.weight)


def rendezvous(x, started, release, **kwargs):
    """Say so through FIFO ``started`` once running, then wait until FIFO ``release`` is written and closed
    (both None: return at once)."""
    if started is not None:
        with open(started, "w") as f:
            f.write("running")
        with open(release) as f:
            f.read()
    return x
