"""Analyze: incremental, deterministic pattern detectors over observations.

Pure; the analyzer actor that feeds them is ``loop/analyzer.py``.
"""
