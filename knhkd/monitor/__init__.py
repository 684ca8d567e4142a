"""Monitor: what an observation must be to enter. Decoding and validation of
producer input (``decode``) and the per-sector SHACL shapes gate (``shapes``),
as pure functions. The actors that make accepted observations durable are in
``loop/`` (``ingest``, ``ring_drain``, ``shapes_gate``).
"""
