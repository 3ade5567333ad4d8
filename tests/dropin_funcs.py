"""Segment functions and runners for the wepy drop-in tests; module level so workers import them."""

from __future__ import annotations

import os

import numpy as np
from wepy.walker import Walker, WalkerState

import wemap


def record_task_kwargs(walker, segment_length, platform=None, platform_kwargs=None, **kwargs):
    """Return the walker with what its worker passed: worker index, platform, platform properties."""
    worker = wemap.current_worker()
    state = dict(walker.state.dict()) if hasattr(walker.state, "dict") else dict(walker.state)
    state.update(
        worker_idx=np.array([worker.worker_idx]),
        pid=np.array([os.getpid()]),
        platform=str(platform),
        device=str((platform_kwargs or {}).get("DeviceIndex", "")),
        threads=str((platform_kwargs or {}).get("Threads", "")),
    )
    return Walker(WalkerState(**state), walker.weight)


def mapper_attributes(x, **kwargs):
    """What the running worker sees of the mapper: its index and ``mapper_attributes``."""
    worker = wemap.current_worker()
    return worker.worker_idx, dict(worker.mapper_attributes)


class ShiftRunner:
    """A wepy-style runner (``run_segment``, ``pre_cycle``, ``post_cycle``) with deterministic moves."""

    def pre_cycle(self, **kwargs):
        pass

    def post_cycle(self, **kwargs):
        pass

    def run_segment(self, walker, segment_length, **kwargs):
        pos = walker.state["positions"]
        return Walker(WalkerState(positions=pos + 0.5 * segment_length, time=walker.state["time"] + segment_length),
                      walker.weight)


def walkers(n: int, n_atoms: int = 3) -> list:
    return [Walker(WalkerState(positions=np.zeros((n_atoms, 3)), time=0.0), 1.0 / n) for _ in range(n)]
