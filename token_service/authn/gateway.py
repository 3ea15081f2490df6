"""Identity asserted by a gateway in front of the service (design 2.1, "Gateway assertions").

A gateway that has already signed the user in forwards a signed assertion in a header of its own:
an AWS ALB ``x-amzn-oidc-data`` (``alb.py``), Google Cloud IAP ``x-goog-iap-jwt-assertion``,
Cloudflare Access ``Cf-Access-Jwt-Assertion``, or any other JWT in a named header (oauth2-proxy
forwarding the IdP's ID token). The issuer declares it with ``[issuers.gateway]``.

The header is honoured only on a connection from ``[server] trusted_proxy_addresses``: the TCP peer,
which is the address that opened the connection, not the client address ProxyFix derives from
``X-Forwarded-For`` (werkzeug keeps the original in ``environ["werkzeug.proxy_fix.orig"]``). From
any other peer the header is ignored, as if absent, and counted. A gateway issuer's tokens are never
accepted as a plain bearer token (``bearer.py``), and a gateway's header accepts only its own
issuer's tokens, so neither path reaches beyond its scope.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from token_service.authn.alb import AlbAssertions, AlbKeyCache
from token_service.authn.bearer import BearerVerifier, VerifiedToken
from token_service.metrics import GATEWAY_HEADERS_IGNORED, child
from token_service.settings import IssuerSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class GatewayAssertion(NamedTuple):
    """A gateway header's value, read from a trusted proxy; verified by ``Gateways.verify``."""

    issuer: IssuerSettings
    token: str


def tcp_peer(environ: Mapping[str, Any]) -> str | None:
    """The address that opened the connection, before ProxyFix put the client's in ``REMOTE_ADDR``."""
    original = environ.get("werkzeug.proxy_fix.orig")
    source = original if isinstance(original, Mapping) else environ
    peer = source.get("REMOTE_ADDR")
    return peer if isinstance(peer, str) else None


def trusted_peer(peer: str | None, networks: Iterable[Network]) -> bool:
    """Whether ``peer`` lies in one of ``networks`` (an IPv4-mapped IPv6 address counts as IPv4)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False  # a unix socket, or no address at all
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class Gateways:
    """Every gateway issuer, by the header its assertion arrives in."""

    def __init__(self, issuers: Iterable[IssuerSettings], trusted_addresses: Iterable[str],
                 verifier: BearerVerifier) -> None:
        self._by_header = [(i.gateway.header_name, i) for i in issuers if i.gateway is not None]
        self._networks = [ipaddress.ip_network(a, strict=False) for a in trusted_addresses]
        self._verifier = verifier
        self._alb: dict[str, AlbAssertions] = {}
        for _, issuer in self._by_header:
            cache = verifier.caches[issuer.name]
            if isinstance(cache, AlbKeyCache):
                self._alb[issuer.name] = AlbAssertions(issuer, cache)

    def assertion(self, header: Callable[[str], str | None], peer: str | None) -> GatewayAssertion | None:
        """The assertion a trusted proxy forwarded, or None (no gateway header, or not from a trusted proxy)."""
        if not self._by_header:
            return None  # the common case: no gateway configured, nothing to look up
        found = [(issuer, value) for name, issuer in self._by_header if (value := header(name))]
        if not found:
            return None
        issuer, value = found[0]
        if not trusted_peer(peer, self._networks):
            child(GATEWAY_HEADERS_IGNORED, issuer.name).inc()
            return None
        token = value.strip()
        scheme, _, rest = token.partition(" ")
        if scheme.lower() == "bearer":  # a proxy that forwards an Authorization-style value
            token = rest.strip()
        return GatewayAssertion(issuer, token)

    def verify(self, assertion: GatewayAssertion) -> VerifiedToken:
        """The assertion's claims, verified by its kind's rules, for its own issuer only."""
        issuer = assertion.issuer
        alb = self._alb.get(issuer.name)
        if alb is not None:
            return VerifiedToken(issuer=issuer, claims=alb.verify(assertion.token))
        return self._verifier.verify_gateway_assertion(assertion.token, issuer.name)
