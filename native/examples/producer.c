/*
 * producer.c — a minimal knhkd producer in C: what a sensor gateway or a PLC
 * bridge does to hand observations to knhkd through the shared-memory ring.
 *
 *   producer RING [COUNT] [SECTOR] [EVENT]
 *
 * Opens the ring as a producer (claiming a free lane), prints knhkd's current
 * snapshot descriptor, appends COUNT readings (default 1000) of sector code
 * SECTOR (default 3, manufacturing) and event code EVENT (default 1) in
 * batches of 64, and waits (at most 10 s) until knhkd has made all of them
 * durable.  A full lane is back-pressure: the program waits and retries the
 * records that were refused; it never drops one.
 *
 * Exit status: 0 all records durable; 1 not durable in time; 2 usage or open
 * error (the message names the header field for a version or layout mismatch).
 *
 * Build: make -C native   (or: cc -std=c11 -O2 -Inative/include
 *        native/examples/producer.c native/src/knhk_ring.c -o producer)
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knhk_ring.h"

#define BATCH 64

static void nap_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int usage(void) {
    fprintf(stderr, "usage: producer RING [COUNT] [SECTOR] [EVENT]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 5) return usage();
    const char *path = argv[1];
    long count = argc > 2 ? strtol(argv[2], NULL, 10) : 1000;
    long sector = argc > 3 ? strtol(argv[3], NULL, 10) : KNHK_SECTOR_MANUFACTURING;
    long event = argc > 4 ? strtol(argv[4], NULL, 10) : 1;
    if (count < 0 || sector < 0 || sector > 0xffff || event < 0 || event > 0xffff) return usage();

    knhk_status st;
    knhk_ring *ring = knhk_ring_open(path, KNHK_ROLE_PRODUCER, &st);
    if (ring == NULL) {
        fprintf(stderr, "producer: cannot open %s: %s", path, knhk_strerror(st.code));
        if (st.code == KNHK_ESYS) fprintf(stderr, " (%s: %s)", st.field, strerror(st.sys_errno));
        else if (st.field[0] != '\0')
            fprintf(stderr, " (%s: found %" PRIu64 ", expected %" PRIu64 ")", st.field, st.found,
                    st.expected);
        fprintf(stderr, "\n");
        return 2;
    }

    knhk_snapshot snap;
    if (knhk_snapshot_read(ring, &snap) == KNHK_OK) {
        printf("snapshot v%" PRIu64 " id ", snap.version);
        for (int i = 0; i < 8; i++) printf("%02x", snap.id[i]);
        printf("... promoted_at_ns %" PRIu64 "\n", snap.promoted_at_ns);
    } else {
        printf("no snapshot descriptor published yet\n");
    }

    knhk_record batch[BATCH];
    memset(batch, 0, sizeof batch);
    long sent = 0;
    uint64_t first = 0, last = 0;
    int first_known = 0;
    while (sent < count) {
        size_t n = (size_t)(count - sent < BATCH ? count - sent : BATCH);
        for (size_t i = 0; i < n; i++) {
            knhk_record *r = &batch[i];
            r->tsc = knhk_ticks(); /* when the reading was taken */
            r->sector = (uint16_t)sector;
            r->event = (uint16_t)event;
            r->kind = KNHK_VALUE_F64;
            r->len = 1;
            r->payload.f64[0] = 20.0 + (double)((sent + (long)i) % 100) / 10.0;
        }
        uint64_t seq;
        int64_t got = knhk_append_batch(ring, batch, n, &seq);
        if (got < 0) {
            fprintf(stderr, "producer: append: %s\n", knhk_strerror((int)got));
            knhk_ring_close(ring);
            return 2;
        }
        if (got > 0) {
            if (!first_known) first = seq, first_known = 1;
            last = seq + (uint64_t)got;
            sent += got;
        }
        if ((size_t)got < n) nap_ms(1); /* lane full: knhkd is behind; retry the rest */
    }
    printf("appended %ld records on lane %d (seq %" PRIu64 "..%" PRIu64 ")\n", sent,
           knhk_ring_lane(ring), first, last);

    for (int waited = 0; knhk_durable(ring) < last; waited++) {
        if (waited >= 10000) {
            fprintf(stderr, "producer: durable %" PRIu64 " < %" PRIu64 " after 10 s\n",
                    knhk_durable(ring), last);
            knhk_ring_close(ring);
            return 1;
        }
        nap_ms(1);
    }
    printf("durable through seq %" PRIu64 "\n", last);
    knhk_ring_close(ring);
    return 0;
}
