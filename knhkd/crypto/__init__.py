"""Layer 2: signing keys (ed25519 via PyNaCl) and their public export."""
