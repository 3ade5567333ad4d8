/**
 * @file ring_internal.h
 * @internal
 * @brief In-memory structures of a wemap segment and test-only helpers.
 *
 * Not part of the public contract (see ring.h): included by ring.c, by the C
 * test program and by the binding's test hook.  Including it elsewhere is not
 * recommended; the structures may change with the layout version.
 */
#ifndef WM_RING_INTERNAL_H
#define WM_RING_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ring.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Bytes of one cache line; every shared counter gets a line of its own. */
#define WM_CACHE_LINE 64u

/**
 * The segment header, at offset 0 of the header page (the rest of the page is
 * zero).  Written once by wm_seg_init(); @c magic last, with release order
 * (tag H0), read first by wm_seg_attach() with acquire order (tag H1).
 */
typedef struct wm_seg_header {
    _Atomic uint64_t magic;  /**< ::WM_MAGIC once the segment is complete */
    uint32_t version;        /**< ::WM_LAYOUT_VERSION */
    uint32_t header_size;    /**< ::WM_HEADER_SIZE */
    uint32_t nslots;         /**< slot count */
    uint32_t ring_capacity;  /**< cells per ring */
    uint64_t region_size;    /**< bytes of each input and output region */
    uint64_t slot_stride;    /**< bytes per slot */
    uint64_t slots_offset;   /**< offset of slot 0 */
    uint64_t ready_offset;   /**< offset of the ready ring */
    uint64_t done_offset;    /**< offset of the done ring */
    uint64_t total_size;     /**< bytes of the whole segment */
    int32_t creator_pid;     /**< pid of the process that initialised it */
    uint32_t reserved0;      /**< zero */
} wm_seg_header;

/**
 * The futex line of a ring: what sleeping consumers wait on and how producers
 * know whether anyone sleeps.
 */
typedef struct wm_wait_line {
    _Atomic uint32_t event;      /**< futex word, bumped to wake sleepers */
    _Atomic uint32_t waiters;    /**< consumers between W2 and W3 */
    _Atomic uint32_t closed;     /**< 1 once wm_close() ran */
    _Atomic uint32_t interrupts; /**< bumped by wm_interrupt() */
} wm_wait_line;

/**
 * A ring's control block: three cache lines, so producers (tail), consumers
 * (head) and sleepers (wait) never share a line.  The cells follow directly.
 */
typedef struct wm_ring_ctl {
    _Alignas(WM_CACHE_LINE) _Atomic uint64_t head; /**< next position to pop */
    _Alignas(WM_CACHE_LINE) _Atomic uint64_t tail; /**< next position to push */
    _Alignas(WM_CACHE_LINE) wm_wait_line wait;     /**< sleep/wake state */
} wm_ring_ctl;

/**
 * One ring cell.  @c seq says whose turn the cell is (see ring.c); @c value
 * is a plain field ordered by the release/acquire pairs on @c seq.
 */
typedef struct wm_cell {
    _Atomic uint64_t seq; /**< turn marker */
    uint64_t value;       /**< the slot index while the cell is full */
} wm_cell;

/** Bytes from a ring's start to its first cell. */
#define WM_RING_CTL_SIZE ((uint64_t)sizeof(wm_ring_ctl))

/**
 * @internal
 * @brief Move an empty, quiescent ring's positions to @p pos (test-only).
 *
 * Sets head = tail = @p pos and every cell's seq to the position it will next
 * be pushed at, as if @p pos indices had already passed through.  Lets tests
 * cross 2^32 and other boundaries without pushing billions of times.  Must
 * not race with any other operation on the ring.
 *
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @param pos new free-running position
 * @return WM_OK, WM_INVALID (bad ring id) or WM_FULL (ring not empty)
 */
int wm_debug_set_positions(const wm_seg_t *seg, int ring, uint64_t pos);

/**
 * @internal
 * @brief Read a ring's free-running positions (test-only, racy by nature).
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @param head receives the consumers' position
 * @param tail receives the producers' position
 * @return WM_OK or WM_INVALID
 */
int wm_debug_positions(const wm_seg_t *seg, int ring, uint64_t *head,
                       uint64_t *tail);

#ifdef __cplusplus
}
#endif

#endif /* WM_RING_INTERNAL_H */
