"""Layer 2: the LMDB environment and its single writer thread."""
