/*
 * ring_bench.c — tick figures of the ring's hot operations (run by bench/ring.py).
 *
 *   ring_bench timing PATH BLOCKS [CAPACITY]
 *                          producer on CPU 0, consumer draining on CPU 1;
 *                          prints one JSON object
 *   ring_bench callgrind OP PATH CALLS
 *                          single thread, for valgrind --tool=callgrind
 *                          --toggle-collect=<function of OP>; OP is append |
 *                          append_unstamped | append_inline | batch | snapshot |
 *                          floor | block_call | block_inline (CALLS / 64 loops of
 *                          64 appends: the caller's loop and call included)
 *
 * Timing: one sample is a block of 64 operations between knhk_ticks_begin()
 * (lfence; rdtsc) and knhk_ticks_end() (rdtscp; lfence), divided by 64; the TSC
 * here advances in steps of ~25 ticks, so a single append is below its
 * resolution.  Reported raw (the begin/end pair's own cost, also reported,
 * is included: ~1 tick per operation).  Appends are of records stamped by the
 * caller (the tsc field set), unless named "unstamped" (append reads the TSC);
 * "append_inline" is knhk_append_inline through the producer view.
 *
 * The floor: the same run also times blocks of 64 bare 64-byte stores — memcpy
 * of the same caller records into the slots of a second lane of the same ring
 * file (claimed by a second producer handle, drained by the same consumer),
 * at that lane's head, where its next appends go.  Those 64 records are then
 * published, untimed, by knhk_append_batch, so the consumer reads the floor's
 * slots as it reads the measured lane's: both lanes see the same memory, cache
 * and coherence traffic.  A floor block precedes each timed append block (4 per
 * round: the two lanes advance at the same rate) in the same loop, so both see
 * the same machine noise.  No append can cost less than storing its 64 bytes:
 * a target below the floor is out of reach on the machine that measured it.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "knhk_ring.h"

#define BLOCK 64
static uint32_t CAPACITY = 1u << 16;

static atomic_int stop_consumer;

static void pin(int cpu) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 2) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((size_t)cpu % (size_t)n, &set);
    (void)sched_setaffinity(0, sizeof set, &set);
}

static void *consumer_main(void *arg) {
    knhk_ring *c = arg;
    static knhk_record out[4096];
    uint64_t next[KNHK_MAX_LANES];
    knhk_snapshot snap;
    memset(&snap, 0, sizeof snap);
    pin(1);
    struct timespec nap = {0, 1000000}; /* 1 ms */
    for (uint64_t i = 0; !atomic_load_explicit(&stop_consumer, memory_order_relaxed); i++) {
        /* Like knhkd's drain: take a batch, then go away while it is decoded
         * and committed (milliseconds in knhkd; a 1 ms sleep here), rather than
         * spin on the producer's cache lines. */
        int64_t n = knhk_consume(c, out, NULL, 4096, next);
        if (n >= 0) knhk_mark_durable(c, next);
        nanosleep(&nap, NULL);
        if (i % 1024 == 0) { /* knhkd publishes rarely: on promotion */
            snap.version = i;
            knhk_snapshot_publish(c, &snap);
        }
    }
    return NULL;
}

/* Outside the timed region: let the consumer make room, so that a block
 * measures appends that succeed (a full lane is measured by `full`). */
static void wait_room(knhk_ring *p) {
    while (knhk_head(p) - knhk_durable(p) > CAPACITY / 2) sched_yield();
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void summary(const char *name, double *v, size_t n, int last) {
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    printf("  \"%s\": {\"p50\": %.3f, \"p99\": %.3f, \"min\": %.3f, \"mean\": %.3f, \"blocks\": %zu}%s\n",
           name, v[n / 2], v[(size_t)((double)n * 0.99)], v[0], sum / (double)n, n, last ? "" : ",");
}

static void fill(knhk_record *recs, size_t n, uint64_t tsc) {
    for (size_t i = 0; i < n; i++) {
        memset(&recs[i], 0, sizeof recs[i]);
        recs[i].tsc = tsc;
        recs[i].sector = KNHK_SECTOR_MANUFACTURING;
        recs[i].event = 1;
        recs[i].kind = KNHK_VALUE_F64;
        recs[i].len = 1;
        recs[i].payload.f64[0] = 21.5 + (double)i;
    }
}

static knhk_ring *open_pair(const char *path, knhk_ring **consumer) {
    knhk_status st;
    unlink(path);
    /* Two lanes: the measured producer's, and the floor's (see the top). */
    if (knhk_ring_create(path, 2, CAPACITY, 0600, &st) != KNHK_OK) {
        fprintf(stderr, "create %s: %s (%s)\n", path, knhk_strerror(st.code), st.field);
        exit(2);
    }
    *consumer = knhk_ring_open(path, KNHK_ROLE_CONSUMER, &st);
    if (*consumer == NULL || knhk_consumer_begin(*consumer, NULL) != KNHK_OK) exit(2);
    knhk_ring *p = knhk_ring_open(path, KNHK_ROLE_PRODUCER, &st);
    if (p == NULL) exit(2);
    return p;
}

/* The floor: 64 bare 64-byte stores of the caller's records into the next
 * slots of the floor lane (above its head: unpublished, so the consumer never
 * reads them; within durable + capacity: wait_room made room).  Not inlined,
 * so that the loop is the one timed here whatever the caller around it. */
__attribute__((noinline)) static void floor_stores(knhk_producer *fv, const knhk_record *recs) {
    uint64_t h = fv->head;
    for (uint64_t i = 0; i < BLOCK; i++)
        memcpy(&fv->slots[(h + i) & fv->mask], &recs[i], sizeof recs[i]);
}

/* One floor block, timed; then the same records appended (untimed) so the
 * lane advances and is drained like the measured one. */
static double floor_block(knhk_ring *f, knhk_producer *fv, const knhk_record *recs,
                          uint64_t *full) {
    wait_room(f);
    uint64_t t0 = knhk_ticks_begin();
    floor_stores(fv, recs);
    uint64_t t1 = knhk_ticks_end();
    *full += (uint64_t)(BLOCK - knhk_append_batch(f, recs, BLOCK, NULL));
    return (double)(t1 - t0) / BLOCK;
}

static int timing(const char *path, size_t blocks) {
    knhk_ring *c;
    knhk_ring *p = open_pair(path, &c);
    knhk_status st;
    knhk_ring *f = knhk_ring_open(path, KNHK_ROLE_PRODUCER, &st); /* the floor's lane */
    if (f == NULL) return 2;
    knhk_producer *pv = knhk_producer_view(p, KNHK_RING_VERSION);
    knhk_producer *fv = knhk_producer_view(f, KNHK_RING_VERSION);
    if (pv == NULL || fv == NULL) return 2;
    pthread_t th;
    if (pthread_create(&th, NULL, consumer_main, c) != 0) return 2;
    pin(0);
    knhk_record recs[BLOCK];
    double *single = calloc(blocks, sizeof(double));
    double *inl = calloc(blocks, sizeof(double));
    double *unstamped = calloc(blocks, sizeof(double));
    double *batch = calloc(blocks, sizeof(double));
    double *snapr = calloc(blocks, sizeof(double));
    double *empty = calloc(blocks, sizeof(double));
    double *flo = calloc(4 * blocks, sizeof(double));
    if (!single || !inl || !unstamped || !batch || !snapr || !empty || !flo) return 2;
    uint64_t full = 0;
    knhk_snapshot snap;
    /* Warm up: fault pages, train branches. */
    fill(recs, BLOCK, 1);
    for (size_t b = 0; b < 2000; b++) {
        wait_room(p);
        for (int i = 0; i < BLOCK; i++) full += knhk_append(p, &recs[i]) < 0;
        for (int i = 0; i < BLOCK; i++) full += knhk_append_inline(pv, &recs[i]) < 0;
        (void)floor_block(f, fv, recs, &full);
    }

    size_t nf = 0;
    for (size_t b = 0; b < blocks; b++) {
        uint64_t t0 = knhk_ticks_begin();
        uint64_t t1 = knhk_ticks_end();
        empty[b] = (double)(t1 - t0) / BLOCK;

        fill(recs, BLOCK, knhk_ticks()); /* the caller's stamp, outside the timing */
        /* The call and the inline path, in alternating order from round to round. */
        for (int k = 0; k < 2; k++) {
            flo[nf++] = floor_block(f, fv, recs, &full);
            wait_room(p);
            if ((b + (size_t)k) % 2 == 0) {
                t0 = knhk_ticks_begin();
                for (int i = 0; i < BLOCK; i++) full += knhk_append(p, &recs[i]) < 0;
                t1 = knhk_ticks_end();
                single[b] = (double)(t1 - t0) / BLOCK;
            } else {
                t0 = knhk_ticks_begin();
                for (int i = 0; i < BLOCK; i++) full += knhk_append_inline(pv, &recs[i]) < 0;
                t1 = knhk_ticks_end();
                inl[b] = (double)(t1 - t0) / BLOCK;
            }
        }

        flo[nf++] = floor_block(f, fv, recs, &full);
        wait_room(p);
        fill(recs, BLOCK, 0);
        t0 = knhk_ticks_begin();
        for (int i = 0; i < BLOCK; i++) full += knhk_append(p, &recs[i]) < 0;
        t1 = knhk_ticks_end();
        unstamped[b] = (double)(t1 - t0) / BLOCK;

        fill(recs, BLOCK, knhk_ticks());
        flo[nf++] = floor_block(f, fv, recs, &full);
        wait_room(p);
        t0 = knhk_ticks_begin();
        int64_t got = knhk_append_batch(p, recs, BLOCK, NULL);
        t1 = knhk_ticks_end();
        full += (uint64_t)(BLOCK - got);
        batch[b] = (double)(t1 - t0) / BLOCK;

        t0 = knhk_ticks_begin();
        for (int i = 0; i < BLOCK; i++) knhk_snapshot_read(p, &snap);
        t1 = knhk_ticks_end();
        snapr[b] = (double)(t1 - t0) / BLOCK;
    }
    atomic_store(&stop_consumer, 1);
    pthread_join(th, NULL);
    uint64_t hz = knhk_ticks_calibrate(100000000u);
    printf("{\n  \"ticks_source\": \"%s\",\n  \"tsc_hz\": %llu,\n  \"full\": %llu,\n",
           knhk_ticks_source(), (unsigned long long)hz, (unsigned long long)full);
    summary("empty_block_per_op", empty, blocks, 0);
    summary("floor", flo, nf, 0);
    summary("append", single, blocks, 0);
    summary("append_inline", inl, blocks, 0);
    summary("append_unstamped", unstamped, blocks, 0);
    summary("append_batch64_per_record", batch, blocks, 0);
    summary("snapshot_read", snapr, blocks, 1);
    printf("}\n");
    knhk_ring_close(f);
    knhk_ring_close(p);
    knhk_ring_close(c);
    unlink(path);
    return 0;
}

/* Named, not inlined: callgrind counts what runs between entry and return. */
__attribute__((noinline)) static int64_t bench_append_inline(knhk_producer *pv,
                                                             const knhk_record *rec) {
    return knhk_append_inline(pv, rec);
}

__attribute__((noinline)) static void bench_floor_store(knhk_producer *pv, const knhk_record *rec) {
    memcpy(&pv->slots[pv->head & pv->mask], rec, sizeof *rec);
}

/* A caller's loop of 64 appends, the call (or its absence) included. */
__attribute__((noinline)) static int64_t bench_block_call(knhk_ring *p, const knhk_record *recs) {
    int64_t full = 0;
    for (int i = 0; i < BLOCK; i++) full += knhk_append(p, &recs[i]) < 0;
    return full;
}

__attribute__((noinline)) static int64_t bench_block_inline(knhk_producer *pv,
                                                            const knhk_record *recs) {
    int64_t full = 0;
    for (int i = 0; i < BLOCK; i++) full += knhk_append_inline(pv, &recs[i]) < 0;
    return full;
}

static int callgrind(const char *op, const char *path, size_t calls) {
    knhk_ring *c;
    knhk_ring *p = open_pair(path, &c);
    knhk_producer *pv = knhk_producer_view(p, KNHK_RING_VERSION);
    if (pv == NULL) return 2;
    static knhk_record out[4096];
    uint64_t next[KNHK_MAX_LANES];
    knhk_record recs[BLOCK];
    knhk_snapshot snap;
    memset(&snap, 0, sizeof snap);
    knhk_snapshot_publish(c, &snap);
    int unstamped = strcmp(op, "append_unstamped") == 0;
    fill(recs, BLOCK, unstamped ? 0 : 12345);
    for (size_t i = 0; i < calls; i++) {
        const knhk_record *rec = &recs[i % BLOCK];
        if (strcmp(op, "snapshot") == 0) {
            knhk_snapshot_read(p, &snap);
            continue;
        }
        if (strcmp(op, "batch") == 0) knhk_append_batch(p, recs, BLOCK, NULL);
        else if (strcmp(op, "block_call") == 0) {
            if (i % BLOCK == 0) bench_block_call(p, recs);
        } else if (strcmp(op, "block_inline") == 0) {
            if (i % BLOCK == 0) bench_block_inline(pv, recs);
        } else if (strcmp(op, "append_inline") == 0) bench_append_inline(pv, rec);
        else if (strcmp(op, "floor") == 0) {
            bench_floor_store(pv, rec); /* then appended, so that the slots move on */
            knhk_append(p, rec);
        } else knhk_append(p, rec);
        if (i % 512 == 511) { /* drain outside the measured function */
            while (knhk_consume(c, out, NULL, 4096, next) > 0) knhk_mark_durable(c, next);
        }
    }
    knhk_ring_close(p);
    knhk_ring_close(c);
    unlink(path);
    return 0;
}

int main(int argc, char **argv) {
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "timing") == 0) {
        if (argc == 5) CAPACITY = (uint32_t)strtoul(argv[4], NULL, 10);
        return timing(argv[2], (size_t)strtoull(argv[3], NULL, 10));
    }
    if (argc == 5 && strcmp(argv[1], "callgrind") == 0)
        return callgrind(argv[2], argv[3], (size_t)strtoull(argv[4], NULL, 10));
    fprintf(stderr, "usage: ring_bench timing PATH BLOCKS [CAPACITY] | callgrind OP PATH CALLS\n");
    return 2;
}
