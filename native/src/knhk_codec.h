/*
 * knhk_codec.h — knhkd's ring drain codec: drained records → observations
 * encoded exactly as knhkd stores them.  Private to knhkd (compiled into its
 * cffi module only, never into the producer library).
 *
 * WHY IN C
 *   Decoding a record, building its Python objects and encoding them with
 *   msgspec cost ~4 µs per record in Python, which bounded the ring drain near
 *   200,000 records/s.  Here a record is validated and written straight as the
 *   msgpack bytes msgspec would write for knhkd.model.Observation (or
 *   ObservationIn, for the SHACL gate), ~0.1 µs, with the GIL released.
 *
 * GUARANTEES
 *   - knhk_codec_check accepts exactly the records knhkd.hotpath.records
 *     accepts (sector 1..5, flags 0, kind and len within the header's bounds,
 *     finite floats, TEXT that is strict UTF-8 as Python decodes it) and names
 *     the first fault in the same order as Python does (sector, flags, then
 *     the value: tests/native/test_codec.py checks both against each other).
 *   - knhk_codec_encode writes, for every record whose verdict is
 *     KNHK_REC_OK, the byte-exact msgpack msgspec.msgpack.encode gives for the
 *     same Observation (field order, smallest integer forms, float64, str8 for
 *     32..255 bytes, timestamp32/64/96 for event_time), as one msgpack array.
 *     Observation ids are the text knhkd.store.ids.observation_ids gives for
 *     the same time, sequence and random bits.
 *   - For KNHK_SHAPE_OBSERVATION it also writes each record's leaf (schema
 *     v2, README "Privacy and erasure"): SHA-256(salt || the record's exact
 *     bytes) followed by the salt, byte-identical to what knhkd/loop/ingest.py
 *     computes in Python for an HTTP observation and what fsck recomputes.
 *     SHA-256 is OpenSSL's libcrypto (EVP, the algorithm fetched once per
 *     call): hashing here, with the GIL released, is what keeps the drain from
 *     paying one hashlib call per record.
 *   - Nothing here reads a clock or a random source, or touches Python: the
 *     caller passes the time, the clock parameters, the random bits and the
 *     salts, and the output buffers with their sizes (too small: -1, nothing
 *     promised about the buffers' contents).  The only allocation is
 *     libcrypto's digest context, freed before knhk_codec_encode returns
 *     (it failing: -2).
 */
#ifndef KNHK_CODEC_H
#define KNHK_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "knhk_ring.h"

/* Per record: why it is refused, or KNHK_REC_OK. */
enum knhk_rec_verdict {
    KNHK_REC_OK = 0,
    KNHK_REC_SECTOR = 1,    /* sector code not in enum knhk_sector */
    KNHK_REC_FLAGS = 2,     /* reserved flags set */
    KNHK_REC_KIND = 3,      /* unknown value kind */
    KNHK_REC_LEN = 4,       /* len outside the kind's bounds */
    KNHK_REC_NONFINITE = 5, /* a NaN or an infinity */
    KNHK_REC_UTF8 = 6,      /* TEXT that is not UTF-8 */
    KNHK_REC_REFUSED = 7    /* refused by the caller (e.g. SHACL shapes) */
};

/* What knhk_codec_encode writes for each record. */
enum knhk_codec_shape {
    KNHK_SHAPE_OBSERVATION = 0, /* model.Observation: as stored */
    KNHK_SHAPE_INPUT = 1        /* model.ObservationIn: for the SHACL gate */
};

/* Upper bound of one encoded record (an event type name is at most 256 bytes). */
#define KNHK_CODEC_MAX_RECORD 640u
/* Size of a msgpack array header written by knhk_codec_encode. */
#define KNHK_CODEC_ARRAY_HEADER 5u
/* Bytes per key in the keys array (bin8 header, length, 8-byte big-endian seq). */
#define KNHK_CODEC_KEY_BYTES 10u
/* A leaf's salt and digest (knhkd.store.schema LEAF_SALT_BYTES, LEAF_DIGEST_BYTES). */
#define KNHK_CODEC_SALT_BYTES 16u
#define KNHK_CODEC_DIGEST_BYTES 32u
/* Bytes per leaf in the leaves array (bin8 header, length, digest, salt). */
#define KNHK_CODEC_LEAF_BYTES (2u + KNHK_CODEC_DIGEST_BYTES + KNHK_CODEC_SALT_BYTES)

typedef struct knhk_codec_params {
    int shape;                 /* enum knhk_codec_shape */
    uint64_t first_seq;        /* observation sequence of the first accepted record */
    uint64_t ingested_at_ns;   /* Unix ns; the id's time is its milliseconds */
    const uint16_t *random;    /* 16 random bits per accepted record (OBSERVATION) */
    const uint8_t *salts;      /* KNHK_CODEC_SALT_BYTES per accepted record (OBSERVATION) */
    /* Event code -> event type, 65536 entries each; a NULL name is "ring.<code>". */
    const char *const *event_name;
    const uint16_t *event_name_len;
    /* Tick stamp -> event_time, as knhkd.hotpath.tsc.TickClock.to_datetime:
     * ns = ref_ns + trunc((tsc - ref_ticks) * scale); none when the stamp is 0,
     * ns < 0 or ns > latest_ns; else rounded to the microsecond. */
    int64_t clock_ref_ns;
    uint64_t clock_ref_ticks;
    double clock_scale;
    int64_t clock_latest_ns;
} knhk_codec_params;

/* A maximal run of consecutive accepted records of one sector. */
typedef struct knhk_codec_run {
    uint32_t sector; /* enum knhk_sector */
    uint32_t count;  /* records in the run */
    uint64_t start;  /* byte offset in `out` of the run's first record */
    uint64_t end;    /* byte offset just past its last record */
} knhk_codec_run;

/* Records of one (sector, event code) in a batch, for the analyzer: it counts
 * a commit's records per key, all with the commit's one ingest time, so it
 * needs counts, order and a few evidence positions, not every record. */
typedef struct knhk_codec_key {
    uint32_t sector; /* enum knhk_sector */
    uint32_t event;  /* event code */
    uint32_t count;  /* accepted records of this key */
    uint32_t last;   /* position (among the accepted records) of the key's last one */
} knhk_codec_key;

/* Scratch entries knhk_codec_group needs: one per (sector, event code). */
#define KNHK_CODEC_GROUP_SLOTS (6u * 65536u)

/* Fill verdict[0..n); returns how many records are KNHK_REC_OK. */
size_t knhk_codec_check(const knhk_record *recs, size_t n, uint8_t *verdict);

/* Encode the records whose verdict is KNHK_REC_OK, in order, as one msgpack
 * array into out (its header takes KNHK_CODEC_ARRAY_HEADER bytes), and, for
 * KNHK_SHAPE_OBSERVATION, their LMDB keys (big-endian sequence numbers) as a
 * msgpack array of bin8 into keys, their leaves (digest || salt, the value
 * stored in observation_leaves) as a msgpack array of bin8 into leaves, and
 * their digests alone, back to back, into digests (what a receipt's
 * leaves_sha256 hashes); keys, leaves and digests may be NULL for
 * KNHK_SHAPE_INPUT.  runs (n entries) receives the sector runs, *nruns their
 * number.  Returns the bytes written to out, -1 if a capacity is too small
 * (safe sizes: KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_MAX_RECORD,
 * KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_KEY_BYTES,
 * KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_LEAF_BYTES and
 * n * KNHK_CODEC_DIGEST_BYTES), or -2 if libcrypto fails. */
int64_t knhk_codec_encode(const knhk_record *recs, size_t n, const uint8_t *verdict,
                          const knhk_codec_params *p, uint8_t *out, size_t out_cap,
                          uint8_t *keys, size_t keys_cap, uint8_t *leaves, size_t leaves_cap,
                          uint8_t *digests, size_t digests_cap, knhk_codec_run *runs,
                          size_t *nruns);

/* Group the records whose verdict is KNHK_REC_OK by (sector, event code), in
 * order of each key's first record: groups[g] and, in
 * positions[g * sample ..], the positions (among the accepted records) of the
 * key's first min(count, sample) records.  `slots` is scratch of
 * KNHK_CODEC_GROUP_SLOTS entries that are 0 on entry and are 0 again on return.
 * groups and positions have room for n groups.  Returns the number of groups. */
size_t knhk_codec_group(const knhk_record *recs, size_t n, const uint8_t *verdict,
                        uint32_t sample, uint32_t *slots, knhk_codec_key *groups,
                        uint32_t *positions);

/* The hot path's floor on this machine, as bench/ring.py measures it: for each
 * of ``blocks`` samples, 64 bare 64-byte stores (memcpy of caller records into
 * the next slots of a private 4096-slot buffer) timed between
 * knhk_ticks_begin() and knhk_ticks_end(), divided by 64, written to out[i].
 * No ring append can cost less on this machine.  Returns -1 when the buffer
 * cannot be allocated (out untouched), else 0.  Blocks the calling thread for
 * about blocks x 64 stores: call it off the event loop. */
int knhk_floor_ticks(size_t blocks, double *out);

#endif /* KNHK_CODEC_H */
