/*
 * knhk_ring.c — implementation of knhk_ring.h (read the header first: the
 * protocol, the memory ordering and the crash semantics are stated there).
 *
 * Guarantees kept here:
 * - every field shared between processes is a lock-free 64-bit C11 atomic or
 *   is written once, before the file is linked into place;
 * - the append path performs no system call, no atomic read-modify-write and
 *   no store to a cache line the consumer writes;
 * - nothing blocks: a full lane, a busy lane set or a descriptor stuck
 *   mid-update is reported, never waited on.
 * Must never: publish a slot before all of its bytes are stored; reuse a slot
 * whose record is not durable; move a durable cursor backwards.
 */
#define _GNU_SOURCE
#include "knhk_ring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef F_OFD_SETLK
#error "knhk_ring needs Linux open-file-description locks (F_OFD_SETLK)"
#endif

/* Shared between processes: the atomics must be address-free, i.e. lock-free. */
#if ATOMIC_LLONG_LOCK_FREE != 2 || ATOMIC_LONG_LOCK_FREE != 2
#error "knhk_ring needs lock-free 64-bit atomics"
#endif

#define CACHE_LINE 64u
#define PAGE 4096u
#define SNAP_OFFSET 64u
#define LANES_OFFSET 256u
#define LANE_SIZE 256u
#define SAMPLE_SLOTS 7u
/* Byte offsets locked with F_OFD_SETLK: the consumer's, then one per lane.
 * Locks are advisory; these bytes are ordinary header bytes. */
#define CONSUMER_LOCK_OFFSET 0
#define LANE_LOCK_OFFSET(i) (8 + (off_t)(i))

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

struct knhk_ring_header {
    _Atomic uint64_t magic; /* stored last at creation, with release order */
    uint32_t version;
    uint32_t header_size; /* == data offset */
    uint32_t record_size;
    uint32_t lanes;
    uint32_t capacity;
    uint32_t flags;
    uint64_t ring_id;
    uint64_t created_ns;
    _Atomic uint64_t tsc_hz;
    uint64_t file_size;
};

struct knhk_snapshot_desc {
    _Atomic uint64_t seq; /* odd while the writer is updating */
    _Atomic uint64_t version;
    _Atomic uint64_t promoted_at_ns;
    _Atomic uint64_t published_at_ns;
    _Atomic uint64_t id[4];
};

struct knhk_lane {
    /* line 0: written by the producer on every append */
    _Atomic uint64_t head;
    _Atomic uint64_t full_count;
    _Atomic uint64_t owner_pid;
    _Atomic uint64_t claims;
    uint64_t pad0[4];
    /* line 1: the producer's sample mailbox */
    _Atomic uint64_t samples_written;
    _Atomic uint64_t samples[SAMPLE_SLOTS];
    /* line 2: written by the consumer; the producer reads durable only when full */
    _Atomic uint64_t consumed;
    _Atomic uint64_t durable;
    _Atomic uint64_t corrupt_count;
    uint64_t pad2[5];
    /* line 3: reserved for later versions */
    uint64_t pad3[8];
};

_Static_assert(sizeof(knhk_record) == KNHK_RECORD_SIZE, "a record is 64 bytes");
_Static_assert(sizeof(struct knhk_ring_header) == 64, "the header is 64 bytes");
_Static_assert(sizeof(struct knhk_snapshot_desc) == 64, "the descriptor is 64 bytes");
_Static_assert(sizeof(struct knhk_lane) == LANE_SIZE, "a lane header is 256 bytes");
_Static_assert(offsetof(struct knhk_lane, samples_written) == CACHE_LINE, "line 1");
_Static_assert(offsetof(struct knhk_lane, consumed) == 2 * CACHE_LINE, "line 2");
_Static_assert(LANES_OFFSET >= SNAP_OFFSET + sizeof(struct knhk_snapshot_desc), "layout");
_Static_assert(offsetof(struct knhk_lane, head) == 0, "lane_head points at the lane");

struct knhk_ring {
    /* The producer's hot state, one cache line (the handle is line-aligned):
     * the public view (head: our lane's head, we are its only writer; limit:
     * durable as last loaded + capacity, 0 when not a producer; mask; slots;
     * lane_head; ring), then the rest of what the slow path needs. */
    knhk_producer pv;
    uint64_t capacity;
    struct knhk_lane *lane;
    uint32_t snapshot_countdown; /* snapshot reads until the next sampled one */
    int32_t lane_index;
    uint64_t tick_overhead; /* ticks of an empty begin/end pair, removed from samples */
    /* Cold state. */
    int fd;
    int role;
    bool begun;
    uint8_t *base;
    size_t size;
    struct knhk_ring_header *hdr;
    struct knhk_snapshot_desc *snap;
    uint32_t lanes;
    uint32_t rr; /* consumer: first lane of the next knhk_consume */
    uint64_t last_sample[KNHK_MAX_LANES];
    char *path; /* as opened: knhk_ring_stale compares what it names now */
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static int fail(knhk_status *st, int code, const char *field, uint64_t found, uint64_t expected) {
    st->code = code;
    st->field = field;
    st->found = found;
    st->expected = expected;
    return code;
}

static int fail_sys(knhk_status *st, const char *field) {
    st->sys_errno = errno;
    return fail(st, KNHK_ESYS, field, 0, 0);
}

static void clear_status(knhk_status *st) {
    st->code = KNHK_OK;
    st->sys_errno = 0;
    st->field = "";
    st->found = 0;
    st->expected = 0;
}

static bool is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

static uint64_t header_size_for(uint32_t lanes) {
    uint64_t end = LANES_OFFSET + (uint64_t)lanes * LANE_SIZE;
    return (end + PAGE - 1) / PAGE * PAGE;
}

static uint64_t file_size_for(uint32_t lanes, uint32_t capacity) {
    return header_size_for(lanes) + (uint64_t)lanes * capacity * KNHK_RECORD_SIZE;
}

static uint64_t realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static struct knhk_lane *lane_at(const knhk_ring *r, uint32_t i) {
    return (struct knhk_lane *)(r->base + LANES_OFFSET + (size_t)i * LANE_SIZE);
}

static knhk_record *slots_at(const knhk_ring *r, uint32_t i) {
    return (knhk_record *)(r->base + r->hdr->header_size) + (size_t)i * r->capacity;
}

const char *knhk_strerror(int code) {
    switch (code) {
    case KNHK_OK: return "ok";
    case KNHK_EFULL: return "lane full";
    case KNHK_ESYS: return "system call failed";
    case KNHK_ENOTRING: return "not a knhk ring";
    case KNHK_EVERSION: return "ring version mismatch";
    case KNHK_ELAYOUT: return "ring layout mismatch";
    case KNHK_EBUSY: return "busy";
    case KNHK_EINVAL: return "invalid argument";
    case KNHK_EROLE: return "handle lacks the role";
    case KNHK_EEMPTY: return "no snapshot published";
    case KNHK_EEXIST: return "ring file exists";
    default: return "unknown knhk code";
    }
}

/* ------------------------------------------------------------------------ */
/* Creating and opening                                                      */
/* ------------------------------------------------------------------------ */

int knhk_ring_create(const char *path, uint32_t lanes, uint32_t capacity, uint32_t mode,
                     knhk_status *st) {
    knhk_status local;
    if (st == NULL) st = &local;
    clear_status(st);
    if (path == NULL || path[0] == '\0') return fail(st, KNHK_EINVAL, "path", 0, 0);
    if (lanes < 1 || lanes > KNHK_MAX_LANES)
        return fail(st, KNHK_EINVAL, "lanes", lanes, KNHK_MAX_LANES);
    if (!is_pow2(capacity) || capacity < KNHK_MIN_CAPACITY || capacity > KNHK_MAX_CAPACITY)
        return fail(st, KNHK_EINVAL, "capacity", capacity, KNHK_MIN_CAPACITY);
    if (mode & ~07777u) return fail(st, KNHK_EINVAL, "mode", mode, 07777u);

    uint64_t hsize = header_size_for(lanes);
    uint64_t fsize = file_size_for(lanes, capacity);
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, 0) != (ssize_t)sizeof nonce) return fail_sys(st, "getrandom");
    char tmp[PATH_MAX];
    int w = snprintf(tmp, sizeof tmp, "%s.tmp.%ld.%016llx", path, (long)getpid(),
                     (unsigned long long)nonce);
    if (w < 0 || (size_t)w >= sizeof tmp) return fail(st, KNHK_EINVAL, "path", (uint64_t)w, PATH_MAX);

    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return fail_sys(st, "open");
    int rc = KNHK_OK;
    void *map = MAP_FAILED;
    if (fchmod(fd, (mode_t)mode) != 0) {
        rc = fail_sys(st, "fchmod");
        goto out;
    }
    /* Allocate every page now: on a full tmpfs a later page fault would be SIGBUS. */
    int e = posix_fallocate(fd, 0, (off_t)fsize);
    if (e != 0) {
        errno = e;
        rc = fail_sys(st, "posix_fallocate");
        goto out;
    }
    map = mmap(NULL, (size_t)hsize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        rc = fail_sys(st, "mmap");
        goto out;
    }
    struct knhk_ring_header *h = map;
    h->version = KNHK_RING_VERSION;
    h->header_size = (uint32_t)hsize;
    h->record_size = KNHK_RECORD_SIZE;
    h->lanes = lanes;
    h->capacity = capacity;
    h->flags = 0;
    uint64_t id = 0;
    while (id == 0) {
        if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id) {
            rc = fail_sys(st, "getrandom");
            goto out;
        }
    }
    h->ring_id = id;
    h->created_ns = realtime_ns();
    atomic_store_explicit(&h->tsc_hz, 0, memory_order_relaxed);
    h->file_size = fsize;
    /* Cursors, descriptor and records are zero from posix_fallocate. */
    atomic_store_explicit(&h->magic, KNHK_RING_MAGIC, memory_order_release);
    /* link() refuses an existing name: the ring appears whole, and never replaces one. */
    if (link(tmp, path) != 0) {
        if (errno == EEXIST) rc = fail(st, KNHK_EEXIST, "path", 0, 0);
        else rc = fail_sys(st, "link");
    }
out:
    if (map != MAP_FAILED) munmap(map, (size_t)hsize);
    unlink(tmp);
    close(fd);
    return rc;
}

static int validate_header(const struct knhk_ring_header *h, uint64_t st_size, knhk_status *st) {
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_relaxed);
    if (magic != KNHK_RING_MAGIC) return fail(st, KNHK_ENOTRING, "magic", magic, KNHK_RING_MAGIC);
    if (h->version != KNHK_RING_VERSION)
        return fail(st, KNHK_EVERSION, "version", h->version, KNHK_RING_VERSION);
    if (h->record_size != KNHK_RECORD_SIZE)
        return fail(st, KNHK_ELAYOUT, "record_size", h->record_size, KNHK_RECORD_SIZE);
    if (h->lanes < 1 || h->lanes > KNHK_MAX_LANES)
        return fail(st, KNHK_ELAYOUT, "lanes", h->lanes, KNHK_MAX_LANES);
    if (!is_pow2(h->capacity) || h->capacity < KNHK_MIN_CAPACITY ||
        h->capacity > KNHK_MAX_CAPACITY)
        return fail(st, KNHK_ELAYOUT, "capacity", h->capacity, KNHK_MIN_CAPACITY);
    uint64_t hsize = header_size_for(h->lanes);
    if (h->header_size != hsize) return fail(st, KNHK_ELAYOUT, "header_size", h->header_size, hsize);
    uint64_t fsize = file_size_for(h->lanes, h->capacity);
    if (h->file_size != fsize) return fail(st, KNHK_ELAYOUT, "file_size", h->file_size, fsize);
    if (st_size != fsize) return fail(st, KNHK_ELAYOUT, "file_size", st_size, fsize);
    return KNHK_OK;
}

static int ofd_lock(int fd, off_t offset) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = offset;
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static uint64_t measure_tick_overhead(void) {
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 64; i++) {
        uint64_t t0 = knhk_ticks_begin();
        uint64_t t1 = knhk_ticks_end();
        if (t1 - t0 < best) best = t1 - t0;
    }
    return best;
}

static inline uint64_t refresh_limit(knhk_ring *r);

/* Fault the lane's pages in now rather than on its first appends (a minor
 * fault costs about a microsecond).  Best effort: older kernels lack it. */
static void prefault_lane(const knhk_ring *r, uint32_t i) {
#ifdef MADV_POPULATE_WRITE
    uintptr_t hdr = (uintptr_t)lane_at(r, i) & ~(uintptr_t)(PAGE - 1);
    (void)madvise((void *)hdr, PAGE, MADV_POPULATE_WRITE);
    (void)madvise(slots_at(r, i), (size_t)r->capacity * KNHK_RECORD_SIZE, MADV_POPULATE_WRITE);
#else
    (void)r;
    (void)i;
#endif
}

static int claim_lane(knhk_ring *r, knhk_status *st) {
    for (uint32_t i = 0; i < r->lanes; i++) {
        if (ofd_lock(r->fd, LANE_LOCK_OFFSET(i)) != 0) {
            if (errno == EAGAIN || errno == EACCES) continue;
            return fail_sys(st, "fcntl");
        }
        struct knhk_lane *lane = lane_at(r, i);
        r->lane = lane;
        r->lane_index = (int32_t)i;
        r->pv.slots = slots_at(r, i);
        r->pv.lane_head = &lane->head;
        /* The previous owner (possibly killed) published its last record with
         * a release store of head; acquire makes all of it visible. */
        r->pv.head = atomic_load_explicit(&lane->head, memory_order_acquire);
        refresh_limit(r);
        atomic_store_explicit(&lane->owner_pid, (uint64_t)getpid(), memory_order_relaxed);
        atomic_fetch_add_explicit(&lane->claims, 1, memory_order_relaxed);
        prefault_lane(r, i);
        r->snapshot_countdown = 1; /* the first read is sampled */
        r->tick_overhead = measure_tick_overhead();
        return KNHK_OK;
    }
    return fail(st, KNHK_EBUSY, "lanes", r->lanes, r->lanes);
}

knhk_ring *knhk_ring_open(const char *path, int role, knhk_status *st) {
    knhk_status local;
    if (st == NULL) st = &local;
    clear_status(st);
    if (path == NULL) {
        fail(st, KNHK_EINVAL, "path", 0, 0);
        return NULL;
    }
    if (role != KNHK_ROLE_READER && role != KNHK_ROLE_PRODUCER && role != KNHK_ROLE_CONSUMER) {
        fail(st, KNHK_EINVAL, "role", (uint64_t)role, KNHK_ROLE_CONSUMER);
        return NULL;
    }
    bool writable = role != KNHK_ROLE_READER;
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) {
        fail_sys(st, "open");
        return NULL;
    }
    knhk_ring *r = NULL;
    struct stat sb;
    struct knhk_ring_header h;
    if (fstat(fd, &sb) != 0) {
        fail_sys(st, "fstat");
        goto fail;
    }
    if ((uint64_t)sb.st_size < sizeof h) {
        fail(st, KNHK_ELAYOUT, "file_size", (uint64_t)sb.st_size, sizeof h);
        goto fail;
    }
    if (pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        fail_sys(st, "pread");
        goto fail;
    }
    if (validate_header(&h, (uint64_t)sb.st_size, st) != KNHK_OK) goto fail;

    r = aligned_alloc(CACHE_LINE, (sizeof *r + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE);
    if (r == NULL) {
        fail_sys(st, "malloc");
        goto fail;
    }
    memset(r, 0, sizeof *r);
    r->path = strdup(path);
    if (r->path == NULL) {
        fail_sys(st, "malloc");
        goto fail;
    }
    r->fd = fd;
    r->role = role;
    r->lane_index = -1;
    r->size = (size_t)h.file_size;
    /* The consumer reads every lane: map it all in now (MAP_POPULATE). */
    int mflags = MAP_SHARED | (role == KNHK_ROLE_CONSUMER ? MAP_POPULATE : 0);
    void *map = mmap(NULL, r->size, writable ? PROT_READ | PROT_WRITE : PROT_READ, mflags, fd, 0);
    if (map == MAP_FAILED) {
        fail_sys(st, "mmap");
        goto fail;
    }
    r->base = map;
    r->hdr = map;
    r->snap = (struct knhk_snapshot_desc *)(r->base + SNAP_OFFSET);
    r->lanes = h.lanes;
    r->capacity = h.capacity;
    r->pv.mask = (uint64_t)h.capacity - 1;
    r->pv.ring = r;

    if (role == KNHK_ROLE_PRODUCER && claim_lane(r, st) != KNHK_OK) goto fail;
    if (role == KNHK_ROLE_CONSUMER && ofd_lock(fd, CONSUMER_LOCK_OFFSET) != 0) {
        if (errno == EAGAIN || errno == EACCES) fail(st, KNHK_EBUSY, "consumer", 1, 0);
        else fail_sys(st, "fcntl");
        goto fail;
    }
    return r;

fail:
    if (r != NULL) {
        if (r->base != NULL) munmap(r->base, r->size);
        free(r->path);
        free(r);
    }
    close(fd); /* releases any lock taken above */
    return NULL;
}

void knhk_ring_close(knhk_ring *r) {
    if (r == NULL) return;
    munmap(r->base, r->size);
    close(r->fd);
    free(r->path);
    free(r);
}

int knhk_ring_stale(const knhk_ring *r) {
    struct stat mine, named;
    if (fstat(r->fd, &mine) != 0) return KNHK_ESYS;
    if (stat(r->path, &named) != 0) return errno == ENOENT || errno == ENOTDIR ? 1 : KNHK_ESYS;
    return mine.st_dev != named.st_dev || mine.st_ino != named.st_ino;
}

uint32_t knhk_ring_lanes(const knhk_ring *r) { return r->lanes; }
uint32_t knhk_ring_capacity(const knhk_ring *r) { return (uint32_t)r->capacity; }
uint64_t knhk_ring_id(const knhk_ring *r) { return r->hdr->ring_id; }
int knhk_ring_lane(const knhk_ring *r) { return r->lane_index; }

uint64_t knhk_ring_tsc_hz(const knhk_ring *r) {
    return atomic_load_explicit(&r->hdr->tsc_hz, memory_order_relaxed);
}

int knhk_ring_set_tsc_hz(knhk_ring *r, uint64_t hz) {
    if (r->role != KNHK_ROLE_CONSUMER) return KNHK_EROLE;
    atomic_store_explicit(&r->hdr->tsc_hz, hz, memory_order_relaxed);
    return KNHK_OK;
}

/* ------------------------------------------------------------------------ */
/* Producing                                                                 */
/* ------------------------------------------------------------------------ */

static void publish_sample(knhk_ring *r, uint32_t op, uint64_t ticks, uint64_t count) {
    ticks = ticks > r->tick_overhead ? ticks - r->tick_overhead : 0;
    if (ticks > UINT32_MAX) ticks = UINT32_MAX;
    if (count > 0xffffffu) count = 0xffffffu;
    struct knhk_lane *lane = r->lane;
    /* Only this handle writes the mailbox; the consumer reads samples_written
     * with acquire, then the words (each word is atomic: never torn, at worst
     * newer than the counter says, which a sample may be). */
    uint64_t w = atomic_load_explicit(&lane->samples_written, memory_order_relaxed);
    uint64_t word = ((uint64_t)op << 56) | (count << 32) | ticks;
    atomic_store_explicit(&lane->samples[w % SAMPLE_SLOTS], word, memory_order_relaxed);
    atomic_store_explicit(&lane->samples_written, w + 1, memory_order_release);
}

/* The fast path tests a single bound: head < limit, where limit is the durable
 * cursor last loaded plus the capacity (0 on a handle that is not a producer,
 * so the test sends it to the slow path).  Reloading durable only when the
 * bound is reached keeps the consumer's cache line out of the common path. */
static inline uint64_t refresh_limit(knhk_ring *r) {
    r->pv.limit = atomic_load_explicit(&r->lane->durable, memory_order_acquire) + r->capacity;
    return r->pv.limit;
}

static inline void store_record(knhk_ring *r, uint64_t h, const knhk_record *rec) {
    knhk_record *slot = &r->pv.slots[h & r->pv.mask];
    memcpy(slot, rec, sizeof *slot);
    slot->seq = h;
    if (rec->tsc == 0) slot->tsc = knhk_ticks();
    /* Publish: every byte of the slot is visible before the new head. */
    atomic_store_explicit(&r->lane->head, h + 1, memory_order_release);
    r->pv.head = h + 1;
}

static int64_t append_slow(knhk_ring *r, const knhk_record *rec) {
    if (r->lane == NULL) return KNHK_EROLE;
    uint64_t h = r->pv.head;
    if (h >= r->pv.limit && h >= refresh_limit(r)) {
        atomic_fetch_add_explicit(&r->lane->full_count, 1, memory_order_relaxed);
        return KNHK_EFULL;
    }
    if ((h & (KNHK_SAMPLE_PERIOD - 1)) == 0) {
        uint64_t t0 = knhk_ticks_begin();
        store_record(r, h, rec);
        uint64_t t1 = knhk_ticks_end();
        publish_sample(r, KNHK_OP_APPEND, t1 - t0, 1);
    } else {
        store_record(r, h, rec);
    }
    return (int64_t)h;
}

int64_t knhk_append(knhk_ring *r, const knhk_record *rec) {
    uint64_t h = r->pv.head;
    /* Slow path: not a producer, the bound reached, or the append to sample
     * (one in KNHK_SAMPLE_PERIOD, decided from the head: no counter to store). */
    if (unlikely(h >= r->pv.limit || (h & (KNHK_SAMPLE_PERIOD - 1)) == 0))
        return append_slow(r, rec);
    store_record(r, h, rec);
    return (int64_t)h;
}

static inline int64_t append_many(knhk_ring *r, const knhk_record *recs, size_t n,
                                  uint64_t *first_seq) {
    uint64_t h = r->pv.head;
    if (r->pv.limit - h < n) refresh_limit(r); /* limit >= h always: no overflow */
    uint64_t k = r->pv.limit - h < n ? r->pv.limit - h : n;
    uint64_t stamp = 0;
    for (uint64_t i = 0; i < k; i++) {
        knhk_record *slot = &r->pv.slots[(h + i) & r->pv.mask];
        memcpy(slot, &recs[i], sizeof *slot);
        slot->seq = h + i;
        if (recs[i].tsc == 0) {
            if (stamp == 0) stamp = knhk_ticks();
            slot->tsc = stamp;
        }
    }
    if (k > 0) {
        atomic_store_explicit(&r->lane->head, h + k, memory_order_release);
        r->pv.head = h + k;
    }
    if (k < n) atomic_fetch_add_explicit(&r->lane->full_count, n - k, memory_order_relaxed);
    if (first_seq != NULL) *first_seq = h;
    return (int64_t)k;
}

int64_t knhk_append_batch(knhk_ring *r, const knhk_record *recs, size_t n, uint64_t *first_seq) {
    if (unlikely(r->lane == NULL)) return KNHK_EROLE;
    uint64_t offset = r->pv.head & (KNHK_SAMPLE_PERIOD - 1);
    if (unlikely(offset == 0 || offset + n > KNHK_SAMPLE_PERIOD)) { /* holds a multiple */
        uint64_t t0 = knhk_ticks_begin();
        int64_t k = append_many(r, recs, n, first_seq);
        uint64_t t1 = knhk_ticks_end();
        if (k > 0) publish_sample(r, KNHK_OP_APPEND, t1 - t0, (uint64_t)k);
        return k;
    }
    return append_many(r, recs, n, first_seq);
}

uint64_t knhk_durable(const knhk_ring *r) {
    if (r->lane == NULL) return 0;
    return atomic_load_explicit(&r->lane->durable, memory_order_acquire);
}

uint64_t knhk_head(const knhk_ring *r) { return r->lane == NULL ? 0 : r->pv.head; }

knhk_producer *knhk_producer_view(knhk_ring *r, uint32_t version) {
    if (r->lane == NULL || version != KNHK_RING_VERSION) return NULL;
    return &r->pv;
}

/* ------------------------------------------------------------------------ */
/* Snapshot descriptor                                                       */
/* ------------------------------------------------------------------------ */

static inline int snapshot_read_plain(const knhk_ring *r, knhk_snapshot *out) {
    struct knhk_snapshot_desc *d = r->snap;
    for (uint32_t spin = 0; spin < KNHK_SEQLOCK_SPINS; spin++) {
        uint64_t s0 = atomic_load_explicit(&d->seq, memory_order_acquire);
        if (s0 & 1u) {
            cpu_relax();
            continue;
        }
        uint64_t version = atomic_load_explicit(&d->version, memory_order_relaxed);
        uint64_t promoted = atomic_load_explicit(&d->promoted_at_ns, memory_order_relaxed);
        uint64_t published = atomic_load_explicit(&d->published_at_ns, memory_order_relaxed);
        /* Four scalars, not an array: copied out as 8-byte stores (an array on
         * the stack reloaded as 16 bytes would stall store forwarding). */
        uint64_t id0 = atomic_load_explicit(&d->id[0], memory_order_relaxed);
        uint64_t id1 = atomic_load_explicit(&d->id[1], memory_order_relaxed);
        uint64_t id2 = atomic_load_explicit(&d->id[2], memory_order_relaxed);
        uint64_t id3 = atomic_load_explicit(&d->id[3], memory_order_relaxed);
        /* The field loads complete before the second sequence load. */
        atomic_thread_fence(memory_order_acquire);
        uint64_t s1 = atomic_load_explicit(&d->seq, memory_order_relaxed);
        if (s0 != s1) continue;
        if (s0 == 0) return KNHK_EEMPTY;
        out->version = version;
        out->promoted_at_ns = promoted;
        out->published_at_ns = published;
        memcpy(out->id, &id0, 8);
        memcpy(out->id + 8, &id1, 8);
        memcpy(out->id + 16, &id2, 8);
        memcpy(out->id + 24, &id3, 8);
        return KNHK_OK;
    }
    return KNHK_EBUSY;
}

int knhk_snapshot_read(knhk_ring *r, knhk_snapshot *out) {
    if (r->lane != NULL && unlikely(--r->snapshot_countdown == 0)) {
        r->snapshot_countdown = KNHK_SAMPLE_PERIOD;
        uint64_t t0 = knhk_ticks_begin();
        int rc = snapshot_read_plain(r, out);
        uint64_t t1 = knhk_ticks_end();
        if (rc == KNHK_OK) publish_sample(r, KNHK_OP_SNAPSHOT_READ, t1 - t0, 1);
        return rc;
    }
    return snapshot_read_plain(r, out);
}

int knhk_snapshot_publish(knhk_ring *r, const knhk_snapshot *in) {
    if (r->role != KNHK_ROLE_CONSUMER) return KNHK_EROLE;
    struct knhk_snapshot_desc *d = r->snap;
    uint64_t s = atomic_load_explicit(&d->seq, memory_order_relaxed);
    if (s & 1u) s++; /* a previous writer died mid-update: finish its turn */
    atomic_store_explicit(&d->seq, s + 1, memory_order_relaxed);
    /* The odd sequence is visible before any field changes. */
    atomic_thread_fence(memory_order_release);
    uint64_t id[4];
    memcpy(id, in->id, sizeof id);
    atomic_store_explicit(&d->version, in->version, memory_order_relaxed);
    atomic_store_explicit(&d->promoted_at_ns, in->promoted_at_ns, memory_order_relaxed);
    atomic_store_explicit(&d->published_at_ns, realtime_ns(), memory_order_relaxed);
    for (int i = 0; i < 4; i++) atomic_store_explicit(&d->id[i], id[i], memory_order_relaxed);
    /* Every field is visible before the even sequence. */
    atomic_store_explicit(&d->seq, s + 2, memory_order_release);
    return KNHK_OK;
}

/* ------------------------------------------------------------------------ */
/* Consuming                                                                 */
/* ------------------------------------------------------------------------ */

int knhk_consumer_begin(knhk_ring *r, const uint64_t *start) {
    if (r->role != KNHK_ROLE_CONSUMER) return KNHK_EROLE;
    for (uint32_t i = 0; i < r->lanes; i++) {
        struct knhk_lane *lane = lane_at(r, i);
        uint64_t head = atomic_load_explicit(&lane->head, memory_order_acquire);
        uint64_t durable = atomic_load_explicit(&lane->durable, memory_order_relaxed);
        uint64_t s = start != NULL ? start[i] : durable;
        /* Below durable, producers may already have reused the slots. */
        if (s < durable || s > head) return KNHK_EINVAL;
    }
    for (uint32_t i = 0; i < r->lanes; i++) {
        struct knhk_lane *lane = lane_at(r, i);
        uint64_t durable = atomic_load_explicit(&lane->durable, memory_order_relaxed);
        uint64_t s = start != NULL ? start[i] : durable;
        atomic_store_explicit(&lane->consumed, s, memory_order_release);
        atomic_store_explicit(&lane->durable, s, memory_order_release);
        r->last_sample[i] = atomic_load_explicit(&lane->samples_written, memory_order_acquire);
    }
    r->begun = true;
    return KNHK_OK;
}

int64_t knhk_consume(knhk_ring *r, knhk_record *out, uint32_t *lanes_out, size_t max,
                     uint64_t *next) {
    if (r->role != KNHK_ROLE_CONSUMER) return KNHK_EROLE;
    if (!r->begun) return KNHK_EINVAL;
    size_t n = 0;
    uint32_t first = r->rr;
    r->rr = (r->rr + 1) % r->lanes;
    for (uint32_t k = 0; k < r->lanes; k++) {
        uint32_t i = (first + k) % r->lanes;
        struct knhk_lane *lane = lane_at(r, i);
        /* Only this handle writes consumed. */
        uint64_t c = atomic_load_explicit(&lane->consumed, memory_order_relaxed);
        if (n < max) {
            /* Acquire: the slots below head are fully written. */
            uint64_t h = atomic_load_explicit(&lane->head, memory_order_acquire);
            uint64_t avail = h - c;
            if (avail > r->capacity) avail = r->capacity; /* a producer broke the protocol */
            if (avail > max - n) avail = max - n;
            knhk_record *slots = slots_at(r, i);
            uint64_t corrupt = 0;
            for (uint64_t j = 0; j < avail; j++) {
                const knhk_record *slot = &slots[(c + j) & r->pv.mask];
                if (unlikely(slot->seq != c + j)) {
                    corrupt++;
                    continue;
                }
                memcpy(&out[n], slot, sizeof *slot);
                if (lanes_out != NULL) lanes_out[n] = i;
                n++;
            }
            if (corrupt)
                atomic_fetch_add_explicit(&lane->corrupt_count, corrupt, memory_order_relaxed);
            c += avail;
            atomic_store_explicit(&lane->consumed, c, memory_order_release);
        }
        next[i] = c;
    }
    return (int64_t)n;
}

int knhk_mark_durable(knhk_ring *r, const uint64_t *next) {
    if (r->role != KNHK_ROLE_CONSUMER) return KNHK_EROLE;
    for (uint32_t i = 0; i < r->lanes; i++) {
        uint64_t consumed = atomic_load_explicit(&lane_at(r, i)->consumed, memory_order_relaxed);
        if (next[i] > consumed) return KNHK_EINVAL; /* cannot be durable before it is read */
    }
    for (uint32_t i = 0; i < r->lanes; i++) {
        struct knhk_lane *lane = lane_at(r, i);
        uint64_t cur = atomic_load_explicit(&lane->durable, memory_order_relaxed);
        /* Release: our reads of these slots happen before a producer reuses them. */
        if (next[i] > cur) atomic_store_explicit(&lane->durable, next[i], memory_order_release);
    }
    return KNHK_OK;
}

int knhk_lane_stats_get(const knhk_ring *r, uint32_t lane_i, knhk_lane_stats *out) {
    if (lane_i >= r->lanes) return KNHK_EINVAL;
    struct knhk_lane *lane = lane_at(r, lane_i);
    out->head = atomic_load_explicit(&lane->head, memory_order_acquire);
    out->consumed = atomic_load_explicit(&lane->consumed, memory_order_relaxed);
    out->durable = atomic_load_explicit(&lane->durable, memory_order_acquire);
    out->full_count = atomic_load_explicit(&lane->full_count, memory_order_relaxed);
    out->corrupt_count = atomic_load_explicit(&lane->corrupt_count, memory_order_relaxed);
    out->owner_pid = atomic_load_explicit(&lane->owner_pid, memory_order_relaxed);
    out->claims = atomic_load_explicit(&lane->claims, memory_order_relaxed);
    return KNHK_OK;
}

int64_t knhk_samples_take(knhk_ring *r, knhk_sample *out, size_t max) {
    if (r->role != KNHK_ROLE_CONSUMER) return KNHK_EROLE;
    size_t n = 0;
    for (uint32_t i = 0; i < r->lanes && n < max; i++) {
        struct knhk_lane *lane = lane_at(r, i);
        uint64_t w = atomic_load_explicit(&lane->samples_written, memory_order_acquire);
        uint64_t s = r->last_sample[i];
        if (w - s > SAMPLE_SLOTS) s = w - SAMPLE_SLOTS;
        for (; s < w && n < max; s++) {
            uint64_t word = atomic_load_explicit(&lane->samples[s % SAMPLE_SLOTS],
                                                 memory_order_relaxed);
            out[n].lane = i;
            out[n].op = (uint32_t)(word >> 56);
            out[n].count = (word >> 32) & 0xffffffu;
            out[n].ticks = word & 0xffffffffu;
            n++;
        }
        r->last_sample[i] = s;
    }
    return (int64_t)n;
}

/* ------------------------------------------------------------------------ */
/* Ticks                                                                     */
/* ------------------------------------------------------------------------ */

uint64_t knhk_ticks_now(void) { return knhk_ticks(); }

const char *knhk_ticks_source(void) { return KNHK_TICKS_SOURCE; }

uint64_t knhk_ticks_hz_exact(void) {
#if defined(__x86_64__) || defined(__i386__)
    return 0; /* the TSC rate is not architecturally stated on every x86 CPU */
#elif defined(__aarch64__)
    uint64_t f;
    __asm__ __volatile__("mrs %0, cntfrq_el0" : "=r"(f));
    return f;
#else
    return 1000000000u;
#endif
}

/* A (ticks, ns) pair taken as close together as this CPU allows: the ticks are
 * the midpoint of two stamps around the clock read; the tightest of 8 tries. */
static void paired_reading(uint64_t *ticks, uint64_t *ns) {
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 8; i++) {
        uint64_t a = knhk_ticks_begin();
        uint64_t t = monotonic_ns();
        uint64_t b = knhk_ticks_end();
        if (b - a < best) {
            best = b - a;
            *ticks = a + (b - a) / 2;
            *ns = t;
        }
    }
}

uint64_t knhk_ticks_calibrate(uint64_t window_ns) {
    uint64_t exact = knhk_ticks_hz_exact();
    if (exact != 0) return exact;
    if (window_ns < 1000000u) window_ns = 1000000u;
    uint64_t t0, n0, t1, n1;
    paired_reading(&t0, &n0);
    struct timespec nap = {(time_t)(window_ns / 1000000000u), (long)(window_ns % 1000000000u)};
    while (nanosleep(&nap, &nap) != 0 && errno == EINTR) {
    }
    paired_reading(&t1, &n1);
    if (n1 <= n0 || t1 <= t0) return 0;
    return (uint64_t)((double)(t1 - t0) * 1e9 / (double)(n1 - n0) + 0.5);
}
