"""Governance: sector doctrines, guards, and the guard-relaxation state machine.

Layer 4 (with ``knowledge/``): pure decisions over loaded definitions. Files
are read only by the explicit loaders (``load_doctrines``, ``load_guards``);
clocks are arguments.
"""
