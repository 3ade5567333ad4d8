"""`DaskMapper`: the same ``map`` on a Dask distributed cluster, one segment per GPU worker.

::

    manager (this process)                  scheduler                 Dask worker (nanny child)
    ──────────────────────                  ─────────                 ─────────────────────────
    init: LocalCluster, or the user's cluster
          register _WorkerState ──────────────────────────────────▶ setup: Worker(idx).init()
          register _ExitReporter (nannies)                          (once per worker process)
    map:  submit(_run_segment, walker) ──▶ a worker with free ─────▶ run_timed(worker, Task),
          one task per free slot            resources                current_worker() set
          as_completed ◀──── (kind, result, seconds, worker idx, pid) ◀──
    lost worker: the scheduler re-runs its walker elsewhere, up to ``allowed-failures`` times,
                 then the task errs with KilledWorker → WorkerException naming the walker
    cleanup: unregister the plugins (Worker.cleanup); close the Client and cluster we made

**Walkers travel as frames, not as pickles.** Each walker is a plain argument of its task.
Dask pickles task arguments with protocol 5 and a buffer callback, so every numpy array of a
`wemap.Walker` (which pickles as ``(Walker, (state, weight))``) leaves the pickle stream as an
out-of-band buffer and is sent as its own zero-copy frame; the pickle is a few hundred bytes.
Results come back the same way. The task goes through the scheduler, which keeps the walker
until its task has run, so Dask re-runs a walker whose worker died without the manager.
Walkers are not scattered ahead: scattered data dies with its worker.

**One task per free slot.** A slot is a worker thread or a ``resources`` unit (``{"GPU": 1}``).
The manager submits the next walker when one finishes rather than all at once: the scheduler
assigns tasks with resource restrictions eagerly, and a worker dying with a queue of walkers
would charge all of them as lost. So the running walker is the one charged, and walkers move
only when a worker is ready for them.

**Worker index.** Workers are numbered by their sorted names at ``init`` (``LocalCluster``:
0..n-1; dask-jobqueue and ``dask worker --name`` name them too). A nanny restarts a dead
worker under its name, so the replacement keeps the index, and with it its GPU. A worker whose
name is new (the cluster grew, or an unnamed worker came back under a new address) takes the
lowest index no connected worker holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

try:
    import dask
    import distributed
    from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin
except ImportError as exc:  # pragma: no cover - depends on the environment
    # same type and module name (ModuleNotFoundError when it is missing), a message saying what to install
    raise type(exc)(f"wemap.DaskMapper needs dask.distributed: pip install 'wemap[dask]' ({exc})",
                    name=exc.name) from exc

from .errors import WorkerException
from .faults import Attempts
from .mapper import MapperBase, TaskSpec
from .pool import describe_exitcode
from .worker import Task, TaskFailure, Worker, run_timed

__all__ = ["DaskMapper"]

logger = logging.getLogger(__name__)

#: event topic on which nannies report how a worker process ended
EXIT_TOPIC = "wemap-worker-exit"
#: seconds to wait for a nanny's exit report after a KilledWorker
EXIT_REPORT_WAIT = 2.0
#: seconds a failed map gives our busy workers (their nanny kills them after 80% of it)
ABORT_CLOSE_TIMEOUT = 0.5
#: seconds to wait for a finished walker straight from its worker before asking the scheduler
DIRECT_GATHER_TIMEOUT = 3.0
#: how often a map with nothing finishing checks that some worker is left to run its walkers
WORKERS_CHECK_INTERVAL = 1.0
#: seconds to let a nanny finish restarting a worker before closing it
RESTART_SETTLE_TIMEOUT = 30.0


def _name_key(name: Any) -> tuple:
    """Sort worker names naturally: 2 before 10, ``gpu-2`` before ``gpu-10``."""
    if isinstance(name, int):
        return (0, name)
    return (1, tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(name))))


class _WorkerState(WorkerPlugin):
    """Builds the `wemap.Worker` of one Dask worker process and runs its ``init`` once."""

    def __init__(self, index: dict, num_workers: int, worker_type: type[Worker], attributes: dict,
                 worker_init: Callable | None) -> None:
        self.index, self.num_workers = index, num_workers
        self.worker_type, self.attributes, self.worker_init = worker_type, attributes, worker_init
        self.worker: Worker | None = None

    async def setup(self, worker: distributed.Worker) -> None:
        idx = self.index.get(worker.name)
        if idx is None:
            idx = await self._free_index(worker)
        wm = self.worker_type(idx, self.num_workers, self.attributes, self.worker_init)
        try:  # in the task thread, not on the event loop: an OpenMM Context can take minutes
            await asyncio.get_running_loop().run_in_executor(worker.executor, wm.init)
        except Exception as exc:
            f = TaskFailure.capture(exc)
            raise WorkerException(
                f"worker {idx} (pid {wm.pid}, {worker.address}) failed in Worker.init: "
                f"{f.exc_type}: {f.exc_message}\n\n{f.traceback}", worker_idx=idx, pid=wm.pid,
            ) from None
        self.worker = wm

    async def _free_index(self, worker: distributed.Worker) -> int:
        info = await worker.scheduler.identity()
        connected = [w["name"] for w in info["workers"].values()]
        held = {self.index[n] for n in connected if n in self.index}
        free = [i for i in range(len(self.index)) if i not in held]
        newcomers = sorted((n for n in connected if n not in self.index), key=_name_key)
        rank = newcomers.index(worker.name) if worker.name in newcomers else len(newcomers)
        idx = free[rank] if rank < len(free) else len(self.index) + rank - len(free)
        logger.info("Dask worker %r joined after the mapper started; it is worker %d", worker.name, idx)
        return idx

    def teardown(self, worker: distributed.Worker) -> None:
        wm, self.worker = self.worker, None
        if wm is not None:
            wm.cleanup()


class _ExitReporter(NannyPlugin):
    """Publishes the pid and exit code of each worker process that ends; only its nanny knows.

    Nannies have no public hook for this, so the plugin wraps ``mark_stopped`` of the nanny's
    ``WorkerProcess`` (reused across restarts), where both are still at hand. Without it, exit
    codes are reported as unknown and nothing else changes.
    """

    def setup(self, nanny: distributed.Nanny) -> None:
        self.wp = wp = nanny.process
        original = getattr(wp, "mark_stopped", None)
        if original is None:
            return

        def mark_stopped() -> None:
            proc = getattr(wp, "process", None)
            try:
                if proc is not None and proc.exitcode is not None and nanny.status.name == "running":
                    nanny.log_event(EXIT_TOPIC, {"pid": int(proc.pid), "exitcode": int(proc.exitcode)})
            except Exception as exc:  # never break the nanny's own bookkeeping
                logger.debug("could not report a worker's exit: %s", exc)
            original()

        self.hook = wp.mark_stopped = mark_stopped

    def teardown(self, nanny: distributed.Nanny) -> None:
        wp = getattr(self, "wp", None)
        if wp is not None and wp.__dict__.get("mark_stopped") is getattr(self, "hook", None):
            del wp.mark_stopped


class _Outcome(NamedTuple):
    """What a segment task returns: a segment's exception is data, so Dask never retries it."""

    kind: str  # "ok", "raised" (result is a TaskFailure) or "no_worker" (Worker.init failed)
    result: Any
    seconds: float
    worker_idx: int | None
    pid: int


def _run_segment(plugin: str, func: Callable, retry_on: tuple, args: tuple, kwargs: dict) -> _Outcome:
    """Worker side: run one walker's segment on this process's `wemap.Worker`."""
    wm = getattr(distributed.get_worker().plugins.get(plugin), "worker", None)
    if wm is None:
        failure = TaskFailure("RuntimeError", "this Dask worker has no wemap Worker (its Worker.init failed)", "")
        return _Outcome("no_worker", failure, 0.0, None, os.getpid())
    ok, result, seconds, _, _ = run_timed(wm, Task(func, *args, **kwargs), retry_on)
    return _Outcome("ok" if ok else "raised", result, seconds, wm.worker_idx, wm.pid)


def _close_cluster(cluster: Any, abort: bool) -> None:
    """Close a LocalCluster we started without leaking a worker process.

    A nanny closed while it restarts a dead worker cancels the restart mid-spawn and loses
    track of the new process, so wait for restarts to finish first. After a failed map, give
    busy workers ``ABORT_CLOSE_TIMEOUT``, not the nanny's default 4 s.
    """

    async def close() -> None:
        nannies = [w for w in cluster.workers.values() if isinstance(w, distributed.Nanny)]
        starting = [n.process.running.wait() for n in nannies
                    if n.process is not None and n.process.status.name == "starting"]
        if starting:
            await asyncio.wait_for(asyncio.gather(*starting), RESTART_SETTLE_TIMEOUT)
        if abort:
            await asyncio.gather(*(n.close(timeout=ABORT_CLOSE_TIMEOUT) for n in nannies), return_exceptions=True)

    try:
        cluster.sync(close)
    except Exception as exc:
        logger.warning("stopping the Dask workers: %s: %s", type(exc).__name__, exc)
    cluster.close()


class DaskMapper(MapperBase):
    """Run each walker's segment as a Dask task; one `wemap.Worker` per Dask worker.

    ``client``: ``None`` starts a ``LocalCluster`` of ``num_workers`` one-thread worker
    processes on 127.0.0.1 (``cluster_kwargs`` go to it), closed by `cleanup`; otherwise a
    ``distributed.Client``, a cluster object (``SLURMCluster``...), a scheduler address or a
    scheduler-file path, all left running. ``num_workers`` then waits (up to ``start_timeout``
    seconds) for that many workers; the mapper uses every worker connected at ``init``.
    ``resources`` (``{"GPU": 1}``) is asked of every task, and advertised by each worker of a
    LocalCluster started here.

    A lost walker is re-run by the scheduler up to ``distributed.scheduler.allowed-failures``
    times: ``max_retries`` on a LocalCluster started here, the scheduler's own setting on yours.
    There is no ``task_timeout``: Dask cannot stop a running task short of killing its worker.
    ``segment_func``, ``worker_type`` and ``worker_init`` must pickle by reference, as for the
    other process mappers, so every mapper runs the same importable code. ``worker_type`` may be
    one of wepy's workers; keywords it does not know become mapper `attributes`, as in wepy.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        num_workers: int | None = None,
        segment_func: Callable[..., Any] | None = None,
        resources: Mapping[str, float] | None = None,
        worker_type: type | None = None,
        worker_attributes: Mapping[str, Any] | None = None,
        worker_init: Callable[[Worker], Any] | None = None,
        max_retries: int = 2,
        retry_on: tuple[type[BaseException], ...] = (),
        start_timeout: float = 120.0,
        cluster_kwargs: Mapping[str, Any] | None = None,
        **mapper_attributes: Any,
    ) -> None:
        super().__init__(segment_func, num_workers=num_workers, worker_type=worker_type,
                         worker_attributes=worker_attributes, worker_init=worker_init,
                         max_retries=max_retries, retry_on=retry_on, **mapper_attributes)
        self.client_arg = client
        self.resources = dict(resources) if resources else None
        self.start_timeout = start_timeout
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.client: distributed.Client | None = None
        self._cluster: Any = None  # a LocalCluster we started
        self._own_client = False
        self._index: dict[Any, int] = {}
        self._registered: list[tuple[str, bool]] = []  # (plugin name, is a nanny plugin)
        self._subscribed = False
        self._user_handler: Callable | None = None
        self._lost: Counter[str] = Counter()  # task key -> times its worker died under it
        self._token = uuid.uuid4().hex[:8]

    # -- lifecycle ---------------------------------------------------------------------------
    def _default_num_workers(self) -> int:
        if self.client_arg is None:
            return os.cpu_count() or 1
        try:
            self._connect()
            self.client.wait_for_workers(1, timeout=self.start_timeout)
            return len(self.client.scheduler_info()["workers"])
        except BaseException as exc:  # init fails here: leave no client of ours connected
            self._stop(abort=True)
            if isinstance(exc, Exception):
                raise WorkerException(f"DaskMapper could not start: {type(exc).__name__}: {exc}") from exc
            raise

    def _connect(self) -> None:
        if self.client is not None:
            return
        arg, kw = self.client_arg, {"set_as_default": False, "timeout": self.start_timeout}
        if isinstance(arg, distributed.Client):
            self.client = arg
            return
        self._own_client = True
        if arg is None:
            config = {"distributed.scheduler.allowed-failures": self.policy.max_retries,
                      # no walker waits on a worker, so none is lost with it (module docstring)
                      "distributed.scheduler.worker-saturation": 1.0}
            # loopback only and no dashboard; the scheduler's HTTP endpoint takes a free port
            kwargs = dict(n_workers=self._worker_count(), threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None, resources=self.resources,
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) | self.cluster_kwargs
            with dask.config.set(config):
                try:
                    self._cluster = distributed.LocalCluster(**kwargs)
                except Exception as exc:
                    raise WorkerException(
                        f"DaskMapper could not start a LocalCluster of {kwargs['n_workers']} worker(s): "
                        f"{type(exc).__name__}: {str(exc).rstrip('.')}. A common cause: its worker processes start with "
                        f"'spawn' and import your main module, so a script must create the mapper under "
                        f"`if __name__ == '__main__':` (the workers' stderr above says more)"
                    ) from exc
            # results straight from the worker, not relayed by the scheduler (see _run)
            self.client = distributed.Client(self._cluster, direct_to_workers=True, **kw)
        elif isinstance(arg, (str, os.PathLike)) and (os.path.exists(arg) or str(arg).endswith(".json")):
            self.client = distributed.Client(_scheduler_address(os.fspath(arg), self.start_timeout), **kw)
        else:
            self.client = distributed.Client(arg, **kw)

    def _start(self) -> None:
        try:
            for what in ("segment_func", "worker_type", "worker_attributes", "worker_init"):
                _check_picklable(what, getattr(self, what))
            self._connect()
            client = self.client
            client.wait_for_workers(self._worker_count(), timeout=self.start_timeout)
            names = sorted((w["name"] for w in client.scheduler_info()["workers"].values()), key=_name_key)
            self._index = {n: i for i, n in enumerate(names)}
            self._num_workers = len(names)
            self._worker_segment_times = {i: [] for i in range(self._num_workers)}
            self._slots()  # a cluster that cannot run a task is an error now, not a hang later
            shared = [w["name"] for w in client.scheduler_info()["workers"].values() if self._worker_slots(w) > 1]
            if shared:
                logger.warning("Dask worker(s) %s can run several segments at once on one wemap Worker (same "
                               "worker index, same device): start them with --nthreads 1, or ask resources= "
                               "that each worker has one of", ", ".join(map(str, shared)))
            self._lost.clear()
            # a handler the user had on this client keeps getting every event (see _on_event)
            self._user_handler = getattr(client, "_event_handlers", {}).get("all")
            client.subscribe_topic("all", self._on_event)
            self._subscribed = True
            self._register(_ExitReporter(), f"wemap-exits-{self._token}", nanny=True)
            self._register(_WorkerState(self._index, self._num_workers, self.worker_factory,
                                        self.worker_attributes, self.worker_init),
                           f"wemap-worker-{self._token}", nanny=False)
        except BaseException as exc:
            self._stop(abort=True)
            if isinstance(exc, Exception) and not isinstance(exc, (WorkerException, TypeError, ValueError)):
                raise WorkerException(f"DaskMapper could not start: {type(exc).__name__}: {exc}") from exc
            raise

    def _register(self, plugin: Any, name: str, nanny: bool) -> None:
        self._registered.append((name, nanny))
        self.client.register_plugin(plugin, name=name)

    def _stop(self, abort: bool) -> None:
        client, cluster, own = self.client, self._cluster, self._own_client
        self.client, self._cluster, self._own_client = None, None, False
        registered, self._registered = self._registered, []
        subscribed, self._subscribed = self._subscribed, False
        try:
            if client is not None and client.status == "running":
                if subscribed and self._user_handler is not None:
                    client.subscribe_topic("all", self._user_handler)
                elif subscribed:
                    client.unsubscribe_topic("all")
                if cluster is None:  # closing our own cluster tears the plugins down anyway
                    for name, nanny in reversed(registered):
                        try:
                            client.unregister_worker_plugin(name, nanny=nanny)
                        except Exception as exc:
                            logger.warning("could not unregister Dask plugin %s: %s", name, exc)
        finally:
            if client is not None and own:
                client.close()
            if cluster is not None:
                _close_cluster(cluster, abort)

    # -- map ---------------------------------------------------------------------------------
    def _slots(self) -> int:
        """Tasks the cluster can run at once: per worker, its threads or ``resources`` units."""
        total = sum(self._worker_slots(w) for w in self.client.scheduler_info()["workers"].values())
        if total == 0:
            raise ValueError(f"no worker of the Dask cluster can run a task needing resources={self.resources}; "
                             f"start workers with e.g. `dask worker --resources GPU=1`")
        return total

    def _worker_slots(self, w: dict) -> int:
        """Tasks one worker (a ``scheduler_info`` entry) can run at once."""
        n = w.get("nthreads", 1)
        for r, need in (self.resources or {}).items():
            n = min(n, int(w.get("resources", {}).get(r, 0) // need))
        return max(n, 0)

    def _on_event(self, event: tuple) -> Any:
        """Scheduler events: count the walkers that were running on a worker that died."""
        msg = event[1]
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and not msg.get("expected"):
            for key in msg.get("processing-tasks", ()):
                if isinstance(key, str) and key.startswith(f"wemap-segment-{self._token}-"):
                    self._lost[key] += 1
                    logger.warning("Dask worker %s died while running %s; Dask re-runs it", msg.get("worker"), key)
        return self._user_handler(event) if self._user_handler is not None else None

    def _run(self, specs: list[TaskSpec]) -> list[Any]:
        client, attempts, pending = self.client, Attempts(self.policy), deque(specs)
        in_flight: dict[distributed.Future, TaskSpec] = {}
        any_done = threading.Event()  # set by the futures' done callbacks
        results: list[Any] = [None] * len(specs)
        slots, call, keys = self._slots(), self._cycle_counter, []

        def submit() -> None:
            while pending and len(in_flight) < slots:
                spec = pending.popleft()
                # unique per map call, whatever cycle_idx says: Dask treats equal keys as equal results
                key = f"wemap-segment-{self._token}-{call}-{spec.task_idx}-{attempts.counts[spec.task_idx]}"
                # one walker per task is the design, not the repeated data Dask warns about
                try:
                    with dask.config.set({"distributed.admin.large-graph-warning-threshold": 2**62}):
                        fut = client.submit(_run_segment, f"wemap-worker-{self._token}", self.segment_func,
                                            self.policy.retry_on, spec.args, spec.kwargs, key=key,
                                            resources=self.resources, pure=False)
                except Exception as exc:  # e.g. an argument that cannot be pickled
                    raise ValueError(f"walker {spec.walker_idx} (cycle {spec.cycle_idx}): its arguments cannot be "
                                     f"sent to a Dask worker: {type(exc).__name__}: {exc}") from exc
                in_flight[fut] = spec
                fut.add_done_callback(lambda _: any_done.set())

        def finished() -> list[distributed.Future]:
            """Futures done, waiting in slices; raises once no worker has been left for ``start_timeout``."""
            alone_since = None
            while True:
                any_done.clear()
                done = [f for f in in_flight if f.done()]
                if done:
                    return done
                if any_done.wait(WORKERS_CHECK_INTERVAL):
                    continue
                if client.scheduler_info()["workers"]:
                    alone_since = None
                    continue
                alone_since = alone_since or time.monotonic()
                if time.monotonic() - alone_since < self.start_timeout:
                    continue
                waiting = sorted(in_flight.values(), key=lambda s: s.task_idx)
                raise WorkerException(
                    f"no Dask worker has been left to run walkers {[s.walker_idx for s in waiting]} of cycle "
                    f"{waiting[0].cycle_idx} for {self.start_timeout:.3g} s (start_timeout): every worker "
                    f"is gone and none came back", walker_idx=waiting[0].walker_idx, cycle_idx=waiting[0].cycle_idx)

        try:
            submit()
            while in_flight:
                for fut in finished():
                    spec = in_flight.pop(fut)
                    keys.append(fut.key)
                    try:  # at once, so that a worker dying later does not take this walker with it
                        try:
                            value = fut.result(timeout=DIRECT_GATHER_TIMEOUT)
                        except (TimeoutError, asyncio.TimeoutError):
                            # a gather straight from workers retries a dead holder's address for
                            # 30 s or more; the scheduler knows where the result is now
                            value = client.gather(fut, direct=False)
                    except Exception as exc:
                        raise self._error(spec, exc) from None
                    fut.release()
                    kind, result, seconds, idx, pid = value
                    if kind == "no_worker":
                        raise WorkerException(f"walker {spec.walker_idx} of cycle {spec.cycle_idx}: {result.exc_message}",
                                              pid=pid, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx)
                    self._worker_segment_times.setdefault(idx, []).append(seconds)
                    if kind == "raised":
                        attempts.failed(spec.task_idx, result, walker_idx=spec.walker_idx,
                                        cycle_idx=spec.cycle_idx, worker_idx=idx, pid=pid)
                        pending.appendleft(spec)  # the user opted in with retry_on
                    else:
                        results[spec.task_idx] = result
                    submit()
        except BaseException:
            with contextlib.suppress(Exception):  # a user's cluster goes on: free it of our walkers
                client.cancel(list(in_flight))
            self._abort()  # a failed map leaves no process of ours behind
            raise
        finally:
            self.recovered_segments += attempts.recovered + sum(self._lost.pop(k, 0) for k in keys)
        return results

    def _error(self, spec: TaskSpec, exc: Exception) -> Exception:
        """The exception for a task that erred in Dask rather than in its segment."""
        where = {"walker_idx": spec.walker_idx, "cycle_idx": spec.cycle_idx}
        if isinstance(exc, distributed.KilledWorker):
            last = exc.last_worker
            code = self._exitcode(last.pid)
            how = describe_exitcode(code) if code is not None else "exit code unknown (no nanny report)"
            idx = self._index.get(last.name)
            return WorkerException(
                f"walker {spec.walker_idx} of cycle {spec.cycle_idx} was lost {exc.allowed_failures + 1} time(s), "
                f"more than max_retries={exc.allowed_failures} (the scheduler's allowed-failures); "
                f"last: worker {idx} (pid {last.pid}, {last.address}) died: {how}",
                worker_idx=idx, pid=last.pid, exitcode=code, **where)
        f = TaskFailure.capture(exc)  # e.g. a walker or a result that cannot be pickled
        f = TaskFailure(f.exc_type, f"the task failed in Dask, outside the segment: {f.exc_message}", f.traceback)
        return f.to_exception(worker_idx=None, pid=None, **where)

    def _exitcode(self, pid: int | None) -> int | None:
        """The exit code a nanny reported for worker process ``pid`` (the report may lag a little)."""
        deadline = time.monotonic() + EXIT_REPORT_WAIT
        while pid is not None:
            try:
                for _, msg in reversed(self.client.get_events(EXIT_TOPIC)):
                    if msg.get("pid") == pid:
                        return msg.get("exitcode")
            except Exception as exc:
                logger.debug("could not read exit reports: %s", exc)
                return None
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)
        return None


def _scheduler_address(path: str, timeout: float) -> str:
    """The address in a scheduler file, waiting up to ``timeout`` s for the file (Dask's own wait has no end)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                return json.load(f)["address"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):  # not there yet, or half written
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the scheduler file {path} did not appear (with an address) within {timeout} s: "
                                   f"did the scheduler start? (start_timeout={timeout})") from None
            time.sleep(0.2)


def _check_picklable(what: str, obj: Any) -> None:
    try:
        pickle.dumps(obj)
    except Exception as exc:
        raise TypeError(
            f"{what} ({obj!r}) cannot be pickled by reference, and DaskMapper sends it to every Dask "
            f"worker: define it at module level (not a lambda, closure or local class), or use "
            f"wemap.Mapper to run in this process. ({type(exc).__name__}: {exc})"
        ) from exc
