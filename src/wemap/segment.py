"""One POSIX shared-memory segment holding a slot `Ring`: create, attach, close, unlink.

The manager creates the segment (``Segment.create``) under a name carrying its pid
(``wemap_<pid>_<random>``, mode 0600) and reserves its pages at once, so a ``/dev/shm``
too small for it fails here with `ShmSpaceError` instead of a SIGBUS in the middle of a
run. Workers attach by name (``Segment.attach``, or by unpickling a `Segment`), which
validates the header and never registers the segment with multiprocessing's resource
tracker: only the creating process owns, and unlinks, it. The creator's registration is
what removes the segment if the manager is killed; `wemap.stale_segments` sweeps up after
owners that died some other way, by the ``flock`` the creator holds on every segment it made,
from before the segment has a size until its name is removed (`create_reserved`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sys
import threading
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import _posixshmem  # what SharedMemory itself opens and unlinks names with

from .errors import RingCorruptError, ShmSpaceError
from .stale_segments import remove_stale_segments, segment_name

try:
    from ._ring import Ring, required_size
except ImportError as _exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "wemap._ring (the compiled shared-memory ring) is not built or does not load: "
        "build it with `pip install .` (or `pip install --no-build-isolation -e .`) "
        f"from the wemap source tree ({_exc})"
    ) from _exc

# remove_stale_segments: the sweep lives in wemap.stale_segments; the mappers import it from here
__all__ = ["Segment", "create_reserved", "unlink_owned", "close_or_hand_over", "remove_stale_segments"]

log = logging.getLogger(__name__)

_SPACE_ERRNOS = {errno.ENOSPC, errno.ENOMEM, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_SHM_FIX = (
    "run the container with a larger --shm-size, e.g. docker run --shm-size=2g, "
    "or use fewer/smaller slots"
)
# Serialises the resource_tracker.register patch used to attach untracked (< 3.13).
_TRACKER_PATCH_LOCK = threading.Lock()
#: names tried before `create_reserved` gives up (another is taken only while a sweep looks at one)
_CREATE_TRIES = 8
#: owner-lock descriptors this process holds; a forked child closes its copies (`_drop_inherited_locks`)
_OWNER_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a child just forked (a worker started with ``fork``): close the copies of the parent's owner locks.

    An flock belongs to the open file description, which fork shares: a child that kept the
    copies would keep the parent's segments looking owned after the parent died. Closing a copy
    leaves the parent's lock held (unlocking it would not).
    """
    for fd in list(_OWNER_LOCKS):
        try:
            os.close(fd)
        except OSError:  # pragma: no cover - nothing else closes them
            pass
    _OWNER_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def _free_bytes(shm_dir: str) -> int | None:
    """Bytes an unprivileged process may still allocate in ``shm_dir``; None if unknown."""
    try:
        st = os.statvfs(shm_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _space_error(needed: int, free: int | None, shm_dir: str, what: str) -> ShmSpaceError:
    have = "an unknown number of" if free is None else f"{free:,}"
    err = ShmSpaceError(
        f"not enough shared memory for {what}: it needs {needed:,} bytes but {shm_dir} has {have} bytes free; "
        f"{_SHM_FIX}"
    )
    err.needed = needed  # type: ignore[attr-defined]
    err.free = free  # type: ignore[attr-defined]
    return err


def _reserve(shm: SharedMemory, size: int) -> None:
    """Allocate every page of the segment now (tmpfs is sparse: a later write could SIGBUS)."""
    fd = getattr(shm, "_fd", -1)
    if fd < 0 or not hasattr(os, "posix_fallocate"):
        log.debug("cannot reserve shared memory pages on this platform; skipping")
        return
    os.posix_fallocate(fd, 0, size)


class _Owned(SharedMemory):
    """A segment this process created: it holds the owner lock until its name is removed.

    ``unlink`` (through `unlink_owned` or `_discard`) releases the lock with the name. Pickled,
    it travels as a plain attachment: only the creating process owns a segment.
    """

    _lock_fd = -1
    _lock_pid = 0

    def unlink(self) -> None:
        try:
            super().unlink()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0 and self._lock_pid == os.getpid():  # in a forked child the copy is closed already
            _OWNER_LOCKS.discard(fd)
            os.close(fd)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_open_untracked, (self.name,))


def _create_locked(size: int) -> _Owned:
    """Create a fresh name, take its owner lock, then give it ``size`` bytes.

    In that order a sweep never finds a segment with a size whose live owner does not hold the
    lock yet: it leaves a segment without a size alone. A sweep that holds the lock of the new,
    empty name for the instant it looks at it makes this take another name.
    """
    for _ in range(_CREATE_TRIES):
        name = "/" + segment_name()
        fd = _posixshmem.shm_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)  # close-on-exec
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _posixshmem.shm_unlink(name)
            os.close(fd)
            continue
        except BaseException:
            _posixshmem.shm_unlink(name)
            os.close(fd)
            raise
        _OWNER_LOCKS.add(fd)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask: the mode a sweep takes for a segment's
            os.ftruncate(fd, size)
            shm = _Owned(name=name[1:])  # opened again, tracked: the resource tracker unlinks it if we are killed
        except BaseException:
            _posixshmem.shm_unlink(name)
            _OWNER_LOCKS.discard(fd)
            os.close(fd)
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
        raise _space_error(size, free, shm_dir, what)
    shm = _create_locked(size)
    try:
        _reserve(shm, size)
    except OSError as exc:
        if exc.errno in _SPACE_ERRNOS:
            _discard(shm)
            raise _space_error(size, _free_bytes(shm_dir), shm_dir, what) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            _discard(shm)
            raise
        log.debug("%s cannot reserve pages (%s); continuing unreserved", shm_dir, exc)
    except BaseException:
        _discard(shm)
        raise
    return shm


def unlink_owned(shm: SharedMemory) -> None:
    """Remove the name of a segment this process created (and its resource-tracker entry)."""
    try:
        shm.unlink()  # shm_unlink + resource-tracker unregister
    except FileNotFoundError:
        # Someone (a stale-segment sweep, a user) removed the name first; still drop our
        # tracker registration so it does not warn about a leak at exit.
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


def close_or_hand_over(shm: SharedMemory) -> bool:
    """Unmap now (True), or, while numpy views still use the mapping, leave it to them (False).

    The views keep the mmap object alive through their buffers; dropping our references lets
    it unmap itself when the last of them goes, and keeps ``SharedMemory.__del__`` from
    retrying (and failing noisily) at garbage collection.
    """
    try:
        shm.close()
        return True
    except BufferError:
        shm._buf = None  # type: ignore[attr-defined]
        shm._mmap = None  # type: ignore[attr-defined]
        fd = getattr(shm, "_fd", -1)
        if fd >= 0:
            os.close(fd)
            shm._fd = -1  # type: ignore[attr-defined]
        return False


def _discard(shm: SharedMemory) -> None:
    """Close and unlink a half-made segment, whatever state it is in."""
    try:
        shm.close()
    except (BufferError, OSError) as exc:  # pragma: no cover - nothing holds views yet
        log.debug("closing half-made segment %s: %s", shm.name, exc)
    try:
        shm.unlink()
    except FileNotFoundError:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]


class _Attached(SharedMemory):
    """A segment this process only attached to: it never removes the name.

    ``SharedMemory.__init__`` unlinks the name when mapping fails (``except OSError:
    self.unlink()``), e.g. when an attaching worker runs out of address space; the
    segment is the manager's, and its other workers and replacements still need it.
    """

    def unlink(self) -> None:
        log.debug("not unlinking %s: this process only attached to it", self.name)


def _open_untracked(name: str) -> SharedMemory:
    """Open an existing segment without telling the resource tracker (cpython #82300).

    On 3.10-3.12 ``SharedMemory(name=...)`` registers the segment with the tracker of
    the attaching process, which then unlinks it (or warns about a leak) when that
    process exits, although the segment belongs to the manager.
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

    name: str
    ring: Ring
    owner_pid: int

    def __init__(self, shm: SharedMemory, ring: Ring, *, created: bool) -> None:
        """Wrap an open SharedMemory and its Ring; use `create` or `attach` instead."""
        self._shm = shm
        self.ring = ring
        self.name = shm.name
        self.owner_pid = ring.creator_pid
        self._created = created
        self._closed = False
        self._unlinked = False

    # -- making and opening ----------------------------------------------------

    @classmethod
    def create(cls, nslots: int, region_size: int, *, shm_dir: str = "/dev/shm") -> Segment:
        """Create, reserve and initialise a new segment of ``nslots`` slots.

        Raises `ShmSpaceError` (leaving nothing behind) when ``shm_dir`` cannot hold it.
        """
        size = required_size(nslots, region_size)
        shm = create_reserved(size, f"the slot ring ({nslots} slots x 2 x {region_size:,} bytes + header)", shm_dir)
        try:
            ring = Ring(shm.buf, create=True, nslots=nslots, region_size=region_size)
        except BaseException:
            _discard(shm)
            raise
        log.debug("created segment %s: %d slots x %d bytes, %d bytes", shm.name, nslots, region_size, size)
        return cls(shm, ring, created=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Open an existing segment by name and validate its header (`RingCorruptError`)."""
        try:
            shm = _open_untracked(name)
        except ValueError as exc:  # mmap of an empty object
            raise RingCorruptError(f"truncated: shared-memory segment {name!r} is empty") from exc
        try:
            ring = Ring(shm.buf)
        except BaseException:
            shm.close()
            raise
        return cls(shm, ring, created=False)

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Release the ring and unmap this process's view of the segment. Idempotent.

        If numpy views of the slots are still alive the mapping cannot be unmapped yet:
        that is logged at debug level and the mapping is handed to the views, to be
        unmapped when the last of them goes. If another thread is blocked in a ring call,
        nothing is closed (logged as a warning) and close can be called again later.
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
        # Pickle by name: a spawned child re-attaches instead of copying memory.
        return (type(self).attach, (self.name,))

