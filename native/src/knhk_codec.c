/*
 * knhk_codec.c — see knhk_codec.h.  msgpack forms follow the msgpack
 * specification (github.com/msgpack/msgpack/blob/master/spec.md) as msgspec
 * 0.19+ chooses them: the smallest integer form (unsigned forms for
 * non-negative values), float64 for every float, fixstr/str8/str16, and the
 * timestamp extension (type -1) in its 32-, 64- or 96-bit form.
 */
#include "knhk_codec.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

static const char *const SECTOR_NAME[6] = {NULL,          "finance",   "healthcare",
                                           "manufacturing", "logistics", "generic"};
static const uint8_t SECTOR_LEN[6] = {0, 7, 10, 13, 9, 7};

/* ------------------------------------------------------------------------ */
/* Validation                                                                */
/* ------------------------------------------------------------------------ */

/* Strict UTF-8 as CPython's decoder accepts it: no overlong forms, no
 * surrogates (U+D800..U+DFFF), nothing above U+10FFFF. */
static int utf8_ok(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return 0;
        }
        if (i + need >= n) return 0; /* truncated */
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

static inline int finite_bits(const uint8_t *p) {
    uint64_t u;
    memcpy(&u, p, 8);
    return (u & 0x7ff0000000000000ULL) != 0x7ff0000000000000ULL;
}

/* The order of checks is Python's (knhkd/hotpath/records.py decode_value). */
static uint8_t check_value(const knhk_record *r) {
    const uint8_t *pl = r->payload.bytes;
    switch (r->kind) {
    case KNHK_VALUE_F64:
        if (r->len != 1) return KNHK_REC_LEN;
        return finite_bits(pl) ? KNHK_REC_OK : KNHK_REC_NONFINITE;
    case KNHK_VALUE_I64:
        return r->len == 1 ? KNHK_REC_OK : KNHK_REC_LEN;
    case KNHK_VALUE_TEXT:
        if (r->len > KNHK_PAYLOAD_BYTES) return KNHK_REC_LEN;
        return utf8_ok(pl, r->len) ? KNHK_REC_OK : KNHK_REC_UTF8;
    case KNHK_VALUE_F64_ARRAY:
        if (r->len > KNHK_PAYLOAD_WORDS) return KNHK_REC_LEN;
        for (unsigned i = 0; i < r->len; i++)
            if (!finite_bits(pl + 8 * i)) return KNHK_REC_NONFINITE;
        return KNHK_REC_OK;
    case KNHK_VALUE_I64_ARRAY:
        return r->len > KNHK_PAYLOAD_WORDS ? KNHK_REC_LEN : KNHK_REC_OK;
    case KNHK_VALUE_NONE:
        return r->len != 0 ? KNHK_REC_LEN : KNHK_REC_OK;
    case KNHK_VALUE_BYTES:
        return r->len > KNHK_PAYLOAD_BYTES ? KNHK_REC_LEN : KNHK_REC_OK;
    default:
        return KNHK_REC_KIND;
    }
}

size_t knhk_codec_check(const knhk_record *recs, size_t n, uint8_t *verdict) {
    size_t ok = 0;
    for (size_t i = 0; i < n; i++) {
        const knhk_record *r = &recs[i];
        uint8_t v;
        if (r->sector < KNHK_SECTOR_FINANCE || r->sector > KNHK_SECTOR_GENERIC)
            v = KNHK_REC_SECTOR;
        else if (r->flags != 0)
            v = KNHK_REC_FLAGS;
        else
            v = check_value(r);
        verdict[i] = v;
        ok += v == KNHK_REC_OK;
    }
    return ok;
}

/* ------------------------------------------------------------------------ */
/* msgpack writing (the caller guarantees room: see the bounds in the header) */
/* ------------------------------------------------------------------------ */

static inline uint8_t *put_be16(uint8_t *o, uint16_t v) {
    v = __builtin_bswap16(v);
    memcpy(o, &v, 2);
    return o + 2;
}
static inline uint8_t *put_be32(uint8_t *o, uint32_t v) {
    v = __builtin_bswap32(v);
    memcpy(o, &v, 4);
    return o + 4;
}
static inline uint8_t *put_be64(uint8_t *o, uint64_t v) {
    v = __builtin_bswap64(v);
    memcpy(o, &v, 8);
    return o + 8;
}

static uint8_t *put_uint(uint8_t *o, uint64_t v) {
    if (v < 128) {
        *o++ = (uint8_t)v;
    } else if (v <= UINT8_MAX) {
        *o++ = 0xcc;
        *o++ = (uint8_t)v;
    } else if (v <= UINT16_MAX) {
        *o++ = 0xcd;
        o = put_be16(o, (uint16_t)v);
    } else if (v <= UINT32_MAX) {
        *o++ = 0xce;
        o = put_be32(o, (uint32_t)v);
    } else {
        *o++ = 0xcf;
        o = put_be64(o, v);
    }
    return o;
}

static uint8_t *put_int(uint8_t *o, int64_t v) {
    if (v >= 0) return put_uint(o, (uint64_t)v);
    if (v >= -32) {
        *o++ = (uint8_t)(int8_t)v;
    } else if (v >= INT8_MIN) {
        *o++ = 0xd0;
        *o++ = (uint8_t)(int8_t)v;
    } else if (v >= INT16_MIN) {
        *o++ = 0xd1;
        o = put_be16(o, (uint16_t)(int16_t)v);
    } else if (v >= INT32_MIN) {
        *o++ = 0xd2;
        o = put_be32(o, (uint32_t)(int32_t)v);
    } else {
        *o++ = 0xd3;
        o = put_be64(o, (uint64_t)v);
    }
    return o;
}

static inline uint8_t *put_f64(uint8_t *o, const uint8_t *bits) {
    uint64_t u;
    memcpy(&u, bits, 8);
    *o++ = 0xcb;
    return put_be64(o, u);
}

static inline uint8_t *put_str_header(uint8_t *o, size_t n) {
    if (n < 32) {
        *o++ = (uint8_t)(0xa0 | n);
    } else if (n <= UINT8_MAX) {
        *o++ = 0xd9;
        *o++ = (uint8_t)n;
    } else {
        *o++ = 0xda;
        o = put_be16(o, (uint16_t)n);
    }
    return o;
}

static inline uint8_t *put_str(uint8_t *o, const char *s, size_t n) {
    o = put_str_header(o, n);
    memcpy(o, s, n);
    return o + n;
}

/* A fixstr key: the literal's length less its terminating NUL. */
#define PUT_KEY(o, lit) put_str((o), (lit), sizeof(lit) - 1)

static uint8_t *put_array_header(uint8_t *o, size_t n) {
    /* Always the 32-bit form: the header's size is then known before the count. */
    *o++ = 0xdd;
    return put_be32(o, (uint32_t)n);
}

static uint8_t *put_value(uint8_t *o, const knhk_record *r) {
    static const char HEX[] = "0123456789abcdef";
    const uint8_t *pl = r->payload.bytes;
    int64_t i64;
    switch (r->kind) {
    case KNHK_VALUE_F64:
        return put_f64(o, pl);
    case KNHK_VALUE_I64:
        memcpy(&i64, pl, 8);
        return put_int(o, i64);
    case KNHK_VALUE_TEXT:
        return put_str(o, (const char *)pl, r->len);
    case KNHK_VALUE_BYTES:
        o = put_str_header(o, 2u * r->len);
        for (unsigned i = 0; i < r->len; i++) {
            *o++ = (uint8_t)HEX[pl[i] >> 4];
            *o++ = (uint8_t)HEX[pl[i] & 15];
        }
        return o;
    case KNHK_VALUE_F64_ARRAY:
        *o++ = (uint8_t)(0x90 | r->len);
        for (unsigned i = 0; i < r->len; i++) o = put_f64(o, pl + 8 * i);
        return o;
    case KNHK_VALUE_I64_ARRAY:
        *o++ = (uint8_t)(0x90 | r->len);
        for (unsigned i = 0; i < r->len; i++) {
            memcpy(&i64, pl + 8 * i, 8);
            o = put_int(o, i64);
        }
        return o;
    default: /* KNHK_VALUE_NONE; other kinds never reach here (checked) */
        *o++ = 0xc0;
        return o;
    }
}

/* event_time as the msgpack timestamp extension, or nil. */
static uint8_t *put_event_time(uint8_t *o, uint64_t tsc, const knhk_codec_params *p) {
    if (tsc == 0) goto none;
    /* Python: int((tsc - ref_ticks) * scale), the difference exact, then one
     * rounding to double, one multiplication, truncation toward zero. */
    double diff = tsc >= p->clock_ref_ticks ? (double)(tsc - p->clock_ref_ticks)
                                            : -(double)(p->clock_ref_ticks - tsc);
    double scaled = diff * p->clock_scale;
    if (!(scaled > -9.0e18 && scaled < 9.0e18)) goto none;
    __int128 ns = (__int128)p->clock_ref_ns + (int64_t)scaled;
    if (ns < 0 || ns > p->clock_latest_ns) goto none;
    uint64_t us = (uint64_t)((ns + 500) / 1000);
    uint64_t sec = us / 1000000u;
    uint32_t nsec = (uint32_t)(us % 1000000u) * 1000u;
    if ((sec >> 34) == 0) {
        if (nsec == 0 && sec <= UINT32_MAX) {
            *o++ = 0xd6;
            *o++ = 0xff;
            return put_be32(o, (uint32_t)sec);
        }
        *o++ = 0xd7;
        *o++ = 0xff;
        return put_be64(o, ((uint64_t)nsec << 34) | sec);
    }
    *o++ = 0xc7;
    *o++ = 12;
    *o++ = 0xff;
    o = put_be32(o, nsec);
    return put_be64(o, sec);
none:
    *o++ = 0xc0;
    return o;
}

static uint8_t *put_event_type(uint8_t *o, uint16_t code, const knhk_codec_params *p) {
    const char *name = p->event_name != NULL ? p->event_name[code] : NULL;
    if (name != NULL) return put_str(o, name, p->event_name_len[code]);
    char buf[16] = "ring.";
    size_t n = 5;
    char digits[8];
    size_t d = 0;
    unsigned v = code;
    do {
        digits[d++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (d) buf[n++] = digits[--d];
    return put_str(o, buf, n);
}

/* A ULID: 48 bits of milliseconds, the 64-bit sequence, 16 random bits, as
 * 26 Crockford base32 digits (knhkd/store/ids.py). */
static uint8_t *put_id(uint8_t *o, uint64_t ms, uint64_t seq, uint16_t rnd) {
    static const char B32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    unsigned __int128 v = ((unsigned __int128)(ms & 0xffffffffffffULL) << 80) |
                          ((unsigned __int128)seq << 16) | rnd;
    *o++ = 0xa0 | 26;
    for (int i = 25; i >= 0; i--) {
        o[i] = (uint8_t)B32[(unsigned)(v & 31u)];
        v >>= 5;
    }
    return o + 26;
}

/* SHA-256(salt || rec[0..len)) into dig: the leaf digest of a stored record. */
static int leaf_digest(EVP_MD_CTX *ctx, const EVP_MD *md, const uint8_t *salt,
                       const uint8_t *rec, size_t len, uint8_t *dig) {
    return EVP_DigestInit_ex2(ctx, md, NULL) == 1 &&
           EVP_DigestUpdate(ctx, salt, KNHK_CODEC_SALT_BYTES) == 1 &&
           EVP_DigestUpdate(ctx, rec, len) == 1 && EVP_DigestFinal_ex(ctx, dig, NULL) == 1;
}

int64_t knhk_codec_encode(const knhk_record *recs, size_t n, const uint8_t *verdict,
                          const knhk_codec_params *p, uint8_t *out, size_t out_cap,
                          uint8_t *keys, size_t keys_cap, uint8_t *leaves, size_t leaves_cap,
                          uint8_t *digests, size_t digests_cap, knhk_codec_run *runs,
                          size_t *nruns) {
    int stored = p->shape == KNHK_SHAPE_OBSERVATION;
    if (out_cap < KNHK_CODEC_ARRAY_HEADER + n * (size_t)KNHK_CODEC_MAX_RECORD) return -1;
    if (stored && (keys == NULL || keys_cap < KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_KEY_BYTES))
        return -1;
    if (stored &&
        (leaves == NULL || leaves_cap < KNHK_CODEC_ARRAY_HEADER + n * KNHK_CODEC_LEAF_BYTES ||
         digests == NULL || digests_cap < n * KNHK_CODEC_DIGEST_BYTES))
        return -1;
    /* Fetched once per call, not per record: an implicit fetch per digest
     * (EVP_sha256() with OpenSSL 3) costs a lookup under a lock each time. */
    EVP_MD *md = NULL;
    EVP_MD_CTX *ctx = NULL;
    if (stored) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        ctx = EVP_MD_CTX_new();
        if (md == NULL || ctx == NULL) goto crypto_failed;
    }
    size_t accepted = 0;
    for (size_t i = 0; i < n; i++) accepted += verdict[i] == KNHK_REC_OK;
    uint8_t *o = put_array_header(out, accepted);
    uint8_t *k = stored ? put_array_header(keys, accepted) : NULL;
    uint8_t *l = stored ? put_array_header(leaves, accepted) : NULL;
    uint64_t ms = p->ingested_at_ns / 1000000u;
    uint64_t seq = p->first_seq;
    size_t nr = 0;
    size_t j = 0; /* accepted records so far */
    for (size_t i = 0; i < n; i++) {
        const knhk_record *r = &recs[i];
        if (verdict[i] != KNHK_REC_OK) continue;
        uint8_t *rec = o;
        uint64_t start = (uint64_t)(o - out);
        if (nr > 0 && runs[nr - 1].sector == r->sector) {
            runs[nr - 1].count++;
        } else {
            runs[nr].sector = r->sector;
            runs[nr].count = 1;
            runs[nr].start = start;
            nr++;
        }
        if (stored) {
            *o++ = 0x89; /* 9 fields, in model.Observation's order */
            o = PUT_KEY(o, "id");
            o = put_id(o, ms, seq, p->random[j]);
            o = PUT_KEY(o, "seq");
            o = put_uint(o, seq);
        } else {
            *o++ = 0x85; /* model.ObservationIn less rdf: event_type .. event_time */
        }
        o = PUT_KEY(o, "event_type");
        o = put_event_type(o, r->event, p);
        o = PUT_KEY(o, "sector");
        o = put_str(o, SECTOR_NAME[r->sector], SECTOR_LEN[r->sector]);
        o = PUT_KEY(o, "value");
        o = put_value(o, r);
        o = PUT_KEY(o, "metadata");
        *o++ = 0x80;
        if (stored) {
            o = PUT_KEY(o, "ingested_at_ns");
            o = put_uint(o, p->ingested_at_ns);
        }
        o = PUT_KEY(o, "event_time");
        o = put_event_time(o, r->tsc, p);
        if (stored) {
            o = PUT_KEY(o, "rdf");
            *o++ = 0xc0;
            *k++ = 0xc4;
            *k++ = 8;
            k = put_be64(k, seq);
            const uint8_t *salt = p->salts + j * KNHK_CODEC_SALT_BYTES;
            uint8_t *dig = digests + j * KNHK_CODEC_DIGEST_BYTES;
            if (!leaf_digest(ctx, md, salt, rec, (size_t)(o - rec), dig)) goto crypto_failed;
            *l++ = 0xc4;
            *l++ = KNHK_CODEC_DIGEST_BYTES + KNHK_CODEC_SALT_BYTES;
            memcpy(l, dig, KNHK_CODEC_DIGEST_BYTES);
            memcpy(l + KNHK_CODEC_DIGEST_BYTES, salt, KNHK_CODEC_SALT_BYTES);
            l += KNHK_CODEC_DIGEST_BYTES + KNHK_CODEC_SALT_BYTES;
            seq++;
        }
        runs[nr - 1].end = (uint64_t)(o - out);
        j++;
    }
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    *nruns = nr;
    return (int64_t)(o - out);
crypto_failed:
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    return -2;
}

size_t knhk_codec_group(const knhk_record *recs, size_t n, const uint8_t *verdict,
                        uint32_t sample, uint32_t *slots, knhk_codec_key *groups,
                        uint32_t *positions) {
    size_t ng = 0;
    uint32_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        if (verdict[i] != KNHK_REC_OK) continue;
        const knhk_record *r = &recs[i];
        /* Accepted records have a sector of 1..5 (checked). */
        uint32_t key = (uint32_t)r->sector * 65536u + r->event;
        uint32_t g = slots[key];
        if (g == 0) {
            g = (uint32_t)++ng;
            slots[key] = g;
            groups[g - 1].sector = r->sector;
            groups[g - 1].event = r->event;
            groups[g - 1].count = 0;
        }
        knhk_codec_key *grp = &groups[g - 1];
        if (grp->count < sample) positions[(size_t)(g - 1) * sample + grp->count] = pos;
        grp->count++;
        grp->last = pos;
        pos++;
    }
    for (size_t g = 0; g < ng; g++) slots[groups[g].sector * 65536u + groups[g].event] = 0;
    return ng;
}

/* Not inlined, so that the timed loop is this one whatever the caller. */
__attribute__((noinline)) static void floor_stores(knhk_record *slots, size_t head,
                                                   const knhk_record *recs) {
    for (size_t i = 0; i < 64; i++) memcpy(&slots[(head + i) & 4095u], &recs[i], sizeof recs[i]);
}

int knhk_floor_ticks(size_t blocks, double *out) {
    knhk_record *slots = aligned_alloc(64, 4096u * sizeof(knhk_record));
    if (slots == NULL) return -1;
    knhk_record recs[64];
    memset(recs, 0, sizeof recs);
    for (size_t i = 0; i < 64; i++) {
        recs[i].seq = i;
        recs[i].sector = KNHK_SECTOR_GENERIC;
        recs[i].kind = KNHK_VALUE_I64;
        recs[i].len = 1;
        recs[i].payload.i64[0] = (int64_t)i;
    }
    size_t head = 0;
    /* Warm up: fault the pages in, train the branches (untimed). */
    for (size_t b = 0; b < 128; b++, head += 64) floor_stores(slots, head, recs);
    for (size_t b = 0; b < blocks; b++, head += 64) {
        uint64_t t0 = knhk_ticks_begin();
        floor_stores(slots, head, recs);
        uint64_t t1 = knhk_ticks_end();
        out[b] = (double)(t1 - t0) / 64.0;
    }
    free(slots);
    return 0;
}
