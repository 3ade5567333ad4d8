"""Single-process tests of the compiled slot ring through its binding (wemap._ring, _slot_header)."""

from __future__ import annotations

import os
import pickle
import queue
import signal
import threading
import time

import numpy as np
import pytest
from conftest import wait_for_sleeper
from hypothesis import given, settings
from hypothesis import strategies as st

from wemap._ring import MAX_SLOTS, Ring, RingClosed, SlotHeader, layout, now_ns, required_size
from wemap.errors import RingCorruptError
from wemap.segment import Segment

# the thread method: some tests here use SIGALRM themselves, and a wait stuck in C (a lost
# signal check, say) is out of reach of the signal method; a timeout ends the run loudly
pytestmark = pytest.mark.timeout(60, method="thread")


def aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """A zeroed uint8 array whose data starts on an ``align``-byte boundary."""
    raw = np.zeros(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + nbytes]


def aligned_copy(src: np.ndarray) -> np.ndarray:
    out = aligned(src.nbytes)
    out[:] = src
    return out


def make_ring(nslots: int = 4, region_size: int = 256) -> tuple[Ring, np.ndarray]:
    buf = aligned(required_size(nslots, region_size))
    return Ring(buf, create=True, nslots=nslots, region_size=region_size), buf


# -- layout ------------------------------------------------------------------------


def test_layout_known_values():
    lay = layout(3, 100)
    assert lay == {
        "nslots": 3,
        "ring_capacity": 4,
        "region_size": 128,
        "slot_stride": 128 + 2 * 128,
        "header_size": 4096,
        "slot_header_size": 128,
        "ring_bytes": 256,
        "ready_offset": 4096,
        "done_offset": 4096 + 256,
        "slots_offset": 4096 + 512,
        "total_size": 4096 + 512 + 3 * 384,
    }
    assert required_size(3, 100) == lay["total_size"]
    assert layout(1, 0)["ring_capacity"] == 2
    assert layout(MAX_SLOTS, 0)["ring_capacity"] == MAX_SLOTS


@pytest.mark.parametrize(
    "nslots, region_size",
    [(0, 64), (MAX_SLOTS + 1, 64), (-1, 64), (4, -1), (4, 2**63), (1024, 2**52)],
)
def test_layout_rejects(nslots, region_size):
    with pytest.raises(ValueError):
        layout(nslots, region_size)
    with pytest.raises(ValueError):
        required_size(nslots, region_size)


@settings(max_examples=300, deadline=None)
@given(nslots=st.integers(1, MAX_SLOTS), region_size=st.integers(0, 2**40))
def test_layout_properties(nslots, region_size):
    lay = layout(nslots, region_size)
    cap = lay["ring_capacity"]
    assert cap >= max(nslots, 2) and cap & (cap - 1) == 0 and cap < 2 * max(nslots, 2)
    assert region_size <= lay["region_size"] < region_size + 64
    assert lay["slot_stride"] == lay["slot_header_size"] + 2 * lay["region_size"]
    for key in ("region_size", "slot_stride", "ring_bytes", "ready_offset", "done_offset", "slots_offset",
                "total_size"):
        assert lay[key] % 64 == 0, key
    # header | ready ring | done ring | slots: in order, no overlap, nothing left out
    assert lay["ring_bytes"] >= 192 + 16 * cap
    assert lay["header_size"] <= lay["ready_offset"]
    assert lay["ready_offset"] + lay["ring_bytes"] <= lay["done_offset"]
    assert lay["done_offset"] + lay["ring_bytes"] <= lay["slots_offset"]
    assert lay["total_size"] == lay["slots_offset"] + nslots * lay["slot_stride"]


# -- slot header and views ---------------------------------------------------------------


#: struct wm_slot_header (csrc/ring.h) as a reader of the raw segment finds it
C_HEADER = np.dtype({
    "names": ["task_id", "cycle", "walker_idx", "worker_idx", "worker_pid",
              "t_start_ns", "t_end_ns", "in_nbytes", "out_nbytes", "status", "flags"],
    "formats": ["<u8", "<u8", "<i8", "<i4", "<i4", "<u8", "<u8", "<u8", "<u8", "<i4", "<i4"],
    "offsets": [0, 8, 16, 24, 28, 32, 40, 48, 56, 64, 68],
    "itemsize": 128,
})


def raw_header(buf: np.ndarray, lay: dict, slot: int) -> np.ndarray:
    """A 0-d view of a slot's header in the segment's bytes, where the layout puts it."""
    return np.ndarray((), C_HEADER, buf, lay["slots_offset"] + slot * lay["slot_stride"])


def test_slot_header_fields_are_the_c_struct():
    """Each SlotHeader field reads and writes its own bytes of the C struct, at its offset and width, signed
    where C's is; the manager and the workers talk through these fields."""
    ring, buf = make_ring(nslots=3, region_size=64)
    lay = layout(3, 64)
    h, raw = ring.header(1), raw_header(buf, lay, 1)
    h.reset(2**64 - 1, 2**63 + 5, -7)
    assert (int(raw["task_id"]), int(raw["cycle"]), int(raw["walker_idx"])) == (2**64 - 1, 2**63 + 5, -7)
    assert (h.task_id, h.cycle, h.walker_idx) == (2**64 - 1, 2**63 + 5, -7)
    assert (int(raw["worker_idx"]), int(raw["status"])) == (-1, -1)  # unclaimed, no status
    assert all(int(raw[k]) == 0 for k in ("worker_pid", "t_start_ns", "t_end_ns", "in_nbytes", "out_nbytes", "flags"))
    values = {"task_id": 12, "worker_idx": -3, "worker_pid": 2**31 - 1, "t_start_ns": 2**64 - 2, "t_end_ns": 5,
              "in_nbytes": 2**40 + 1, "out_nbytes": 7, "status": -(2**31), "flags": 1}
    for name, value in values.items():
        before = raw.copy()
        setattr(h, name, value)
        assert getattr(h, name) == value and int(raw[name]) == value, name
        assert all(raw[k] == before[k] for k in C_HEADER.names if k != name), f"{name} wrote beyond its field"
    raw["cycle"] = 9  # and what another process writes, this one reads
    assert h.cycle == 9
    with pytest.raises(OverflowError):
        h.worker_idx = 2**31
    with pytest.raises(OverflowError):
        h.t_end_ns = -1
    assert not raw_header(buf, lay, 0).tobytes().strip(b"\0") and not raw_header(buf, lay, 2).tobytes().strip(b"\0")


def test_views_aligned_zero_copy_and_disjoint():
    ring, buf = make_ring(nslots=5, region_size=1000)
    lay = layout(5, 1000)
    base = buf.ctypes.data
    spans = []
    for slot in range(5):
        i, o = ring.input_view(slot), ring.output_view(slot)
        assert i.dtype == np.uint8 and i.shape == (ring.region_size,) == (1024,)
        assert o.shape == (1024,)
        for v in (i, o):
            assert v.ctypes.data % 64 == 0
            assert v.flags.writeable and not v.flags.owndata
            assert np.shares_memory(v, buf)
            spans.append((v.ctypes.data - base, v.ctypes.data - base + v.nbytes))
        header_at = lay["slots_offset"] + slot * lay["slot_stride"]
        spans.append((header_at, header_at + lay["slot_header_size"]))
        assert i.ctypes.data - base == header_at + 128
        assert o.ctypes.data == i.ctypes.data + ring.region_size
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert spans[0][0] == lay["slots_offset"] and spans[-1][1] == lay["total_size"]

    # writes through a view land in the buffer, and another view sees them
    ring.input_view(2)[:4] = [1, 2, 3, 4]
    off = lay["slots_offset"] + 2 * lay["slot_stride"] + 128
    assert buf[off : off + 4].tolist() == [1, 2, 3, 4]
    assert ring.input_view(2)[:4].tolist() == [1, 2, 3, 4]
    with pytest.raises(IndexError, match=r"slot 5 out of range 0\.\.4"):
        ring.input_view(5)


def test_slot_views_are_each_slots_header_and_regions():
    """slot_views() gives, slot by slot, the same memory as header/input_view/output_view: what the manager
    writes through one is what a worker reads through the other."""
    ring, _ = make_ring(nslots=3, region_size=64)
    views = ring.slot_views()
    assert len(views) == 3
    for k, (hdr, inp, out) in enumerate(views):
        assert inp.ctypes.data == ring.input_view(k).ctypes.data and inp.shape == ring.input_view(k).shape
        assert out.ctypes.data == ring.output_view(k).ctypes.data and out.shape == ring.output_view(k).shape
        assert inp.flags.writeable and out.flags.writeable
        hdr.reset(100 + k, 7, k)
        assert (ring.header(k).task_id, ring.header(k).walker_idx) == (100 + k, k)
        ring.header(k).worker_pid = 4000 + k
        assert hdr.worker_pid == 4000 + k
        inp[:2], out[:2] = [k, 1], [k, 2]
        assert ring.input_view(k)[:2].tolist() == [k, 1] and ring.output_view(k)[:2].tolist() == [k, 2]
    ring.release()
    with pytest.raises(ValueError, match="released"):
        ring.slot_views()


def test_create_zeroes_slot_headers_only():
    buf = aligned(required_size(2, 64))
    buf[:] = 0xAB
    ring = Ring(buf, create=True, nslots=2, region_size=64)
    assert not raw_header(buf, layout(2, 64), 1).tobytes().strip(b"\0")
    assert ring.header(1).task_id == 0
    assert ring.input_view(1)[0] == 0xAB  # regions are left alone


# -- push / pop ----------------------------------------------------------------------------


def test_full_empty_fifo():
    ring, _ = make_ring(nslots=3)
    assert layout(3, 256)["ring_capacity"] == 4
    assert ring.pop_ready(timeout=0) is None and ring.pop_done(timeout=0) is None
    for s in (0, 1, 2, 0):
        ring.push_ready(s)
    with pytest.raises(queue.Full):
        ring.push_ready(1)
    assert ring.pop_done(timeout=0) is None  # rings are independent
    assert [ring.pop_ready(timeout=1) for _ in range(4)] == [0, 1, 2, 0]
    assert ring.pop_ready(timeout=0) is None
    ring.push_done(2)
    assert ring.pop_done(timeout=0) == 2


def test_bad_index():
    ring, _ = make_ring(nslots=4)
    with pytest.raises(IndexError, match=r"slot 7 out of range 0\.\.3"):
        ring.push_ready(7)
    with pytest.raises(IndexError, match=r"slot -1 out of range"):
        ring.push_done(-1)
    with pytest.raises(TypeError):
        ring.push_ready(1.5)
    with pytest.raises(IndexError, match=r"slot 4 out of range 0\.\.3"):
        ring.header(4)


def test_close():
    ring, _ = make_ring()
    ring.push_ready(1)
    ring.close_ready()
    assert ring.ready_closed
    assert ring.pop_ready(timeout=1) == 1  # drained before closed is reported
    with pytest.raises(RingClosed, match="ready ring closed"):
        ring.pop_ready()
    with pytest.raises(RingClosed):
        ring.pop_ready(timeout=0)
    assert ring.pop_done(timeout=0) is None  # the done ring is still open


def _in_thread(fn, *args):
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)  # a stuck one must not keep the interpreter from exiting
    t.start()
    return t, out


def test_push_wakes_blocked_pop_and_close_wakes_it():
    ring, buf = make_ring()
    ready = layout(4, 256)["ready_offset"]
    t, out = _in_thread(ring.pop_ready, None)
    wait_for_sleeper(buf, ready)  # the thread sleeps in the kernel, without the GIL
    assert t.is_alive()
    ring.push_ready(3)
    t.join(5)
    assert out == {"value": 3}

    t, out = _in_thread(ring.pop_ready, 10.0)
    wait_for_sleeper(buf, ready)
    ring.close_ready()
    t.join(5)
    assert isinstance(out.get("error"), RingClosed)


def test_interrupt_from_another_handle():
    ring, buf = make_ring()
    other = Ring(buf)  # a second handle on the same segment, as another process would hold
    t, out = _in_thread(ring.pop_done, None)
    deadline = time.monotonic() + 10
    while t.is_alive() and time.monotonic() < deadline:
        # an interrupt wakes only a pop already waiting: repeat until the thread has been in one
        other.interrupt_done()
        t.join(0.05)
    assert not t.is_alive() and out == {"value": None}
    assert ring.pop_done(timeout=0.02) is None  # later pops are not affected
    ring.push_done(0)
    assert ring.pop_done(timeout=0.02) == 0


def test_release_refuses_while_blocked():
    ring, buf = make_ring()
    t, out = _in_thread(ring.pop_ready, 5.0)
    wait_for_sleeper(buf, layout(4, 256)["ready_offset"])
    with pytest.raises(BufferError):
        ring.release()
    ring.push_ready(0)
    t.join(5)
    assert out == {"value": 0}
    ring.release()


def test_timeout_returns_on_time_without_spinning():
    ring, _ = make_ring()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    assert ring.pop_ready(timeout=0.5) is None
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert 0.5 <= wall < 3.0  # a hang bound on a loaded machine, not a speed check
    assert cpu < 0.1, f"pop used {cpu:.3f} s of CPU in {wall:.3f} s"


@pytest.mark.parametrize("bad", [-1, float("nan"), "x"])
def test_bad_timeout(bad):
    ring, _ = make_ring()
    with pytest.raises((ValueError, TypeError)):
        ring.pop_ready(timeout=bad)


def test_signal_interrupts_forever_pop():
    """Ctrl-C (here SIGALRM) reaches Python while a pop waits forever."""

    class Alarm(Exception):
        pass

    def handler(signum, frame):
        raise Alarm

    ring, _ = make_ring()
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        t0 = time.perf_counter()
        with pytest.raises(Alarm):
            ring.pop_ready()
        assert time.perf_counter() - t0 < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# -- attach and corruption -------------------------------------------------------------------


def test_attach_sees_same_rings():
    ring, buf = make_ring(nslots=6, region_size=100)
    other = Ring(buf)
    assert (other.nslots, other.region_size, other.creator_pid) == (6, 128, os.getpid()) == (
        ring.nslots, ring.region_size, ring.creator_pid)
    ring.push_ready(5)
    assert other.pop_ready(timeout=1) == 5
    ring.header(5).worker_pid = 1234
    assert other.header(5).worker_pid == 1234
    with pytest.raises(TypeError, match="create=True"):
        Ring(buf, nslots=6)  # attaching takes the geometry from the header, never from the caller


def test_attach_rejects_foreign_and_corrupt():
    ring, buf = make_ring(nslots=4, region_size=64)
    total = layout(4, 64)["total_size"]
    ring.release()

    with pytest.raises(RingCorruptError, match="not a wemap segment"):
        Ring(aligned(total))

    bad = aligned_copy(buf)
    bad[8:12] = np.array([2], np.uint32).view(np.uint8)  # layout version
    with pytest.raises(RingCorruptError, match=r"version 2 vs 1"):
        Ring(bad)

    bad = aligned_copy(buf)
    bad[32:40] = np.array([999 * 64], np.uint64).view(np.uint8)  # slot_stride
    with pytest.raises(RingCorruptError, match=r"bad geometry.*slot_stride=63936"):
        Ring(bad)

    bad = aligned_copy(buf)
    bad[16:20] = 0  # nslots = 0
    with pytest.raises(RingCorruptError, match="bad geometry"):
        Ring(bad)

    short = aligned(total - 64)
    short[:] = buf[: total - 64]
    with pytest.raises(RingCorruptError, match=rf"truncated: header says {total} bytes, mapping has {total - 64}"):
        Ring(short)
    with pytest.raises(RingCorruptError, match="less than the 4096-byte header"):
        Ring(short[:1000])

    Ring(buf).release()  # the original is still fine


def test_buffer_requirements():
    with pytest.raises(ValueError, match="64-byte"):
        Ring(aligned(required_size(2, 64) + 64)[8:], create=True, nslots=2, region_size=64)
    with pytest.raises(ValueError, match="needs"):
        Ring(aligned(4096), create=True, nslots=2, region_size=64)
    with pytest.raises(TypeError):
        Ring(aligned(8192), create=True)
    with pytest.raises((BufferError, TypeError)):
        Ring(bytes(8192))  # read-only


def test_release():
    ring, buf = make_ring()
    view, header = ring.input_view(0), ring.header(0)
    ring.release()
    ring.release()  # idempotent
    assert repr(ring) == "<Ring released>"
    for call in (
        lambda: ring.push_ready(0),
        lambda: ring.pop_ready(0),
        lambda: ring.pop_done(None),
        lambda: ring.input_view(0),
        lambda: ring.header(0),
        lambda: ring.close_ready(),
        lambda: ring.nslots,
        lambda: header.status,  # a header handed out earlier holds no buffer: it stops too
    ):
        with pytest.raises(ValueError, match="ring released"):
            call()
    view[0] = 1  # a view handed out earlier keeps its own reference
    assert buf[view.ctypes.data - buf.ctypes.data] == 1
    with pytest.raises(ValueError, match=r"Ring.header"):
        SlotHeader().status  # noqa: B018 - only a Ring makes one


def test_ring_does_not_pickle_but_segment_does():
    ring, _ = make_ring()
    with pytest.raises(TypeError, match="Segment"):
        pickle.dumps(ring)

    seg = Segment.create(4, 64)
    try:
        other = pickle.loads(pickle.dumps(seg))
        try:
            assert other.name == seg.name and other.owner_pid == seg.owner_pid
            seg.ring.push_ready(2)
            assert other.ring.pop_ready(timeout=1) == 2
        finally:
            other.close()
            other.unlink()  # not the creator: no-op
    finally:
        seg.close()
        seg.unlink()


def test_now_ns_is_monotonic_clock():
    a = now_ns()
    b = time.monotonic_ns()
    assert abs(b - a) < 1_000_000_000  # the same clock: within a second even when descheduled


def test_scribbled_cell_raises_instead_of_spinning():
    """A stray write into a ring's cells: push and pop raise at once, they never spin with or without the GIL."""
    lay = layout(4, 64)
    buf = aligned(lay["total_size"])
    ring = Ring(buf, create=True, nslots=4, region_size=64)
    cells = lay["ring_bytes"] - 16 * lay["ring_capacity"]  # the control block comes first
    ready_seq = buf[lay["ready_offset"] + cells :].view(np.uint64)
    done_seq = buf[lay["done_offset"] + cells :].view(np.uint64)
    ready_seq[0] = 5  # a pop at position 0 expects 0 (empty) or 1 (full)
    done_seq[0] = 9  # a push at position 0 expects 0
    t0 = time.monotonic()
    with pytest.raises(RingCorruptError, match="cells contradict"):
        ring.pop_ready(0.2)
    with pytest.raises(RingCorruptError, match="cells contradict"):
        ring.pop_ready(None)
    with pytest.raises(RingCorruptError, match="cells contradict"):
        ring.pop_ready(0)
    with pytest.raises(RingCorruptError, match="cells contradict"):
        ring.push_done(1)
    assert time.monotonic() - t0 < 1.0
    ring.release()
