/*
 * inline_producer.c — a C producer driven line by line by
 * tests/native/test_inline_append.py, mixing knhk_append_inline (the header's
 * inline fast path) with knhk_append and knhk_append_batch on one handle.
 *
 *   inline_producer RING        then, on stdin, one command per line:
 *     a K   K calls of knhk_append            (event 1, tsc stamped by us)
 *     i K   K calls of knhk_append_inline     (event 2, tsc stamped by us)
 *     z K   K calls of knhk_append_inline     (event 4, tsc 0: stamped inline)
 *     b K   one knhk_append_batch of K        (event 3, tsc stamped by us)
 *     q     close and exit
 *   and prints "APPENDED REFUSED HEAD" after each.
 *
 * Record v (v counts the records appended, from 0) is an I64 of value v; a
 * refused record is offered again by the next call, so the values the consumer
 * sees must be exactly 0, 1, 2, ...  Prints "ready LANE" first, after checking
 * that the view is refused to another role and to another KNHK_RING_VERSION.
 * Exit status: 0 after q; 2 usage or open error; 3 a check failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knhk_ring.h"

#define MAX_BATCH 256

static uint64_t next_value; /* the value of the next record to append */

static void make(knhk_record *rec, uint16_t event, int stamped) {
    memset(rec, 0, sizeof *rec);
    rec->tsc = stamped ? 1000000u + next_value : 0;
    rec->sector = KNHK_SECTOR_GENERIC;
    rec->event = event;
    rec->kind = KNHK_VALUE_I64;
    rec->len = 1;
    rec->payload.i64[0] = (int64_t)next_value;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    knhk_status st;
    knhk_ring *reader = knhk_ring_open(argv[1], KNHK_ROLE_READER, &st);
    knhk_ring *r = knhk_ring_open(argv[1], KNHK_ROLE_PRODUCER, &st);
    if (reader == NULL || r == NULL) return 2;
    if (knhk_producer_view(reader, KNHK_RING_VERSION) != NULL) return 3;
    if (knhk_producer_view(r, KNHK_RING_VERSION + 1u) != NULL) return 3;
    knhk_ring_close(reader);
    knhk_producer *view = knhk_producer_view(r, KNHK_RING_VERSION);
    if (view == NULL || view->ring != r || view->head != knhk_head(r)) return 3;
    printf("ready %d\n", knhk_ring_lane(r));
    fflush(stdout);

    static knhk_record batch[MAX_BATCH];
    char op;
    unsigned long k;
    while (scanf(" %c", &op) == 1 && op != 'q') {
        if (scanf("%lu", &k) != 1 || k > MAX_BATCH) return 2;
        uint64_t appended = 0, refused = 0;
        if (op == 'b') {
            for (unsigned long j = 0; j < k; j++) {
                make(&batch[j], 3, 1);
                batch[j].tsc += j;
                batch[j].payload.i64[0] += (int64_t)j;
            }
            uint64_t first = 0;
            int64_t got = knhk_append_batch(r, batch, k, &first);
            if (got < 0 || (got > 0 && first != next_value)) return 3;
            appended = (uint64_t)got;
            refused = k - appended;
            next_value += appended;
        } else {
            for (unsigned long j = 0; j < k; j++) {
                knhk_record rec;
                int64_t seq;
                if (op == 'a') {
                    make(&rec, 1, 1);
                    seq = knhk_append(r, &rec);
                } else if (op == 'i' || op == 'z') {
                    make(&rec, op == 'i' ? 2 : 4, op == 'i');
                    seq = knhk_append_inline(view, &rec);
                } else {
                    return 2;
                }
                if (seq == KNHK_EFULL) {
                    refused++;
                    continue;
                }
                if (seq < 0 || (uint64_t)seq != next_value) return 3;
                appended++;
                next_value++;
            }
        }
        /* The view is the handle's state: knhk_head agrees with it. */
        if (view->head != knhk_head(r) || view->head != next_value) return 3;
        printf("%llu %llu %llu\n", (unsigned long long)appended, (unsigned long long)refused,
               (unsigned long long)view->head);
        fflush(stdout);
    }
    knhk_ring_close(r);
    return 0;
}
