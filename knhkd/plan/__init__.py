"""Plan: turning detected patterns into ΔΣ proposals, and content-addressing them."""
