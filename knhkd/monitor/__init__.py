"""Monitor: where an observation enters. Decoding and validation of producer
input (``decode``), and the ingest actor that makes accepted observations
durable and hands them to the analyzer (``ingest``).
"""
