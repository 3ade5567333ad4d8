"""`DaskMapper`: the same ``map`` on a Dask distributed cluster, one segment per GPU worker.

::

    manager (this process)                  scheduler                 Dask worker (nanny child)
    ──────────────────────                  ─────────                 ─────────────────────────
    init: LocalCluster, or the user's cluster
          register WorkerState ───────────────────────────────────▶ setup: Worker(idx).init()
          register ExitReporter (nannies)                           (once per worker process)
    map:  submit(run_segment, walker) ───▶ a worker with free ─────▶ run_timed(worker, Task),
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

What runs in Dask's processes (the plugins, the segment task) is in `wemap.dask_worker`;
connecting to the cluster and closing one started here in `wemap.dask_cluster`; dead workers'
walkers and exit codes in `wemap.dask_events`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

try:
    import dask
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the environment
    # same type and module name (ModuleNotFoundError when it is missing), a message saying what to install
    raise type(exc)(f"wemap.DaskMapper needs dask.distributed: pip install 'wemap[dask]' ({exc})",
                    name=exc.name) from exc

from .dask_cluster import close_cluster, connect, slots, worker_index, worker_slots
from .dask_events import WorkerDeaths
from .dask_worker import ExitReporter, WorkerState, run_segment
from .errors import WorkerException
from .faults import Attempts
from .mapper import MapperBase, TaskSpec
from .pickling import check_sent
from .worker import Worker

__all__ = ["DaskMapper"]

logger = logging.getLogger(__name__)

#: seconds to wait for a finished walker straight from its worker before asking the scheduler
DIRECT_GATHER_TIMEOUT = 3.0
#: how often a map with nothing finishing checks that some worker is left to run its walkers
WORKERS_CHECK_INTERVAL = 1.0


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
        self._deaths: WorkerDeaths | None = None
        self._token = uuid.uuid4().hex[:8]

    # -- lifecycle ---------------------------------------------------------------------------
    def _default_num_workers(self) -> int:
        # a cluster of our own: a worker a core; someone else's: at least one, then every one `_start` finds
        return (os.cpu_count() or 1) if self.client_arg is None else 1

    def _connect(self) -> None:
        if self.client is None:
            self.client, self._cluster, self._own_client = connect(
                self.client_arg, num_workers=self._worker_count(), resources=self.resources,
                max_retries=self.policy.max_retries, cluster_kwargs=self.cluster_kwargs, timeout=self.start_timeout)

    def _start(self) -> None:
        try:
            check_sent(self, "DaskMapper sends it to every Dask worker")
            self._connect()
            client = self.client
            client.wait_for_workers(self._worker_count(), timeout=self.start_timeout)
            workers = client.scheduler_info()["workers"]  # one snapshot for all that follows
            self._index = worker_index(workers)
            self._num_workers = len(self._index)
            self._worker_segment_times = {i: [] for i in range(self._num_workers)}
            slots(workers, self.resources)  # a cluster that cannot run a task is an error now, not a hang later
            shared = [w["name"] for w in workers.values() if worker_slots(w, self.resources) > 1]
            if shared:
                logger.warning("Dask worker(s) %s can run several segments at once on one wemap Worker (same "
                               "worker index, same device): start them with --nthreads 1, or ask resources= "
                               "that each worker has one of", ", ".join(map(str, shared)))
            self._deaths = WorkerDeaths(client, f"wemap-segment-{self._token}-")
            self._register(ExitReporter(), f"wemap-exits-{self._token}", nanny=True)
            self._register(WorkerState(self._index, self._num_workers, self.worker_factory,
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
        deaths, self._deaths = self._deaths, None
        try:
            if client is not None and client.status == "running":
                if deaths is not None:
                    deaths.close()
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
                close_cluster(cluster, abort)

    # -- map ---------------------------------------------------------------------------------
    def _dispatch(self, specs: list[TaskSpec]) -> list[Any]:
        client, deaths, attempts, pending = self.client, self._deaths, Attempts(self.policy), deque(specs)
        in_flight: dict[distributed.Future, TaskSpec] = {}
        any_done = threading.Event()  # set by the futures' done callbacks
        results: list[Any] = [None] * len(specs)
        free, call, keys = slots(client.scheduler_info()["workers"], self.resources), self._cycle_counter, []

        def submit() -> None:
            while pending and len(in_flight) < free:
                spec = pending.popleft()
                # unique per map call, whatever cycle_idx says: Dask treats equal keys as equal results
                key = f"{deaths.key_prefix}{call}-{spec.task_idx}-{attempts.counts[spec.task_idx]}"
                # one walker per task is the design, not the repeated data Dask warns about
                try:
                    with dask.config.set({"distributed.admin.large-graph-warning-threshold": 2**62}):
                        fut = client.submit(run_segment, f"wemap-worker-{self._token}", self.segment_func,
                                            self.policy.retry_on, spec.args, spec.kwargs, key=key,
                                            resources=self.resources, pure=False)
                except Exception as exc:  # e.g. an argument that cannot be pickled
                    raise ValueError(f"walker {spec.walker_idx} (cycle {spec.cycle_idx}): its arguments cannot be "
                                     f"sent to a Dask worker: {type(exc).__name__}: {exc}") from exc
                in_flight[fut] = spec
                fut.add_done_callback(lambda _: any_done.set())

        try:
            submit()
            while in_flight:
                for fut in self._finished(in_flight, any_done):
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
                        raise deaths.task_error(spec, exc, self._index) from None
                    fut.release()
                    kind, result, seconds, idx, pid = value
                    if kind == "no_worker":
                        raise WorkerException(
                            f"walker {spec.walker_idx} of cycle {spec.cycle_idx}: {result.exc_message}",
                            pid=pid, walker_idx=spec.walker_idx, cycle_idx=spec.cycle_idx)
                    self._worker_segment_times.setdefault(idx, []).append(seconds)
                    if kind == "raised":
                        attempts.failed(spec.task_idx, result, walker_idx=spec.walker_idx,
                                        cycle_idx=spec.cycle_idx, worker_idx=idx, pid=pid)
                        pending.appendleft(spec)  # the user opted in with retry_on
                    else:
                        results[spec.task_idx] = result
                    submit()
        except BaseException:  # MapperBase._run then ends the mapper: no process of ours is left behind
            with contextlib.suppress(Exception):  # a user's cluster goes on: free it of our walkers
                client.cancel(list(in_flight))
            raise
        finally:
            self.recovered_segments += attempts.recovered + deaths.recovered(keys)
        return results

    def _finished(self, in_flight: dict[distributed.Future, TaskSpec],
                  any_done: threading.Event) -> list[distributed.Future]:
        """Futures done, waiting in slices; raises once no worker has been left for ``start_timeout``."""
        alone_since = None
        while True:
            any_done.clear()
            done = [f for f in in_flight if f.done()]
            if done:
                return done
            if any_done.wait(WORKERS_CHECK_INTERVAL):
                continue
            if self.client.scheduler_info(n_workers=1)["workers"]:  # one is enough to know some are left
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


