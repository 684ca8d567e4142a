"""HTTPS for the API: the server's TLS context, client-certificate subjects
and the principals they map to, and why a handshake was refused.

Guarantees:
- The context accepts TLS 1.3 only (``minimum_version`` set here, never left
  to a library default), without compression.
- With ``client_ca``, ``verify_mode`` is set explicitly (``CERT_REQUIRED`` or
  ``CERT_OPTIONAL``): a CA file alone would let clients in without any
  certificate. A presented certificate that does not chain to ``client_ca``
  fails the handshake either way.
- The files may be systemd credentials (``credential:NAME``); a key file
  group or others may read is a ``TlsError`` naming it.
- ``server_context`` reads the whole pair before returning: a missing file,
  a key that does not match its certificate or an unreadable CA file is a
  ``TlsError`` naming the setting, and the caller keeps the context it had.
- A client principal is ``mtls#<subject>`` with exactly the roles its
  ``[[http.tls.client_principals]]`` entry names.

Must never: put key material in a message or a log (errors name files).
"""

from __future__ import annotations

import os
import ssl
import stat

from cryptography import x509
from cryptography.x509.oid import NameOID

from knhkd.auth.roles import permissions_of
from knhkd.config import ClientPrincipal, ConfigError, TlsConfig, secret_path
from knhkd.model import Principal

MTLS_ISSUER = "mtls"


class TlsError(Exception):
    """A TLS setting could not be used; ``key`` is the dotted path at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def _check_private(keyfile: str) -> None:
    """A private key group or others may read is refused, naming the file
    (as the signing key is: crypto/keys.py)."""
    try:
        mode = os.stat(keyfile).st_mode
    except FileNotFoundError:
        raise TlsError("http.tls", f"{keyfile}: no such file") from None
    except OSError as exc:
        raise TlsError("http.tls.keyfile", f"{keyfile}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsError(
            "http.tls.keyfile",
            f"{keyfile}: permissions {stat.S_IMODE(mode):04o} are too open; "
            "the TLS key must be readable by its owner only (0600 or 0400)",
        )


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """A fresh server context for ``cfg`` (which must be enabled)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        # Each may be a path or credential:NAME (systemd LoadCredential=).
        certfile = str(secret_path("http.tls.certfile", cfg.certfile))
        keyfile = str(secret_path("http.tls.keyfile", cfg.keyfile))
        client_ca = str(secret_path("http.tls.client_ca", cfg.client_ca)) if cfg.client_ca else ""
    except ConfigError as exc:
        raise TlsError(exc.key, exc.message) from None
    _check_private(keyfile)
    try:
        ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
    except FileNotFoundError as exc:
        raise TlsError("http.tls", f"{exc.filename}: no such file") from None
    except ssl.SSLError as exc:
        raise TlsError(
            "http.tls", f"{certfile} / {keyfile}: not a matching PEM pair ({exc.reason})"
        ) from None
    except OSError as exc:
        raise TlsError("http.tls", f"{exc.filename}: {exc.strerror}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except FileNotFoundError:
            raise TlsError("http.tls.client_ca", f"{client_ca}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                "http.tls.client_ca", f"{client_ca}: no CA certificate read ({exc})"
            ) from None
        # Explicit, from the enum: ca_certs without verify_mode asks for no
        # certificate at all (PLATFORM_NOTES).
        required = cfg.client_cert == "required"
        ctx.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def subject_of(der: bytes) -> tuple[str, str]:
    """A certificate's subject (RFC 4514, most specific first) and its CN ("" if none)."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    return cert.subject.rfc4514_string(), cn if isinstance(cn, str) else cn.decode()


def client_principal(
    entries: tuple[ClientPrincipal, ...], subject: str, common_name: str
) -> Principal | None:
    """The principal a verified client certificate maps to, or None."""
    for entry in entries:
        if (entry.subject and entry.subject == subject) or (
            entry.common_name and entry.common_name == common_name
        ):
            return Principal(
                issuer=MTLS_ISSUER,
                subject=subject,
                roles=entry.roles,
                permissions=permissions_of(entry.roles),
            )
    return None


def failure_reason(exc: BaseException) -> str:
    """A short fixed code for why a handshake failed (the metric's ``reason``)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return "connection_lost"
    why = (getattr(cause, "reason", None) or "").upper()
    if "CERTIFICATE_REQUIRED" in why or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in why:
        return "no_client_certificate"
    if "CERTIFICATE_VERIFY_FAILED" in why or "UNKNOWN_CA" in why or "BAD_CERTIFICATE" in why:
        return "bad_client_certificate"
    if "VERSION" in why or "PROTOCOL" in why:
        return "protocol_version"
    if "HTTP_REQUEST" in why or "WRONG_VERSION_NUMBER" in why:
        return "not_tls"
    return "other"
