"""Layer 2: the native hot path — the shared-memory observation ring.

``ring`` wraps the C library of ``native/`` (built by the install through cffi,
as ``_ring_cffi``): producers append 64-byte records without a system call,
knhkd drains them and publishes the current-snapshot descriptor. ``records``
packs and validates records in pure Python; ``tsc`` measures the tick rate;
``decode`` turns drained records into ``ObservationIn``.

Must never: import anything above layer 2.
"""
