"""Plan: turning detected patterns into ΔΣ proposals, and content-addressing them.

Pure; the planner actor is ``loop/planner.py``.
"""
