/*
 * codec_fuzz.c — drives knhkd's drain codec (native/src/knhk_codec.c) over
 * arbitrary 64-byte records, for a build with -fsanitize=address,undefined
 * (tests/native/test_codec.py): any record a producer can write must be
 * checked, encoded and grouped without a memory or undefined-behaviour error,
 * within the documented buffer bounds.
 *
 *   codec_fuzz SEED ROUNDS     exit 0, or 1 with a message on stderr
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knhk_codec.h"

static uint64_t state;

static uint64_t next(void) { /* xorshift64* */
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 0x2545F4914F6CDD1DULL;
}

/* Mostly plausible fields (so records pass the check and get encoded), now
 * and then anything at all. */
static void make(knhk_record *r) {
    uint64_t pick = next();
    for (size_t i = 0; i < sizeof *r; i += 8) {
        uint64_t w = next();
        memcpy((uint8_t *)r + i, &w, 8);
    }
    if (pick % 4 == 0) return; /* fully random */
    r->sector = (uint16_t)(1 + next() % 5);
    r->flags = pick % 16 == 1 ? 1 : 0;
    r->kind = (uint8_t)(next() % 8);
    r->len = (uint8_t)(pick % 8 == 2 ? next() % 256 : next() % 41);
    if (pick % 3 == 0) r->tsc = 0;
    if (r->kind == KNHK_VALUE_TEXT && pick % 2) /* ASCII text: valid UTF-8 */
        for (unsigned i = 0; i < 40; i++) r->payload.bytes[i] = (uint8_t)(32 + next() % 95);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    state = strtoull(argv[1], NULL, 10) * 2654435761u + 1;
    unsigned rounds = (unsigned)strtoul(argv[2], NULL, 10);
    static const char *names[65536];
    static uint16_t lens[65536];
    static uint32_t slots[KNHK_CODEC_GROUP_SLOTS];
    char long_name[257];
    memset(long_name, 'e', 256);
    long_name[256] = 0;
    names[7] = "named.seven";
    lens[7] = 11;
    names[65535] = long_name; /* a 256-byte event type: the str16 form */
    lens[65535] = 256;
    for (unsigned round = 0; round < rounds; round++) {
        size_t n = 1 + next() % 300;
        knhk_record *recs = malloc(n * sizeof *recs);
        uint8_t *verdict = malloc(n);
        uint16_t *rnd = malloc(n * sizeof *rnd);
        size_t out_cap = KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_MAX_RECORD;
        size_t keys_cap = KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_KEY_BYTES;
        uint8_t *out = malloc(out_cap);
        uint8_t *keys = malloc(keys_cap);
        size_t leaves_cap = KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_LEAF_BYTES;
        size_t digests_cap = n * KNHK_CODEC_DIGEST_BYTES;
        uint8_t *leaves = malloc(leaves_cap);
        uint8_t *digests = malloc(digests_cap ? digests_cap : 1);
        uint8_t *salts = malloc(n * KNHK_CODEC_SALT_BYTES);
        knhk_codec_run *runs = malloc(n * sizeof *runs);
        knhk_codec_key *groups = malloc(n * sizeof *groups);
        uint32_t sample = (uint32_t)(1 + next() % 20);
        uint32_t *positions = malloc(n * sample * sizeof *positions);
        if (!recs || !verdict || !rnd || !out || !keys || !leaves || !digests || !salts || !runs ||
            !groups || !positions)
            return 2;
        for (size_t i = 0; i < n; i++) {
            make(&recs[i]);
            if (next() % 8 == 0) recs[i].event = next() % 2 ? 7 : 65535;
            rnd[i] = (uint16_t)next();
            for (unsigned b = 0; b < KNHK_CODEC_SALT_BYTES; b++) salts[i * KNHK_CODEC_SALT_BYTES + b] = (uint8_t)next();
        }
        size_t ok = knhk_codec_check(recs, n, verdict);
        knhk_codec_params p;
        memset(&p, 0, sizeof p);
        p.first_seq = next();
        p.ingested_at_ns = next() >> 1;
        p.random = rnd;
        p.salts = salts;
        p.event_name = names;
        p.event_name_len = lens;
        p.clock_ref_ns = (int64_t)(next() >> 2);
        p.clock_ref_ticks = next();
        p.clock_scale = (double)(next() % 1000 + 1) / 997.0;
        p.clock_latest_ns = p.clock_ref_ns + 3600000000000LL;
        for (int shape = 0; shape < 2; shape++) {
            p.shape = shape;
            size_t nruns = 0;
            int64_t size = knhk_codec_encode(recs, n, verdict, &p, out, out_cap, keys, keys_cap,
                                             leaves, leaves_cap, digests, digests_cap, runs,
                                             &nruns);
            if (size < (int64_t)KNHK_CODEC_ARRAY_HEADER || (size_t)size > out_cap) {
                fprintf(stderr, "round %u: encode returned %lld (cap %zu)\n", round,
                        (long long)size, out_cap);
                return 1;
            }
            size_t in_runs = 0;
            for (size_t r = 0; r < nruns; r++) in_runs += runs[r].count;
            if (in_runs != ok || (nruns && runs[nruns - 1].end != (uint64_t)size)) {
                fprintf(stderr, "round %u: runs cover %zu of %zu records\n", round, in_runs, ok);
                return 1;
            }
        }
        size_t ng = knhk_codec_group(recs, n, verdict, sample, slots, groups, positions);
        size_t in_groups = 0;
        for (size_t g = 0; g < ng; g++) in_groups += groups[g].count;
        if (in_groups != ok) {
            fprintf(stderr, "round %u: groups cover %zu of %zu records\n", round, in_groups, ok);
            return 1;
        }
        for (size_t i = 0; i < KNHK_CODEC_GROUP_SLOTS; i += 4099)
            if (slots[i]) {
                fprintf(stderr, "round %u: scratch not cleared\n", round);
                return 1;
            }
        free(recs); free(verdict); free(rnd); free(out); free(keys); free(runs);
        free(leaves); free(digests); free(salts);
        free(groups); free(positions);
    }
    return 0;
}
