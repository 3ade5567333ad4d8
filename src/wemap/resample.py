"""Binned split/merge resampling on a scalar progress coordinate (Huber & Kim's weighted ensemble).

Each cycle the walkers are sorted into bins of the progress coordinate and every occupied bin
is brought to ``walkers_per_bin`` walkers: the lightest walkers are merged in pairs (the
survivor is chosen with probability proportional to weight and takes the summed weight) and
the heaviest are split into clones of equal weight. Bins never empty and weight never moves
between bins, so the ensemble stays unbiased.

Weights are conserved to float rounding: a merge adds two floats; a split of ``w`` into ``k``
clones gives ``k - 1`` clones ``w / k`` and the last ``w - (k - 1) * (w / k)``, a subtraction
that is exact (Sterbenz), so each operation adds at most half an ulp of error. No walker is
ever made lighter than ``min_weight`` (a split that would is refused, leaving the bin short)
or heavier than ``max_weight`` (a merge that would is refused, leaving the bin long; a walker
already heavier is split down).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .walker import Walker

__all__ = ["BinnedResampler", "ResampleResult", "reweighted"]

logger = logging.getLogger(__name__)


def reweighted(walker: Any, weight: float) -> Any:
    """A walker with ``walker``'s state (shared, not copied) and a new weight; wemap or wepy walkers."""
    if isinstance(walker, Walker):
        return Walker(walker.state, weight)
    return type(walker)(walker.state, weight)


@dataclass
class ResampleResult:
    """The resampled walkers and where each came from."""

    walkers: list
    #: index in the input list of the walker each output walker was cloned from or survived as
    parents: list[int]
    #: bin index of each output walker (0 is below ``edges[0]``)
    bins: list[int]
    n_splits: int = 0
    n_merges: int = 0
    #: merges and splits refused because of ``min_weight`` / ``max_weight``
    refused: dict[str, int] = field(default_factory=lambda: {"split": 0, "merge": 0})


class BinnedResampler:
    """Split/merge walkers so every occupied bin of a progress coordinate holds ``walkers_per_bin``.

    ``edges``: increasing bin boundaries; bin 0 holds values below ``edges[0]``, bin
    ``len(edges)`` those at or above ``edges[-1]``. ``progress``: a function walker -> float,
    used when `resample` is not given the values. ``seed`` makes the merge choices
    reproducible.
    """

    def __init__(
        self,
        edges: ArrayLike,
        walkers_per_bin: int,
        *,
        progress: Callable[[Any], float] | None = None,
        min_weight: float = 1e-12,
        max_weight: float | None = None,
        seed: int | None = None,
    ) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or not np.all(np.isfinite(self.edges)) or np.any(np.diff(self.edges) <= 0):
            raise ValueError(f"bin edges must be a 1-d list of finite, strictly increasing numbers, got {edges!r}")
        if int(walkers_per_bin) < 1:
            raise ValueError(f"walkers_per_bin must be at least 1, got {walkers_per_bin}")
        if not min_weight > 0:
            raise ValueError(f"min_weight must be positive, got {min_weight}")
        if max_weight is not None and not max_weight >= 2 * min_weight:
            raise ValueError(
                f"max_weight ({max_weight}) must be at least twice min_weight ({min_weight}), "
                f"or a walker heavier than max_weight could not be split into walkers no lighter than min_weight"
            )
        self.walkers_per_bin = int(walkers_per_bin)
        self.progress = progress
        self.min_weight = float(min_weight)
        self.max_weight = None if max_weight is None else float(max_weight)
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    @property
    def n_bins(self) -> int:
        return len(self.edges) + 1

    def bin_of(self, values: ArrayLike) -> np.ndarray:
        """Bin index of each progress value."""
        return np.searchsorted(self.edges, np.asarray(values, dtype=np.float64), side="right")

    def resample(self, walkers: Sequence[Any], values: ArrayLike | None = None) -> ResampleResult:
        """Resample ``walkers`` (progress values computed with ``progress`` unless given)."""
        walkers = list(walkers)
        if values is None:
            if self.progress is None:
                raise ValueError(
                    "BinnedResampler.resample needs the progress values, or a progress function at construction"
                )
            values = [self.progress(w) for w in walkers]
        values = np.asarray(values, dtype=np.float64)
        if len(values) != len(walkers):
            raise ValueError(f"got {len(values)} progress values for {len(walkers)} walkers")
        for i, (w, v) in enumerate(zip(walkers, values)):
            if not math.isfinite(v):
                raise ValueError(f"walker {i} has progress value {v}; the progress coordinate must be finite")
            if not (math.isfinite(w.weight) and w.weight > 0):
                raise ValueError(f"walker {i} has weight {w.weight}; weights must be positive and finite")
        result = ResampleResult(walkers=[], parents=[], bins=[])
        bins = self.bin_of(values)
        for b in np.unique(bins):
            members = [[walkers[i].weight, int(i)] for i in np.flatnonzero(bins == b)]
            for weight, parent in self._resample_bin(members, result):
                result.walkers.append(reweighted(walkers[parent], weight))
                result.parents.append(parent)
                result.bins.append(int(b))
        logger.debug(
            "resampled %d -> %d walkers: %d splits, %d merges, refused %s",
            len(walkers), len(result.walkers), result.n_splits, result.n_merges, result.refused,
        )
        return result

    # -- one bin --------------------------------------------------------------------------------
    def _resample_bin(self, items: list[list], result: ResampleResult) -> list[list]:
        """``items``: [weight, parent] pairs of one bin; returns the bin's new pairs, sorted by parent."""
        if self.max_weight is not None:
            for item in [it for it in items if it[0] > self.max_weight]:
                items.remove(item)
                k = math.ceil(item[0] / self.max_weight)
                pieces = self._split(item[0], k)
                while max(pieces) > self.max_weight:  # rounding at the boundary
                    k += 1
                    pieces = self._split(item[0], k)
                items.extend([p, item[1]] for p in pieces)
                result.n_splits += 1
        target = self.walkers_per_bin
        while len(items) > target:
            items.sort(key=lambda it: it[0])
            (wa, pa), (wb, pb) = items[0], items[1]
            total = wa + wb
            if self.max_weight is not None and total > self.max_weight:
                result.refused["merge"] += 1
                break
            survivor = pa if self.rng.random() * total < wa else pb
            items[:2] = [[total, survivor]]
            result.n_merges += 1
        while len(items) < target:
            items.sort(key=lambda it: it[0])
            w, parent = items.pop()
            ideal = sum(it[0] for it in items) + w
            k = min(max(2, math.ceil(w / (ideal / target))), target - len(items))
            k = min(k, int(w / self.min_weight))
            pieces = self._split(w, k) if k >= 2 else [w]
            while len(pieces) > 1 and min(pieces) < self.min_weight:
                pieces = self._split(w, len(pieces) - 1) if len(pieces) > 2 else [w]
            items.extend([p, parent] for p in pieces)
            if len(pieces) == 1:
                result.refused["split"] += 1
                break
            result.n_splits += 1
        items.sort(key=lambda it: it[1])
        return items

    @staticmethod
    def _split(w: float, k: int) -> list[float]:
        """``k`` weights summing to ``w`` up to one rounding: ``k - 1`` of ``w / k`` and the remainder."""
        q = w / k
        return [q] * (k - 1) + [w - q * (k - 1)]
