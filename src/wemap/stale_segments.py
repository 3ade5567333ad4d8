"""The names of wemap's shared-memory segments, and the sweep that removes orphaned ones.

A segment's owner holds an ``flock`` on it until the name is removed (`wemap.segment.create_reserved`);
the kernel drops the lock however the owner dies, and it is seen from every pid namespace. So the
sweep goes by the lock, never by the pid in the name (containers sharing ``/dev/shm`` each number
their processes from 1).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import secrets
import stat

__all__ = ["SEGMENT_PREFIX", "segment_name", "remove_stale_segments"]

logger = logging.getLogger(__name__)

SEGMENT_PREFIX = "wemap"
_NAME_RE = re.compile(rf"^{SEGMENT_PREFIX}_(\d+)_[0-9a-f]{{16}}$")


def segment_name() -> str:
    """Return a fresh segment name, ``wemap_<pid>_<16 hex>``: the pid says whose it was."""
    return f"{SEGMENT_PREFIX}_{os.getpid()}_{secrets.token_hex(8)}"


def remove_stale_segments(shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink the segments in ``shm_dir`` whose owner is gone; return their names. Never raises.

    For owners that died with their resource tracker (e.g. the process group SIGKILLed). Only a
    provable orphan goes: named as `segment_name` makes them, a regular file of this user with mode
    0600 and a size, and nobody holds its owner lock. Anything else under such a name stays.
    """
    try:
        names = sorted(os.listdir(shm_dir))
    except OSError as exc:
        logger.debug("not sweeping %s: %s", shm_dir, exc)
        return []
    removed: list[str] = []
    for name in names:
        if _NAME_RE.match(name) is None:
            continue
        try:
            if _remove_if_orphaned(shm_dir, name):
                removed.append(name)
        except OSError as exc:  # gone meanwhile, not ours to open, ...: not an orphan we can prove
            logger.debug("left %s in %s: %s", name, shm_dir, exc)
    return removed


def _remove_if_orphaned(shm_dir: str, name: str) -> bool:
    path = os.path.join(shm_dir, name)
    # O_NOFOLLOW: never a link's target; O_NONBLOCK: a FIFO under the name does not block the open
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600):
            return False
        if st.st_size == 0:  # perhaps a segment just made, its owner about to lock it
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner lives, in whichever pid namespace
        now = os.stat(path, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False  # the name was removed, and made again, since it was opened here
        os.unlink(path)
    finally:
        os.close(fd)
    logger.info("removed stale shared-memory segment %s (its owner is gone)", name)
    return True
