"""wepy components for the interop tests; module level so worker processes can import them."""

from __future__ import annotations

import numpy as np
from wepy.runners.runner import Runner
from wepy.walker import Walker, WalkerState


class DeterministicRunner(Runner):
    """'Dynamics' that depend only on the walker, the segment length and the walker index."""

    def run_segment(self, walker, segment_length, **kwargs):
        walker_idx = kwargs.get("walker_idx", 0)
        pos = walker.state["positions"]
        new = pos + segment_length * 0.01 * (1 + walker_idx) + 0.001 * np.arange(pos.size).reshape(pos.shape)
        return Walker(WalkerState(positions=new, time=walker.state["time"] + segment_length), walker.weight)


def init_walkers(n: int, n_atoms: int = 1, dims: int = 3) -> list[Walker]:
    return [
        Walker(WalkerState(positions=np.zeros((n_atoms, dims)), time=0.0), 1.0 / n)
        for _ in range(n)
    ]
