"""Which configured issuer a token's ``iss`` names (OIDC Core 3.1.3.7, Microsoft's multi-tenant rule).

An issuer is matched by its exact ``iss``, by one of its aliases (Google's ``accounts.google.com``
beside ``https://accounts.google.com``), or by a tenant template: Microsoft Entra ID's multi-tenant
issuer ``https://login.microsoftonline.com/{tenantid}/v2.0``, where the tenant must be a GUID on
the issuer's allow-list (or any tenant, when the operator opted in). Matching happens on the
unverified token only to choose the keys; after the signature holds, ``check_tenant`` applies the
rule Microsoft documents: the ``tid`` claim must equal the tenant in ``iss``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from token_service.errors import InvalidToken
from token_service.settings import GUID, TENANT_PLACEHOLDER, IssuerSettings


class IssuerMatch(NamedTuple):
    issuer: IssuerSettings
    iss: str  # the token's own iss, as matched
    tenant: str | None  # the tenant taken from a templated iss


class _Template(NamedTuple):
    head: str
    tail: str
    issuer: IssuerSettings

    def tenant_of(self, iss: str) -> str | None:
        if not (iss.startswith(self.head) and iss.endswith(self.tail)):
            return None
        tenant = iss[len(self.head):len(iss) - len(self.tail)]
        if not GUID.fullmatch(tenant):
            return None
        if self.issuer.any_tenant or tenant in self.issuer.tenants:
            return tenant
        return None


class IssuerDirectory:
    """Every configured issuer, found by the ``iss`` a token carries."""

    def __init__(self, issuers: Iterable[IssuerSettings]) -> None:
        self._exact: dict[str, IssuerSettings] = {}
        self._templates: list[_Template] = []
        for issuer in issuers:
            for pattern in issuer.issuer_patterns:
                if TENANT_PLACEHOLDER in pattern:
                    head, tail = pattern.split(TENANT_PLACEHOLDER)
                    self._templates.append(_Template(head, tail, issuer))
                else:
                    self._exact[pattern] = issuer

    def match(self, iss: Any) -> IssuerMatch | None:
        """The issuer ``iss`` names, or None; exact names win over tenant templates."""
        if not isinstance(iss, str):
            return None
        exact = self._exact.get(iss)
        if exact is not None:
            return IssuerMatch(exact, iss, None)
        for template in self._templates:
            tenant = template.tenant_of(iss)
            if tenant is not None:
                return IssuerMatch(template.issuer, iss, tenant)
        return None


def check_tenant(claims: Mapping[str, Any], match: IssuerMatch) -> None:
    """Microsoft's rule for tenant-templated issuers: ``tid`` must be the tenant named in ``iss``."""
    if match.tenant is not None and claims.get("tid") != match.tenant:
        raise InvalidToken("the token's 'tid' claim does not name the tenant of its issuer")
