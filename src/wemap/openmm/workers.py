"""`OpenMMGPUWorker` and `OpenMMCPUWorker`: wepy's OpenMM workers as `wemap.Worker` subclasses, for users without wepy.

Each passes the segment function the keywords wepy's worker of the same name passes, so
`OpenMMRunner` and `WepyOpenMMRunner` (and wepy's own runner) build that worker's ``Context``
where it says:

- `OpenMMGPUWorker`: ``platform=`` the mapper's ``platform`` attribute and
  ``platform_kwargs={"DeviceIndex": str(device_ids[worker_idx])}`` from the mapper's
  ``device_ids`` attribute (``WorkerMapper(4, OpenMMGPUWorker, None, runner.run_segment,
  platform="CUDA", device_ids=[0, 1, 2, 3])``);
- `OpenMMCPUWorker`: ``platform_kwargs={"Threads": str(num_threads)}`` from the worker attribute
  ``num_threads`` (``worker_attributes={"num_threads": 4}``), on the runner's platform.

wemap gives a worker the mapper's extra keywords as ``mapper_attributes`` and its
``worker_attributes`` as ``attributes``, as wepy does.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ..pool import usable_cores
from ..worker import Task, Worker

__all__ = ["OpenMMGPUWorker", "OpenMMCPUWorker"]

logger = logging.getLogger(__name__)


class OpenMMGPUWorker(Worker):
    """Runs every task on GPU ``device_ids[worker_idx]`` of the mapper's ``platform``.

    ``device_ids`` (a mapper attribute, or a worker attribute) lists one ``DeviceIndex`` per
    worker, counted inside ``CUDA_VISIBLE_DEVICES``; a shorter list is used in turn
    (``device_ids=[0, 1]`` and four workers: two per GPU). Without a ``platform`` attribute the
    runner's own platform is used. Missing or unusable ``device_ids`` fail each task with an
    error naming the fix; usable ones are read once per worker, by its first task.
    """

    @functools.cached_property  # not cached when it raises
    def _device(self) -> str:
        mapper_attributes = self.mapper_attributes
        device_ids = mapper_attributes.get("device_ids", self.attributes.get("device_ids"))
        if device_ids is None:
            raise ValueError(
                f"OpenMMGPUWorker {self.worker_idx}: no device_ids; give the mapper device_ids=[0, 1, ...] "
                f"(one DeviceIndex per worker, counted inside CUDA_VISIBLE_DEVICES) and platform='CUDA'"
            )
        if isinstance(device_ids, (str, bytes)) or not hasattr(device_ids, "__len__") or len(device_ids) == 0:
            raise ValueError(f"OpenMMGPUWorker {self.worker_idx}: device_ids must be a non-empty list of GPU "
                             f"indices such as [0, 1], got {device_ids!r}")
        return str(device_ids[self.worker_idx % len(device_ids)])

    def run_task(self, task: Task) -> Any:
        platform = self.mapper_attributes.get("platform")
        platform_kwargs = {"DeviceIndex": self._device}
        logger.debug("worker %d: platform=%s, platform_kwargs=%s", self.worker_idx, platform, platform_kwargs)
        return task(platform=platform, platform_kwargs=platform_kwargs)


class OpenMMCPUWorker(Worker):
    """Runs every task with ``Threads = num_threads`` on the runner's platform (CPU).

    ``num_threads`` is a worker attribute (wepy's), or a mapper attribute; without either, each
    worker takes an equal share of this process's cores (at least one), so the workers do not
    oversubscribe them (wepy's worker defaults to 1). The count is worked out and checked once per
    worker, by its first task.
    """

    @functools.cached_property  # not cached when it raises
    def _threads(self) -> str:
        n = self.attributes.get("num_threads", self.mapper_attributes.get("num_threads"))
        if n is None:
            n = max(1, usable_cores() // max(1, self.num_workers))
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"OpenMMCPUWorker {self.worker_idx}: num_threads must be a positive int, got {n!r}")
        return str(n)

    def run_task(self, task: Task) -> Any:
        return task(platform_kwargs={"Threads": self._threads})
