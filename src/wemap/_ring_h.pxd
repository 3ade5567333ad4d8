# Declarations of csrc/ring.h for Cython: cimported by the binding's modules (nothing at run time).

from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t


cdef extern from "ring.h" nogil:
    const uint64_t WM_MAGIC
    enum:
        WM_LAYOUT_VERSION
        WM_HEADER_SIZE
        WM_SLOT_HEADER_SIZE
        WM_ALIGN
        WM_MAX_SLOTS

    enum wm_ring_id:
        WM_READY
        WM_DONE

    enum wm_status:
        WM_OK
        WM_FULL
        WM_TIMEOUT
        WM_CLOSED
        WM_INTERRUPTED
        WM_BAD_INDEX
        WM_BAD_MAGIC
        WM_BAD_VERSION
        WM_BAD_LAYOUT
        WM_TRUNCATED
        WM_SYSERR
        WM_CORRUPT
        WM_WAKE_FAILED
        WM_SIGNALED

    ctypedef struct wm_layout_t:
        uint32_t nslots
        uint32_t ring_capacity
        uint64_t region_size
        uint64_t slot_stride
        uint64_t header_size
        uint64_t ring_bytes
        uint64_t ready_offset
        uint64_t done_offset
        uint64_t slots_offset
        uint64_t total_size
        int32_t creator_pid
        uint32_t version

    ctypedef struct wm_seg_t:
        unsigned char *base
        size_t len
        wm_layout_t layout

    ctypedef struct wm_slot_header:
        uint64_t task_id
        uint64_t cycle
        int64_t walker_idx
        int32_t worker_idx
        int32_t worker_pid
        uint64_t t_start_ns
        uint64_t t_end_ns
        uint64_t in_nbytes
        uint64_t out_nbytes
        int32_t status
        int32_t flags

    int wm_layout(uint32_t nslots, uint64_t region_size, wm_layout_t *out)
    int wm_seg_init(wm_seg_t *seg, void *mem, size_t len, uint32_t nslots,
                    uint64_t region_size, int32_t creator_pid)
    int wm_seg_attach(wm_seg_t *seg, void *mem, size_t len)
    int wm_push(const wm_seg_t *seg, int ring, uint32_t slot)
    int wm_pop_epoch(const wm_seg_t *seg, int ring, uint32_t *slot,
                     int64_t timeout_ns, uint32_t epoch)
    uint32_t wm_interrupt_epoch(const wm_seg_t *seg, int ring)
    int wm_close(const wm_seg_t *seg, int ring)
    int wm_is_closed(const wm_seg_t *seg, int ring)
    int wm_interrupt(const wm_seg_t *seg, int ring)
    wm_slot_header *wm_slot_header_ptr(const wm_seg_t *seg, uint32_t slot)
    void *wm_slot_input(const wm_seg_t *seg, uint32_t slot)
    void *wm_slot_output(const wm_seg_t *seg, uint32_t slot)
    uint64_t wm_now_ns()
