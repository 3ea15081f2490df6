"""The token path: proof -> mapped identity and role -> rate limit -> tokens (design section 2).

Framework-free orchestration of ``authn``, ``mapping``, ``ratelimit``, ``store`` and ``tokens``,
so the blueprint stays a thin adapter. Each request costs one store round trip: the rate-limit
check and the family write (or rotation, or revocation) happen in the same atomic call.
"""

from __future__ import annotations

from typing import NamedTuple

from token_service.authn.bearer import BearerVerifier, VerifiedToken
from token_service.authn.sessions import BrowserSession, SessionStore, logout_indexes
from token_service.conversations import SyncSettings, UserSync
from token_service.errors import GroupOverage, InvalidGrant, InvalidRequest, RateLimited, ServiceError
from token_service.logs import AuditLog
from token_service.mapping import Condition, IdentityPolicy, Mapped, RolePolicy, map_claims
from token_service.metrics import (
    FAMILIES_REVOKED,
    GROUP_OVERAGE,
    RATE_LIMITED,
    REFRESHES,
    TOKENS_ISSUED,
    child,
    current_month,
)
from token_service.ratelimit import RateLimiter, rate_limit_headers
from token_service.settings import Settings
from token_service.store.base import Bucket, Family, FamilyLifetimes, LimitDecision, Store, StoreUnavailable
from token_service.tokens.access import ChatAccess, MintedToken, TwilioKey, mint_access_token
from token_service.tokens.refresh import (
    identity_tag,
    mint_refresh_token,
    new_family_id,
    parse_refresh_token,
)

audit = AuditLog("token_service.audit")

KNOWN_PLATFORMS = frozenset({"ios", "android", "web"})
INVALID_REFRESH = "the refresh token is invalid, expired or revoked; sign in again"


def user_sync_for(settings: Settings, store: Store) -> UserSync | None:
    """The Conversations REST sync of ``[conversations.sync]``, or None when it is off."""
    sync = settings.conversations.sync
    if not sync.enabled:
        return None
    twilio = settings.twilio
    return UserSync(
        SyncSettings(
            service_sid=twilio.service_sid,
            account_sid=twilio.account_sid,
            api_key_sid=twilio.api_key_sid,
            api_key_secret=settings.secrets.twilio_api_key_secret.get_secret_value(),
            base_url=sync.base_url,
            failure_mode=sync.failure_mode,
            timeout=sync.timeout,
            cache_ttl=sync.cache_ttl,
            friendly_name_claim=sync.friendly_name_claim,
            max_attempts=sync.max_attempts,
        ),
        store,
    )


class IssuedToken(NamedTuple):
    access: MintedToken
    mapped: Mapped
    refresh_token: str
    refresh_expires_at: int
    limits: LimitDecision


def rate_limited(endpoint: str, limits: LimitDecision) -> RateLimited:
    tightest = limits.tightest()
    child(RATE_LIMITED, endpoint, tightest.policy if tightest else "").inc()
    return RateLimited(
        f"too many requests; retry in {max(1, limits.retry_after)} s",
        headers=rate_limit_headers(limits),
    )


def _refuse_if_limited(endpoint: str, limits: LimitDecision) -> None:
    if not limits.allowed:
        raise rate_limited(endpoint, limits)


class TokenIssuer:
    """Holds what minting needs (keys, policies, store) once, so each request only does the work."""

    def __init__(self, settings: Settings, store: Store, verifier: BearerVerifier | None = None) -> None:
        self.settings = settings
        self.store = store
        self.verifier = verifier or BearerVerifier(settings.issuers)
        self.limiter = RateLimiter(settings.rate_limits)
        twilio = settings.twilio
        self.twilio_key = TwilioKey(
            account_sid=twilio.account_sid,
            api_key_sid=twilio.api_key_sid,
            api_key_secret=settings.secrets.twilio_api_key_secret.get_secret_value(),
            region=twilio.region,
        )
        # Each issuer's own rules (the global sections where it has none): never another's.
        self._identity_policies: dict[str, IdentityPolicy] = {
            i.name: settings.identity_policy(i) for i in settings.issuers
        }
        self._requirements: dict[str, list[Condition]] = {
            i.name: list(settings.access_requirements(i)) for i in settings.issuers
        }
        self._role_policies: dict[str, RolePolicy] = {i.name: settings.role_policy(i) for i in settings.issuers}
        self.lifetimes = FamilyLifetimes(
            idle=settings.refresh.idle_ttl,
            absolute=settings.refresh.absolute_ttl,
            reuse_grace=settings.refresh.reuse_grace,
        )
        self.platforms = KNOWN_PLATFORMS | set(twilio.push_credentials)
        self.user_sync = user_sync_for(settings, store)

    # -- pieces -----------------------------------------------------------------------------
    def push_credential(self, platform: str | None) -> str | None:
        if platform is None:
            return None
        if platform not in self.platforms:
            raise InvalidRequest(f"platform must be one of: {', '.join(sorted(self.platforms))}")
        return self.settings.twilio.push_credentials.get(platform)

    def mint(self, mapped: Mapped, platform: str | None) -> MintedToken:
        twilio = self.settings.twilio
        access = ChatAccess(
            identity=mapped.identity,
            service_sid=twilio.service_sid,
            role_sid=mapped.role_sid,
            push_credential_sid=self.push_credential(platform),
        )
        return mint_access_token(self.twilio_key, access, ttl=twilio.token_ttl, include_nbf=twilio.include_nbf)

    def _count_failure(self, endpoint: str, buckets: list[Bucket], error: ServiceError) -> ServiceError:
        """A refused proof still counts against the client-IP bucket, so guessing is limited.

        With the store down the original error stands: a 401 should not turn into a 503.
        """
        if not buckets:
            return error
        try:
            limits = self.store.hit(buckets)
        except StoreUnavailable:
            return error
        return rate_limited(endpoint, limits) if not limits.allowed else error

    def map_verified(self, verified: VerifiedToken) -> Mapped:
        """Access gate, identity and role for verified claims, with this issuer's cached policies."""
        name = verified.issuer.name
        try:
            return map_claims(verified.claims, self._identity_policies[name], self._requirements[name],
                              self._role_policies[name])
        except GroupOverage:
            child(GROUP_OVERAGE, name).inc()
            raise

    # -- endpoints --------------------------------------------------------------------------
    def issue_for_bearer(self, bearer: str, *, platform: str | None, client_ip: str | None) -> IssuedToken:
        """Verify ``bearer``, map its claims, start a refresh family and mint."""
        self.push_credential(platform)  # reject a bad platform before any expensive work
        try:
            verified = self.verifier.verify(bearer)
            mapped = self.map_verified(verified)
        except ServiceError as exc:
            if exc.status >= 500:
                raise
            buckets = self.limiter.buckets("token", ip=client_ip, ip_only=True)
            raise self._count_failure("token", buckets, exc) from None
        sid = str(verified.claims.get("sid", ""))
        name_claim = self.settings.conversations.sync.friendly_name_claim
        friendly = verified.claims.get(name_claim) if name_claim else None
        return self.start_family(
            mapped, issuer=verified.issuer.name, subject=verified.claims["sub"], idp_session=sid,
            links=logout_indexes(verified.issuer.name, verified.claims["sub"], sid),
            platform=platform, client_ip=client_ip,
            friendly_name=friendly if isinstance(friendly, str) and friendly else None,
        )

    def issue_for_session(self, session_id: str, session: BrowserSession, *, platform: str | None,
                          client_ip: str | None) -> IssuedToken:
        """A signed-in browser: mint for the session's identity, listed under the session too."""
        self.push_credential(platform)
        mapped = Mapped(identity=session.identity, role=session.role, role_sid=session.role_sid)
        links = [*logout_indexes(session.issuer, session.subject, session.idp_session),
                 SessionStore.families_index(session_id)]
        return self.start_family(
            mapped, issuer=session.issuer, subject=session.subject, idp_session=session.idp_session,
            links=links, platform=platform, client_ip=client_ip,
        )

    def sync_user(self, mapped: Mapped, friendly_name: str | None = None) -> None:
        """Make the Conversations User carry the mapped role (cached: usually no REST call at all)."""
        if self.user_sync is not None:
            self.user_sync.ensure(mapped.identity, mapped.role_sid, friendly_name)

    def start_family(self, mapped: Mapped, *, issuer: str, subject: str, idp_session: str, links: list[str],
                     platform: str | None, client_ip: str | None, friendly_name: str | None = None) -> IssuedToken:
        """Rate-limit, store a new refresh family (one store call) and mint the access token."""
        tag = identity_tag(mapped.identity)
        refresh = mint_refresh_token(tag, new_family_id())
        family = Family(
            family_id=refresh.family_id,
            tag=tag,
            identity=mapped.identity,
            role=mapped.role,
            role_sid=mapped.role_sid,
            issuer=issuer,
            subject=subject,
            session_id=idp_session,
        )
        buckets = self.limiter.buckets("token", ip=client_ip, tag=tag)
        issued = self.store.issue(buckets, family, refresh.digest, self.lifetimes, current_month(), links)
        _refuse_if_limited("token", issued.limits)
        try:
            self.sync_user(mapped, friendly_name)
        except ServiceError:
            # fail_closed: no token goes out, so the family just stored must not outlive the refusal.
            self.store.revoke_families([(tag, family.family_id)])
            raise
        minted = self.mint(mapped, platform)
        child(TOKENS_ISSUED, family.issuer, mapped.role).inc()
        audit.info(
            "token issued",
            extra={
                "event": "token_issued",
                "identity": mapped.identity,
                "role": mapped.role,
                "issuer": family.issuer,
                "sub": family.subject,
                "jti": minted.jti,
                "family": family.family_id,
                "client_ip": client_ip,
            },
        )
        return IssuedToken(minted, mapped, refresh.value, issued.expires_at, issued.limits)

    def refresh(self, presented: str, *, platform: str | None, client_ip: str | None) -> IssuedToken:
        """Rotate ``presented`` and mint again for the family's identity and role."""
        self.push_credential(platform)
        try:
            old = parse_refresh_token(presented)
        except InvalidGrant as exc:
            raise self._count_failure("refresh", self.limiter.buckets("refresh", ip=client_ip), exc) from None
        new = mint_refresh_token(old.tag, old.family_id)
        buckets = self.limiter.buckets("refresh", ip=client_ip, tag=old.tag, family_id=old.family_id)
        rotation = self.store.rotate(
            buckets, old.tag, old.family_id, old.digest, new.digest, self.lifetimes, current_month()
        )
        child(REFRESHES, rotation.outcome).inc()
        _refuse_if_limited("refresh", rotation.limits)
        family = rotation.family
        if rotation.outcome == "reused" and family is not None:
            child(FAMILIES_REVOKED, "reuse").inc()
            audit.warning(
                "refresh token reuse detected: family revoked",
                extra={
                    "event": "refresh_reuse_detected",
                    "identity": family.identity,
                    "issuer": family.issuer,
                    "sub": family.subject,
                    "family": family.family_id,
                    "client_ip": client_ip,
                },
            )
        if rotation.outcome not in ("rotated", "grace") or family is None:
            raise InvalidGrant(INVALID_REFRESH)
        mapped = Mapped(identity=family.identity, role=family.role, role_sid=family.role_sid)
        self.sync_user(mapped)  # a deferred (fail_open) sync is retried here
        minted = self.mint(mapped, platform)
        audit.info(
            "token refreshed",
            extra={
                "event": "token_refreshed",
                "identity": family.identity,
                "role": family.role,
                "family": family.family_id,
                "jti": minted.jti,
                "grace": rotation.outcome == "grace",
                "client_ip": client_ip,
            },
        )
        return IssuedToken(minted, mapped, new.value, rotation.expires_at, rotation.limits)

    def revoke(self, presented: str, *, client_ip: str | None) -> LimitDecision:
        """RFC 7009: end the token's family; unknown or malformed tokens are not an error."""
        buckets = self.limiter.buckets("revoke", ip=client_ip)
        try:
            token = parse_refresh_token(presented)
        except InvalidGrant:
            limits = self.store.hit(buckets)
            _refuse_if_limited("revoke", limits)
            return limits
        revocation = self.store.revoke(buckets, token.tag, token.family_id, token.digest)
        _refuse_if_limited("revoke", revocation.limits)
        if revocation.revoked and revocation.family is not None:
            child(FAMILIES_REVOKED, "revoke").inc()
            audit.info(
                "refresh family revoked",
                extra={
                    "event": "family_revoked",
                    "identity": revocation.family.identity,
                    "family": revocation.family.family_id,
                    "client_ip": client_ip,
                },
            )
        return revocation.limits

    def revoke_identity(self, identity: str) -> int:
        count = self.store.revoke_identity(identity_tag(identity), identity)
        FAMILIES_REVOKED.labels("identity").inc(count)
        audit.info(
            "identity revoked",
            extra={"event": "identity_revoked", "identity": identity, "families": count},
        )
        return count
