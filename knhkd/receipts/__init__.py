"""Layer 3: canonical receipt encoding, the hash chain, offline verification.

Imports only ``model``, ``crypto`` and ``store``: an offline verifier needs
nothing from the loop, the API or the daemon.
"""
