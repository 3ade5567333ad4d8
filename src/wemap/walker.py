"""The walker type wemap ships: a weight plus a mapping of named arrays and scalars.

wemap's mappers and codecs also carry wepy's ``Walker``; this one exists so that wemap
works without wepy and so the shared-memory codec has a plain, documented target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Walker"]


class Walker:
    """A weighted-ensemble walker: ``state`` (names → numpy arrays or scalars) and ``weight``.

    The conventional state fields are ``positions`` (n_atoms, 3), ``velocities`` (n_atoms, 3)
    and ``box_vectors`` (3, 3), in nm, nm/ps and nm, but any names work.
    """

    __slots__ = ("state", "weight")

    def __init__(self, state: Mapping[str, Any], weight: float) -> None:
        if type(state) is not dict and not isinstance(state, Mapping):
            raise TypeError(f"Walker state must be a mapping of names to arrays or scalars, got {type(state).__name__}")
        self.state: dict[str, Any] = dict(state)
        self.weight = float(weight)

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Walker):
            return NotImplemented
        if self.weight != other.weight or self.state.keys() != other.state.keys():
            return False
        return all(np.array_equal(self.state[k], other.state[k]) for k in self.state)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __reduce__(self):
        return (Walker, (self.state, self.weight))

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={np.shape(v)}" if isinstance(v, np.ndarray) else f"{k}={v!r}" for k, v in self.state.items()
        )
        return f"Walker(weight={self.weight!r}, {fields})"
