"""Tests of wemap.segment: POSIX shared-memory segments holding a slot ring."""

from __future__ import annotations

import errno
import gc
import logging
import multiprocessing as mp
import os
import secrets
import stat
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import wait_for_sleeper

from wemap._ring import layout, required_size
from wemap.errors import RingCorruptError, ShmSpaceError
from wemap.segment import Segment, open_untracked
from wemap.stale_segments import SEGMENT_PREFIX, segment_name

SHM_DIR = "/dev/shm"


def _released(ring) -> bool:
    """Whether ``ring`` let go of its segment (every call then says so)."""
    try:
        _ = ring.nslots
    except ValueError as exc:
        return "released" in str(exc)
    return False


pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm (Linux)")


def shm_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def wemap_files() -> set[str]:
    return {n for n in os.listdir(SHM_DIR) if n.startswith(SEGMENT_PREFIX + "_")}


def test_segment_name():
    name = segment_name()
    assert name.startswith(f"wemap_{os.getpid()}_") and len(name.rsplit("_", 1)[1]) == 16
    assert segment_name() != name


def test_create_attach_close_unlink():
    seg = Segment.create(4, 1000)
    path = shm_path(seg.name)
    try:
        assert seg.name.startswith(f"wemap_{os.getpid()}_")
        assert seg.owner_pid == os.getpid() == seg.ring.creator_pid
        size = required_size(4, 1000)
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == size
        assert st.st_blocks * 512 >= size, "pages were not reserved"

        other = Segment.attach(seg.name)
        assert (other.ring.nslots, other.ring.region_size, other.owner_pid) == (4, 1024, os.getpid())
        seg.ring.input_view(3)[:3] = [7, 8, 9]
        seg.ring.push_ready(3)
        slot = other.ring.pop_ready(timeout=1)
        assert slot == 3 and other.ring.input_view(slot)[:3].tolist() == [7, 8, 9]
        other.close()
        other.close()
        assert _released(other.ring)
        other.unlink()  # attached, not the creator: a no-op
        assert os.path.exists(path)
    finally:
        seg.close()
        seg.unlink()
    assert _released(seg.ring) and not os.path.exists(path)
    seg.unlink()  # idempotent
    seg.close()


def test_context_manager_unlinks():
    with Segment.create(2, 64) as seg:
        path = shm_path(seg.name)
        assert os.path.exists(path)
    assert not os.path.exists(path)


def _mapped(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith("/dev/shm/" + name) for line in f)


def test_close_with_live_views(caplog):
    seg = Segment.create(2, 64)
    view = seg.ring.output_view(1)
    other = seg.ring.input_view(0)
    assert _mapped(seg.name)
    with caplog.at_level(logging.DEBUG, logger="wemap.segment"):
        seg.close()  # the views pin the mapping: logged, not raised
    assert _released(seg.ring) and "still has views" in caplog.text
    view[0] = 1  # still mapped, still usable
    other[0] = 3
    assert _mapped(seg.name)
    del view, other
    gc.collect()
    assert not _mapped(seg.name), "the mapping outlived its last view"
    seg.close()
    seg.unlink()


def test_close_refused_while_a_thread_waits(caplog):
    seg = Segment.create(2, 64)
    t = threading.Thread(target=seg.ring.pop_ready, args=(5.0,))
    t.start()
    other = open_untracked(seg.name)  # the segment's bytes, as another process maps them
    wait_for_sleeper(other.buf, layout(2, 64)["ready_offset"])
    with caplog.at_level(logging.WARNING, logger="wemap.segment"):
        seg.close()
    assert not _released(seg.ring) and "blocked" in caplog.text
    seg.ring.push_ready(0)
    t.join(5)
    seg.close()
    other.close()
    assert _released(seg.ring) and not _mapped(seg.name)
    seg.unlink()


def test_unlink_after_external_removal():
    seg = Segment.create(2, 64)
    seg.close()
    os.unlink(shm_path(seg.name))
    seg.unlink()  # tolerates it (and drops the tracker registration)


def test_attach_errors():
    with pytest.raises(FileNotFoundError):
        Segment.attach(f"wemap_{os.getpid()}_{secrets.token_hex(8)}")

    # a foreign segment is rejected and left alone
    name = f"wemapforeign_{secrets.token_hex(4)}"
    fd = os.open(shm_path(name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"not a ring" * 1000)
        with pytest.raises(RingCorruptError, match="not a wemap segment"):
            Segment.attach(name)
        assert os.path.exists(shm_path(name))
        os.ftruncate(fd, 0)
        with pytest.raises(RingCorruptError, match="empty"):
            Segment.attach(name)
    finally:
        os.close(fd)
        os.unlink(shm_path(name))


def test_attach_truncated_segment():
    with Segment.create(4, 4096) as seg:
        size = required_size(seg.ring.nslots, seg.ring.region_size)
        os.truncate(shm_path(seg.name), size - 4096)
        with pytest.raises(RingCorruptError, match=rf"truncated: header says {size} bytes, mapping has {size - 4096}"):
            Segment.attach(seg.name)
        seg.ring.release()


def test_shm_space_error_from_statvfs():
    st = os.statvfs(SHM_DIR)
    free = st.f_bavail * st.f_frsize
    before = wemap_files()
    with pytest.raises(ShmSpaceError) as info:
        Segment.create(1, free)  # two regions of `free` bytes each: never fits
    msg = str(info.value)
    assert f"{required_size(1, free):,}" in msg and "--shm-size" in msg and "fewer/smaller slots" in msg
    assert info.value.needed == required_size(1, free)
    assert isinstance(info.value, MemoryError)
    assert wemap_files() == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.ENOMEM])
def test_shm_space_error_from_fallocate(monkeypatch, code):
    seen = []

    def fallocate(fd, offset, length):
        seen.append(length)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    before = wemap_files()
    with pytest.raises(ShmSpaceError, match=r"needs 13,312 bytes.*--shm-size=2g"):
        Segment.create(4, 1000)
    assert seen == [required_size(4, 1000)]
    assert wemap_files() == before, "the half-made segment was left behind"


def test_fallocate_unsupported_still_works(monkeypatch):
    def fallocate(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "not supported")

    monkeypatch.setattr(os, "posix_fallocate", fallocate)
    with Segment.create(2, 64) as seg:
        seg.ring.push_done(1)
        assert seg.ring.pop_done(0) == 1


_CHILD = textwrap.dedent(
    """
    import sys
    from wemap.segment import Segment
    seg = Segment.attach(sys.argv[1])
    slot = seg.ring.pop_ready(timeout=5)
    seg.ring.output_view(slot)[:2] = [42, 43]
    seg.ring.push_done(slot)
    seg.unlink()  # not the owner: must be a no-op
    seg.close()
    """
)


@pytest.mark.timeout(60)
def test_worker_attach_in_fresh_interpreter_does_not_unlink():
    """A separate interpreter (own resource tracker) attaches, uses and exits (cpython #82300)."""
    with Segment.create(2, 64) as seg:
        seg.ring.push_ready(1)
        proc = subprocess.run([sys.executable, "-c", _CHILD, seg.name], capture_output=True, text=True, timeout=50)
        assert proc.returncode == 0, proc.stderr
        assert "leaked shared_memory" not in proc.stderr and "resource_tracker" not in proc.stderr, proc.stderr
        assert os.path.exists(shm_path(seg.name)), "the worker's exit removed the manager's segment"
        assert seg.ring.pop_done(timeout=1) == 1
        assert seg.ring.output_view(1)[:2].tolist() == [42, 43]


def _spawned_worker(seg: Segment) -> None:
    # `seg` arrived pickled by name and re-attached here
    assert seg.owner_pid != os.getpid()
    slot = seg.ring.pop_ready(timeout=5)
    seg.ring.output_view(slot)[0] = 99
    seg.ring.push_done(slot)
    seg.unlink()
    seg.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_segment_pickles_to_spawned_child(method, capfd):
    ctx = mp.get_context(method)
    with Segment.create(2, 64) as seg:
        seg.ring.push_ready(0)
        p = ctx.Process(target=_spawned_worker, args=(seg,))
        p.start()
        p.join(50)
        assert p.exitcode == 0
        assert os.path.exists(shm_path(seg.name))
        assert seg.ring.pop_done(timeout=1) == 0 and seg.ring.output_view(0)[0] == 99
    err = capfd.readouterr().err
    assert "leaked shared_memory" not in err, err


def test_failed_attach_never_removes_the_owners_segment(monkeypatch):
    """SharedMemory unlinks the name when mmap fails (a worker out of address space); ours must not."""
    import mmap

    with Segment.create(2, 4096) as seg:
        def no_memory(*args, **kwargs):
            raise OSError(errno.ENOMEM, "Cannot allocate memory")

        monkeypatch.setattr(mmap, "mmap", no_memory)
        with pytest.raises(OSError, match="Cannot allocate memory"):
            Segment.attach(seg.name)
        monkeypatch.undo()
        assert os.path.exists(f"/dev/shm/{seg.name}"), "a failed attach removed the segment"
        again = Segment.attach(seg.name)  # a replacement worker can still attach
        again.close()
