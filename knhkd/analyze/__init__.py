"""Analyze: incremental, deterministic pattern detectors over observations."""
