"""Execute: pure snapshot transitions (genesis, promotion, rollback target).

The executor actor that applies them is ``loop/executor.py``.
"""
