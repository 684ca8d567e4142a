"""Cross-cutting telemetry: Prometheus metrics and OpenTelemetry spans.

Imported by layers 3–7 through this thin facade; with the trace exporter off a
span costs only the sampler's decision.
"""
