/*
 * knhk_ring.h — the knhkd hot path: a shared-memory observation ring and the
 * current-snapshot descriptor, for local producers written in any language.
 *
 * WHAT THIS IS
 *   A file (on tmpfs such as /dev/shm, or any local filesystem) that knhkd and
 *   its local producers map into memory.  Producers append fixed 64-byte
 *   observation records without a system call; knhkd (the one consumer)
 *   drains them into LMDB, then advances a durable cursor so that a producer
 *   can tell which of its records are safe.  The same file carries a 64-byte
 *   descriptor of knhkd's current knowledge snapshot, which producers read
 *   without a system call.
 *
 * FILE LAYOUT (all integers in host byte order; the ring never leaves a host)
 *   offset 0      struct knhk_ring_header   64 B, versioned; immutable after creation
 *                                           except tsc_hz
 *   offset 64     snapshot descriptor       64 B, seqlock-protected
 *   offset 256    lane headers              256 B each (4 cache lines)
 *   data_offset   records                   lanes x capacity x 64 B, 4096-aligned
 *   A file whose magic, version, record size, header size or file size differ
 *   from what this library expects is refused at open (KNHK_ENOTRING,
 *   KNHK_EVERSION, KNHK_ELAYOUT) with the field, the value found and the value
 *   expected in knhk_status: a ring is never reinterpreted.
 *
 * MULTI-PRODUCER: LANES (one producer per lane, wait-free, crash-safe)
 *   The ring is divided into `lanes` independent single-producer lanes of
 *   `capacity` records each.  Opening with KNHK_ROLE_PRODUCER claims a free lane
 *   with an open-file-description lock (fcntl F_OFD_SETLK on one byte per lane);
 *   the kernel releases that lock when the handle is closed or the process dies,
 *   however it dies, so the lane becomes free again with no timeout and no
 *   help from the consumer.  Any number of processes (and any number of threads,
 *   one handle each) may produce concurrently, up to `lanes` at once; one more
 *   gets KNHK_EBUSY.  Appending needs no atomic read-modify-write: the lane's
 *   owner is its only writer.
 *   - A handle must not be used by two threads at once, nor across fork() (the
 *     child would share the parent's lock and lane).
 *   - Records of one lane are drained in append order; there is no order
 *     between lanes (each record carries its TSC stamp).
 *
 * A RECORD IS NEVER TORN
 *   A producer writes the whole 64-byte slot, then publishes it by storing the
 *   lane head with release order; the consumer reads the head with acquire
 *   order and copies only slots below it.  A producer killed mid-write (SIGKILL
 *   at any instruction) leaves at most one slot written but unpublished: the
 *   head still excludes it, the next owner of the lane overwrites it from the
 *   first byte, and the consumer never sees it.  The consumer also checks each
 *   slot's seq against the position it reads and skips (and counts, as
 *   `corrupt`) any slot that does not match: defence against a producer that
 *   ignores this protocol, not a case that arises from it.
 *
 * BACK-PRESSURE, NEVER OVERWRITE
 *   A slot is reused only after the consumer has made the record in it durable
 *   (lane head - durable < capacity).  When a lane is full, append refuses the
 *   record (KNHK_EFULL; a batch append stores what fits and reports the count),
 *   the lane's full_count grows by the number of records refused, and nothing
 *   already appended is overwritten.  knhkd exports the sum as the metric
 *   knhk_ring_full_rejections_total.
 *
 * PRODUCING INLINE (C only; optional)
 *   knhk_append_inline(view, rec) is knhk_append without the function call,
 *   as liburing's inline submission helpers are: the caller gets the producer
 *   view of its handle once (knhk_producer_view: head, cached limit, mask,
 *   slots, the lane's shared head, the handle) and the header's static inline
 *   function does the common append itself: room below the cached limit and
 *   not the sequence to sample -> copy the 64 bytes into the slot, assign seq,
 *   stamp tsc when 0, release-store the lane head.  Every other case (the
 *   cached limit reached, so durable must be reloaded or the record refused
 *   and counted in full_count; the sampled append) calls knhk_append.  So every
 *   rule here holds unchanged, whichever of knhk_append, knhk_append_batch and
 *   knhk_append_inline a producer mixes: one writer per lane, publish by a
 *   release store of head after the whole slot, never reuse a slot that is not
 *   durable, 1 sampled append in KNHK_SAMPLE_PERIOD, full_count.  The view is
 *   part of the handle (not a copy), so the same thread rule applies.  The
 *   view's layout is compiled into the caller: it belongs to the ABI named by
 *   KNHK_RING_VERSION (changing it means a new version), and
 *   knhk_producer_view(r, KNHK_RING_VERSION) returns NULL to a program built
 *   against another version.  A caller never writes the view.
 *
 * CURSORS (per lane, 64-bit, never wrap in practice)
 *   head      next sequence the producer will write; records [.., head) exist.
 *   consumed  next sequence the consumer will read (informational: what knhkd
 *             has taken but may not have committed yet).
 *   durable   every record with seq < durable is committed to knhkd's LMDB,
 *             durably, with its receipt.  A producer may discard its own copy
 *             of a record once knhk_durable() > its seq.  knhkd stores the same
 *             positions in LMDB in the transaction that commits the records, and
 *             only after that commit advances `durable` here; on restart it
 *             resumes from the LMDB copy, so a record is ingested exactly once.
 *
 * MEMORY ORDERING (C11 atomics; all shared cursors are lock-free 64-bit atomics)
 *   producer: slot stores ... ; store(head, h+1, release)
 *   consumer: h = load(head, acquire); copy slots [consumed, h) ; store(consumed, release)
 *   consumer: after the LMDB commit: store(durable, d, release)
 *   producer: d = load(durable, acquire) before reusing a slot below d + capacity,
 *             so the consumer's reads of that slot happened before the overwrite.
 *   The producer caches the last durable value it saw and reloads it only when
 *   the lane looks full, so an append touches no consumer-owned cache line.
 *
 * SNAPSHOT DESCRIPTOR (one writer: the consumer; any number of readers)
 *   A seqlock (H.-J. Boehm, "Can seqlocks get along with programming language
 *   memory models?", 2012): the writer makes the sequence odd (relaxed), issues
 *   a release fence, stores the fields (relaxed atomics), then makes the
 *   sequence even with release order; a reader loads the sequence (acquire),
 *   the fields (relaxed), issues an acquire fence, reloads the sequence and
 *   retries while it was odd or changed.  Every field is an atomic word, so
 *   there is no data race even while a reader retries.  A writer killed
 *   mid-update leaves the sequence odd: readers give up after
 *   KNHK_SEQLOCK_SPINS attempts with KNHK_EBUSY instead of spinning forever,
 *   and the next writer (knhkd restarted) repairs it.
 *
 * TICKS
 *   One tick is one increment of the CPU's time-stamp counter (RDTSC) on x86-64,
 *   of CNTVCT_EL0 on AArch64, and one nanosecond of CLOCK_MONOTONIC elsewhere
 *   (KNHK_TICKS_SOURCE names which).  knhkd measures the tick frequency at start
 *   and stores it in the header (knhk_ring_tsc_hz) so producers can convert.
 *   Producers time their own appends and snapshot reads, sampled, into a
 *   per-lane mailbox; knhkd exports the samples as the histogram
 *   knhk_observation_append_ticks{op}.  Sampled: the append call that stores
 *   a lane sequence divisible by KNHK_SAMPLE_PERIOD (decided from the head the
 *   append loads anyway, so unsampled appends store no counter; a batch call
 *   counts as one, its ticks divided by its records), and one snapshot read in
 *   KNHK_SAMPLE_PERIOD per producer handle (the first one included).  A sample
 *   is one call between knhk_ticks_begin() and knhk_ticks_end(), less the cost
 *   of that pair measured at open; a single append is near the counter's
 *   resolution (steps of ~25 ticks on the development machines).
 *   knhk_append_inline hands the append to sample to knhk_append: sampling is
 *   the same whichever way a producer appends.
 *
 * TRUST
 *   Every producer maps the file writable, so a producer can corrupt the ring
 *   (but not knhkd's LMDB: knhkd validates every record it drains).  Give
 *   access (file mode, directory) only to trusted local producers.
 *
 * Requires Linux (F_OFD_SETLK) and a C11 compiler.
 */
#ifndef KNHK_RING_H
#define KNHK_RING_H

#include <stddef.h>
#include <stdint.h>
#ifndef __cplusplus
#include <stdatomic.h> /* knhk_append_inline */
#include <string.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
#elif !defined(__aarch64__)
#include <time.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Versioning and limits                                                     */
/* ------------------------------------------------------------------------ */

#define KNHK_RING_MAGIC 0x474e49524b484e4bULL /* "KNHKRING" as bytes on a little-endian host */
#define KNHK_RING_VERSION 1u
#define KNHK_RECORD_SIZE 64u
#define KNHK_MAX_LANES 64u
#define KNHK_MIN_CAPACITY 64u          /* records per lane */
#define KNHK_MAX_CAPACITY (1u << 24)   /* records per lane */
#define KNHK_SAMPLE_PERIOD 1024u       /* see TICKS above */
#define KNHK_SEQLOCK_SPINS (1u << 20)  /* snapshot read attempts before KNHK_EBUSY */

/* ------------------------------------------------------------------------ */
/* Records                                                                   */
/* ------------------------------------------------------------------------ */

/* Sector codes (knhkd's closed set of sectors). 0 is invalid on purpose, so a
 * zeroed record is refused. */
enum knhk_sector {
    KNHK_SECTOR_FINANCE = 1,
    KNHK_SECTOR_HEALTHCARE = 2,
    KNHK_SECTOR_MANUFACTURING = 3,
    KNHK_SECTOR_LOGISTICS = 4,
    KNHK_SECTOR_GENERIC = 5
};

/* How the payload is read; becomes the observation's JSON `value`:
 *   NONE       null                                  (len 0)
 *   I64        a number: payload.i64[0]              (len 1)
 *   F64        a number: payload.f64[0], finite      (len 1)
 *   TEXT       a string: len bytes of UTF-8          (len 0..40)
 *   BYTES      a lowercase hex string of len bytes   (len 0..40)
 *   I64_ARRAY  an array of payload.i64[0..len)       (len 0..5)
 *   F64_ARRAY  an array of payload.f64[0..len), finite (len 0..5)
 * knhkd refuses (and counts) a record whose kind, len, flags, sector or UTF-8
 * is invalid, or that fails its sector's SHACL shapes (as HTTP input would;
 * a record carries no metadata); the event code needs no registration (see
 * knhkd's [ring] event_codes: unmapped codes become the event type
 * "ring.<code>"). */
enum knhk_value_kind {
    KNHK_VALUE_NONE = 0,
    KNHK_VALUE_I64 = 1,
    KNHK_VALUE_F64 = 2,
    KNHK_VALUE_TEXT = 3,
    KNHK_VALUE_BYTES = 4,
    KNHK_VALUE_I64_ARRAY = 5,
    KNHK_VALUE_F64_ARRAY = 6
};

#define KNHK_PAYLOAD_BYTES 40u
#define KNHK_PAYLOAD_WORDS 5u

typedef struct knhk_record {
    uint64_t seq;    /* lane sequence; assigned by append (the caller's value is ignored) */
    uint64_t tsc;    /* the producer's tick stamp; 0 = append stamps it with knhk_ticks() */
    uint16_t sector; /* enum knhk_sector */
    uint16_t event;  /* event code; knhkd maps it to an event type */
    uint8_t kind;    /* enum knhk_value_kind */
    uint8_t len;     /* elements (I64, F64) or bytes (TEXT, BYTES) */
    uint16_t flags;  /* reserved: must be 0 */
    union {
        int64_t i64[KNHK_PAYLOAD_WORDS];
        double f64[KNHK_PAYLOAD_WORDS];
        uint8_t bytes[KNHK_PAYLOAD_BYTES];
    } payload;
} knhk_record;

/* ------------------------------------------------------------------------ */
/* Status                                                                    */
/* ------------------------------------------------------------------------ */

enum knhk_code {
    KNHK_OK = 0,
    KNHK_EFULL = -1,    /* the lane is full: back-pressure, retry after knhkd drains */
    KNHK_ESYS = -2,     /* a system call failed: sys_errno says why */
    KNHK_ENOTRING = -3, /* the file is not a knhk ring (magic) */
    KNHK_EVERSION = -4, /* the ring's header version is not KNHK_RING_VERSION */
    KNHK_ELAYOUT = -5,  /* a header field disagrees with the file or this library */
    KNHK_EBUSY = -6,    /* no free lane / a consumer is attached / descriptor mid-update */
    KNHK_EINVAL = -7,   /* an argument is out of range */
    KNHK_EROLE = -8,    /* the handle was not opened in the role this call needs */
    KNHK_EEMPTY = -9,   /* no snapshot descriptor has been published yet */
    KNHK_EEXIST = -10   /* create: the file already exists */
};

typedef struct knhk_status {
    int code;          /* enum knhk_code */
    int sys_errno;     /* errno of the failed system call (KNHK_ESYS) */
    const char *field; /* the header field or argument at fault, or "" */
    uint64_t found;    /* the value found in the file (or given) */
    uint64_t expected; /* the value this library expects */
} knhk_status;

/* A static, human-readable name for a knhk_code. */
const char *knhk_strerror(int code);

/* ------------------------------------------------------------------------ */
/* Opening                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct knhk_ring knhk_ring; /* an open handle; private */

enum knhk_role {
    KNHK_ROLE_READER = 0,   /* snapshot reads and statistics; opened read-only */
    KNHK_ROLE_PRODUCER = 1, /* claims one free lane for appends */
    KNHK_ROLE_CONSUMER = 2  /* knhkd: drains, advances durable, publishes the snapshot */
};

/* Create a ring file atomically: it is built under a temporary name and
 * linked into place, so an opener sees either no file or a complete one.
 * `capacity` (records per lane) is a power of two in [KNHK_MIN_CAPACITY,
 * KNHK_MAX_CAPACITY]; `lanes` is 1..KNHK_MAX_LANES; `mode` is applied exactly
 * (not masked by the umask).  Space is allocated up front (posix_fallocate),
 * so a full tmpfs fails here with ESYS/ENOSPC rather than with SIGBUS later.
 * Returns KNHK_OK, or KNHK_EEXIST when `path` exists (it is left untouched). */
int knhk_ring_create(const char *path, uint32_t lanes, uint32_t capacity, uint32_t mode,
                     knhk_status *st);

/* Open and validate a ring.  NULL on failure, with *st saying why. */
knhk_ring *knhk_ring_open(const char *path, int role, knhk_status *st);

/* Unmap and close; releases the lane or consumer lock.  NULL is accepted. */
void knhk_ring_close(knhk_ring *r);

uint32_t knhk_ring_lanes(const knhk_ring *r);
uint32_t knhk_ring_capacity(const knhk_ring *r);
uint64_t knhk_ring_id(const knhk_ring *r);      /* random, fixed at creation */
uint64_t knhk_ring_tsc_hz(const knhk_ring *r);  /* 0 until knhkd has measured it */
int knhk_ring_lane(const knhk_ring *r);         /* the producer's lane, or -1 */

/* Whether the path this handle was opened with still names the file it
 * mapped: 0 it does; 1 it does not (removed, or replaced by a new ring, e.g.
 * one knhkd created after the old file was deleted): appends would go to a
 * ring nobody drains, so close and reopen; KNHK_ESYS (errno set) on another
 * error.  Two system calls: call it when appends keep failing or durable stops
 * advancing, not per append. */
int knhk_ring_stale(const knhk_ring *r);

/* ------------------------------------------------------------------------ */
/* Producing (KNHK_ROLE_PRODUCER)                                            */
/* ------------------------------------------------------------------------ */

/* Append one record; returns its lane sequence (>= 0), KNHK_EFULL or
 * KNHK_EROLE.  The record is copied; `seq` is assigned; `tsc` is stamped when 0. */
int64_t knhk_append(knhk_ring *r, const knhk_record *rec);

/* Append up to n records in order; returns how many were appended (0..n) or
 * KNHK_EROLE.  Fewer than n means the lane filled: the rest were refused and
 * counted.  *first_seq (may be NULL) receives the first one's sequence.  One
 * tick stamp is read per call for the records whose tsc is 0. */
int64_t knhk_append_batch(knhk_ring *r, const knhk_record *recs, size_t n, uint64_t *first_seq);

/* The lane's durable cursor: records with seq < this are committed by knhkd. */
uint64_t knhk_durable(const knhk_ring *r);

/* The lane's head: the sequence the next append will get. */
uint64_t knhk_head(const knhk_ring *r);

/* ------------------------------------------------------------------------ */
/* Snapshot descriptor (read: any role; publish: KNHK_ROLE_CONSUMER)          */
/* ------------------------------------------------------------------------ */

typedef struct knhk_snapshot {
    uint64_t version;         /* snapshot version (genesis = 0) */
    uint64_t promoted_at_ns;  /* when it became current, ns since the Unix epoch */
    uint64_t published_at_ns; /* when knhkd wrote this descriptor */
    uint8_t id[32];           /* the snapshot id: SHA-256 of its canonical N-Triples */
} knhk_snapshot;

/* KNHK_OK, KNHK_EEMPTY (nothing published yet) or KNHK_EBUSY (see above). */
int knhk_snapshot_read(knhk_ring *r, knhk_snapshot *out);
int knhk_snapshot_publish(knhk_ring *r, const knhk_snapshot *in);

/* ------------------------------------------------------------------------ */
/* Consuming (KNHK_ROLE_CONSUMER; knhkd)                                     */
/* ------------------------------------------------------------------------ */

/* Start draining at start[lane] for every lane (NULL: at each lane's durable
 * cursor); sets consumed and durable to it.  Each start must lie within
 * [durable, head] of its lane, else KNHK_EINVAL naming the bound. */
int knhk_consumer_begin(knhk_ring *r, const uint64_t *start);

/* Copy up to `max` published records into out[], lanes visited round-robin
 * from a rotating first lane; lanes_out[i] (may be NULL) gets out[i]'s lane.
 * next[lane] receives, for every lane, the position after the last record
 * taken: what to store with the commit and then pass to knhk_mark_durable.
 * Returns the number of records copied (a negative knhk_code on error). */
int64_t knhk_consume(knhk_ring *r, knhk_record *out, uint32_t *lanes_out, size_t max,
                     uint64_t *next);

/* After the records before next[lane] are committed: advance durable (never
 * backwards). */
int knhk_mark_durable(knhk_ring *r, const uint64_t *next);

/* Store the measured tick frequency in the header for producers. */
int knhk_ring_set_tsc_hz(knhk_ring *r, uint64_t hz);

typedef struct knhk_lane_stats {
    uint64_t head, consumed, durable;
    uint64_t full_count;    /* records refused because the lane was full */
    uint64_t corrupt_count; /* slots skipped by the consumer (seq mismatch) */
    uint64_t owner_pid;     /* last process that claimed the lane (0: never) */
    uint64_t claims;        /* times the lane was claimed */
} knhk_lane_stats;

int knhk_lane_stats_get(const knhk_ring *r, uint32_t lane, knhk_lane_stats *out);

enum knhk_op { KNHK_OP_APPEND = 1, KNHK_OP_SNAPSHOT_READ = 2 };

typedef struct knhk_sample {
    uint32_t lane;
    uint32_t op;    /* enum knhk_op */
    uint64_t ticks; /* ticks of the whole sampled call, measurement overhead removed */
    uint64_t count; /* records appended by it (1 for a snapshot read) */
} knhk_sample;

/* Samples published by producers since the last call (at most 7 per lane are
 * kept between calls; older ones are overwritten: they are samples). */
int64_t knhk_samples_take(knhk_ring *r, knhk_sample *out, size_t max);

/* ------------------------------------------------------------------------ */
/* Ticks                                                                     */
/* ------------------------------------------------------------------------ */

#if defined(__x86_64__) || defined(__i386__)
#define KNHK_TICKS_SOURCE "rdtsc"
/* A raw stamp: cheapest, may be reordered with neighbouring instructions. */
static inline uint64_t knhk_ticks(void) { return __rdtsc(); }
/* Begin an interval: earlier instructions have completed (lfence; rdtsc). */
static inline uint64_t knhk_ticks_begin(void) {
    _mm_lfence();
    return __rdtsc();
}
/* End an interval: the measured instructions have completed (rdtscp), and
 * later ones have not started (lfence). */
static inline uint64_t knhk_ticks_end(void) {
    unsigned int aux;
    uint64_t t = __rdtscp(&aux);
    _mm_lfence();
    return t;
}
#elif defined(__aarch64__)
#define KNHK_TICKS_SOURCE "cntvct"
static inline uint64_t knhk_ticks(void) {
    uint64_t t;
    __asm__ __volatile__("mrs %0, cntvct_el0" : "=r"(t));
    return t;
}
static inline uint64_t knhk_ticks_begin(void) {
    uint64_t t;
    __asm__ __volatile__("isb; mrs %0, cntvct_el0" : "=r"(t)::"memory");
    return t;
}
static inline uint64_t knhk_ticks_end(void) {
    uint64_t t;
    __asm__ __volatile__("isb; mrs %0, cntvct_el0; isb" : "=r"(t)::"memory");
    return t;
}
#else
#define KNHK_TICKS_SOURCE "clock_monotonic"
static inline uint64_t knhk_ticks(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static inline uint64_t knhk_ticks_begin(void) { return knhk_ticks(); }
static inline uint64_t knhk_ticks_end(void) { return knhk_ticks(); }
#endif

/* Out-of-line versions for bindings that cannot use static inline functions. */
uint64_t knhk_ticks_now(void);
const char *knhk_ticks_source(void);
/* The tick frequency when the hardware states it exactly (AArch64 CNTFRQ_EL0,
 * 1e9 for CLOCK_MONOTONIC), else 0: the caller must calibrate. */
uint64_t knhk_ticks_hz_exact(void);
/* Measure the tick frequency against CLOCK_MONOTONIC over about window_ns. */
uint64_t knhk_ticks_calibrate(uint64_t window_ns);

/* ------------------------------------------------------------------------ */
/* Producing inline (C only): the producer view                              */
/* ------------------------------------------------------------------------ */

/* The producer view: see PRODUCING INLINE at the top.  The first part of a
 * producer handle (one cache line with the rest of the append state), not a
 * copy; written only by the library and knhk_append_inline.  Its layout is part
 * of the ABI that KNHK_RING_VERSION names. */
#ifndef __cplusplus
typedef struct knhk_producer {
    uint64_t head;               /* the sequence the next append gets (the lane head) */
    uint64_t limit;              /* appends need head < limit: durable as last loaded
                                  * + capacity (reloaded by the library when reached) */
    uint64_t mask;               /* capacity - 1: sequence s lives in slots[s & mask] */
    knhk_record *slots;          /* the lane's records */
    _Atomic uint64_t *lane_head; /* the lane's shared head, published with release order */
    knhk_ring *ring;             /* the handle: the out-of-line path */
} knhk_producer;

/* The view of a KNHK_ROLE_PRODUCER handle; pass KNHK_RING_VERSION.  NULL for a
 * handle of another role, or when `version` is not the library's (the view's
 * layout would differ).  It lives in the handle: valid until knhk_ring_close,
 * used by the handle's one thread. */
knhk_producer *knhk_producer_view(knhk_ring *r, uint32_t version);

#if defined(__GNUC__)
#define KNHK_UNLIKELY_(x) __builtin_expect(!!(x), 0)
#else
#define KNHK_UNLIKELY_(x) (x)
#endif

/* knhk_append, inline: the same result, guarantees and accounting.  The common
 * case (room below the cached limit, not the sequence to sample) is done here:
 * copy the record into its slot, assign seq, stamp tsc when 0, publish with a
 * release store of the lane head.  Anything else (the cached limit reached:
 * reload durable, or refuse with KNHK_EFULL and count it in full_count; the
 * one append in KNHK_SAMPLE_PERIOD that is timed) is knhk_append's. */
static inline int64_t knhk_append_inline(knhk_producer *p, const knhk_record *rec) {
    uint64_t h = p->head;
    if (KNHK_UNLIKELY_(h >= p->limit || (h & (KNHK_SAMPLE_PERIOD - 1u)) == 0))
        return knhk_append(p->ring, rec);
    knhk_record *slot = &p->slots[h & p->mask];
    memcpy(slot, rec, sizeof *slot);
    slot->seq = h;
    if (rec->tsc == 0) slot->tsc = knhk_ticks();
    /* Publish: every byte of the slot is visible before the new head. */
    atomic_store_explicit(p->lane_head, h + 1, memory_order_release);
    p->head = h + 1;
    return (int64_t)h;
}
#endif /* !__cplusplus */

#ifdef __cplusplus
}
#endif

#endif /* KNHK_RING_H */
