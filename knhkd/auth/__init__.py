"""Who is asking, and what they may do: bearer-token (JWT) verification
against configured OIDC issuers (``tokens``), their key sets (``jwks``), the
role → permission table (``roles``) and per-principal rate limits
(``ratelimit``). The HTTP edge (``api/authn.py``) calls these; nothing here
knows about HTTP, trio or the store.
"""
