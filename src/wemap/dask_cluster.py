"""`DaskMapper`'s side of the cluster: connect to (or start) it, read what its workers can run,
and close a ``LocalCluster`` the mapper started without leaking a worker process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import dask
import distributed

from .dask_worker import name_key
from .errors import WorkerException

logger = logging.getLogger(__name__)

#: seconds a failed map gives our busy workers (their nanny kills them after 80% of it)
ABORT_CLOSE_TIMEOUT = 0.5
#: seconds to let a nanny finish restarting a worker before closing it
RESTART_SETTLE_TIMEOUT = 30.0


class Connection(NamedTuple):
    client: distributed.Client
    cluster: distributed.LocalCluster | None  # one we started, closed with the mapper
    own_client: bool  # a Client we made, closed with the mapper


def connect(arg: Any, *, num_workers: int, resources: Mapping[str, float] | None, max_retries: int,
            cluster_kwargs: Mapping[str, Any], timeout: float) -> Connection:
    """A client of ``arg``: a Client (used as is), ``None`` (a new ``LocalCluster``), a cluster
    object, a scheduler file or a scheduler address."""
    kw = {"set_as_default": False, "timeout": timeout}
    if isinstance(arg, distributed.Client):
        return Connection(arg, None, False)
    if arg is None:
        config = {"distributed.scheduler.allowed-failures": max_retries,
                  # no walker waits on a worker, so none is lost with it (see wemap.dask_mapper)
                  "distributed.scheduler.worker-saturation": 1.0}
        # loopback only and no dashboard; the scheduler's HTTP endpoint takes a free port
        kwargs = dict(n_workers=num_workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None, resources=resources,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) | dict(cluster_kwargs)
        with dask.config.set(config):
            try:
                cluster = distributed.LocalCluster(**kwargs)
            except Exception as exc:
                raise WorkerException(
                    f"DaskMapper could not start a LocalCluster of {kwargs['n_workers']} worker(s): "
                    f"{type(exc).__name__}: {str(exc).rstrip('.')}. A common cause: its worker processes start with "
                    f"'spawn' and import your main module, so a script must create the mapper under "
                    f"`if __name__ == '__main__':` (the workers' stderr above says more)"
                ) from exc
        try:  # results straight from the worker, not relayed by the scheduler (see DaskMapper._dispatch)
            return Connection(distributed.Client(cluster, direct_to_workers=True, **kw), cluster, True)
        except BaseException:
            close_cluster(cluster, abort=True)
            raise
    if isinstance(arg, (str, os.PathLike)) and (os.path.exists(arg) or str(arg).endswith(".json")):
        return Connection(distributed.Client(scheduler_address(os.fspath(arg), timeout), **kw), None, True)
    return Connection(distributed.Client(arg, **kw), None, True)


def scheduler_address(path: str, timeout: float) -> str:
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


def worker_index(workers: Mapping[str, dict]) -> dict[Any, int]:
    """Worker name -> worker index, by sorted names (see `name_key`); ``workers``: ``scheduler_info()["workers"]``."""
    names = sorted((w["name"] for w in workers.values()), key=name_key)
    return {n: i for i, n in enumerate(names)}


def worker_slots(w: dict, resources: Mapping[str, float] | None) -> int:
    """Tasks one worker (a ``scheduler_info`` entry) can run at once: its threads or ``resources`` units."""
    n = w.get("nthreads", 1)
    for r, need in (resources or {}).items():
        n = min(n, int(w.get("resources", {}).get(r, 0) // need))
    return max(n, 0)


def slots(workers: Mapping[str, dict], resources: Mapping[str, float] | None) -> int:
    """Tasks the ``workers`` (``scheduler_info()["workers"]``) can run at once; none is an error."""
    total = sum(worker_slots(w, resources) for w in workers.values())
    if total == 0:
        raise ValueError(f"no worker of the Dask cluster can run a task needing resources={resources}; "
                         f"start workers with e.g. `dask worker --resources GPU=1`")
    return total


def close_cluster(cluster: Any, abort: bool) -> None:
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
