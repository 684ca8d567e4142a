"""cffi build (API mode) of the knhk ring as ``knhkd.hotpath._ring_cffi``.

Run by setuptools through ``setup.py`` (``cffi_modules``) on every ordinary
install, editable or not: there is no hand step.

Guarantees:
- The shipped build is portable: ``-O2``, never ``-march=native`` (a bench may
  build a native variant of the C sources separately).
- ``native/src/knhk_ring.c`` (the producer library) and ``knhk_codec.c``
  (knhkd's drain codec, not part of that library) are compiled with ``-Wall
  -Wextra -Werror``; cffi checks the layouts declared below against the headers
  at compile time, so a drift between this file and ``knhk_ring.h`` or
  ``knhk_codec.h`` fails the build.
- The module links OpenSSL's libcrypto (the codec's SHA-256 leaf digests);
  building it needs its headers (Debian: libssl-dev, in .ci/run's list).

Must never: declare anything here that the header does not define.
"""

from __future__ import annotations

import os
from pathlib import Path

import cffi

HERE = Path(__file__).resolve().parent

CDEF = """
#define KNHK_RING_VERSION ...
#define KNHK_RECORD_SIZE ...
#define KNHK_MAX_LANES ...
#define KNHK_MIN_CAPACITY ...
#define KNHK_MAX_CAPACITY ...
#define KNHK_SAMPLE_PERIOD ...
#define KNHK_PAYLOAD_BYTES ...

enum knhk_sector {
    KNHK_SECTOR_FINANCE = 1, KNHK_SECTOR_HEALTHCARE = 2, KNHK_SECTOR_MANUFACTURING = 3,
    KNHK_SECTOR_LOGISTICS = 4, KNHK_SECTOR_GENERIC = 5
};
enum knhk_value_kind {
    KNHK_VALUE_NONE = 0, KNHK_VALUE_I64 = 1, KNHK_VALUE_F64 = 2, KNHK_VALUE_TEXT = 3,
    KNHK_VALUE_BYTES = 4, KNHK_VALUE_I64_ARRAY = 5, KNHK_VALUE_F64_ARRAY = 6
};
enum knhk_code {
    KNHK_OK = 0, KNHK_EFULL = -1, KNHK_ESYS = -2, KNHK_ENOTRING = -3, KNHK_EVERSION = -4,
    KNHK_ELAYOUT = -5, KNHK_EBUSY = -6, KNHK_EINVAL = -7, KNHK_EROLE = -8, KNHK_EEMPTY = -9,
    KNHK_EEXIST = -10
};
enum knhk_role { KNHK_ROLE_READER = 0, KNHK_ROLE_PRODUCER = 1, KNHK_ROLE_CONSUMER = 2 };
enum knhk_op { KNHK_OP_APPEND = 1, KNHK_OP_SNAPSHOT_READ = 2 };

typedef struct knhk_record {
    uint64_t seq;
    uint64_t tsc;
    uint16_t sector;
    uint16_t event;
    uint8_t kind;
    uint8_t len;
    uint16_t flags;
    union { int64_t i64[5]; double f64[5]; uint8_t bytes[40]; } payload;
} knhk_record;

typedef struct knhk_status {
    int code;
    int sys_errno;
    const char *field;
    uint64_t found;
    uint64_t expected;
} knhk_status;

typedef struct knhk_ring knhk_ring;

typedef struct knhk_snapshot {
    uint64_t version;
    uint64_t promoted_at_ns;
    uint64_t published_at_ns;
    uint8_t id[32];
} knhk_snapshot;

typedef struct knhk_lane_stats {
    uint64_t head, consumed, durable;
    uint64_t full_count;
    uint64_t corrupt_count;
    uint64_t owner_pid;
    uint64_t claims;
} knhk_lane_stats;

typedef struct knhk_sample {
    uint32_t lane;
    uint32_t op;
    uint64_t ticks;
    uint64_t count;
} knhk_sample;

const char *knhk_strerror(int code);
int knhk_ring_create(const char *path, uint32_t lanes, uint32_t capacity, uint32_t mode,
                     knhk_status *st);
knhk_ring *knhk_ring_open(const char *path, int role, knhk_status *st);
void knhk_ring_close(knhk_ring *r);
uint32_t knhk_ring_lanes(const knhk_ring *r);
uint32_t knhk_ring_capacity(const knhk_ring *r);
uint64_t knhk_ring_id(const knhk_ring *r);
uint64_t knhk_ring_tsc_hz(const knhk_ring *r);
int knhk_ring_lane(const knhk_ring *r);
int knhk_ring_stale(const knhk_ring *r);
int64_t knhk_append(knhk_ring *r, const knhk_record *rec);
int64_t knhk_append_batch(knhk_ring *r, const knhk_record *recs, size_t n, uint64_t *first_seq);
uint64_t knhk_durable(const knhk_ring *r);
uint64_t knhk_head(const knhk_ring *r);
int knhk_snapshot_read(knhk_ring *r, knhk_snapshot *out);
int knhk_snapshot_publish(knhk_ring *r, const knhk_snapshot *in);
int knhk_consumer_begin(knhk_ring *r, const uint64_t *start);
int64_t knhk_consume(knhk_ring *r, knhk_record *out, uint32_t *lanes_out, size_t max,
                     uint64_t *next);
int knhk_mark_durable(knhk_ring *r, const uint64_t *next);
int knhk_ring_set_tsc_hz(knhk_ring *r, uint64_t hz);
int knhk_lane_stats_get(const knhk_ring *r, uint32_t lane, knhk_lane_stats *out);
int64_t knhk_samples_take(knhk_ring *r, knhk_sample *out, size_t max);
uint64_t knhk_ticks_now(void);
const char *knhk_ticks_source(void);
uint64_t knhk_ticks_hz_exact(void);
uint64_t knhk_ticks_calibrate(uint64_t window_ns);
"""

# knhkd's drain codec (native/src/knhk_codec.h): private to knhkd.
CODEC_CDEF = """
#define KNHK_CODEC_MAX_RECORD ...
#define KNHK_CODEC_ARRAY_HEADER ...
#define KNHK_CODEC_KEY_BYTES ...
#define KNHK_CODEC_SALT_BYTES ...
#define KNHK_CODEC_DIGEST_BYTES ...
#define KNHK_CODEC_LEAF_BYTES ...
enum knhk_rec_verdict {
    KNHK_REC_OK = 0, KNHK_REC_SECTOR = 1, KNHK_REC_FLAGS = 2, KNHK_REC_KIND = 3,
    KNHK_REC_LEN = 4, KNHK_REC_NONFINITE = 5, KNHK_REC_UTF8 = 6, KNHK_REC_REFUSED = 7
};
enum knhk_codec_shape { KNHK_SHAPE_OBSERVATION = 0, KNHK_SHAPE_INPUT = 1 };
typedef struct knhk_codec_params {
    int shape;
    uint64_t first_seq;
    uint64_t ingested_at_ns;
    const uint16_t *random;
    const uint8_t *salts;
    const char *const *event_name;
    const uint16_t *event_name_len;
    int64_t clock_ref_ns;
    uint64_t clock_ref_ticks;
    double clock_scale;
    int64_t clock_latest_ns;
} knhk_codec_params;
typedef struct knhk_codec_run {
    uint32_t sector;
    uint32_t count;
    uint64_t start;
    uint64_t end;
} knhk_codec_run;
typedef struct knhk_codec_key {
    uint32_t sector;
    uint32_t event;
    uint32_t count;
    uint32_t last;
} knhk_codec_key;
#define KNHK_CODEC_GROUP_SLOTS ...
size_t knhk_codec_check(const knhk_record *recs, size_t n, uint8_t *verdict);
size_t knhk_codec_group(const knhk_record *recs, size_t n, const uint8_t *verdict,
                        uint32_t sample, uint32_t *slots, knhk_codec_key *groups,
                        uint32_t *positions);
int64_t knhk_codec_encode(const knhk_record *recs, size_t n, const uint8_t *verdict,
                          const knhk_codec_params *p, uint8_t *out, size_t out_cap,
                          uint8_t *keys, size_t keys_cap, uint8_t *leaves, size_t leaves_cap,
                          uint8_t *digests, size_t digests_cap, knhk_codec_run *runs,
                          size_t *nruns);
int knhk_floor_ticks(size_t blocks, double *out);
"""

# Portable: the shipped module must run on any x86-64 (or other) CPU.
COMPILE_ARGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror"]


def _rel(path: Path) -> str:
    # setuptools places object files under build_temp joined with the source
    # path, so give it the path relative to where the build runs (the project).
    return os.path.relpath(path)


def make_builder(module: str = "knhkd.hotpath._ring_cffi") -> cffi.FFI:
    ffi = cffi.FFI()
    ffi.cdef(CDEF + CODEC_CDEF)
    ffi.set_source(
        module,
        '#include "knhk_ring.h"\n#include "knhk_codec.h"\n',
        sources=[_rel(HERE / "src" / "knhk_ring.c"), _rel(HERE / "src" / "knhk_codec.c")],
        include_dirs=[_rel(HERE / "include"), _rel(HERE / "src")],
        extra_compile_args=COMPILE_ARGS,
        # The codec's leaf digests: SHA-256 from OpenSSL's libcrypto (headers:
        # Debian's libssl-dev at build time; libssl3 at run time, which
        # CPython's own hashlib/ssl already need).
        libraries=["crypto"],
    )
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
