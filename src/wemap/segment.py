"""One POSIX shared-memory segment holding a slot `Ring`: create, attach, close, unlink.

The manager creates it (``Segment.create``) with every page reserved, so a ``/dev/shm`` too small
fails with `ShmSpaceError` instead of a SIGBUS mid-run. Workers attach by name without registering
it with the resource tracker: only the creator unlinks it. The creator holds an ``flock`` on every
segment it made until the name goes, which is how `wemap.stale_segments` tells orphans apart.
"""

from __future__ import annotations

import _posixshmem  # what SharedMemory itself opens and unlinks names with
import errno
import fcntl
import logging
import os
import sys
import threading
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

from .errors import RingCorruptError, ShmSpaceError
from .stale_segments import segment_name

try:
    from ._ring import Ring, required_size
except ImportError as _exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "wemap._ring (the compiled shared-memory ring) is not built or does not load: "
        "build it with `pip install .` (or `pip install --no-build-isolation -e .`) "
        f"from the wemap source tree ({_exc})"
    ) from _exc

__all__ = ["Segment", "create_reserved", "unlink_owned", "close_or_hand_over", "discard", "open_untracked"]

log = logging.getLogger(__name__)

_SPACE_ERRNOS = {errno.ENOSPC, errno.ENOMEM, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
# Serialises the resource_tracker.register patch used to attach untracked (< 3.13).
_TRACKER_PATCH_LOCK = threading.Lock()
#: names tried before `create_reserved` gives up (another is taken only while a sweep looks at one)
_CREATE_TRIES = 8
#: owner-lock descriptors this process holds
_OWNER_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child, close its copies of the parent's owner locks.

    fork shares the open file description an flock belongs to: kept copies would keep the parent's
    segments looking owned after it died. Closing a copy leaves the parent's lock held.
    """
    for fd in _OWNER_LOCKS:
        os.close(fd)
    _OWNER_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def _free_bytes(shm_dir: str) -> int | None:
    """Bytes an unprivileged process may still allocate in ``shm_dir``; None if unknown."""
    try:
        st = os.statvfs(shm_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _space_error(needed: int, shm_dir: str, what: str) -> ShmSpaceError:
    free = _free_bytes(shm_dir)
    have = "an unknown number of" if free is None else f"{free:,}"
    err = ShmSpaceError(
        f"not enough shared memory for {what}: it needs {needed:,} bytes but {shm_dir} has {have} bytes free; "
        "run the container with a larger --shm-size, e.g. docker run --shm-size=2g, or use fewer/smaller slots"
    )
    err.needed = needed  # type: ignore[attr-defined]
    err.free = free  # type: ignore[attr-defined]
    return err


class _Owned(SharedMemory):
    """A segment this process created: it holds the owner lock until its name is removed.

    Pickled, it travels as a plain attachment: only the creating process owns a segment.
    """

    _lock_fd = -1
    _lock_pid = 0

    def unlink(self) -> None:
        try:
            super().unlink()
        finally:
            fd, self._lock_fd = self._lock_fd, -1
            if fd >= 0 and self._lock_pid == os.getpid():  # in a forked child the copy is closed already
                _OWNER_LOCKS.discard(fd)
                os.close(fd)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (open_untracked, (self.name,))


def _create_locked(size: int) -> _Owned:
    """Create a fresh name, take its owner lock, then give it ``size`` bytes.

    In that order a sweep, which leaves segments without a size alone, never sees a live owner's
    segment unlocked; one that holds the new name's lock for an instant makes this take another.
    """
    for _ in range(_CREATE_TRIES):
        name = "/" + segment_name()
        fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)  # close-on-exec
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _OWNER_LOCKS.add(fd)
            os.fchmod(fd, 0o600)  # whatever the umask: the mode a sweep takes for a segment's
            os.ftruncate(fd, size)
            shm = _Owned(name=name[1:])  # opened again, tracked: the resource tracker unlinks it if we are killed
        except BaseException as exc:
            _posixshmem.shm_unlink(name)
            _OWNER_LOCKS.discard(fd)
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                continue
            raise
        shm._lock_fd, shm._lock_pid = fd, os.getpid()
        return shm
    raise FileExistsError(f"could not create a shared-memory segment: {_CREATE_TRIES} fresh names were busy")


def create_reserved(size: int, what: str, shm_dir: str = "/dev/shm") -> SharedMemory:
    """A new segment ``wemap_<pid>_<token>`` of ``size`` bytes, every page reserved now, its owner lock held.

    ``what`` names it in the `ShmSpaceError` (leaving nothing behind) raised when ``shm_dir``
    cannot hold it. The caller owns it: `unlink_owned` and `close_or_hand_over` end it.
    """
    free = _free_bytes(shm_dir)
    if free is not None and size > free:
        raise _space_error(size, shm_dir, what)
    shm = _create_locked(size)
    try:
        os.posix_fallocate(shm._fd, 0, size)  # type: ignore[attr-defined]  # tmpfs is sparse: a later write could SIGBUS
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            log.debug("%s cannot reserve pages (%s); continuing unreserved", shm_dir, exc)
            return shm
        discard(shm)
        if exc.errno in _SPACE_ERRNOS:
            raise _space_error(size, shm_dir, what) from exc
        raise
    except BaseException:
        discard(shm)
        raise
    return shm


def unlink_owned(shm: SharedMemory) -> None:
    """Remove the name of a segment this process created (and its resource-tracker entry)."""
    try:
        shm.unlink()
    except FileNotFoundError:  # a sweep or a user removed it first: still drop the tracker's entry
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


def close_or_hand_over(shm: SharedMemory) -> bool:
    """Unmap now (True), or, while numpy views still use the mapping, leave it to them (False).

    The views keep the mmap alive; dropping our references lets it unmap when the last of them
    goes, and keeps ``SharedMemory.__del__`` from retrying (and failing noisily).
    """
    try:
        shm.close()
        return True
    except BufferError:
        shm._buf = None  # type: ignore[attr-defined]
        shm._mmap = None  # type: ignore[attr-defined]
        os.close(shm._fd)  # type: ignore[attr-defined]
        shm._fd = -1  # type: ignore[attr-defined]
        return False


def discard(shm: SharedMemory) -> None:
    """Close and unlink a half-made segment, whatever state it is in."""
    try:
        shm.close()
    except (BufferError, OSError) as exc:  # pragma: no cover - nothing holds views yet
        log.debug("closing half-made segment %s: %s", shm.name, exc)
    unlink_owned(shm)


class _Attached(SharedMemory):
    """A segment this process only attached to: it never removes the name.

    ``SharedMemory.__init__`` unlinks the name when mapping fails (e.g. a worker out of address
    space); the segment is the manager's, and its other workers still need it.
    """

    def unlink(self) -> None:
        log.debug("not unlinking %s: this process only attached to it", self.name)


def open_untracked(name: str) -> SharedMemory:
    """Open an existing segment without registering it with this process's resource tracker.

    On 3.10-3.12 ``SharedMemory(name=...)`` always registers it (cpython #82300), and the tracker
    then unlinks the manager's segment when the attaching process exits.
    """
    if sys.version_info >= (3, 13):
        return _Attached(name=name, track=False)  # type: ignore[call-arg]
    with _TRACKER_PATCH_LOCK:
        register = resource_tracker.register

        def _register(rname: str, rtype: str) -> None:
            if rtype != "shared_memory":
                register(rname, rtype)

        resource_tracker.register = _register  # type: ignore[assignment]
        try:
            return _Attached(name=name)
        finally:
            resource_tracker.register = register  # type: ignore[assignment]


class Segment:
    """A named shared-memory segment and the `Ring` inside it.

    Use `create` (manager) or `attach` (worker); pickling a Segment sends only its
    name, and unpickling attaches. Only the Segment that created the segment, in the
    creating process, unlinks it; `close` and `unlink` are idempotent.
    """

    def __init__(self, shm: SharedMemory, ring: Ring, *, created: bool) -> None:
        self._shm = shm
        self.ring = ring
        self.name = shm.name
        self.owner_pid = ring.creator_pid
        self._created = created
        self._closed = False
        self._unlinked = False

    @classmethod
    def create(cls, nslots: int, region_size: int, *, shm_dir: str = "/dev/shm") -> Segment:
        """Create, reserve and initialise a segment of ``nslots`` slots; `ShmSpaceError` if ``shm_dir`` is too small."""
        size = required_size(nslots, region_size)
        shm = create_reserved(size, f"the slot ring ({nslots} slots x 2 x {region_size:,} bytes + header)", shm_dir)
        try:
            ring = Ring(shm.buf, create=True, nslots=nslots, region_size=region_size)
        except BaseException:
            discard(shm)
            raise
        log.debug("created segment %s: %d slots x %d bytes, %d bytes", shm.name, nslots, region_size, size)
        return cls(shm, ring, created=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Open an existing segment by name and validate its header (`RingCorruptError`)."""
        try:
            shm = open_untracked(name)
        except ValueError as exc:  # mmap of an empty object
            raise RingCorruptError(f"truncated: shared-memory segment {name!r} is empty") from exc
        try:
            ring = Ring(shm.buf)
        except BaseException:
            shm.close()
            raise
        return cls(shm, ring, created=False)

    def close(self) -> None:
        """Release the ring and unmap this process's view of the segment. Idempotent.

        Numpy views of the slots still alive get the mapping, unmapped when the last of them goes.
        While another thread is blocked in a ring call nothing is closed (a warning): call again later.
        """
        if self._closed:
            return
        try:
            self.ring.release()
        except BufferError as exc:
            log.warning("segment %s not closed: %s", self.name, exc)
            return
        if not close_or_hand_over(self._shm):
            log.debug("segment %s still has views in use; unmapped when they go", self.name)
        self._closed = True

    def unlink(self) -> None:
        """Remove the segment's name (creator only; a no-op anywhere else). Idempotent."""
        if not self._created or self._unlinked or os.getpid() != self.owner_pid:
            return
        self._unlinked = True
        unlink_owned(self._shm)
        log.debug("unlinked segment %s", self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        self.unlink()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (type(self).attach, (self.name,))  # by name: a spawned child re-attaches
