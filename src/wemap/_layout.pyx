# cython: language_level=3
# cython: binding=True
# cython: embedsignature=True
"""A ring segment's layout: where its header, rings and slots lie, and what is wrong with a header that does not fit.

The C ring (csrc/ring.h) computes every offset; this checks Python's arguments for it, and turns
a header that :class:`wemap._ring.Ring` cannot attach to into a message saying what is wrong.
"""

from libc.stdint cimport uint32_t, uint64_t

from wemap._ring_h cimport (WM_BAD_LAYOUT, WM_BAD_MAGIC, WM_BAD_VERSION, WM_HEADER_SIZE, WM_LAYOUT_VERSION,
                            WM_MAGIC, WM_MAX_SLOTS, WM_OK, WM_SLOT_HEADER_SIZE, WM_TRUNCATED, wm_layout,
                            wm_layout_t)

from wemap.errors import RingCorruptError

__all__ = ["required_size", "layout", "MAX_SLOTS"]

#: the most slots a segment can have
MAX_SLOTS = WM_MAX_SLOTS

cdef uint64_t _MAX_REGION = (1 << 63) - 1


def required_size(nslots, region_size):
    """Return the bytes a segment of ``nslots`` slots needs (each region rounded up to 64)."""
    cdef wm_layout_t L
    compute_layout(nslots, region_size, &L)
    return L.total_size


def layout(nslots, region_size):
    """Return every offset and size of a segment's layout, as a dict."""
    cdef wm_layout_t L
    compute_layout(nslots, region_size, &L)
    return _layout_dict(&L)


cdef dict _layout_dict(const wm_layout_t *L):
    return {
        "nslots": L.nslots,
        "ring_capacity": L.ring_capacity,
        "region_size": L.region_size,
        "slot_stride": L.slot_stride,
        "header_size": L.header_size,
        "slot_header_size": WM_SLOT_HEADER_SIZE,
        "ring_bytes": L.ring_bytes,
        "ready_offset": L.ready_offset,
        "done_offset": L.done_offset,
        "slots_offset": L.slots_offset,
        "total_size": L.total_size,
    }


cdef int compute_layout(object nslots, object region_size, wm_layout_t *out) except -1:
    """Validate Python arguments and compute a layout; ValueError on anything bad."""
    n = int(nslots)
    r = int(region_size)
    if not 1 <= n <= WM_MAX_SLOTS:
        raise ValueError(f"nslots must be in 1..{WM_MAX_SLOTS}, got {n}")
    if not 0 <= r <= _MAX_REGION:
        raise ValueError(f"region_size must be in 0..{_MAX_REGION}, got {r}")
    if wm_layout(<uint32_t>n, <uint64_t>r, out) != WM_OK:
        raise ValueError(f"a segment of {n} slots x 2 x {r} bytes is too large to address")
    return 0


cdef int raise_bad_header(int st, const wm_layout_t *L, const void *mem, size_t length) except -1:
    """Raise RingCorruptError for what wm_seg_attach found wrong with a header; 0 for another status.

    ``L``: the header's values as wm_seg_attach left them; ``mem``, ``length``: the mapping.
    """
    cdef wm_layout_t want
    if st == WM_BAD_MAGIC:
        raise RingCorruptError(
            f"not a wemap segment: magic 0x{(<const uint64_t *>mem)[0]:016x}, expected 0x{WM_MAGIC:016x}")
    if st == WM_BAD_VERSION:
        raise RingCorruptError(
            f"unsupported segment layout version {L.version} vs {WM_LAYOUT_VERSION} "
            "(made by a different wemap version)")
    if st == WM_TRUNCATED and length < WM_HEADER_SIZE:
        raise RingCorruptError(
            f"truncated: mapping has {length} bytes, less than the {WM_HEADER_SIZE}-byte header")
    if st == WM_TRUNCATED:
        raise RingCorruptError(f"truncated: header says {L.total_size} bytes, mapping has {length}")
    if st == WM_BAD_LAYOUT and wm_layout(L.nslots, L.region_size, &want) != WM_OK:
        raise RingCorruptError(
            f"bad geometry: header says nslots={L.nslots}, region_size={L.region_size}, "
            "which is no valid layout")
    if st == WM_BAD_LAYOUT:
        stored, expect = _layout_dict(L), _layout_dict(&want)
        wrong = [f"{k}={stored[k]} (expected {expect[k]})"
                 for k in ("header_size", "ring_capacity", "region_size", "slot_stride",
                           "ready_offset", "done_offset", "slots_offset", "total_size")
                 if stored[k] != expect[k]]
        raise RingCorruptError(f"bad geometry for nslots={L.nslots}: header says " + ", ".join(wrong))
    return 0
