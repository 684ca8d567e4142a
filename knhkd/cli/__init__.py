"""Layer 7: the ``knhkd`` and ``knhkctl`` entry points. No business logic here."""
