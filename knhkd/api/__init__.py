"""Layer 6: how operators and producers reach the daemon: the HTTP API
(``http``), its error documents (``problems``), and the admin Unix socket
(``admin``). Never touches LMDB directly; everything goes through ``Daemon``.
"""
