"""TLS for nodes: the listener's options (HTTPS, optionally mTLS) and the upstream client's context.

Listeners are served by uvicorn, which builds its own `ssl.SSLContext` from file names, so
`server_options` only translates a `TLSConfig` into uvicorn's keywords. The upstream side is an
`ssl.SSLContext` handed to the HTTP client (``verify=``): a private CA, a client certificate for
upstreams that require one, or no verification at all for a lab setup.
"""

from __future__ import annotations

import ssl
from typing import Any

from .errors import ConfigError
from .opsettings import TLSConfig, UpstreamTLSConfig

__all__ = ["NO_CLIENT_CERT_HINT", "client_context", "server_options"]


def server_options(tls: TLSConfig) -> dict[str, Any]:
    """uvicorn keywords that make a listener serve HTTPS (empty when TLS is off).

    With ``client_ca`` set, a client must present a certificate issued by that CA, or the
    handshake fails before any request is read.
    """
    if not tls.enabled:
        return {}
    options: dict[str, Any] = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
    if tls.client_ca:
        options["ssl_ca_certs"] = tls.client_ca
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options


def client_context(tls: UpstreamTLSConfig) -> ssl.SSLContext | None:
    """The context for ``https://`` upstreams, or None to keep the client's defaults (the
    system trust store, ``SSL_CERT_FILE``) when nothing is configured."""
    if not (tls.ca or tls.cert) and tls.verify:
        return None
    try:
        context = ssl.create_default_context(cafile=tls.ca or None)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"upstream_tls: cannot load the CA or client certificate: {exc}") \
            from None
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context



# TLS 1.3 finishes the client's handshake before the server checks the client certificate, and
# an asyncio server then just closes: the client sees a bare disconnect, not a TLS alert.
NO_CLIENT_CERT_HINT = ("the upstream closed the TLS connection before answering; it may refuse "
                       "this node's client certificate, or want one (upstream_tls.cert, key)")
