/**
 * @file ring.h
 * @brief wemap's shared-memory slot ring: the public contract.
 *
 * One *segment* is a caller-owned, 64-byte aligned block of memory (in wemap a
 * POSIX shared-memory object mapped by every process) holding
 *
 *   - a header page: magic, layout version, geometry, creator pid;
 *   - two bounded lock-free rings of slot indices, *ready* (manager to workers)
 *     and *done* (workers to manager);
 *   - @c nslots fixed-size slots, each a 128-byte ::wm_slot_header followed by
 *     an input region and an output region of @c region_size bytes each.
 *
 * Whoever pops a slot index owns that slot until it pushes the index again;
 * the ring's release/acquire pairs order the plain writes to the slot, so the
 * slots themselves are ordinary memory (written from Python through numpy).
 *
 * Geometry is validated once, by wm_seg_init() or wm_seg_attach(), into a
 * process-local ::wm_seg_t; every ring operation takes that handle, so a header
 * scribbled on after attach can never steer an access out of bounds.
 *
 * All functions are thread-safe and process-safe for any number of producers
 * and consumers on each ring.  Nothing here allocates memory.
 */
#ifndef WM_RING_H
#define WM_RING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** "WEMAPRNG" read as a little-endian 64-bit integer. */
#define WM_MAGIC UINT64_C(0x474E5250414D4557)
/** Layout version written into (and required from) every segment header. */
#define WM_LAYOUT_VERSION 1u
/** Bytes of the segment header; the rings start right after it. */
#define WM_HEADER_SIZE 4096u
/** Bytes of the header at the front of every slot. */
#define WM_SLOT_HEADER_SIZE 128u
/** Alignment of every ring, slot and region, and required of the base. */
#define WM_ALIGN 64u
/** Largest slot count a segment may have (2^20). */
#define WM_MAX_SLOTS (UINT32_C(1) << 20)

/** Which ring of a segment an operation applies to. */
enum wm_ring_id {
    WM_READY = 0, /**< manager to workers */
    WM_DONE = 1   /**< workers to manager */
};

/** Result of every wm_ function that can fail. */
enum wm_status {
    WM_OK = 0,      /**< success */
    WM_EMPTY,       /**< try-pop found the ring empty */
    WM_FULL,        /**< push found the ring full */
    WM_TIMEOUT,     /**< a blocking pop ran out of time */
    WM_CLOSED,      /**< pop found the ring empty and closed */
    WM_INTERRUPTED, /**< wm_interrupt() was called during a blocking pop */
    WM_BAD_INDEX,   /**< slot index not below nslots */
    WM_BAD_MAGIC,   /**< memory does not start with ::WM_MAGIC */
    WM_BAD_VERSION, /**< header's layout version is not ::WM_LAYOUT_VERSION */
    WM_BAD_LAYOUT,  /**< header's geometry is not what wm_layout() computes */
    WM_TRUNCATED,   /**< memory shorter than the header or the layout needs */
    WM_INVALID,     /**< bad argument (slot count, size, ring id, alignment) */
    WM_SYSERR,      /**< a system call failed; errno holds the reason */
    WM_CORRUPT,     /**< a ring's cells contradict its positions (a stray write) */
    WM_WAKE_FAILED, /**< wm_push() queued the index but waking a sleeper failed (errno) */
    WM_SIGNALED     /**< a signal arrived during a blocking pop, which popped nothing */
};

/**
 * Where everything lives in a segment.  All offsets are bytes from the
 * segment base and multiples of ::WM_ALIGN.
 */
typedef struct wm_layout {
    uint32_t nslots;        /**< number of slots */
    uint32_t ring_capacity; /**< cells per ring: power of two, >= nslots, >= 2 */
    uint64_t region_size;   /**< bytes of each input and output region (x64) */
    uint64_t slot_stride;   /**< bytes per slot: 128 + 2 * region_size */
    uint64_t header_size;   /**< ::WM_HEADER_SIZE */
    uint64_t ring_bytes;    /**< bytes of one ring: control block + cells, x64 */
    uint64_t ready_offset;  /**< ready ring */
    uint64_t done_offset;   /**< done ring */
    uint64_t slots_offset;  /**< slot 0 */
    uint64_t total_size;    /**< bytes the segment needs */
    int32_t creator_pid;    /**< pid stored at init (0 from wm_layout()) */
    uint32_t version;       /**< layout version (::WM_LAYOUT_VERSION) */
} wm_layout_t;

/**
 * A process-local handle on a validated segment.  Filled by wm_seg_init() or
 * wm_seg_attach(); plain data, so it may be embedded or copied freely.  It does
 * not own the memory.
 */
typedef struct wm_seg {
    unsigned char *base; /**< segment base (64-byte aligned) */
    size_t len;          /**< bytes mapped at base */
    wm_layout_t layout;  /**< geometry, validated */
} wm_seg_t;

/**
 * The 128-byte header at the front of every slot.  Plain fields: the process
 * that popped the slot's index owns it and writes them; pushing the index
 * publishes them to the next owner.
 */
typedef struct wm_slot_header {
    uint64_t task_id;    /**< manager's task number */
    uint64_t cycle;      /**< WE cycle index */
    int64_t walker_idx;  /**< walker index within the cycle */
    int32_t worker_idx;  /**< worker that ran it */
    int32_t worker_pid;  /**< that worker's pid */
    uint64_t t_start_ns; /**< worker's monotonic clock at start */
    uint64_t t_end_ns;   /**< worker's monotonic clock at end */
    uint64_t in_nbytes;  /**< bytes used in the input region */
    uint64_t out_nbytes; /**< bytes used in the output region */
    int32_t status;      /**< task status, defined by the Python layer */
    int32_t flags;       /**< free for the Python layer */
    unsigned char reserved[WM_SLOT_HEADER_SIZE - 72]; /**< zero */
} wm_slot_header;

/**
 * @brief Human-readable name of a status.
 * @param status a ::wm_status value
 * @return a static string such as "WM_FULL"; "WM_UNKNOWN" for other values
 */
const char *wm_status_str(int status);

/**
 * @brief Compute a segment's layout without touching memory.
 * @param nslots number of slots, 1 .. ::WM_MAX_SLOTS
 * @param region_size bytes wanted for each input and output region; rounded
 *        up to a multiple of 64 (0 is allowed)
 * @param out receives the layout (creator_pid set to 0)
 * @return WM_OK, or WM_INVALID for a bad slot count, a size that overflows,
 *         or a NULL @p out
 */
int wm_layout(uint32_t nslots, uint64_t region_size, wm_layout_t *out);

/**
 * @brief Initialise a new segment in @p mem and fill a handle on it.
 *
 * Writes the header, both rings (empty, open) and zeroes every slot header;
 * regions are left as they are.  The magic is stored last, with release
 * order, so a concurrent wm_seg_attach() sees either no segment or all of it.
 * Must not race with any other use of the same memory.
 *
 * @param seg receives the handle
 * @param mem segment base, 64-byte aligned
 * @param len bytes available at @p mem
 * @param nslots number of slots (see wm_layout())
 * @param region_size bytes of each region (see wm_layout())
 * @param creator_pid pid recorded in the header
 * @return WM_OK; WM_INVALID (bad arguments or misaligned @p mem);
 *         WM_TRUNCATED (@p len below the layout's total size)
 */
int wm_seg_init(wm_seg_t *seg, void *mem, size_t len, uint32_t nslots,
                uint64_t region_size, int32_t creator_pid);

/**
 * @brief Validate an existing segment and fill a handle on it.
 *
 * Reads only inside @p len bytes, whatever the memory holds.  Checks, in
 * order: room for the magic, the magic, room for the header, the version,
 * that every stored geometry field equals what wm_layout() computes from the
 * stored nslots and region_size, and that the total size fits in @p len.
 *
 * @param seg receives the handle.  On failure seg->base is NULL; once the
 *        magic and header size have passed, seg->layout holds the header's
 *        stored values (unvalidated, for error messages), else zeroes.
 * @param mem segment base, 64-byte aligned
 * @param len bytes mapped at @p mem
 * @return WM_OK, WM_INVALID, WM_BAD_MAGIC, WM_BAD_VERSION, WM_BAD_LAYOUT or
 *         WM_TRUNCATED
 */
int wm_seg_attach(wm_seg_t *seg, void *mem, size_t len);

/**
 * @brief Push a slot index onto a ring.  Never sleeps.
 *
 * Wakes one sleeping consumer, with a system call only if one is sleeping.
 * Closing a ring does not stop pushes; see wm_close().  If the ring is not
 * full but the cell the push needs is still being released by a consumer
 * (a window of a few instructions, longer only if that consumer was
 * preempted), the push spins, then yields the CPU, until it is released;
 * after 1 s of that it gives up with WM_FULL (the consumer likely died).
 *
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @param slot slot index, below nslots
 * @return WM_OK, WM_FULL (full, or stalled as above), WM_BAD_INDEX,
 *         WM_INVALID (bad ring id), WM_CORRUPT (the ring's cells contradict
 *         its positions) or WM_WAKE_FAILED (the index is pushed, but waking a
 *         sleeping consumer failed; errno says why; it wakes at its next
 *         timeout instead)
 */
int wm_push(const wm_seg_t *seg, int ring, uint32_t slot);

/**
 * @brief Pop a slot index if one is there.  Never blocks.
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @param slot receives the index on WM_OK
 * @return WM_OK, WM_EMPTY, WM_CLOSED (empty and closed), WM_INVALID,
 *         WM_BAD_INDEX (the ring held an index >= nslots: memory corruption;
 *         the bad entry has been consumed) or WM_CORRUPT (a cell contradicts
 *         the ring's positions)
 */
int wm_try_pop(const wm_seg_t *seg, int ring, uint32_t *slot);

/**
 * @brief Pop a slot index, waiting up to @p timeout_ns for one.
 *
 * Spins a few microseconds, then sleeps in the kernel (a futex on Linux, a
 * nanosleep backoff elsewhere) until a push, wm_close(), wm_interrupt(), a
 * signal delivered to the calling thread, or the timeout.  An available index
 * always wins over a timeout, an interrupt or a signal.  Equivalent to
 * wm_pop_epoch() with the current wm_interrupt_epoch().
 *
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @param slot receives the index on WM_OK
 * @param timeout_ns how long to wait; negative waits forever, 0 only tries
 * @return WM_OK, WM_TIMEOUT, WM_CLOSED, WM_INTERRUPTED, WM_SIGNALED (the
 *         caller runs its signal handlers and may wait again), WM_INVALID,
 *         WM_BAD_INDEX or WM_CORRUPT (as for wm_try_pop()) or WM_SYSERR
 */
int wm_pop(const wm_seg_t *seg, int ring, uint32_t *slot, int64_t timeout_ns);

/**
 * @brief wm_pop(), reporting an interrupt against an epoch taken earlier.
 *
 * Lets a caller wait again after a signal (WM_SIGNALED) or act on something
 * before it waits, without missing an interrupt that lands in between: take
 * @p epoch with wm_interrupt_epoch() before it looks, and pass it to every
 * wait that follows.
 *
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @param slot receives the index on WM_OK
 * @param timeout_ns as for wm_pop()
 * @param epoch value of wm_interrupt_epoch() when the caller's wait began
 * @return as wm_pop(); WM_INTERRUPTED once the ring's interrupt count differs
 *         from @p epoch and no index is available
 */
int wm_pop_epoch(const wm_seg_t *seg, int ring, uint32_t *slot,
                 int64_t timeout_ns, uint32_t epoch);

/**
 * @brief Current interrupt count of a ring (see wm_pop_epoch()).
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE (anything else returns 0)
 * @return the count, which wraps modulo 2^32
 */
uint32_t wm_interrupt_epoch(const wm_seg_t *seg, int ring);

/**
 * @brief Close a ring: once empty, pops return WM_CLOSED instead of waiting.
 *
 * Wakes every sleeper.  Indices already pushed are still delivered; pushes
 * after the close are accepted but a consumer that has already seen WM_CLOSED
 * will not look for them.  Closing is permanent for the segment's lifetime.
 *
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @return WM_OK, WM_INVALID or WM_SYSERR (the wake-up failed)
 */
int wm_close(const wm_seg_t *seg, int ring);

/**
 * @brief Test whether a ring has been closed.
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @return 1 if closed, 0 if open or @p ring is invalid
 */
int wm_is_closed(const wm_seg_t *seg, int ring);

/**
 * @brief Make every pop blocked on a ring (in any process) return
 *        WM_INTERRUPTED, unless an index arrives first.
 *
 * For the manager's watcher thread: it wakes the manager's wait on the done
 * ring when a worker process dies, writes to its pipe, or a timeout is due.
 * Pops that start after this call with a newer epoch are not affected.
 *
 * @param seg handle
 * @param ring ::WM_READY or ::WM_DONE
 * @return WM_OK, WM_INVALID or WM_SYSERR (the wake-up failed)
 */
int wm_interrupt(const wm_seg_t *seg, int ring);

/**
 * @brief Address of a slot's header.
 * @param seg handle
 * @param slot slot index
 * @return the header, or NULL if @p slot >= nslots
 */
wm_slot_header *wm_slot_header_ptr(const wm_seg_t *seg, uint32_t slot);

/**
 * @brief Address of a slot's input region (region_size bytes).
 * @param seg handle
 * @param slot slot index
 * @return the region, or NULL if @p slot >= nslots
 */
void *wm_slot_input(const wm_seg_t *seg, uint32_t slot);

/**
 * @brief Address of a slot's output region (region_size bytes).
 * @param seg handle
 * @param slot slot index
 * @return the region, or NULL if @p slot >= nslots
 */
void *wm_slot_output(const wm_seg_t *seg, uint32_t slot);

/**
 * @brief CLOCK_MONOTONIC in nanoseconds (the clock slot times are stamped with).
 * @return nanoseconds since an arbitrary fixed point; 0 if the clock failed
 */
uint64_t wm_now_ns(void);

#ifdef __cplusplus
}
#endif

#endif /* WM_RING_H */
