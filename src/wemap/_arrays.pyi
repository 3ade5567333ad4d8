"""Type stub for the typed array helpers (src/wemap/_arrays.pyx)."""

from collections.abc import Sequence
from typing import Any

def data_address(obj: Any) -> int: ...
def copy_arrays(dst: Any, offsets: Sequence[int], arrays: Sequence[Any]) -> None: ...
