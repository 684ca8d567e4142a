"""Validate: the seven-stage pipeline that judges a ΔΣ proposal."""
