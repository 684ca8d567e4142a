"""Execute: pure snapshot transitions (genesis, promotion, rollback target)."""
