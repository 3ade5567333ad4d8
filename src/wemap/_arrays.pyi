"""Type stub for the typed array helpers (src/wemap/_arrays.pyx)."""

from collections.abc import Sequence
from typing import Any

def data_address(obj: Any) -> int: ...
def copy_arrays(dst: Any, offsets: Sequence[int], arrays: Sequence[Any]) -> None: ...

class FieldError(ValueError): ...

class Placement:
    copies: list[Any]
    offsets: list[int]
    refs: list[int]
    cursor: int
    array_bytes: int
    largest: int
    def __init__(self, describe: Any, base: int = 0, span: int = 0, block_size: int = 1,
                 allowed: set[int] | None = None) -> None: ...
    def fields(self, fields: dict[str, Any], values: list[Any]) -> tuple[tuple[Any, ...], ...]: ...
