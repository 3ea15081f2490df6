"""The token path: verified proof -> mapped identity and role -> Twilio Access Token.

Framework-free orchestration of ``authn``, ``mapping`` and ``tokens``, so the blueprint stays a
thin adapter and later proofs (browser session, refresh token) reuse the same minting step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from token_service.authn.bearer import BearerVerifier
from token_service.errors import InvalidRequest
from token_service.mapping import IdentityPolicy, Mapped, map_claims
from token_service.settings import Settings
from token_service.tokens.access import ChatAccess, MintedToken, TwilioKey, mint_access_token

audit = logging.getLogger("token_service.audit")

KNOWN_PLATFORMS = frozenset({"ios", "android", "web"})


@dataclass(frozen=True)
class IssuedToken:
    access: MintedToken
    mapped: Mapped
    issuer: str
    subject: str


class TokenIssuer:
    """Holds what minting needs (keys, policies) once, so each request only does the work."""

    def __init__(self, settings: Settings, verifier: BearerVerifier | None = None) -> None:
        self.settings = settings
        self.verifier = verifier or BearerVerifier(settings.issuers)
        twilio = settings.twilio
        self.twilio_key = TwilioKey(
            account_sid=twilio.account_sid,
            api_key_sid=twilio.api_key_sid,
            api_key_secret=settings.secrets.twilio_api_key_secret.get_secret_value(),
            region=twilio.region,
        )
        self._identity_policies: dict[str, IdentityPolicy] = {
            i.name: settings.identity_policy(i) for i in settings.issuers
        }
        self._role_policy = settings.role_policy()
        self.platforms = KNOWN_PLATFORMS | set(twilio.push_credentials)

    def push_credential(self, platform: str | None) -> str | None:
        if platform is None:
            return None
        if platform not in self.platforms:
            raise InvalidRequest(
                f"platform must be one of: {', '.join(sorted(self.platforms))}"
            )
        return self.settings.twilio.push_credentials.get(platform)

    def mint(self, mapped: Mapped, platform: str | None) -> MintedToken:
        twilio = self.settings.twilio
        access = ChatAccess(
            identity=mapped.identity,
            service_sid=twilio.service_sid,
            role_sid=mapped.role_sid,
            push_credential_sid=self.push_credential(platform),
        )
        return mint_access_token(
            self.twilio_key, access, ttl=twilio.token_ttl, include_nbf=twilio.include_nbf
        )

    def issue_for_bearer(self, bearer: str, *, platform: str | None, client_ip: str | None) -> IssuedToken:
        """Verify ``bearer``, map its claims and mint; every refusal raises a ``ServiceError``."""
        self.push_credential(platform)  # reject a bad platform before any expensive work
        verified = self.verifier.verify(bearer)
        issuer = verified.issuer
        mapped = map_claims(
            verified.claims,
            self._identity_policies[issuer.name],
            self.settings.access.require,
            self._role_policy,
        )
        minted = self.mint(mapped, platform)
        audit.info(
            "token issued",
            extra={
                "event": "token_issued",
                "identity": mapped.identity,
                "role": mapped.role,
                "issuer": issuer.name,
                "sub": verified.claims["sub"],
                "jti": minted.jti,
                "client_ip": client_ip,
            },
        )
        return IssuedToken(access=minted, mapped=mapped, issuer=issuer.name,
                           subject=verified.claims["sub"])
