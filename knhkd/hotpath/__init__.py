"""Layer 2: the native hot path — the shared-memory observation ring.

``ring`` wraps the C library of ``native/`` (built by the install through cffi,
as ``_ring_cffi``): producers append 64-byte records without a system call,
knhkd drains them and publishes the current-snapshot descriptor. ``records``
packs and validates records in pure Python; ``tsc`` measures the tick rate;
``codec`` validates drained records and encodes them as stored observations
(in C: ``native/src/knhk_codec.c``).

Must never: import anything above layer 2.
"""
