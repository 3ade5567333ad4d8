"""Single-process tests of the compiled slot ring (wemap._ring) through its Python binding."""

from __future__ import annotations

import pickle
import queue
import signal
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wemap._ring import (
    copy_arrays,
    DONE,
    HEADER_SIZE,
    MAGIC,
    MAX_SLOTS,
    READY,
    SLOT_HEADER_DTYPE,
    SLOT_HEADER_SIZE,
    Ring,
    RingClosed,
    now_ns,
    slot_header_c_fields,
)
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
    buf = aligned(Ring.required_size(nslots, region_size))
    return Ring(buf, create=True, nslots=nslots, region_size=region_size), buf


# -- layout ------------------------------------------------------------------------


def test_layout_known_values():
    lay = Ring.layout(3, 100)
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
    assert Ring.required_size(3, 100) == lay["total_size"]
    assert Ring.layout(1, 0)["ring_capacity"] == 2
    assert Ring.layout(MAX_SLOTS, 0)["ring_capacity"] == MAX_SLOTS


@pytest.mark.parametrize(
    "nslots, region_size",
    [(0, 64), (MAX_SLOTS + 1, 64), (-1, 64), (4, -1), (4, 2**63), (1024, 2**52)],
)
def test_layout_rejects(nslots, region_size):
    with pytest.raises(ValueError):
        Ring.layout(nslots, region_size)
    with pytest.raises(ValueError):
        Ring.required_size(nslots, region_size)


@settings(max_examples=300, deadline=None)
@given(nslots=st.integers(1, MAX_SLOTS), region_size=st.integers(0, 2**40))
def test_layout_properties(nslots, region_size):
    lay = Ring.layout(nslots, region_size)
    cap = lay["ring_capacity"]
    assert cap >= max(nslots, 2) and cap & (cap - 1) == 0 and cap < 2 * max(nslots, 2)
    assert region_size <= lay["region_size"] < region_size + 64
    assert lay["slot_stride"] == SLOT_HEADER_SIZE + 2 * lay["region_size"]
    for key in ("region_size", "slot_stride", "ring_bytes", "ready_offset", "done_offset", "slots_offset", "total_size"):
        assert lay[key] % 64 == 0, key
    # header | ready ring | done ring | slots: in order, no overlap, nothing left out
    assert lay["ring_bytes"] >= 192 + 16 * cap
    assert HEADER_SIZE <= lay["ready_offset"]
    assert lay["ready_offset"] + lay["ring_bytes"] <= lay["done_offset"]
    assert lay["done_offset"] + lay["ring_bytes"] <= lay["slots_offset"]
    assert lay["total_size"] == lay["slots_offset"] + nslots * lay["slot_stride"]


# -- slot header and views ---------------------------------------------------------------


def test_header_dtype_matches_c():
    c = slot_header_c_fields()
    assert list(c) == list(SLOT_HEADER_DTYPE.names)
    assert SLOT_HEADER_DTYPE.itemsize == SLOT_HEADER_SIZE == 128
    for name, (offset, size) in c.items():
        dt, off = SLOT_HEADER_DTYPE.fields[name][:2]
        assert (off, dt.itemsize) == (offset, size), name
    assert SLOT_HEADER_DTYPE["walker_idx"].kind == "i" and SLOT_HEADER_DTYPE["task_id"].kind == "u"


def test_views_aligned_zero_copy_and_disjoint():
    ring, buf = make_ring(nslots=5, region_size=1000)
    base = buf.ctypes.data
    spans = []
    for slot in range(5):
        h, i, o = ring.header_view(slot), ring.input_view(slot), ring.output_view(slot)
        assert h.shape == () and h.dtype == SLOT_HEADER_DTYPE
        assert i.dtype == np.uint8 and i.shape == (ring.region_size,) == (1024,)
        assert o.shape == (1024,)
        for v in (h, i, o):
            assert v.ctypes.data % 64 == 0
            assert v.flags.writeable and not v.flags.owndata
            assert np.shares_memory(v, buf)
            spans.append((v.ctypes.data - base, v.ctypes.data - base + v.nbytes))
        assert i.ctypes.data - base == ring.slots_offset + slot * ring.slot_stride + 128
        assert o.ctypes.data == i.ctypes.data + ring.region_size
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert spans[0][0] >= ring.slots_offset and spans[-1][1] == ring.total_size

    # writes through a view land in the buffer, and another view sees them
    ring.input_view(2)[:4] = [1, 2, 3, 4]
    off = ring.slots_offset + 2 * ring.slot_stride + 128
    assert buf[off : off + 4].tolist() == [1, 2, 3, 4]
    h = ring.header_view(3)
    h["walker_idx"] = -5
    h["task_id"] = 2**64 - 1
    h["status"] = -1
    again = ring.header_view(3)
    assert int(again["walker_idx"]) == -5 and int(again["task_id"]) == 2**64 - 1 and int(again["status"]) == -1
    with pytest.raises(IndexError, match=r"slot 5 out of range 0\.\.4"):
        ring.input_view(5)


def test_create_zeroes_slot_headers_only():
    buf = aligned(Ring.required_size(2, 64))
    buf[:] = 0xAB
    ring = Ring(buf, create=True, nslots=2, region_size=64)
    assert int(ring.header_view(1)["task_id"]) == 0
    assert ring.input_view(1)[0] == 0xAB  # regions are left alone


# -- push / pop ----------------------------------------------------------------------------


def test_full_empty_fifo():
    ring, _ = make_ring(nslots=3)  # capacity 4
    assert ring.ring_capacity == 4
    assert ring.try_pop_ready() is None and ring.try_pop_done() is None
    assert ring.pop_ready(timeout=0) is None
    for s in (0, 1, 2, 0):
        ring.push_ready(s)
    with pytest.raises(queue.Full):
        ring.push_ready(1)
    assert ring.try_pop_done() is None  # rings are independent
    assert [ring.pop_ready(timeout=1) for _ in range(4)] == [0, 1, 2, 0]
    assert ring.try_pop_ready() is None
    ring.push_done(2)
    assert ring.try_pop_done() == 2


def test_bad_index():
    ring, _ = make_ring(nslots=4)
    with pytest.raises(IndexError, match=r"slot 7 out of range 0\.\.3"):
        ring.push_ready(7)
    with pytest.raises(IndexError, match=r"slot -1 out of range"):
        ring.push_done(-1)
    with pytest.raises(TypeError):
        ring.push_ready(1.5)
    with pytest.raises(IndexError):
        ring.header_view(4)


def test_close():
    ring, _ = make_ring()
    ring.push_ready(1)
    ring.close_ready()
    assert ring.ready_closed and not ring.done_closed
    assert ring.pop_ready(timeout=1) == 1  # drained before closed is reported
    with pytest.raises(RingClosed):
        ring.pop_ready()
    with pytest.raises(RingClosed):
        ring.try_pop_ready()
    assert ring.pop_done(timeout=0) is None


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
    ring, _ = make_ring()
    t, out = _in_thread(ring.pop_ready, None)
    time.sleep(0.1)  # the thread sleeps in the kernel, without the GIL
    assert t.is_alive()
    ring.push_ready(3)
    t.join(5)
    assert out == {"value": 3}

    t, out = _in_thread(ring.pop_ready, 10.0)
    time.sleep(0.1)
    ring.close_ready()
    t.join(5)
    assert isinstance(out.get("error"), RingClosed)


def test_interrupt_from_another_handle():
    ring, buf = make_ring()
    other = Ring(buf)  # same segment, attached, as the monitor thread would hold it
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
    ring, _ = make_ring()
    t, out = _in_thread(ring.pop_ready, 5.0)
    time.sleep(0.1)
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


def test_positions_wrap_past_2_32_and_2_64():
    ring, _ = make_ring(nslots=3)
    for start in (2**32 - 5, 2**64 - 5):
        for which, push, pop in ((READY, ring.push_ready, ring.pop_ready), (DONE, ring.push_done, ring.pop_done)):
            ring._debug_set_positions(which, start)
            sent = got = 0
            for i in range(30):
                while sent - got < (i % 4) + 1:
                    push(sent % 3)
                    sent += 1
                while sent - got > i % 2:
                    assert pop(timeout=1) == got % 3
                    got += 1
            while got < sent:
                assert pop(timeout=1) == got % 3
                got += 1
            head, tail = ring._debug_positions(which)
            assert head == tail == (start + sent) % 2**64
    ring.push_ready(0)
    with pytest.raises(ValueError, match="not empty"):
        ring._debug_set_positions(READY, 0)


# -- attach and corruption -------------------------------------------------------------------


def test_attach_sees_same_rings():
    ring, buf = make_ring(nslots=6, region_size=100)
    other = Ring(buf, nslots=6, region_size=100)
    assert (other.nslots, other.region_size, other.total_size, other.creator_pid) == (
        6,
        128,
        ring.total_size,
        ring.creator_pid,
    )
    ring.push_ready(5)
    assert other.pop_ready(timeout=1) == 5
    with pytest.raises(RingCorruptError, match="expected 7 slots"):
        Ring(buf, nslots=7)
    with pytest.raises(RingCorruptError, match="region_size"):
        Ring(buf, region_size=1000)


def test_attach_rejects_foreign_and_corrupt():
    ring, buf = make_ring(nslots=4, region_size=64)
    total = ring.total_size
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

    assert int(buf[:8].view(np.uint64)[0]) == MAGIC
    Ring(buf).release()  # the original is still fine


def test_buffer_requirements():
    with pytest.raises(ValueError, match="64-byte"):
        Ring(aligned(Ring.required_size(2, 64) + 64)[8:], create=True, nslots=2, region_size=64)
    with pytest.raises(ValueError, match="needs"):
        Ring(aligned(4096), create=True, nslots=2, region_size=64)
    with pytest.raises(TypeError):
        Ring(aligned(8192), create=True)
    with pytest.raises((BufferError, TypeError)):
        Ring(bytes(8192))  # read-only


def test_release():
    ring, buf = make_ring()
    view = ring.input_view(0)
    ring.release()
    ring.release()  # idempotent
    assert ring.released
    for call in (
        lambda: ring.push_ready(0),
        lambda: ring.pop_ready(0),
        lambda: ring.try_pop_done(),
        lambda: ring.input_view(0),
        lambda: ring.close_ready(),
        lambda: ring.nslots,
    ):
        with pytest.raises(ValueError, match="ring released"):
            call()
    view[0] = 1  # a view handed out earlier keeps its own reference
    assert buf[view.ctypes.data - buf.ctypes.data] == 1


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
    lay = Ring.layout(4, 64)
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
        ring.try_pop_ready()
    with pytest.raises(RingCorruptError, match="cells contradict"):
        ring.push_done(1)
    assert time.monotonic() - t0 < 1.0
    ring.release()


# -- copy_arrays: a walker's arrays into a region in one call --------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["<f8", "<f4", "<i8", "u1", "<c16"]), st.integers(0, 700)),
                min_size=0, max_size=6), st.integers(0, 3))
def test_copy_arrays_matches_copyto_into_views(specs, gap_lines):
    """Each array lands byte for byte where ``np.copyto`` into a view at its offset would put it."""
    rng = np.random.default_rng(len(specs))
    arrays = [rng.integers(0, 255, size=n * np.dtype(dt).itemsize, dtype=np.uint8).view(dt) for dt, n in specs]
    offsets, at = [], 128
    for a in arrays:
        offsets.append(at)
        at += (a.nbytes + 63) // 64 * 64 + 64 * gap_lines
    region = np.full(at + 64, 0xA5, dtype=np.uint8)
    want = region.copy()
    for a, off in zip(arrays, offsets):
        np.copyto(np.ndarray(a.shape, a.dtype, want, off), a)
    copy_arrays(region, offsets, arrays)
    np.testing.assert_array_equal(region, want)


def test_copy_arrays_refuses_what_it_cannot_copy_and_copies_nothing():
    region = np.zeros(4096, dtype=np.uint8)
    a = np.arange(64, dtype=np.float64)
    with pytest.raises(BufferError, match="array 1 is not a C-contiguous"):
        copy_arrays(region, [0, 1024], [a, np.arange(32.0).reshape(4, 8).T])  # np.copyto must lay that out
    with pytest.raises(ValueError, match="array 1 .* does not fit the 4096-byte destination"):
        copy_arrays(region, [0, 4096 - 8], [a, a])
    with pytest.raises(ValueError, match="does not fit"):
        copy_arrays(region, [-8], [a])
    with pytest.raises(BufferError, match="destination"):
        copy_arrays(region[::2], [0], [a])
    with pytest.raises(BufferError, match="destination"):
        ro = region.view()
        ro.flags.writeable = False
        copy_arrays(ro, [0], [a])
    with pytest.raises(ValueError, match="2 arrays but 1 offsets"):
        copy_arrays(region, [0], [a, a])
    assert not region.any(), "nothing was copied by a call that raised"


def test_copy_arrays_allows_overlap_and_large_copies():
    big = np.random.default_rng(1).random(200_000)  # 1.6 MB: copied without the GIL
    region = np.zeros(big.nbytes + 256, dtype=np.uint8)
    copy_arrays(region, [128], [big])
    np.testing.assert_array_equal(np.ndarray(big.shape, big.dtype, region, 128), big)
    inside = np.ndarray((1000,), np.float64, region, 128)  # a view of the destination itself
    expect = inside.copy()
    copy_arrays(region, [136], [inside])  # shifted by one element onto itself: memmove semantics
    np.testing.assert_array_equal(np.ndarray((1000,), np.float64, region, 136), expect)


def test_copy_arrays_holds_every_source_until_it_has_copied():
    """Code that runs while the arrays are gathered (a sequence's __getitem__) cannot resize a source
    already checked: its buffer is held, so the resize fails and the copy is of what was checked."""
    src = bytearray(b"x" * 1000)
    refused = []

    class Sources(list):
        def __getitem__(self, k):
            if k == 1:
                try:
                    src.extend(b"y" * 10_000_000)  # would move the bytes the first span points to
                except BufferError as exc:
                    refused.append(exc)
            return list.__getitem__(self, k)

    region = np.zeros(4096, dtype=np.uint8)
    copy_arrays(region, [0, 2048], Sources([src, b"z" * 8]))
    assert refused, "the held buffer refused the resize"
    assert bytes(region[:1000]) == b"x" * 1000 and bytes(region[2048:2056]) == b"z" * 8


def test_copy_arrays_refuses_object_arrays():
    region = np.zeros(4096, dtype=np.uint8)
    with pytest.raises(BufferError, match="Python objects"):
        copy_arrays(region, [0], [np.array([None, 1], dtype=object)])
    assert not region.any()
