"""Every mapper class the suite checks, by name; a new mapper joins by adding one entry here.

`tests/conftest.py` turns these into the ``mapper_cls``, ``process_mapper_cls`` and
``timeout_process_mapper_cls`` fixtures.
"""

from __future__ import annotations

import pytest

import wemap
from wemap import Mapper, WorkerMapper

MAPPERS = {
    "Mapper": Mapper,
    "WorkerMapper": WorkerMapper,
}
try:
    MAPPERS["SharedMemWorkerMapper"] = wemap.SharedMemWorkerMapper
except ImportError as exc:  # the compiled ring is part of every install; say why it is missing
    pytest.fail(f"wemap.SharedMemWorkerMapper could not be imported: {exc}", pytrace=False)
try:  # optional extra: the suite runs without dask, but a dask that is there and broken is a failure
    from wemap.dask_mapper import DaskMapper

    MAPPERS["DaskMapper"] = DaskMapper
except ModuleNotFoundError as exc:
    if exc.name not in ("dask", "distributed"):
        raise
PROCESS_MAPPERS = [name for name in MAPPERS if name != "Mapper"]
#: the process mappers that take ``task_timeout`` (Dask has none)
TIMEOUT_PROCESS_MAPPERS = [name for name in PROCESS_MAPPERS if name != "DaskMapper"]
