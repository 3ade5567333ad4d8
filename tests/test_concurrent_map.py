"""One mapper, two threads: a ``map`` while another is running fails at once, naming the rule, and harms nothing.

The running ``map`` is held inside its segment by FIFOs (the segment says it started, then
waits to be released), so the second call lands while the first one is surely in progress.
"""

from __future__ import annotations

import os
import threading

import pytest
import segfuncs

import wemap
from wemap import Mapper, WorkerMapper

MAPPERS = {"Mapper": Mapper, "WorkerMapper": WorkerMapper, "SharedMemWorkerMapper": wemap.SharedMemWorkerMapper}
try:  # optional extra
    from wemap.dask_mapper import DaskMapper

    MAPPERS["DaskMapper"] = DaskMapper
except ModuleNotFoundError as exc:
    if exc.name not in ("dask", "distributed"):
        raise


def write_fifo(path: str) -> None:
    with open(path, "w") as f:
        f.write("go")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(MAPPERS))
def test_a_second_concurrent_map_fails_at_once(name, tmp_path):
    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    os.mkfifo(started)
    os.mkfifo(release)
    with MAPPERS[name](segment_func=segfuncs.rendezvous, num_workers=2) as m:
        results, errors = [], []

        def first() -> None:
            try:
                results.append(m.map([7, 8], [started, None], [release, None]))
            except BaseException as exc:  # reported by the assertions below
                errors.append(exc)

        thread = threading.Thread(target=first, daemon=True)
        thread.start()
        try:
            with open(started) as f:  # the first map's segment is running
                assert f.read() == "running"
            with pytest.raises(RuntimeError, match=rf"{name}\.map\(\).*one map\(\) at a time"):
                m.map([1], [None], [None])
        finally:  # let the first map finish (from a thread: its segment may be gone if this failed)
            threading.Thread(target=write_fifo, args=(release,), daemon=True).start()
            thread.join(30)
        assert not thread.is_alive() and not errors and results == [[7, 8]]
        assert m.map([1, 2], [None, None], [None, None]) == [1, 2]  # and the mapper still works
