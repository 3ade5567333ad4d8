"""The stale-segment sweep: nothing in /dev/shm makes ``init`` fail, and only provably orphaned segments go.

A segment is orphaned when nobody holds its owner lock (the kernel drops it when the owner dies),
whatever the pid in its name says: across pid namespaces (containers sharing /dev/shm) a live
owner's pid can look dead, and a dead owner's pid can belong to someone else.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import textwrap

import psutil
import pytest
import segfuncs

from wemap import SharedMemWorkerMapper
from wemap.segment import Segment
from wemap.stale_segments import remove_stale_segments

SHM_DIR = "/dev/shm"
pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm (Linux)")

#: above Linux's PID_MAX_LIMIT (2**22): no process has it, in any pid namespace (the leak checks skip it)
NO_PID = 2**22 + 1
#: too large for a C long: the pid that once made the sweep raise OverflowError
HUGE_PID = 2**64


def entry(pid: int) -> str:
    """A path in /dev/shm under a name the sweep looks at."""
    return os.path.join(SHM_DIR, f"wemap_{pid}_{secrets.token_hex(8)}")


def remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)
    elif os.path.lexists(path):
        os.unlink(path)


#: a process that creates a segment as a manager does, under the name given (or its own), and says its
#: name; with "fork" it first forks a child that keeps every descriptor it inherited (a worker started
#: with the fork start method) and says the child's pid once fork has returned in the child (its at-fork
#: handlers have run). Both then wait for stdin to close.
_OWNER = textwrap.dedent(
    """
    import os, sys
    from multiprocessing import resource_tracker
    from wemap import segment

    if sys.argv[1] != "-":
        segment.segment_name = lambda: sys.argv[1]
    shm = segment.create_reserved(4096, "a test segment")
    resource_tracker.unregister(shm._name, "shared_memory")  # as if its resource tracker died with it
    if "fork" in sys.argv[2:]:
        forked_r, forked_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(forked_w, b"1")
            sys.stdin.read()
            os._exit(0)
        os.read(forked_r, 1)
        print(pid, flush=True)
    print(shm.name, flush=True)
    sys.stdin.read()
    """
)


def start_owner(name: str = "-", *flags: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _OWNER, name, *flags], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL (no cleanup of any kind) and reap; its pipes stay open (a forked child reads stdin)."""
    proc.kill()
    proc.wait(30)


def finish(proc: subprocess.Popen, *paths: str) -> None:
    kill(proc)
    proc.stdin.close()
    proc.stdout.close()
    for path in paths:
        remove(path)


def test_foreign_entries_neither_break_init_nor_go(tmp_path):
    """Entries under segment names that are not orphaned segments of ours: left alone, and no error."""
    target = tmp_path / "target"
    target.write_bytes(b"x" * 4096)
    made = {}
    made["empty file, pid past a C long"] = p = entry(HUGE_PID)
    open(p, "x").close()
    made["directory"] = p = entry(NO_PID)
    os.mkdir(p, 0o700)
    made["unreadable file"] = p = entry(NO_PID)
    os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.truncate(p, 4096)
    os.chmod(p, 0)
    made["symbolic link"] = p = entry(NO_PID)
    os.symlink(target, p)
    made["FIFO"] = p = entry(NO_PID)
    os.mkfifo(p, 0o600)
    if os.geteuid() == 0:  # only root can make a file another user owns
        made["another user's segment"] = p = entry(NO_PID)
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.truncate(p, 4096)
        os.chown(p, 65534, 65534)
    try:
        removed = remove_stale_segments()
        assert not set(removed) & {os.path.basename(p) for p in made.values()}
        with SharedMemWorkerMapper(segment_func=segfuncs.add, num_workers=1) as m:
            assert m.map([1, 2], [1, 1]) == [2, 3]
        gone = [what for what, p in made.items() if not os.path.lexists(p)]
        assert not gone, f"the sweep removed entries that are not orphaned segments of ours: {gone}"
        assert target.read_bytes() == b"x" * 4096
    finally:
        for p in made.values():
            remove(p)


@pytest.mark.timeout(60)
def test_a_locked_segment_stays_whatever_its_pid_says(caplog):
    """Its owner alive in another pid namespace, simulated: a pid no process has, the owner's lock held."""
    path = entry(NO_PID)
    owner = start_owner(os.path.basename(path))
    try:
        name = owner.stdout.readline().strip()
        assert name == os.path.basename(path) and os.path.getsize(path) == 4096
        with Segment.create(2, 64) as mine:  # this process's own, as a second check
            removed = remove_stale_segments()
            assert name not in removed and mine.name not in removed
            assert os.path.exists(path) and os.path.exists(os.path.join(SHM_DIR, mine.name))
        kill(owner)  # the owner dies: the kernel drops its lock, and the segment is an orphan now
        with caplog.at_level(logging.INFO, logger="wemap.stale_segments"):
            remove_stale_segments()
        assert not os.path.exists(path), "the segment of a dead owner was not swept"
    finally:
        finish(owner, path)


@pytest.mark.timeout(60)
def test_a_forked_child_does_not_keep_its_parents_segments_owned():
    """A child forked by the owner (a worker started with ``fork``) outlives it: the segment is still swept."""
    owner = start_owner("-", "fork")
    child, path = None, ""
    try:
        child = psutil.Process(int(owner.stdout.readline()))
        name = owner.stdout.readline().strip()
        path = os.path.join(SHM_DIR, name)
        assert os.path.exists(path) and name not in remove_stale_segments()
        kill(owner)
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        remove_stale_segments()
        assert not os.path.exists(path), "the owner's forked child kept the segment looking owned"
    finally:
        finish(owner, path)
        if child is not None:  # not ours to reap any more: it was handed to init with its parent's death
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.mark.timeout(60)
def test_init_sweeps_the_segment_of_a_killed_owner():
    """A manager SIGKILLed together with its resource tracker leaves its segment; the next init removes it."""
    owner = start_owner()
    path = ""
    try:
        name = owner.stdout.readline().strip()
        path = os.path.join(SHM_DIR, name)
        assert os.path.exists(path)
        kill(owner)
        with SharedMemWorkerMapper(segment_func=segfuncs.add, num_workers=1) as m:
            assert not os.path.exists(path), "init left the segment of a dead owner"
            assert m.map([1], [2]) == [3]
    finally:
        finish(owner, path)


def test_sweep_of_another_directory(tmp_path):
    """What the sweep takes for an orphan: a regular 0600 file of this user with a size, under a segment's name."""
    def make(name: str, size: int = 4096, mode: int = 0o600) -> str:
        path = tmp_path / name
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        os.truncate(path, size)
        return name

    orphan = make(f"wemap_{NO_PID}_{secrets.token_hex(8)}")
    kept = [
        make(f"wemap_{NO_PID}_{secrets.token_hex(8)}", size=0),  # perhaps being made: not locked yet
        make(f"wemap_{NO_PID}_{secrets.token_hex(8)}", mode=0o644),  # not a mode wemap makes segments with
        make(f"wemap_{NO_PID}_notours"),
        make("other"),
    ]
    assert remove_stale_segments(str(tmp_path)) == [orphan]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert remove_stale_segments(str(tmp_path / "missing")) == []
    assert remove_stale_segments(str(tmp_path / "other")) == []  # not a directory
