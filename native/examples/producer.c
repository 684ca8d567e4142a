/*
 * producer.c — a minimal knhkd producer in C: what a sensor gateway or a PLC
 * bridge does to hand observations to knhkd through the shared-memory ring.
 *
 *   producer RING [COUNT] [SECTOR] [EVENT]
 *
 * Opens the ring as a producer (claiming a free lane), prints knhkd's current
 * snapshot descriptor, appends COUNT readings (default 1000) of sector code
 * SECTOR (default 3, manufacturing) and event code EVENT (default 1) one at a
 * time, as they are taken, with knhk_append_inline (the header's inline fast
 * path; knhk_append_batch suits readings that arrive in bulk), and waits (at
 * most 10 s) until knhkd has made all of them durable.  A full lane is
 * back-pressure: the program waits and retries the reading that was refused;
 * it never drops one.
 *
 * Exit status: 0 all records durable; 1 not durable in time, or the ring file
 * was removed or replaced meanwhile (knhk_ring_stale); 2 usage or open
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

    /* The producer view: appends inline, falling back to knhk_append itself. */
    knhk_producer *view = knhk_producer_view(ring, KNHK_RING_VERSION);
    if (view == NULL) {
        fprintf(stderr, "producer: %s: not a producer handle of this library version\n", path);
        knhk_ring_close(ring);
        return 2;
    }
    knhk_record rec;
    memset(&rec, 0, sizeof rec);
    rec.sector = (uint16_t)sector;
    rec.event = (uint16_t)event;
    rec.kind = KNHK_VALUE_F64;
    rec.len = 1;
    long sent = 0;
    uint64_t first = 0, last = 0;
    while (sent < count) {
        rec.tsc = knhk_ticks(); /* when the reading was taken */
        rec.payload.f64[0] = 20.0 + (double)(sent % 100) / 10.0;
        int64_t seq;
        while ((seq = knhk_append_inline(view, &rec)) == KNHK_EFULL)
            nap_ms(1); /* lane full: knhkd is behind; retry this reading */
        if (seq < 0) {
            fprintf(stderr, "producer: append: %s\n", knhk_strerror((int)seq));
            knhk_ring_close(ring);
            return 2;
        }
        if (sent == 0) first = (uint64_t)seq;
        last = (uint64_t)seq + 1;
        sent++;
    }
    printf("appended %ld records on lane %d (seq %" PRIu64 "..%" PRIu64 ")\n", sent,
           knhk_ring_lane(ring), first, last);

    for (int waited = 0; knhk_durable(ring) < last; waited++) {
        if (waited % 1000 == 999 && knhk_ring_stale(ring) == 1) {
            /* Nobody drains this file any more: the path names another ring. */
            fprintf(stderr, "producer: %s was removed or replaced; reopen it\n", path);
            knhk_ring_close(ring);
            return 1;
        }
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
