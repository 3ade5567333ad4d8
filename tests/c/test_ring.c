/*
 * test_ring.c: tests of csrc/ring.c, meant to run under ASan/UBSan and TSan
 * (see run_sanitizers.sh).
 *
 *   test_ring [items_per_producer]
 *
 * First single-threaded edge cases, then 4 producer and 4 consumer threads
 * moving stamped slots through one segment: the ready ring carries filled
 * slots, the done ring is the free list, so both rings see several producers
 * and several consumers.  Every delivery is checked: nothing lost, nothing
 * delivered twice, no torn slot, each producer's order kept per consumer.
 * The stress runs twice: with 16 slots, and at the capacity edge with 2 (both
 * rings full or empty most of the time, every cell lapped over and over,
 * positions crossing 2^64 and 2^63).
 *
 * No wait can hang the run: every pop has a timeout and the time it took is
 * checked, and every wait that could block for ever (a pop without a
 * timeout, a join) runs under a watchdog that fails the test after a few
 * seconds, naming the wait.  A lost wake-up fails in seconds, not at the
 * caller's timeout.
 */
#define _POSIX_C_SOURCE 200809L

#include "ring_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static _Atomic int g_checks; /* CHECK runs in threads too */

#define CHECK(cond)                                                            \
    do {                                                                       \
        g_checks++;                                                            \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define CHECK_ST(expr, want)                                                   \
    do {                                                                       \
        int st_ = (expr);                                                      \
        g_checks++;                                                            \
        if (st_ != (want)) {                                                   \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s\n", __FILE__,  \
                    __LINE__, #expr, wm_status_str(st_), wm_status_str(want)); \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

#define MS (INT64_C(1000000))

/* How long a woken sleeper may take to return, and how long the watchdog
 * lets a wait that should end at once block before it fails the run. */
#define WAKE_BOUND_MS 1000
#define WATCHDOG_MS 5000
/* A full ring must answer WM_FULL at once: well under the busy-cell stall
 * bound (WM_STALL_NS in ring.c, 1 s) that a push waits out otherwise. */
#define FULL_BOUND_MS 500

/* ---------------------------------------------------------------------- */
/* Watchdog                                                               */
/* ---------------------------------------------------------------------- */

/* One thread that ends the run when the wait the main thread armed it for
 * outlives its bound.  Waits in other threads are bounded by their own
 * timeouts, or by the main thread's watched join. */
static pthread_mutex_t g_wd_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wd_cv;
static pthread_t g_wd_thread;
static const char *g_wd_what; /* the wait being watched; NULL: none */
static int g_wd_line;
static uint64_t g_wd_bound_ns, g_wd_deadline; /* wm_now_ns() clock */
static bool g_wd_quit;

static void *watchdog_main(void *arg)
{
    (void)arg;
    CHECK(pthread_mutex_lock(&g_wd_mu) == 0);
    while (!g_wd_quit) {
        int rc;
        if (g_wd_what == NULL) {
            rc = pthread_cond_wait(&g_wd_cv, &g_wd_mu);
        } else if (wm_now_ns() >= g_wd_deadline) {
            fprintf(stderr, "%s:%d: still blocked after %.1f s: %s (a lost wake-up?)\n", __FILE__,
                    g_wd_line, (double)g_wd_bound_ns / 1e9, g_wd_what);
            fflush(stderr);
            _exit(1); /* the blocked thread cannot be joined */
        } else {
            struct timespec ts = { (time_t)(g_wd_deadline / UINT64_C(1000000000)),
                                   (long)(g_wd_deadline % UINT64_C(1000000000)) };
            rc = pthread_cond_timedwait(&g_wd_cv, &g_wd_mu, &ts);
            if (rc == ETIMEDOUT)
                rc = 0;
        }
        CHECK(rc == 0);
    }
    CHECK(pthread_mutex_unlock(&g_wd_mu) == 0);
    return NULL;
}

static void watchdog_start(void)
{
    pthread_condattr_t attr;
    CHECK(pthread_condattr_init(&attr) == 0);
    CHECK(pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) == 0); /* wm_now_ns()'s clock */
    CHECK(pthread_cond_init(&g_wd_cv, &attr) == 0);
    CHECK(pthread_condattr_destroy(&attr) == 0);
    CHECK(pthread_create(&g_wd_thread, NULL, watchdog_main, NULL) == 0);
}

static void watchdog_stop(void)
{
    CHECK(pthread_mutex_lock(&g_wd_mu) == 0);
    g_wd_quit = true;
    CHECK(pthread_cond_signal(&g_wd_cv) == 0);
    CHECK(pthread_mutex_unlock(&g_wd_mu) == 0);
    CHECK(pthread_join(g_wd_thread, NULL) == 0);
    CHECK(pthread_cond_destroy(&g_wd_cv) == 0);
}

static void watchdog_arm(const char *what, int line, uint64_t bound_ns)
{
    CHECK(pthread_mutex_lock(&g_wd_mu) == 0);
    g_wd_what = what;
    g_wd_line = line;
    g_wd_bound_ns = bound_ns;
    g_wd_deadline = wm_now_ns() + bound_ns;
    CHECK(pthread_cond_signal(&g_wd_cv) == 0);
    CHECK(pthread_mutex_unlock(&g_wd_mu) == 0);
}

static void watchdog_disarm(void)
{
    CHECK(pthread_mutex_lock(&g_wd_mu) == 0);
    g_wd_what = NULL;
    CHECK(pthread_mutex_unlock(&g_wd_mu) == 0);
}

/* Run stmt (main thread only); fail the run if it blocks longer than ms. */
#define BOUNDED_AT(line, ms, what, stmt)                                       \
    do {                                                                       \
        watchdog_arm((what), (line), (uint64_t)(ms) * (uint64_t)MS);           \
        stmt;                                                                  \
        watchdog_disarm();                                                     \
    } while (0)
#define BOUNDED(ms, what, stmt) BOUNDED_AT(__LINE__, ms, what, stmt)

static void join_bounded(pthread_t t, uint64_t ms, const char *what, int line)
{
    BOUNDED_AT(line, ms, what, CHECK(pthread_join(t, NULL) == 0));
}
#define JOIN_BOUNDED(t, ms, what) join_bounded((t), (ms), (what), __LINE__)

static wm_ring_ctl *ring_ctl(const wm_seg_t *seg, int ring)
{
    uint64_t off = ring == WM_READY ? seg->layout.ready_offset : seg->layout.done_offset;
    return (wm_ring_ctl *)(void *)(seg->base + off);
}

static wm_cell *ring_cells(const wm_seg_t *seg, int ring)
{
    return (wm_cell *)(void *)((unsigned char *)ring_ctl(seg, ring) + WM_RING_CTL_SIZE);
}

static double secs_since(uint64_t t0)
{
    return (double)(wm_now_ns() - t0) / 1e9;
}

static void *seg_alloc(uint32_t nslots, uint64_t region, wm_seg_t *seg, size_t *len_out)
{
    wm_layout_t L;
    CHECK_ST(wm_layout(nslots, region, &L), WM_OK);
    size_t len = (size_t)((L.total_size + 63) & ~UINT64_C(63));
    void *mem = aligned_alloc(64, len);
    CHECK(mem != NULL);
    memset(mem, 0xA5, len); /* init must not depend on zeroed memory */
    CHECK_ST(wm_seg_init(seg, mem, len, nslots, region, 4242), WM_OK);
    if (len_out)
        *len_out = len;
    return mem;
}

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* ---------------------------------------------------------------------- */

static void test_layout(void)
{
    wm_layout_t L;

    CHECK_ST(wm_layout(1, 0, &L), WM_OK);
    CHECK(L.ring_capacity == 2);
    CHECK(L.region_size == 0 && L.slot_stride == 128);
    CHECK(L.ring_bytes == 256); /* 192 + 2 * 16 rounded up to 64 */
    CHECK(L.ready_offset == 4096 && L.done_offset == 4352 && L.slots_offset == 4608);
    CHECK(L.total_size == 4608 + 128);
    CHECK(L.version == WM_LAYOUT_VERSION && L.header_size == WM_HEADER_SIZE);

    CHECK_ST(wm_layout(3, 100, &L), WM_OK);
    CHECK(L.ring_capacity == 4 && L.region_size == 128 && L.slot_stride == 384);
    CHECK(L.total_size == L.slots_offset + 3 * 384);

    CHECK_ST(wm_layout(1000, 24000000, &L), WM_OK);
    CHECK(L.ring_capacity == 1024);
    CHECK(L.ring_bytes == 192 + 1024 * 16);
    CHECK(L.region_size % 64 == 0 && L.region_size >= 24000000 && L.region_size < 24000064);
    CHECK(L.slot_stride % 64 == 0 && L.slots_offset % 64 == 0);

    CHECK_ST(wm_layout(WM_MAX_SLOTS, 64, &L), WM_OK);
    CHECK(L.ring_capacity == WM_MAX_SLOTS);

    CHECK_ST(wm_layout(0, 64, &L), WM_INVALID);
    CHECK_ST(wm_layout(WM_MAX_SLOTS + 1, 64, &L), WM_INVALID);
    CHECK_ST(wm_layout(1, UINT64_MAX, &L), WM_INVALID);
    CHECK_ST(wm_layout(1, UINT64_MAX / 2, &L), WM_INVALID);
    CHECK_ST(wm_layout(1024, UINT64_C(1) << 52, &L), WM_INVALID); /* 2^63 total */
    CHECK_ST(wm_layout(1, 0, NULL), WM_INVALID);

    for (uint32_t n = 1; n < 300; n += 7) {
        for (uint64_t r = 0; r < 5000; r += 333) {
            CHECK_ST(wm_layout(n, r, &L), WM_OK);
            CHECK(L.ring_capacity >= n && L.ring_capacity >= 2);
            CHECK((L.ring_capacity & (L.ring_capacity - 1)) == 0);
            CHECK(L.region_size >= r && L.region_size - r < 64 && L.region_size % 64 == 0);
            CHECK(L.slot_stride == 128 + 2 * L.region_size);
            CHECK(L.done_offset >= L.ready_offset + 192 + 16 * (uint64_t)L.ring_capacity);
            CHECK(L.slots_offset >= L.done_offset + 192 + 16 * (uint64_t)L.ring_capacity);
            CHECK(L.total_size == L.slots_offset + n * L.slot_stride);
        }
    }
}

static void test_names_and_clock(void)
{
    CHECK(strcmp(wm_status_str(WM_OK), "WM_OK") == 0);
    CHECK(strcmp(wm_status_str(WM_SYSERR), "WM_SYSERR") == 0);
    CHECK(strcmp(wm_status_str(999), "WM_UNKNOWN") == 0);
    CHECK(wm_now_ns() > 0);
}

static void test_push_pop_basic(void)
{
    wm_seg_t seg;
    uint32_t s = 99;
    void *mem = seg_alloc(4, 64, &seg, NULL);

    CHECK(seg.layout.ring_capacity == 4);
    CHECK(seg.layout.creator_pid == 4242);
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_EMPTY);
    CHECK_ST(wm_try_pop(&seg, WM_DONE, &s), WM_EMPTY);
    CHECK_ST(wm_pop(&seg, WM_READY, &s, 0), WM_TIMEOUT);
    CHECK(s == 99);

    for (uint32_t i = 0; i < 4; i++)
        CHECK_ST(wm_push(&seg, WM_READY, i), WM_OK);
    CHECK_ST(wm_push(&seg, WM_READY, 0), WM_FULL);
    CHECK_ST(wm_try_pop(&seg, WM_DONE, &s), WM_EMPTY); /* rings independent */
    for (uint32_t i = 0; i < 4; i++) {
        CHECK_ST(wm_pop(&seg, WM_READY, &s, 10 * MS), WM_OK);
        CHECK(s == i); /* FIFO with one producer and one consumer */
    }
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_EMPTY);

    CHECK_ST(wm_push(&seg, WM_READY, 4), WM_BAD_INDEX);
    CHECK_ST(wm_push(&seg, WM_DONE, UINT32_MAX), WM_BAD_INDEX);
    CHECK_ST(wm_push(&seg, 2, 0), WM_INVALID);
    CHECK_ST(wm_push(&seg, -1, 0), WM_INVALID);
    CHECK_ST(wm_try_pop(&seg, 7, &s), WM_INVALID);
    CHECK_ST(wm_try_pop(&seg, WM_READY, NULL), WM_INVALID);
    CHECK_ST(wm_pop(&seg, 7, &s, 0), WM_INVALID);
    CHECK_ST(wm_close(&seg, 7), WM_INVALID);
    CHECK_ST(wm_interrupt(&seg, 7), WM_INVALID);

    /* slot addresses */
    for (uint32_t i = 0; i < 4; i++) {
        unsigned char *h = (unsigned char *)wm_slot_header_ptr(&seg, i);
        unsigned char *in = wm_slot_input(&seg, i);
        unsigned char *out = wm_slot_output(&seg, i);
        CHECK(h != NULL && (uintptr_t)h % 64 == 0 && (uintptr_t)in % 64 == 0 &&
              (uintptr_t)out % 64 == 0);
        CHECK(in == h + 128 && out == in + seg.layout.region_size);
        CHECK(out + seg.layout.region_size <= (unsigned char *)mem + seg.layout.total_size);
        const wm_slot_header *sh = (const wm_slot_header *)h;
        CHECK(sh->task_id == 0 && sh->status == 0 && sh->flags == 0); /* zeroed by init */
    }
    CHECK(wm_slot_header_ptr(&seg, 4) == NULL);
    CHECK(wm_slot_input(&seg, 4) == NULL && wm_slot_output(&seg, 4) == NULL);
    free(mem);
}

static void test_timeout(void)
{
    wm_seg_t seg;
    uint32_t s;
    void *mem = seg_alloc(2, 0, &seg, NULL);

    uint64_t t0 = wm_now_ns();
    CHECK_ST(wm_pop(&seg, WM_READY, &s, 50 * MS), WM_TIMEOUT);
    uint64_t dt = wm_now_ns() - t0;
    CHECK(dt >= (uint64_t)(50 * MS));
    CHECK(dt < (uint64_t)(250 * MS));

    t0 = wm_now_ns();
    CHECK_ST(wm_pop(&seg, WM_DONE, &s, 1 * MS), WM_TIMEOUT);
    dt = wm_now_ns() - t0;
    CHECK(dt >= (uint64_t)(1 * MS) && dt < (uint64_t)(100 * MS));
    free(mem);
}

static void test_close(void)
{
    wm_seg_t seg;
    uint32_t s;
    void *mem = seg_alloc(4, 0, &seg, NULL);

    CHECK(!wm_is_closed(&seg, WM_READY));
    CHECK_ST(wm_push(&seg, WM_READY, 1), WM_OK);
    CHECK_ST(wm_push(&seg, WM_READY, 2), WM_OK);
    CHECK_ST(wm_close(&seg, WM_READY), WM_OK);
    CHECK(wm_is_closed(&seg, WM_READY) && !wm_is_closed(&seg, WM_DONE));
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_OK); /* drained first */
    CHECK(s == 1);
    BOUNDED(WATCHDOG_MS, "pop without a timeout, an index queued",
            CHECK_ST(wm_pop(&seg, WM_READY, &s, -1), WM_OK));
    CHECK(s == 2);
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_CLOSED);
    BOUNDED(WATCHDOG_MS, "pop without a timeout on a closed, empty ring",
            CHECK_ST(wm_pop(&seg, WM_READY, &s, -1), WM_CLOSED));
    CHECK_ST(wm_pop(&seg, WM_READY, &s, 0), WM_CLOSED);
    CHECK_ST(wm_try_pop(&seg, WM_DONE, &s), WM_EMPTY);
    /* pushes after close are still delivered to whoever looks */
    CHECK_ST(wm_push(&seg, WM_READY, 3), WM_OK);
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_OK);
    CHECK(s == 3);
    free(mem);
}

struct blocker {
    wm_seg_t *seg;
    int ring;
    int64_t timeout;
    int status;
    uint32_t slot;
    _Atomic int started;
};

static void *blocker_main(void *arg)
{
    struct blocker *b = arg;
    uint32_t epoch = wm_interrupt_epoch(b->seg, b->ring);
    atomic_store(&b->started, 1);
    b->status = wm_pop_epoch(b->seg, b->ring, &b->slot, b->timeout, epoch);
    return NULL;
}

/* Start a blocking pop on an empty ring and return once it is a registered
 * sleeper (past W2), given a moment more to be inside futex_wait: whatever
 * happens next (push, close, interrupt) must wake it. */
static void run_blocker(struct blocker *b, pthread_t *t)
{
    _Atomic uint32_t *waiters = &ring_ctl(b->seg, b->ring)->wait.waiters;
    CHECK(atomic_load(waiters) == 0);
    atomic_store(&b->started, 0);
    CHECK(pthread_create(t, NULL, blocker_main, b) == 0);
    BOUNDED(WATCHDOG_MS, "a blocking pop to register as a sleeper",
            while (atomic_load(waiters) == 0) sleep_ms(1));
    CHECK(atomic_load(&b->started));
    sleep_ms(20);
}

/* Join a sleeper woken at t0 (wm_now_ns()): it must be back within
 * WAKE_BOUND_MS.  A sleeper without a timeout that no one woke fails the run
 * through the watchdog; one with a timeout returns at its deadline, too late. */
static void join_woken(pthread_t t, uint64_t t0, const char *what, int line)
{
    join_bounded(t, WATCHDOG_MS, what, line);
    double dt = secs_since(t0);
    if (dt * 1000 >= WAKE_BOUND_MS) {
        fprintf(stderr, "%s:%d: %s: back %.3f s after the wake-up, more than %d ms (a lost wake-up?)\n",
                __FILE__, line, what, dt, WAKE_BOUND_MS);
        exit(1);
    }
    g_checks++;
}
#define JOIN_WOKEN(t, t0, what) join_woken((t), (t0), (what), __LINE__)

static void test_wakeups(void)
{
    wm_seg_t seg;
    pthread_t t;
    uint32_t s;
    uint64_t t0;
    void *mem = seg_alloc(4, 0, &seg, NULL);
    struct blocker b = { .seg = &seg, .ring = WM_READY, .timeout = -1 };

    /* a push wakes a lone sleeper, on either ring, with or without a timeout */
    const int64_t timeouts[] = { -1, 5000 * MS };
    for (int ring = WM_READY; ring <= WM_DONE; ring++) {
        for (size_t k = 0; k < sizeof timeouts / sizeof timeouts[0]; k++) {
            b.ring = ring;
            b.timeout = timeouts[k];
            run_blocker(&b, &t);
            t0 = wm_now_ns();
            CHECK_ST(wm_push(&seg, ring, 3), WM_OK);
            JOIN_WOKEN(t, t0, timeouts[k] < 0 ? "a lone sleeper (no timeout) woken by a push"
                                              : "a lone sleeper (5 s timeout) woken by a push");
            CHECK_ST(b.status, WM_OK);
            CHECK(b.slot == 3);
        }
    }
    b.ring = WM_READY;
    b.timeout = -1;

    /* an interrupt wakes a sleeper; a pop that starts later is unaffected */
    run_blocker(&b, &t);
    t0 = wm_now_ns();
    CHECK_ST(wm_interrupt(&seg, WM_READY), WM_OK);
    JOIN_WOKEN(t, t0, "a sleeper woken by an interrupt");
    CHECK_ST(b.status, WM_INTERRUPTED);
    CHECK_ST(wm_pop(&seg, WM_READY, &s, 5 * MS), WM_TIMEOUT);
    /* a stale epoch reports the interrupt at once; an item still wins */
    uint32_t old = wm_interrupt_epoch(&seg, WM_DONE);
    CHECK_ST(wm_interrupt(&seg, WM_DONE), WM_OK);
    BOUNDED(WATCHDOG_MS, "pop without a timeout, with a stale epoch",
            CHECK_ST(wm_pop_epoch(&seg, WM_DONE, &s, -1, old), WM_INTERRUPTED));
    CHECK_ST(wm_push(&seg, WM_DONE, 2), WM_OK);
    BOUNDED(WATCHDOG_MS, "pop without a timeout, with a stale epoch and an index queued",
            CHECK_ST(wm_pop_epoch(&seg, WM_DONE, &s, -1, old), WM_OK));
    CHECK(s == 2);

    /* close wakes a sleeper, with or without a timeout */
    for (size_t k = 0; k < sizeof timeouts / sizeof timeouts[0]; k++) {
        b.timeout = timeouts[k];
        wm_seg_t fresh;
        void *mem2 = seg_alloc(4, 0, &fresh, NULL);
        b.seg = &fresh;
        run_blocker(&b, &t);
        t0 = wm_now_ns();
        CHECK_ST(wm_close(&fresh, WM_READY), WM_OK);
        JOIN_WOKEN(t, t0, "a sleeper woken by close");
        CHECK_ST(b.status, WM_CLOSED);
        free(mem2);
    }
    free(mem);
}

static void test_attach(void)
{
    wm_seg_t seg, at;
    size_t len;
    unsigned char *mem = seg_alloc(5, 1000, &seg, &len);
    wm_seg_header *h = (wm_seg_header *)(void *)mem;

    CHECK_ST(wm_seg_attach(&at, mem, len), WM_OK);
    CHECK(at.base == mem && at.len == len);
    CHECK(memcmp(&at.layout, &seg.layout, sizeof at.layout) == 0);
    CHECK(at.layout.creator_pid == 4242);

    /* attach then use: handles from init and attach share the rings */
    uint32_t s;
    CHECK_ST(wm_push(&seg, WM_READY, 4), WM_OK);
    CHECK_ST(wm_try_pop(&at, WM_READY, &s), WM_OK);
    CHECK(s == 4);

    CHECK_ST(wm_seg_attach(&at, mem, (size_t)seg.layout.total_size - 1), WM_TRUNCATED);
    CHECK(at.base == NULL && at.layout.total_size == seg.layout.total_size);
    CHECK_ST(wm_seg_attach(&at, mem, 4095), WM_TRUNCATED);
    CHECK_ST(wm_seg_attach(&at, mem, 7), WM_TRUNCATED);
    CHECK_ST(wm_seg_attach(&at, mem + 8, len - 64), WM_INVALID); /* misaligned */
    CHECK_ST(wm_seg_attach(NULL, mem, len), WM_INVALID);
    CHECK_ST(wm_seg_init(&at, mem, (size_t)seg.layout.total_size - 1, 5, 1000, 1), WM_TRUNCATED);
    CHECK_ST(wm_seg_init(&at, mem + 8, len - 64, 1, 0, 1), WM_INVALID);
    CHECK_ST(wm_seg_init(&at, mem, len, 0, 0, 1), WM_INVALID);

    mem[0] ^= 0xFF;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_MAGIC);
    mem[0] ^= 0xFF;

    h->version = 2;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_VERSION);
    CHECK(at.layout.version == 2);
    h->version = WM_LAYOUT_VERSION;

    uint64_t saved = h->slot_stride;
    h->slot_stride += 64;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->slot_stride = saved;

    uint32_t n = h->nslots;
    h->nslots = 0;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->nslots = WM_MAX_SLOTS + 1;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->nslots = n + 1; /* consistent with nothing else */
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->nslots = n;

    saved = h->region_size;
    h->region_size = saved + 1; /* not a multiple of 64 */
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->region_size = UINT64_MAX;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->region_size = saved;

    saved = h->total_size;
    h->total_size = UINT64_MAX;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->total_size = saved;

    h->header_size = 8192;
    CHECK_ST(wm_seg_attach(&at, mem, len), WM_BAD_LAYOUT);
    h->header_size = WM_HEADER_SIZE;

    CHECK_ST(wm_seg_attach(&at, mem, len), WM_OK);

    /* a foreign buffer of zeroes or random bytes is never read out of bounds */
    unsigned char *junk = aligned_alloc(64, 4096);
    CHECK(junk != NULL);
    memset(junk, 0, 4096);
    CHECK_ST(wm_seg_attach(&at, junk, 4096), WM_BAD_MAGIC);
    srand(7);
    for (int round = 0; round < 2000; round++) {
        for (int i = 8; i < 128; i++)
            junk[i] = (unsigned char)rand();
        memcpy(junk, &(uint64_t){ WM_MAGIC }, 8);
        if (round % 2)
            memcpy(junk + 8, &(uint32_t){ WM_LAYOUT_VERSION }, 4);
        int st = wm_seg_attach(&at, junk, 4096);
        CHECK(st == WM_BAD_VERSION || st == WM_BAD_LAYOUT || st == WM_TRUNCATED);
    }
    free(junk);
    free(mem);
}

/* Cross 2^32 and 2^64 with push/pop traffic on both rings. */
static void test_wrap(void)
{
    const uint64_t starts[] = { (UINT64_C(1) << 32) - 5, UINT64_MAX - 5, UINT64_C(1) << 63 };
    wm_seg_t seg;
    uint32_t s;
    void *mem = seg_alloc(3, 0, &seg, NULL); /* capacity 4 */

    for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
        for (int ring = WM_READY; ring <= WM_DONE; ring++) {
            uint64_t head, tail;
            CHECK_ST(wm_debug_set_positions(&seg, ring, starts[k]), WM_OK);
            CHECK_ST(wm_debug_positions(&seg, ring, &head, &tail), WM_OK);
            CHECK(head == starts[k] && tail == starts[k]);
            uint32_t next_in = 0, next_out = 0;
            for (int i = 0; i < 40; i++) {
                /* keep 0..3 items queued, varying, to hit full and empty at the wrap */
                int want = i % 5;
                while ((int)(next_in - next_out) < want && (next_in - next_out) < 4) {
                    CHECK_ST(wm_push(&seg, ring, next_in % 3), WM_OK);
                    next_in++;
                }
                if (next_in - next_out == 4)
                    CHECK_ST(wm_push(&seg, ring, 0), WM_FULL);
                while ((int)(next_in - next_out) > want / 2) {
                    CHECK_ST(wm_pop(&seg, ring, &s, 10 * MS), WM_OK);
                    CHECK(s == next_out % 3);
                    next_out++;
                }
            }
            while (next_out != next_in) {
                CHECK_ST(wm_try_pop(&seg, ring, &s), WM_OK);
                CHECK(s == next_out % 3);
                next_out++;
            }
            CHECK_ST(wm_try_pop(&seg, ring, &s), WM_EMPTY);
            CHECK_ST(wm_debug_positions(&seg, ring, &head, &tail), WM_OK);
            CHECK(head == tail && head == starts[k] + next_in);
            CHECK(next_in > 5); /* really crossed the boundary */
        }
    }
    CHECK_ST(wm_push(&seg, WM_READY, 0), WM_OK);
    CHECK_ST(wm_debug_set_positions(&seg, WM_READY, 0), WM_FULL); /* refuses a non-empty ring */
    free(mem);
}

/* A consumer stalled between claiming a cell (C2) and releasing it (C3),
 * lapped by a producer: the push must wait for it, not report WM_FULL. */
struct releaser {
    wm_cell *cell;
    uint64_t seq;
};

static void *releaser_main(void *arg)
{
    struct releaser *rl = arg;
    sleep_ms(30);
    atomic_store_explicit(&rl->cell->seq, rl->seq, memory_order_release); /* its C3 */
    return NULL;
}

static void test_busy_cell(void)
{
    wm_seg_t seg;
    uint32_t s;
    pthread_t t;
    void *mem = seg_alloc(2, 0, &seg, NULL); /* capacity 2 */
    wm_ring_ctl *r = (wm_ring_ctl *)(void *)(seg.base + seg.layout.ready_offset);
    wm_cell *cells = (wm_cell *)(void *)((unsigned char *)r + WM_RING_CTL_SIZE);

    CHECK_ST(wm_push(&seg, WM_READY, 0), WM_OK);            /* position 0, cell 0 */
    uint64_t pos = 0;
    CHECK(atomic_compare_exchange_strong(&r->head, &pos, 1)); /* a consumer's C2 ... */
    CHECK(cells[0].value == 0);                              /* ... reads the value, stalls */
    CHECK_ST(wm_push(&seg, WM_READY, 1), WM_OK);            /* position 1, cell 1 */
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_OK);
    CHECK(s == 1);
    /* position 2 needs cell 0: the ring is empty, yet the cell is busy */
    struct releaser rl = { &cells[0], 2 };
    CHECK(pthread_create(&t, NULL, releaser_main, &rl) == 0);
    uint64_t t0 = wm_now_ns();
    BOUNDED(WATCHDOG_MS, "a push waiting for a busy cell", CHECK_ST(wm_push(&seg, WM_READY, 1), WM_OK));
    CHECK(wm_now_ns() - t0 >= (uint64_t)(20 * MS));
    JOIN_BOUNDED(t, WATCHDOG_MS, "the thread releasing a busy cell");
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_OK);
    CHECK(s == 1);

    /* a consumer that never releases: WM_FULL after the stall bound */
    CHECK_ST(wm_push(&seg, WM_READY, 0), WM_OK);            /* position 3, cell 1 */
    pos = 3;
    CHECK(atomic_compare_exchange_strong(&r->head, &pos, 4)); /* claims and dies */
    CHECK_ST(wm_push(&seg, WM_READY, 1), WM_OK);            /* position 4, cell 0 */
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_OK);
    t0 = wm_now_ns();
    BOUNDED(WATCHDOG_MS, "a push waiting for a cell never released",
            CHECK_ST(wm_push(&seg, WM_READY, 1), WM_FULL)); /* position 5, cell 1: stuck */
    uint64_t dt = wm_now_ns() - t0;
    CHECK(dt >= (uint64_t)(900 * MS) && dt < (uint64_t)(5000 * MS));
    /* a truly full ring answers at once */
    wm_seg_t seg2;
    void *mem2 = seg_alloc(2, 0, &seg2, NULL);
    CHECK_ST(wm_push(&seg2, WM_DONE, 0), WM_OK);
    CHECK_ST(wm_push(&seg2, WM_DONE, 1), WM_OK);
    t0 = wm_now_ns();
    CHECK_ST(wm_push(&seg2, WM_DONE, 1), WM_FULL);
    CHECK(wm_now_ns() - t0 < (uint64_t)(50 * MS));
    free(mem2);
    free(mem);

    /* At the capacity edge: cap - 1 indices queued and the cell the next push
     * needs still busy (its consumer between C2 and C3).  Not full: the push
     * waits for the release, and every index comes out once, in order. */
    mem = seg_alloc(4, 0, &seg, NULL); /* capacity 4 */
    r = ring_ctl(&seg, WM_READY);
    cells = ring_cells(&seg, WM_READY);
    for (uint32_t i = 0; i < 4; i++)
        CHECK_ST(wm_push(&seg, WM_READY, i), WM_OK); /* positions 0..3: full */
    pos = 0;
    CHECK(atomic_compare_exchange_strong(&r->head, &pos, 1)); /* C2 of position 0 ... */
    CHECK(cells[0].value == 0);                              /* ... and it stalls */
    struct releaser edge = { &cells[0], 4 };
    CHECK(pthread_create(&t, NULL, releaser_main, &edge) == 0);
    t0 = wm_now_ns();
    BOUNDED(WATCHDOG_MS, "a push waiting for a busy cell, cap - 1 queued",
            CHECK_ST(wm_push(&seg, WM_READY, 0), WM_OK)); /* position 4, cell 0 */
    CHECK(wm_now_ns() - t0 >= (uint64_t)(20 * MS));
    JOIN_BOUNDED(t, WATCHDOG_MS, "the thread releasing a busy cell");
    for (uint32_t want = 1; want <= 4; want++) {
        CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_OK);
        CHECK(s == want % 4);
    }
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_EMPTY);
    free(mem);
}

/* ---------------------------------------------------------------------- */
/* MPMC stress: 4 producers, 4 consumers                                   */
/* ---------------------------------------------------------------------- */

#define NPROD 4
#define NCONS 4
#define MAX_SLOTS 16
#define PAYLOAD_WORDS 16
/* A stress pop's timeout, and how long one that got an index may have
 * taken: with every thread busy moving slots, a pop waits microseconds
 * unless its wake-up was lost (it then returns at its timeout). */
#define STRESS_POP_TIMEOUT_MS 10000
#define STRESS_POP_BOUND_MS 5000
/* How long the main thread waits for all the stress threads to finish. */
#define STRESS_JOIN_MS 300000

static wm_seg_t g_seg;
static uint32_t g_nslots;
static uint64_t g_items;                   /* per producer */
static _Atomic unsigned char *g_seen;      /* [NPROD * g_items] delivery counts */
static _Atomic uint64_t g_delivered;

static uint64_t stamp_word(uint64_t p, uint64_t seq, int k)
{
    return (p << 56) ^ (seq << 8) ^ (uint64_t)k ^ UINT64_C(0x9E3779B97F4A7C15);
}

/* A stress pop: bounded, and failing the run when it took too long. */
static int stress_pop(int ring, uint32_t *slot, const char *who)
{
    uint64_t t0 = wm_now_ns();
    int st = wm_pop(&g_seg, ring, slot, STRESS_POP_TIMEOUT_MS * MS);
    double dt = secs_since(t0);
    if (st == WM_OK && dt * 1000 >= STRESS_POP_BOUND_MS) {
        fprintf(stderr, "%s: a pop took %.3f s to get an index (a lost wake-up?)\n", who, dt);
        exit(1);
    }
    return st;
}

static void *producer_main(void *arg)
{
    uint64_t p = (uint64_t)(uintptr_t)arg;
    for (uint64_t seq = 0; seq < g_items; seq++) {
        uint32_t slot;
        int st = stress_pop(WM_DONE, &slot, "producer"); /* free list */
        if (st != WM_OK) {
            fprintf(stderr, "producer %llu: free-list pop: %s\n", (unsigned long long)p,
                    wm_status_str(st));
            exit(1);
        }
        wm_slot_header *h = wm_slot_header_ptr(&g_seg, slot);
        uint64_t *in = wm_slot_input(&g_seg, slot);
        /* DPDK-style: check the slot came back released (status 2) or fresh */
        if (h->status != 0 && h->status != 2) {
            fprintf(stderr, "slot %u reused while in flight (status %d)\n", slot, h->status);
            exit(1);
        }
        h->task_id = p;
        h->cycle = seq;
        h->worker_pid = (int32_t)slot;
        h->status = 1;
        for (int k = 0; k < PAYLOAD_WORDS; k++)
            in[k] = stamp_word(p, seq, k);
        h->in_nbytes = PAYLOAD_WORDS * 8;
        CHECK_ST(wm_push(&g_seg, WM_READY, slot), WM_OK);
    }
    return NULL;
}

static void *consumer_main(void *arg)
{
    (void)arg;
    int64_t last[NPROD];
    for (int p = 0; p < NPROD; p++)
        last[p] = -1;
    for (;;) {
        uint32_t slot;
        int st = stress_pop(WM_READY, &slot, "consumer");
        if (st == WM_CLOSED)
            break;
        if (st != WM_OK) {
            fprintf(stderr, "consumer: pop: %s\n", wm_status_str(st));
            exit(1);
        }
        wm_slot_header *h = wm_slot_header_ptr(&g_seg, slot);
        const uint64_t *in = wm_slot_input(&g_seg, slot);
        uint64_t p = h->task_id, seq = h->cycle;
        if (p >= NPROD || seq >= g_items || h->status != 1 || h->worker_pid != (int32_t)slot ||
            h->in_nbytes != PAYLOAD_WORDS * 8) {
            fprintf(stderr, "bad slot %u: producer %llu seq %llu status %d\n", slot,
                    (unsigned long long)p, (unsigned long long)seq, h->status);
            exit(1);
        }
        for (int k = 0; k < PAYLOAD_WORDS; k++) {
            if (in[k] != stamp_word(p, seq, k)) {
                fprintf(stderr, "torn slot %u word %d: producer %llu seq %llu\n", slot, k,
                        (unsigned long long)p, (unsigned long long)seq);
                exit(1);
            }
        }
        if ((int64_t)seq <= last[p]) {
            fprintf(stderr, "order: producer %llu seq %llu after %lld\n", (unsigned long long)p,
                    (unsigned long long)seq, (long long)last[p]);
            exit(1);
        }
        last[p] = (int64_t)seq;
        if (atomic_fetch_add_explicit(&g_seen[p * g_items + seq], 1, memory_order_relaxed) != 0) {
            fprintf(stderr, "duplicate: producer %llu seq %llu\n", (unsigned long long)p,
                    (unsigned long long)seq);
            exit(1);
        }
        atomic_fetch_add_explicit(&g_delivered, 1, memory_order_relaxed);
        h->status = 2;
        CHECK_ST(wm_push(&g_seg, WM_DONE, slot), WM_OK);
    }
    return NULL;
}

/* Move NPROD * items stamped slots through nslots slots, the rings' positions
 * starting at ready_start and done_start. */
static void run_mpmc(const char *name, uint32_t nslots, uint64_t items, uint64_t ready_start,
                     uint64_t done_start)
{
    pthread_t prod[NPROD], cons[NCONS];
    void *mem = seg_alloc(nslots, PAYLOAD_WORDS * 8, &g_seg, NULL);

    CHECK(nslots <= MAX_SLOTS);
    g_nslots = nslots;
    g_items = items;
    g_seen = calloc((size_t)(NPROD * items), 1);
    CHECK(g_seen != NULL);
    atomic_store(&g_delivered, 0);
    CHECK_ST(wm_debug_set_positions(&g_seg, WM_READY, ready_start), WM_OK);
    CHECK_ST(wm_debug_set_positions(&g_seg, WM_DONE, done_start), WM_OK);
    for (uint32_t i = 0; i < nslots; i++)
        CHECK_ST(wm_push(&g_seg, WM_DONE, i), WM_OK);

    uint64_t t0 = wm_now_ns();
    for (int i = 0; i < NCONS; i++)
        CHECK(pthread_create(&cons[i], NULL, consumer_main, NULL) == 0);
    for (int i = 0; i < NPROD; i++)
        CHECK(pthread_create(&prod[i], NULL, producer_main, (void *)(uintptr_t)i) == 0);
    for (int i = 0; i < NPROD; i++)
        JOIN_BOUNDED(prod[i], STRESS_JOIN_MS, "a stress producer to finish");
    CHECK_ST(wm_close(&g_seg, WM_READY), WM_OK);
    for (int i = 0; i < NCONS; i++)
        JOIN_BOUNDED(cons[i], STRESS_JOIN_MS, "a stress consumer to leave the closed ring");
    double secs = secs_since(t0);

    CHECK(atomic_load(&g_delivered) == NPROD * items);
    for (uint64_t i = 0; i < NPROD * items; i++)
        CHECK(atomic_load_explicit(&g_seen[i], memory_order_relaxed) == 1);
    /* every slot is back on the free list exactly once */
    unsigned char back[MAX_SLOTS] = { 0 };
    uint32_t s;
    int st;
    while ((st = wm_try_pop(&g_seg, WM_DONE, &s)) == WM_OK) {
        CHECK(s < nslots && back[s] == 0);
        back[s] = 1;
    }
    CHECK_ST(st, WM_EMPTY);
    for (uint32_t i = 0; i < nslots; i++)
        CHECK(back[i] == 1);
    /* each ring's positions moved by exactly what went through it */
    uint64_t head, tail;
    CHECK_ST(wm_debug_positions(&g_seg, WM_READY, &head, &tail), WM_OK);
    CHECK(head == tail && head == ready_start + NPROD * items);
    CHECK_ST(wm_debug_positions(&g_seg, WM_DONE, &head, &tail), WM_OK);
    CHECK(head == tail && head == done_start + nslots + NPROD * items);

    printf("mpmc, %s: %d producers x %llu items, %d consumers, %u slots: %.2f s (%.0f items/s)\n",
           name, NPROD, (unsigned long long)items, NCONS, nslots, secs, (double)(NPROD * items) / secs);
    free((void *)g_seen);
    free(mem);
}

static void test_mpmc(uint64_t items)
{
    /* 16 slots, starting near 2^32 so the run crosses it */
    run_mpmc("16 slots", 16, items, (UINT64_C(1) << 32) - 1000, (UINT64_C(1) << 32) - 777);
    /* the capacity edge: 2 slots in rings of 2 cells, so both rings are full or
     * empty most of the time and every cell is lapped while its consumer may
     * still hold it; the positions cross 2^64 and 2^63 */
    run_mpmc("capacity edge", 2, items / 4 + 1, UINT64_MAX - 100, (UINT64_C(1) << 63) - 77);
}

/* ---------------------------------------------------------------------- */
/* The capacity edge, one thread                                          */
/* ---------------------------------------------------------------------- */

/* What the k-th push at a ring stores: it changes from one lap to the next,
 * so an index left over from the previous lap of a cell shows. */
static uint32_t edge_value(uint64_t k, uint32_t nslots)
{
    return (uint32_t)((k + k / nslots) % nslots);
}

/* A ring holding exactly cap indices refuses the next push at once (WM_FULL,
 * not after waiting out the busy-cell stall) and keeps what it holds; each
 * index comes out once, in order, as the positions cross 2^32, 2^63 and 2^64
 * with the ring full. */
static void test_full_edge(void)
{
    const uint64_t starts[] = { 0, (UINT64_C(1) << 32) - 3, (UINT64_C(1) << 63) - 3, UINT64_MAX - 2 };
    const uint32_t sizes[] = { 2, 4, 8 }; /* nslots == capacity */

    for (size_t n = 0; n < sizeof sizes / sizeof sizes[0]; n++) {
        uint32_t cap = sizes[n], s;
        wm_seg_t seg;
        void *mem = seg_alloc(cap, 0, &seg, NULL);
        CHECK(seg.layout.ring_capacity == cap);
        for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
            for (int ring = WM_READY; ring <= WM_DONE; ring++) {
                uint64_t head, tail, pushed = 0, popped = 0;
                CHECK_ST(wm_debug_set_positions(&seg, ring, starts[k]), WM_OK);
                for (uint32_t round = 0; round < 3 * cap; round++) {
                    while (pushed - popped < cap)
                        CHECK_ST(wm_push(&seg, ring, edge_value(pushed++, cap)), WM_OK);
                    uint64_t t0 = wm_now_ns();
                    CHECK_ST(wm_push(&seg, ring, edge_value(pushed, cap)), WM_FULL);
                    double dt = secs_since(t0);
                    if (dt * 1000 >= FULL_BOUND_MS) {
                        fprintf(stderr, "%s:%d: a full ring of %u took %.3f s to answer WM_FULL\n",
                                __FILE__, __LINE__, cap, dt);
                        exit(1);
                    }
                    CHECK_ST(wm_debug_positions(&seg, ring, &head, &tail), WM_OK);
                    CHECK(head == starts[k] + popped && tail == starts[k] + pushed);
                    /* one out and in again at the edge, then (every other round)
                     * down to one, so the full point moves round the cells */
                    uint32_t drop = round % 2 ? cap - 1 : 1;
                    for (uint32_t i = 0; i < drop; i++) {
                        CHECK_ST(wm_try_pop(&seg, ring, &s), WM_OK);
                        CHECK(s == edge_value(popped++, cap));
                    }
                }
                while (popped != pushed) {
                    CHECK_ST(wm_try_pop(&seg, ring, &s), WM_OK);
                    CHECK(s == edge_value(popped++, cap));
                }
                CHECK_ST(wm_try_pop(&seg, ring, &s), WM_EMPTY);
                CHECK_ST(wm_debug_positions(&seg, ring, &head, &tail), WM_OK);
                CHECK(head == tail && head == starts[k] + pushed);
            }
        }
        free(mem);
    }
}

/* A scribbled cell (its turn marker ahead of the ring's position) must make
 * push and pop fail with WM_CORRUPT at once, timeouts included, never spin. */
static void test_corrupt_cell(void)
{
    wm_seg_t seg;
    uint32_t s = 99;
    void *mem = seg_alloc(4, 64, &seg, NULL);
    wm_cell *ready = (wm_cell *)(void *)((unsigned char *)mem + seg.layout.ready_offset + WM_RING_CTL_SIZE);
    wm_cell *done = (wm_cell *)(void *)((unsigned char *)mem + seg.layout.done_offset + WM_RING_CTL_SIZE);

    atomic_store(&ready[0].seq, 5); /* pop at head 0 expects 1 (full) or 0 (empty) */
    CHECK_ST(wm_try_pop(&seg, WM_READY, &s), WM_CORRUPT);
    CHECK_ST(wm_pop(&seg, WM_READY, &s, 20 * MS), WM_CORRUPT);
    BOUNDED(WATCHDOG_MS, "pop without a timeout on a scribbled cell",
            CHECK_ST(wm_pop(&seg, WM_READY, &s, -1), WM_CORRUPT));
    atomic_store(&done[0].seq, 9); /* push at tail 0 expects 0 */
    CHECK_ST(wm_push(&seg, WM_DONE, 1), WM_CORRUPT);
    CHECK(s == 99);
    free(mem);
}

int main(int argc, char **argv)
{
    uint64_t items = 50000;
    if (argc > 1)
        items = strtoull(argv[1], NULL, 10);
    if (items == 0)
        items = 1;

    watchdog_start();
    test_layout();
    test_names_and_clock();
    test_push_pop_basic();
    test_timeout();
    test_close();
    test_wakeups();
    test_attach();
    test_full_edge();
    test_wrap();
    test_busy_cell();
    test_corrupt_cell();
    test_mpmc(items);
    watchdog_stop();
    printf("test_ring: all %d checks passed\n", atomic_load(&g_checks));
    return 0;
}
