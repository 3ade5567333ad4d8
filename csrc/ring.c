/*
 * ring.c: wemap's slot rings, two bounded lock-free MPMC queues of slot
 * indices living in one shared-memory segment (see ring.h for the contract).
 *
 * ALGORITHM
 * =========
 * Dmitry Vyukov's bounded MPMC queue ("Bounded MPMC queue", 1024cores.net,
 * https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue),
 * the algorithm also behind rigtorp/MPMCQueue.  A ring has a power-of-two
 * number of cells, cap = mask + 1; each cell holds a 64-bit turn marker
 * `seq` and a `value` (a slot index).  `tail` is the producers' next position,
 * `head` the consumers'.
 *
 *   Push (wm_push):
 *     1. pos = tail                                            (P0)
 *     2. cell = cells[pos & mask]; s = cell.seq               (P1)
 *     3. s == pos: the cell is free for position pos.  Claim it with
 *        CAS(tail, pos, pos + 1)                               (P2);
 *        if the CAS loses, pos is reloaded by it: back to 2.
 *        s <  pos: the cell still holds position pos - cap.  If
 *        tail - head >= cap (head read at P6) the ring is full: WM_FULL.
 *        Otherwise the consumer of pos - cap has claimed the cell (C2) but
 *        not yet released it (C3): spin, then sched_yield(), until it does
 *        (at most WM_STALL_NS, then WM_FULL), and go back to 1.
 *        s >  pos: another producer got there first; reload tail, back to 2.
 *     4. cell.value = slot; cell.seq = pos + 1                (P3), publishing.
 *     5. n = fetch_add(waiters, 0)                             (P4); if n > 0,
 *        bump `event` (P5) and wake one sleeper.  No sleeper: no system call.
 *
 *   Pop (wm_try_pop, and the first step of every wm_pop):
 *     1. pos = head                                            (C0)
 *     2. cell = cells[pos & mask]; s = cell.seq               (C1)
 *     3. s == pos + 1: the cell holds position pos.  Claim it with
 *        CAS(head, pos, pos + 1)                               (C2); on failure
 *        back to 2 with the reloaded pos.
 *        s <  pos + 1: position pos is not published yet: empty.  If the ring
 *        is closed (C4), one more try, then WM_CLOSED; else WM_EMPTY.
 *        s >  pos + 1: another consumer got there first; reload head.
 *     4. slot = cell.value; cell.seq = pos + cap              (C3), handing
 *        the cell to the producer of position pos + cap.
 *
 *   Blocking pop (wm_pop, wm_pop_epoch): an eventcount over a futex word.
 *     1. Try to pop.  Then spin for at most WM_SPIN_NS, trying again after
 *        every WM_SPIN_BATCH pause instructions.
 *     2. ev = event                                            (W1)
 *     3. fetch_add(waiters, 1)                                 (W2)
 *     4. Try to pop (and read closed (C4), interrupts (W0), the clock);
 *        on an index, closed-and-empty, an interrupt or the deadline:
 *        waiters -= 1 (W3) and return.
 *     5. futex_wait(&event, ev, remaining time): returns at once if event
 *        is no longer ev; otherwise sleeps until woken, signalled or timed
 *        out.  Then waiters -= 1 (W3) and back to 2, or, after a signal,
 *        return WM_SIGNALED so the caller can run its handlers.
 *     The producer's P4 and the consumer's W2 are read-modify-writes of the
 *     same word, so one comes first in its modification order (a Dekker pair
 *     without fences, which ThreadSanitizer cannot model):
 *       - W2 first: P4 reads waiters > 0 and, being acq_rel, synchronizes
 *         with W2, so W1 happens before P5: ev is older than the bumped
 *         event, and the futex_wait either fails its value check or is asleep
 *         when the wake comes.
 *       - P4 first: W2 reads from P4 (or a later RMW in its release
 *         sequence), so P3 happens before the consumer's re-try, which sees
 *         the published cell.
 *     wm_close() and wm_interrupt() set their flag, bump event and wake every
 *     sleeper unconditionally (they are rare).
 *
 * INVARIANTS
 * ==========
 *   - head and tail are free-running 64-bit positions, never reset or
 *     masked; the cell of position p is cells[p & mask].  At 10^9 pushes a
 *     second they would wrap after 584 years; even so, all comparisons go
 *     through wm_cmp(), a signed distance modulo 2^64, so wrapping is
 *     harmless.  Tests move the positions past 2^32 to prove no 32-bit
 *     truncation hides anywhere (wm_debug_set_positions()).
 *   - For the cell of position p (cells[p & mask]):
 *       seq == p            free: waiting for the producer of position p;
 *       seq == p + 1        full: holds the value pushed at position p;
 *       seq == p + cap      consumed: free for the producer of p + cap.
 *     Initially cells[i].seq = i (free for position i).
 *   - head <= tail <= head + cap, modulo 2^64 (positions claimed, not
 *     necessarily published yet, are counted).
 *   - cap is a power of two >= max(nslots, 2), so a ring can hold every slot
 *     index at once: when each index is in at most one ring at a time, as
 *     wemap uses them, tail - head never reaches cap.  The cell a push needs
 *     can still be busy: slots keep circulating, so producers can lap a
 *     consumer that was preempted between C2 and C3 however large cap is.
 *     Push tells the two apart (step 3) and waits out the second.
 *   - A value is always < nslots when pushed; a pop re-checks it, so a
 *     corrupt ring can misdeliver but never steer an access out of bounds.
 *     No position or stored offset is ever used unmasked or unvalidated.
 *
 * ATOMICS
 * =======
 *   tag  where                          operation         order    partner
 *   ---  -----------------------------  ----------------  -------  -------
 *   H0   wm_seg_init      hdr.magic     store             release  H1
 *   H1   wm_seg_attach    hdr.magic     load              acquire  H0
 *   H2   wm_seg_init      hdr.magic     store 0           relaxed  -
 *   P0   push             tail          load              relaxed  -
 *   P1   push             cell.seq      load              acquire  C3
 *   P2   push             tail          CAS (weak)        relaxed  -
 *   P3   push             cell.seq      store             release  C1
 *   P4   push             wait.waiters  fetch_add 0       acq_rel  W2
 *   P5   push             wait.event    fetch_add         release  W1
 *   P6   push (cell busy) head          load              relaxed  -  (full test only)
 *   C0   pop              head          load              relaxed  -
 *   C1   pop              cell.seq      load              acquire  P3
 *   C2   pop              head          CAS (weak)        relaxed  -
 *   C3   pop              cell.seq      store             release  P1
 *   C4   pop              wait.closed   load              acquire  X0
 *   W0   pop, epoch       wait.interrupts load            acquire  I0
 *   W1   pop (sleep)      wait.event    load              acquire  P5, X1, I1
 *   W2   pop (sleep)      wait.waiters  fetch_add 1       acq_rel  P4
 *   W3   pop (sleep)      wait.waiters  fetch_sub 1       relaxed  - (an RMW: keeps
 *                                                                   P4's release sequence)
 *   X0   wm_close         wait.closed   store             seq_cst  C4
 *   X1   wm_close         wait.event    fetch_add         seq_cst  W1
 *   I0   wm_interrupt     wait.interrupts fetch_add       seq_cst  W0
 *   I1   wm_interrupt     wait.event    fetch_add         seq_cst  W1
 *   D0   test hooks       head, tail, cell.seq  load/store  relaxed  -
 *
 *   Why these suffice: a slot's contents and cell.value are plain memory.
 *   P3 -> C1 makes everything the producer wrote before pushing (the slot
 *   header and regions included) visible to the consumer that pops it;
 *   C3 -> P1 makes the consumer's read of cell.value happen before the next
 *   producer's overwrite.  The CASes only arbitrate who owns a position; the
 *   cell's seq carries the data edges, so they can be relaxed.  X0/I0 happen
 *   before X1/I1, so a sleeper whose W1 reads the bumped event also sees the
 *   flag; one whose W1 read the old event either fails the futex's value
 *   check or is asleep when the wake-all comes.
 *
 *   Atomics are shared between processes that map the segment at different
 *   addresses.  The C standard promises address-free behaviour only for
 *   lock-free atomics, hence the _Static_asserts below.
 *
 * PROGRESS
 * ========
 *   No locks are taken and no call waits on another inside the ring, but
 *   the queue is not lock-free in the formal sense: a producer suspended
 *   between claiming a position (P2) and publishing it (P3) makes the ring
 *   look empty at that position until it resumes, even if later positions
 *   are already published (and likewise a consumer between C2 and C3 for the
 *   producers that wrap round to its cell).  A process that dies in that
 *   window leaves the cell's seq unchanged forever.  Consumers then see the ring as empty at
 *   that position (everything behind it stays queued), or producers see it
 *   as full once they wrap round to it.  The ring cannot detect this itself.
 *   The manager detects it through its worker-death detection (each worker
 *   process's sentinel wakes the manager's watcher thread, which calls
 *   wm_interrupt() so a blocked manager pop returns WM_INTERRUPTED); any ring
 *   a dead process may have touched is then declared broken and the segment
 *   is rebuilt (new segment, fresh rings) rather than repaired.  A consumer
 *   that dies while asleep leaves `waiters` one too high: harmless, producers
 *   then make one futex_wake system call per push that wakes nobody.
 *   `event` wraps modulo 2^32; a sleeper would have to stay between W1 and
 *   its futex_wait through 2^32 pushes for that to matter.
 */

#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* syscall() */
#endif
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime, nanosleep */
#endif

#include "ring_internal.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#if !defined(SYS_futex) && defined(SYS_futex_time64)
#define SYS_futex SYS_futex_time64
#endif
#define WM_HAVE_FUTEX 1
#else
#define WM_HAVE_FUTEX 0
#endif

/* ---------------------------------------------------------------------- */
/* Compile-time layout checks                                             */
/* ---------------------------------------------------------------------- */

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2,
               "64-bit atomics must be lock-free (address-free across processes)");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2,
               "32-bit atomics must be lock-free (address-free across processes)");
_Static_assert(sizeof(unsigned long long) == 8 && sizeof(unsigned int) == 4,
               "ATOMIC_*_LOCK_FREE must describe 64- and 32-bit types");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "atomic uint64 must have no extra state");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "futex word must be exactly 32 bits");
_Static_assert(offsetof(wm_ring_ctl, head) == 0, "head on the first line");
_Static_assert(offsetof(wm_ring_ctl, tail) == WM_CACHE_LINE, "tail on its own line");
_Static_assert(offsetof(wm_ring_ctl, wait) == 2 * WM_CACHE_LINE, "wait line on its own line");
_Static_assert(sizeof(wm_wait_line) <= WM_CACHE_LINE, "wait line fits one line");
_Static_assert(sizeof(wm_ring_ctl) == 3 * WM_CACHE_LINE, "control block is three lines");
_Static_assert(sizeof(wm_cell) == 16, "cell is seq + value");
_Static_assert(WM_CACHE_LINE % sizeof(wm_cell) == 0, "cells never straddle a line");
_Static_assert(sizeof(wm_slot_header) == WM_SLOT_HEADER_SIZE, "slot header is 128 bytes");
_Static_assert(WM_SLOT_HEADER_SIZE % WM_ALIGN == 0, "regions start 64-byte aligned");
_Static_assert(offsetof(wm_slot_header, status) == 64, "slot header field layout");
_Static_assert(offsetof(wm_slot_header, reserved) == 72, "slot header field layout");
_Static_assert(sizeof(wm_seg_header) <= WM_HEADER_SIZE, "segment header fits its page");
_Static_assert(offsetof(wm_seg_header, creator_pid) == 72, "segment header field layout");
_Static_assert(WM_HEADER_SIZE % WM_ALIGN == 0, "rings start 64-byte aligned");
_Static_assert(WM_ALIGN == WM_CACHE_LINE, "alignment unit is the cache line");

/* slot_stride = 128 + 2 * region_size with region_size a multiple of 64 is a
 * multiple of 64 by construction; wm_layout() asserts it at run time too. */

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

/** Nanoseconds spent spinning before a blocking pop goes to sleep. */
#define WM_SPIN_NS UINT64_C(4000)
/** Pause instructions between two pop attempts while spinning. */
#define WM_SPIN_BATCH 16
/** Pause batches a push spends on a busy cell before it starts yielding. */
#define WM_BACKOFF_SPINS 64u
/** How long a push waits for a busy cell before reporting WM_FULL. */
#define WM_STALL_NS UINT64_C(1000000000)
/** Largest size any segment may have: offsets must fit ptrdiff_t and size_t. */
#define WM_MAX_TOTAL ((uint64_t)(PTRDIFF_MAX < SIZE_MAX ? (uint64_t)PTRDIFF_MAX : (uint64_t)SIZE_MAX))

/* Signed distance a - b modulo 2^64, reduced to its sign.  Free-running
 * positions compare through this, never with < directly. */
static inline int wm_cmp(uint64_t a, uint64_t b)
{
    uint64_t d = a - b;
    if (d == 0)
        return 0;
    return d < (UINT64_C(1) << 63) ? 1 : -1;
}

static inline uint64_t wm_round_up(uint64_t x, uint64_t align)
{
    return (x + (align - 1)) & ~(align - 1);
}

static inline void wm_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/*
 * One step of waiting for another process to finish a few instructions
 * (a consumer between C2 and C3): pause first, then yield the CPU so a
 * preempted peer can run.  Returns false once WM_STALL_NS have passed.
 */
static bool wm_backoff(unsigned *waited, uint64_t *since)
{
    if (*waited < WM_BACKOFF_SPINS) {
        (*waited)++;
        for (int i = 0; i < WM_SPIN_BATCH; i++)
            wm_cpu_relax();
        return true;
    }
    if (*waited == WM_BACKOFF_SPINS) {
        (*waited)++;
        *since = wm_now_ns();
    } else if (wm_now_ns() - *since > WM_STALL_NS) {
        return false;
    }
    sched_yield();
    return true;
}

static wm_ring_ctl *wm_ring_ptr(const wm_seg_t *seg, int ring)
{
    if (seg == NULL || seg->base == NULL)
        return NULL;
    if (ring == WM_READY)
        return (wm_ring_ctl *)(void *)(seg->base + seg->layout.ready_offset);
    if (ring == WM_DONE)
        return (wm_ring_ctl *)(void *)(seg->base + seg->layout.done_offset);
    return NULL;
}

static inline wm_cell *wm_cells(wm_ring_ctl *r)
{
    return (wm_cell *)(void *)((unsigned char *)r + WM_RING_CTL_SIZE);
}

uint64_t wm_now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

#if WM_HAVE_FUTEX
/* Sleep while *word == expected, at most rel (NULL: no limit).  Shared
 * mapping across processes: plain FUTEX_WAIT, never the _PRIVATE op. */
static int wm_futex_wait(_Atomic uint32_t *word, uint32_t expected,
                         const struct timespec *rel)
{
    long rc = syscall(SYS_futex, (void *)word, FUTEX_WAIT, expected, rel, NULL, 0);
    if (rc == 0)
        return WM_OK;
    /* EAGAIN: word already changed; ETIMEDOUT: time up.  Both send the caller
     * back round its loop.  EINTR: a signal, which the caller must see. */
    if (errno == EAGAIN || errno == ETIMEDOUT)
        return WM_OK;
    if (errno == EINTR)
        return WM_SIGNALED;
    return WM_SYSERR;
}

static int wm_futex_wake(_Atomic uint32_t *word, int count)
{
    long rc = syscall(SYS_futex, (void *)word, FUTEX_WAKE, count, NULL, NULL, 0);
    return rc < 0 ? WM_SYSERR : WM_OK;
}
#endif

/* ---------------------------------------------------------------------- */
/* Status names and the slot-header description                           */
/* ---------------------------------------------------------------------- */

const char *wm_status_str(int status)
{
    switch (status) {
    case WM_OK: return "WM_OK";
    case WM_EMPTY: return "WM_EMPTY";
    case WM_FULL: return "WM_FULL";
    case WM_TIMEOUT: return "WM_TIMEOUT";
    case WM_CLOSED: return "WM_CLOSED";
    case WM_INTERRUPTED: return "WM_INTERRUPTED";
    case WM_BAD_INDEX: return "WM_BAD_INDEX";
    case WM_CORRUPT: return "WM_CORRUPT";
    case WM_WAKE_FAILED: return "WM_WAKE_FAILED";
    case WM_SIGNALED: return "WM_SIGNALED";
    case WM_BAD_MAGIC: return "WM_BAD_MAGIC";
    case WM_BAD_VERSION: return "WM_BAD_VERSION";
    case WM_BAD_LAYOUT: return "WM_BAD_LAYOUT";
    case WM_TRUNCATED: return "WM_TRUNCATED";
    case WM_INVALID: return "WM_INVALID";
    case WM_SYSERR: return "WM_SYSERR";
    default: return "WM_UNKNOWN";
    }
}

/* ---------------------------------------------------------------------- */
/* Layout, init, attach                                                   */
/* ---------------------------------------------------------------------- */

int wm_layout(uint32_t nslots, uint64_t region_size, wm_layout_t *out)
{
    wm_layout_t L;
    uint64_t cap, reg;

    if (out == NULL || nslots == 0 || nslots > WM_MAX_SLOTS)
        return WM_INVALID;
    if (region_size > WM_MAX_TOTAL - (WM_ALIGN - 1))
        return WM_INVALID;
    reg = wm_round_up(region_size, WM_ALIGN);
    if (reg > (WM_MAX_TOTAL - WM_SLOT_HEADER_SIZE) / 2)
        return WM_INVALID;

    memset(&L, 0, sizeof L);
    cap = 2;
    while (cap < nslots)
        cap <<= 1;
    L.nslots = nslots;
    L.ring_capacity = (uint32_t)cap;
    L.region_size = reg;
    L.slot_stride = WM_SLOT_HEADER_SIZE + 2 * reg;
    L.header_size = WM_HEADER_SIZE;
    L.ring_bytes = wm_round_up(WM_RING_CTL_SIZE + cap * sizeof(wm_cell), WM_ALIGN);
    L.ready_offset = WM_HEADER_SIZE;
    L.done_offset = L.ready_offset + L.ring_bytes;
    L.slots_offset = L.done_offset + L.ring_bytes;
    if (nslots > (WM_MAX_TOTAL - L.slots_offset) / L.slot_stride)
        return WM_INVALID;
    L.total_size = L.slots_offset + (uint64_t)nslots * L.slot_stride;
    L.creator_pid = 0;
    L.version = WM_LAYOUT_VERSION;
    if (L.slot_stride % WM_ALIGN != 0 || L.slots_offset % WM_ALIGN != 0)
        return WM_INVALID; /* unreachable: kept as a run-time layout check */
    *out = L;
    return WM_OK;
}

static void wm_ring_init(wm_ring_ctl *r, uint64_t cap, uint64_t ring_bytes)
{
    wm_cell *cells = wm_cells(r);
    memset((void *)r, 0, (size_t)ring_bytes); /* padding; no one else sees it yet */
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    atomic_init(&r->wait.event, 0);
    atomic_init(&r->wait.waiters, 0);
    atomic_init(&r->wait.closed, 0);
    atomic_init(&r->wait.interrupts, 0);
    for (uint64_t i = 0; i < cap; i++) {
        atomic_init(&cells[i].seq, i); /* free for position i */
        cells[i].value = 0;
    }
}

int wm_seg_init(wm_seg_t *seg, void *mem, size_t len, uint32_t nslots,
                uint64_t region_size, int32_t creator_pid)
{
    wm_layout_t L;
    wm_seg_header *h;
    unsigned char *base = mem;
    int st;

    if (seg == NULL || mem == NULL)
        return WM_INVALID;
    memset(seg, 0, sizeof *seg);
    if ((uintptr_t)mem % WM_ALIGN != 0)
        return WM_INVALID;
    st = wm_layout(nslots, region_size, &L);
    if (st != WM_OK)
        return st;
    if (L.total_size > (uint64_t)len)
        return WM_TRUNCATED;

    h = mem;
    atomic_store_explicit(&h->magic, 0, memory_order_relaxed); /* H2 */
    memset(base + sizeof h->magic, 0, WM_HEADER_SIZE - sizeof h->magic);
    h->version = WM_LAYOUT_VERSION;
    h->header_size = WM_HEADER_SIZE;
    h->nslots = L.nslots;
    h->ring_capacity = L.ring_capacity;
    h->region_size = L.region_size;
    h->slot_stride = L.slot_stride;
    h->slots_offset = L.slots_offset;
    h->ready_offset = L.ready_offset;
    h->done_offset = L.done_offset;
    h->total_size = L.total_size;
    h->creator_pid = creator_pid;

    wm_ring_init((wm_ring_ctl *)(void *)(base + L.ready_offset), L.ring_capacity, L.ring_bytes);
    wm_ring_init((wm_ring_ctl *)(void *)(base + L.done_offset), L.ring_capacity, L.ring_bytes);
    for (uint32_t i = 0; i < L.nslots; i++)
        memset(base + L.slots_offset + (uint64_t)i * L.slot_stride, 0, WM_SLOT_HEADER_SIZE);

    atomic_store_explicit(&h->magic, WM_MAGIC, memory_order_release); /* H0 */

    L.creator_pid = creator_pid;
    seg->base = base;
    seg->len = len;
    seg->layout = L;
    return WM_OK;
}

int wm_seg_attach(wm_seg_t *seg, void *mem, size_t len)
{
    wm_layout_t L, raw;
    const wm_seg_header *h = mem;

    if (seg == NULL || mem == NULL)
        return WM_INVALID;
    memset(seg, 0, sizeof *seg);
    if ((uintptr_t)mem % WM_ALIGN != 0)
        return WM_INVALID;
    if (len < sizeof(uint64_t))
        return WM_TRUNCATED;
    if (atomic_load_explicit(&((wm_seg_header *)mem)->magic, memory_order_acquire) /* H1 */
        != WM_MAGIC)
        return WM_BAD_MAGIC;
    if (len < WM_HEADER_SIZE)
        return WM_TRUNCATED;

    /* The stored values, for the caller's error message if anything below fails. */
    memset(&raw, 0, sizeof raw);
    raw.nslots = h->nslots;
    raw.ring_capacity = h->ring_capacity;
    raw.region_size = h->region_size;
    raw.slot_stride = h->slot_stride;
    raw.header_size = h->header_size;
    raw.ring_bytes = h->done_offset - h->ready_offset;
    raw.ready_offset = h->ready_offset;
    raw.done_offset = h->done_offset;
    raw.slots_offset = h->slots_offset;
    raw.total_size = h->total_size;
    raw.creator_pid = h->creator_pid;
    raw.version = h->version;
    seg->layout = raw;

    if (raw.version != WM_LAYOUT_VERSION)
        return WM_BAD_VERSION;
    if (wm_layout(raw.nslots, raw.region_size, &L) != WM_OK)
        return WM_BAD_LAYOUT;
    if (raw.region_size != L.region_size || raw.header_size != L.header_size ||
        raw.ring_capacity != L.ring_capacity || raw.slot_stride != L.slot_stride ||
        raw.ready_offset != L.ready_offset || raw.done_offset != L.done_offset ||
        raw.slots_offset != L.slots_offset || raw.total_size != L.total_size)
        return WM_BAD_LAYOUT;
    if (L.total_size > (uint64_t)len)
        return WM_TRUNCATED;

    L.creator_pid = raw.creator_pid;
    seg->base = mem;
    seg->len = len;
    seg->layout = L;
    return WM_OK;
}

/* ---------------------------------------------------------------------- */
/* The queue proper                                                       */
/* ---------------------------------------------------------------------- */

static int wm_raw_push(wm_ring_ctl *r, uint64_t mask, uint64_t value)
{
    wm_cell *cells = wm_cells(r);
    wm_cell *c;
    unsigned waited = 0;
    uint64_t since = 0;
    uint64_t pos = atomic_load_explicit(&r->tail, memory_order_relaxed); /* P0 */

    for (;;) {
        c = &cells[pos & mask];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire); /* P1 */
        int d = wm_cmp(seq, pos);
        if (d == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->tail, &pos, pos + 1, /* P2 */
                                                      memory_order_relaxed,
                                                      memory_order_relaxed))
                break;
            /* lost the race: pos now holds the current tail */
        } else if (d < 0) {
            /* The cell still holds position pos - cap.  Full, or busy? */
            uint64_t used = pos - atomic_load_explicit(&r->head, memory_order_relaxed); /* P6 */
            if (used >= mask + 1 && used < (UINT64_C(1) << 63))
                return WM_FULL;
            /* Not full (or pos is stale): its consumer is between C2 and C3. */
            if (!wm_backoff(&waited, &since))
                return WM_FULL; /* stalled for WM_STALL_NS: it probably died there */
            pos = atomic_load_explicit(&r->tail, memory_order_relaxed); /* P0 */
        } else {
            /* Another producer took pos.  Its P2 CAS is sequenced before the P3 store
             * our P1 acquire read, so this P0 must see the tail past pos; one that does
             * not means the cell was scribbled on: fail rather than spin for ever. */
            uint64_t now = atomic_load_explicit(&r->tail, memory_order_relaxed); /* P0 */
            if (now == pos)
                return WM_CORRUPT;
            pos = now;
        }
    }
    c->value = value;
    atomic_store_explicit(&c->seq, pos + 1, memory_order_release); /* P3 */
    return WM_OK;
}

static int wm_raw_pop(wm_ring_ctl *r, uint64_t mask, uint64_t *value)
{
    wm_cell *cells = wm_cells(r);
    uint64_t pos = atomic_load_explicit(&r->head, memory_order_relaxed); /* C0 */

    for (;;) {
        wm_cell *c = &cells[pos & mask];
        uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire); /* C1 */
        int d = wm_cmp(seq, pos + 1);
        if (d == 0) {
            if (atomic_compare_exchange_weak_explicit(&r->head, &pos, pos + 1, /* C2 */
                                                      memory_order_relaxed,
                                                      memory_order_relaxed)) {
                *value = c->value;
                atomic_store_explicit(&c->seq, pos + mask + 1, memory_order_release); /* C3 */
                return WM_OK;
            }
        } else if (d < 0) {
            return WM_EMPTY;
        } else {
            /* Another consumer took pos (its C2 happens before the store our C1 read,
             * directly or through the producer of a later lap): the head must have
             * moved; if it has not, the cell was scribbled on. */
            uint64_t now = atomic_load_explicit(&r->head, memory_order_relaxed); /* C0 */
            if (now == pos)
                return WM_CORRUPT;
            pos = now;
        }
    }
}

/* One non-blocking pop with the closed check and the index validation. */
static int wm_pop_once(const wm_seg_t *seg, wm_ring_ctl *r, uint32_t *slot)
{
    uint64_t mask = (uint64_t)seg->layout.ring_capacity - 1;
    uint64_t v;
    int st = wm_raw_pop(r, mask, &v);

    if (st == WM_EMPTY) {
        if (!atomic_load_explicit(&r->wait.closed, memory_order_acquire)) /* C4 */
            return WM_EMPTY;
        /* Closed: anything pushed before the close is visible now. */
        st = wm_raw_pop(r, mask, &v);
        if (st == WM_EMPTY)
            return WM_CLOSED;
    }
    if (st != WM_OK)
        return st;
    if (v >= seg->layout.nslots)
        return WM_BAD_INDEX;
    *slot = (uint32_t)v;
    return WM_OK;
}

static inline bool wm_interrupted(wm_ring_ctl *r, uint32_t epoch)
{
    return atomic_load_explicit(&r->wait.interrupts, memory_order_acquire) != epoch; /* W0 */
}

int wm_push(const wm_seg_t *seg, int ring, uint32_t slot)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    int st;

    if (r == NULL)
        return WM_INVALID;
    if (slot >= seg->layout.nslots)
        return WM_BAD_INDEX;
    st = wm_raw_push(r, (uint64_t)seg->layout.ring_capacity - 1, slot);
    if (st != WM_OK)
        return st;
#if WM_HAVE_FUTEX
    if (atomic_fetch_add_explicit(&r->wait.waiters, 0, memory_order_acq_rel) != 0) { /* P4 */
        atomic_fetch_add_explicit(&r->wait.event, 1, memory_order_release); /* P5 */
        /* The index is in the ring whatever the wake says: report a failed wake apart,
         * so no caller pushes the slot a second time. */
        return wm_futex_wake(&r->wait.event, 1) == WM_OK ? WM_OK : WM_WAKE_FAILED;
    }
#endif
    return WM_OK;
}

int wm_try_pop(const wm_seg_t *seg, int ring, uint32_t *slot)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    if (r == NULL || slot == NULL)
        return WM_INVALID;
    return wm_pop_once(seg, r, slot);
}

uint32_t wm_interrupt_epoch(const wm_seg_t *seg, int ring)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    if (r == NULL)
        return 0;
    return atomic_load_explicit(&r->wait.interrupts, memory_order_acquire); /* W0 */
}

#if WM_HAVE_FUTEX
static int wm_sleep_pop(const wm_seg_t *seg, wm_ring_ctl *r, uint32_t *slot,
                        bool forever, uint64_t deadline, uint32_t epoch)
{
    wm_wait_line *w = &r->wait;

    for (;;) {
        uint32_t ev = atomic_load_explicit(&w->event, memory_order_acquire); /* W1 */
        atomic_fetch_add_explicit(&w->waiters, 1, memory_order_acq_rel);     /* W2 */

        int st = wm_pop_once(seg, r, slot);
        if (st == WM_EMPTY && wm_interrupted(r, epoch))
            st = WM_INTERRUPTED;
        if (st == WM_EMPTY) {
            uint64_t now = wm_now_ns();
            if (!forever && now >= deadline) {
                st = WM_TIMEOUT;
            } else {
                struct timespec ts, *tp = NULL;
                if (!forever) {
                    uint64_t rem = deadline - now;
                    ts.tv_sec = (time_t)(rem / UINT64_C(1000000000));
                    ts.tv_nsec = (long)(rem % UINT64_C(1000000000));
                    tp = &ts;
                }
                int ws = wm_futex_wait(&w->event, ev, tp);
                if (ws != WM_OK)
                    st = ws; /* WM_SIGNALED or WM_SYSERR */
            }
        }
        atomic_fetch_sub_explicit(&w->waiters, 1, memory_order_relaxed); /* W3 */
        if (st != WM_EMPTY)
            return st;
    }
}
#else
/* Portable fallback: poll with an exponential nanosleep backoff, 1 us to 1 ms. */
static int wm_sleep_pop(const wm_seg_t *seg, wm_ring_ctl *r, uint32_t *slot,
                        bool forever, uint64_t deadline, uint32_t epoch)
{
    uint64_t nap = 1000;

    for (;;) {
        int st = wm_pop_once(seg, r, slot);
        if (st != WM_EMPTY)
            return st;
        if (wm_interrupted(r, epoch))
            return WM_INTERRUPTED;
        uint64_t now = wm_now_ns();
        if (!forever && now >= deadline)
            return WM_TIMEOUT;
        uint64_t d = nap;
        if (!forever && deadline - now < d)
            d = deadline - now;
        struct timespec ts;
        ts.tv_sec = (time_t)(d / UINT64_C(1000000000));
        ts.tv_nsec = (long)(d % UINT64_C(1000000000));
        if (nanosleep(&ts, NULL) != 0)
            return errno == EINTR ? WM_SIGNALED : WM_SYSERR;
        if (nap < UINT64_C(1000000))
            nap *= 2;
    }
}
#endif

int wm_pop_epoch(const wm_seg_t *seg, int ring, uint32_t *slot,
                 int64_t timeout_ns, uint32_t epoch)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    uint64_t start, deadline, spin_end;
    bool forever = timeout_ns < 0;
    int st;

    if (r == NULL || slot == NULL)
        return WM_INVALID;
    st = wm_pop_once(seg, r, slot);
    if (st != WM_EMPTY)
        return st;
    if (wm_interrupted(r, epoch))
        return WM_INTERRUPTED;
    if (timeout_ns == 0)
        return WM_TIMEOUT;

    start = wm_now_ns();
    deadline = forever ? UINT64_MAX : start + (uint64_t)timeout_ns;
    spin_end = start + WM_SPIN_NS;
    if (spin_end > deadline)
        spin_end = deadline;

    /* Bounded spin: a reply that is microseconds away costs no system call. */
    do {
        for (int i = 0; i < WM_SPIN_BATCH; i++)
            wm_cpu_relax();
        st = wm_pop_once(seg, r, slot);
        if (st != WM_EMPTY)
            return st;
        if (wm_interrupted(r, epoch))
            return WM_INTERRUPTED;
    } while (wm_now_ns() < spin_end);

    return wm_sleep_pop(seg, r, slot, forever, deadline, epoch);
}

int wm_pop(const wm_seg_t *seg, int ring, uint32_t *slot, int64_t timeout_ns)
{
    return wm_pop_epoch(seg, ring, slot, timeout_ns, wm_interrupt_epoch(seg, ring));
}

static int wm_wake_all(wm_ring_ctl *r)
{
#if WM_HAVE_FUTEX
    return wm_futex_wake(&r->wait.event, INT_MAX);
#else
    (void)r;
    return WM_OK;
#endif
}

int wm_close(const wm_seg_t *seg, int ring)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    if (r == NULL)
        return WM_INVALID;
    atomic_store_explicit(&r->wait.closed, 1, memory_order_seq_cst);     /* X0 */
    atomic_fetch_add_explicit(&r->wait.event, 1, memory_order_seq_cst); /* X1 */
    return wm_wake_all(r);
}

int wm_is_closed(const wm_seg_t *seg, int ring)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    if (r == NULL)
        return 0;
    return atomic_load_explicit(&r->wait.closed, memory_order_acquire) != 0; /* C4 */
}

int wm_interrupt(const wm_seg_t *seg, int ring)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    if (r == NULL)
        return WM_INVALID;
    atomic_fetch_add_explicit(&r->wait.interrupts, 1, memory_order_seq_cst); /* I0 */
    atomic_fetch_add_explicit(&r->wait.event, 1, memory_order_seq_cst);      /* I1 */
    return wm_wake_all(r);
}

/* ---------------------------------------------------------------------- */
/* Slot addresses                                                         */
/* ---------------------------------------------------------------------- */

static unsigned char *wm_slot_base(const wm_seg_t *seg, uint32_t slot)
{
    if (seg == NULL || seg->base == NULL || slot >= seg->layout.nslots)
        return NULL;
    return seg->base + seg->layout.slots_offset + (uint64_t)slot * seg->layout.slot_stride;
}

wm_slot_header *wm_slot_header_ptr(const wm_seg_t *seg, uint32_t slot)
{
    return (wm_slot_header *)(void *)wm_slot_base(seg, slot);
}

void *wm_slot_input(const wm_seg_t *seg, uint32_t slot)
{
    unsigned char *p = wm_slot_base(seg, slot);
    return p == NULL ? NULL : p + WM_SLOT_HEADER_SIZE;
}

void *wm_slot_output(const wm_seg_t *seg, uint32_t slot)
{
    unsigned char *p = wm_slot_base(seg, slot);
    return p == NULL ? NULL : p + WM_SLOT_HEADER_SIZE + seg->layout.region_size;
}

/* ---------------------------------------------------------------------- */
/* Test hooks (ring_internal.h)                                           */
/* ---------------------------------------------------------------------- */

int wm_debug_set_positions(const wm_seg_t *seg, int ring, uint64_t pos)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    wm_cell *cells;
    uint64_t cap, mask;

    if (r == NULL)
        return WM_INVALID;
    if (atomic_load_explicit(&r->head, memory_order_relaxed) != /* D0 */
        atomic_load_explicit(&r->tail, memory_order_relaxed))   /* D0 */
        return WM_FULL;
    cells = wm_cells(r);
    cap = seg->layout.ring_capacity;
    mask = cap - 1;
    for (uint64_t i = 0; i < cap; i++) {
        /* The first position >= pos whose cell is i. */
        uint64_t p = pos + ((i - pos) & mask);
        atomic_store_explicit(&cells[i].seq, p, memory_order_relaxed); /* D0 */
    }
    atomic_store_explicit(&r->head, pos, memory_order_relaxed); /* D0 */
    atomic_store_explicit(&r->tail, pos, memory_order_relaxed); /* D0 */
    return WM_OK;
}

int wm_debug_positions(const wm_seg_t *seg, int ring, uint64_t *head, uint64_t *tail)
{
    wm_ring_ctl *r = wm_ring_ptr(seg, ring);
    if (r == NULL || head == NULL || tail == NULL)
        return WM_INVALID;
    *head = atomic_load_explicit(&r->head, memory_order_relaxed); /* D0 */
    *tail = atomic_load_explicit(&r->tail, memory_order_relaxed); /* D0 */
    return WM_OK;
}
