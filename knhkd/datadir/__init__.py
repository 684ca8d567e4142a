"""Layer 5: whole-data-directory tools (fsck) that may read every table."""
