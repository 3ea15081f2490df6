"""The token path: proof -> mapped identity and role -> rate limit -> tokens (design section 2).

Framework-free orchestration of ``authn``, ``mapping``, ``ratelimit``, ``store`` and ``tokens``,
so the HTTP layer stays a thin adapter. Each request costs one store round trip: the rate-limit
check and the family write (or rotation, or revocation) happen in the same atomic call.

Roles: a sign-in's mapped role becomes the identity's current role; every family of the identity
mints with that role at its next refresh (or ends there, ``[refresh] on_role_change``), so Twilio
and every device learn the newest role, never an older one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from token_service.authn.bearer import BearerVerifier, VerifiedToken
from token_service.authn.clients import TrustedClients
from token_service.authn.gateway import GatewayAssertion, Gateways
from token_service.authn.sessions import BrowserSession, SessionStore
from token_service.conversations import SyncSettings, UserSync
from token_service.errors import (
    AccessDenied,
    GroupOverage,
    InvalidGrant,
    InvalidRequest,
    LoginRequired,
    RateLimited,
    ServiceError,
)
from token_service.logs import AuditLog
from token_service.mapping import Condition, IdentityPolicy, Mapped, RolePolicy, map_claims
from token_service.metrics import (
    CLIENT_MINTS,
    FAMILIES_REVOKED,
    GROUP_OVERAGE,
    RATE_LIMITED,
    REFRESH_ROLE_UPDATES,
    REFRESHES,
    ROLE_CHANGES,
    TOKENS_ISSUED,
    child,
    current_month,
)
from token_service.ratelimit import RateLimiter, rate_limit_headers
from token_service.settings import Settings
from token_service.store.base import (
    Bucket,
    Ended,
    FamilyInfo,
    FamilyPolicy,
    LimitDecision,
    NewFamily,
    Store,
    StoreUnavailable,
)
from token_service.tokens.access import ChatAccess, MintedToken, TwilioKey, mint_access_token
from token_service.tokens.refresh import NOT_OURS, RefreshTokens, derive_refresh_key, identity_tag, new_family_id

audit = AuditLog("token_service.audit")

KNOWN_PLATFORMS = frozenset({"ios", "android", "web"})
INVALID_REFRESH = NOT_OURS
ROLE_UNCONFIRMED = "the role has not been confirmed by the identity provider for too long; sign in again"
ROLE_CHANGED = "the user's role changed; sign in again"


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
        newest_role_sid=lambda identity: _newest_role_sid(settings, store, identity),
    )


def _newest_role_sid(settings: Settings, store: Store, identity: str) -> str | None:
    """The SID of the identity's current role (None when unknown: the caller's role stands)."""
    try:
        role = store.current_role(identity_tag(identity))
    except StoreUnavailable:
        return None
    return settings.roles.sids.get(role) if role else None


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
        secrets = settings.secrets
        api_key_secret = secrets.twilio_api_key_secret.get_secret_value()
        self.twilio_key = TwilioKey(
            account_sid=twilio.account_sid,
            api_key_sid=twilio.api_key_sid,
            api_key_secret=api_key_secret,
            region=twilio.region,
        )
        dedicated = secrets.refresh_key.get_secret_value() if secrets.refresh_key else None
        self.refresh_tokens = RefreshTokens(derive_refresh_key(dedicated, api_key_secret))
        # Each issuer's own rules (the global sections where it has none): never another's.
        self._identity_policies: dict[str, IdentityPolicy] = {
            i.name: settings.identity_policy(i) for i in settings.issuers
        }
        self._requirements: dict[str, list[Condition]] = {
            i.name: list(settings.access_requirements(i)) for i in settings.issuers
        }
        self._role_policies: dict[str, RolePolicy] = {i.name: settings.role_policy(i) for i in settings.issuers}
        refresh = settings.refresh
        self.policy = FamilyPolicy(
            idle=refresh.idle_ttl,
            absolute=refresh.absolute_ttl,
            retry_window=refresh.retry_window,
            role_max_age=refresh.role_max_age,
            on_role_change=refresh.on_role_change,
        )
        # Back-channel logout accepts logout tokens of the [login] issuer only: only its families
        # need to be findable by sub and sid.
        self.logout_issuer = settings.login.issuer if settings.login.enabled else None
        self.platforms = KNOWN_PLATFORMS | set(twilio.push_credentials)
        self.user_sync = user_sync_for(settings, store)
        self.gateways = Gateways(settings.issuers, settings.server.trusted_proxy_addresses, self.verifier)
        self.clients = TrustedClients(settings, self.verifier, store)

    # -- pieces -----------------------------------------------------------------------------
    def push_credential(self, platform: str | None) -> str | None:
        if platform is None:
            return None
        if platform not in self.platforms:
            raise InvalidRequest(f"platform must be one of: {', '.join(sorted(self.platforms))}")
        return self.settings.twilio.push_credentials.get(platform)

    def role_sid(self, role: str) -> str:
        """The SID of a role the store remembers; one removed from the configuration needs a sign-in."""
        sid = self.settings.roles.sids.get(role)
        if sid is None:
            raise LoginRequired(f"the role {role!r} is no longer configured; sign in again")
        return sid

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
        """A refused proof counts against the client IP and the global failure budget only.

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
        return self._issue_for_proof(partial(self.verifier.verify, bearer), platform=platform, client_ip=client_ip)

    def gateway_assertion(self, header: Callable[[str], str | None], peer: str | None) -> GatewayAssertion | None:
        """The identity assertion a gateway in front forwarded, when ``peer`` is a trusted proxy (else None)."""
        return self.gateways.assertion(header, peer)

    def issue_for_gateway(self, assertion: GatewayAssertion, *, platform: str | None,
                          client_ip: str | None) -> IssuedToken:
        """A gateway's assertion is a proof like a bearer token: the same mapping, limits, family and audit."""
        return self._issue_for_proof(partial(self.gateways.verify, assertion), platform=platform,
                                     client_ip=client_ip)

    def _issue_for_proof(self, verify: Callable[[], VerifiedToken], *, platform: str | None,
                         client_ip: str | None) -> IssuedToken:
        self.push_credential(platform)  # reject a bad platform before any expensive work
        try:
            verified = verify()
            if self.clients.owner(verified) is not None:
                raise InvalidRequest("this token is a trusted client's credential: send the identity to mint for")
            mapped = self.map_verified(verified)
        except ServiceError as exc:
            if exc.status >= 500:
                raise
            raise self._count_failure("token", self.limiter.failure_buckets("token", ip=client_ip), exc) from None
        sid = verified.claims.get("sid")
        name_claim = self.settings.conversations.sync.friendly_name_claim
        friendly = verified.claims.get(name_claim) if name_claim else None
        issuer = verified.issuer.name
        return self.start_family(
            mapped, issuer=issuer, subject=verified.claims["sub"], idp_session=sid if isinstance(sid, str) else "",
            platform=platform, client_ip=client_ip,
            friendly_name=friendly if isinstance(friendly, str) and friendly else None,
        )

    def issue_for_session(self, session_id: str, session: BrowserSession, *, platform: str | None,
                          client_ip: str | None) -> IssuedToken:
        """A signed-in browser: a family for the session's identity, ended with the session.

        The session's sign-in is the proof: the family takes the identity's current role, which a
        newer sign-in elsewhere may have changed since.
        """
        self.push_credential(platform)
        mapped = Mapped(identity=session.identity, role=session.role, role_sid=session.role_sid)
        return self.start_family(
            mapped, issuer=session.issuer, subject=session.subject, idp_session=session.idp_session,
            platform=platform, client_ip=client_ip, browser_session=SessionStore.digest(session_id),
            confirmed_at=session.created_at,
        )

    def issue_for_client(self, credential: str, identity: str, role: str | None, *, platform: str | None,
                         client_ip: str | None) -> IssuedToken:
        """A trusted backend client mints for the identity it names, within its allow-list.

        A client is not the user's identity provider, so its mint never sets or changes the identity's
        current role (which sign-ins set). Without refresh tokens (the default) the token carries the
        role asked for, and nothing about the identity is stored. With ``refresh_tokens``, the mint
        starts a family of the identity like any other, which mints the identity's current role at
        every refresh: so it is refused (403) when a sign-in set another role than the one asked for;
        for an identity no sign-in has reached (a bot), the role asked for becomes its role.
        """
        self.push_credential(platform)
        try:
            client = self.clients.authenticate(credential)
        except ServiceError as exc:
            if exc.status >= 500:
                raise
            raise self._count_failure("client", self.limiter.failure_buckets("client", ip=client_ip), exc) from None
        name = client.client_id
        try:
            mapped = self.clients.permit(client, identity, role)
            if client.refresh_tokens:
                self._role_is_current(mapped, name)
        except ServiceError as exc:
            self._client_refused(name, identity, role, exc, client_ip)
            raise self._count_failure("client", self.clients.buckets(self.limiter, client, tag=None, ip=client_ip),
                                      exc) from None
        buckets = self.clients.buckets(self.limiter, client, tag=identity_tag(mapped.identity), ip=client_ip)
        on_behalf = {"client_id": name}
        if client.refresh_tokens:
            issued = self._client_family(mapped, client.credential_subject, name, buckets, platform, client_ip)
        else:
            limits = self.store.hit(buckets)
            _refuse_if_limited("client", limits)
            self.sync_user(mapped.identity, mapped.role_sid)  # yields to a role a sign-in set
            minted = self.mint(mapped, platform)
            child(TOKENS_ISSUED, f"client:{name}", mapped.role).inc()
            audit.info("token issued", extra={
                "event": "token_issued", "identity": mapped.identity, "role": mapped.role, "issuer": f"client:{name}",
                "sub": client.credential_subject, "jti": minted.jti, "family": None, "client_ip": client_ip,
                **on_behalf,
            })
            issued = IssuedToken(minted, mapped, "", 0, limits)
        child(CLIENT_MINTS, name, "issued").inc()
        return issued

    @staticmethod
    def _client_refused(client_id: str, identity: str, role: str | None, exc: ServiceError,
                        client_ip: str | None) -> None:
        child(CLIENT_MINTS, client_id, "refused").inc()
        audit.info("client mint refused", extra={
            "event": "client_mint_refused", "client_id": client_id, "identity": identity[:256], "role": role,
            "reason": exc.detail, "client_ip": client_ip,
        })

    def _role_is_current(self, mapped: Mapped, client_id: str) -> None:
        """A client's refresh family mints the identity's current role: it may only start with that one."""
        current = self.store.current_role(identity_tag(mapped.identity))
        if current is not None and current != mapped.role:
            raise AccessDenied(f"this identity's role is set by its sign-ins; a refresh family of client "
                               f"{client_id!r} would carry that role ({current!r}): ask for it, or mint without "
                               "refresh tokens")

    def _client_family(self, mapped: Mapped, subject: str, client_id: str, buckets: list[Bucket],
                       platform: str | None, client_ip: str | None) -> IssuedToken:
        """A trusted client's mint with a refresh token: a family of the identity, marked as the client's."""
        issued = self.start_family(mapped, issuer=f"client:{client_id}", subject=subject, idp_session="",
                                   platform=platform, client_ip=client_ip, confirmed_at=int(time.time()),
                                   endpoint="client", buckets=buckets, audit_fields={"client_id": client_id})
        if issued.mapped.role != mapped.role:
            # A sign-in set another role in the moment since the check above: the token is not handed out.
            token = self.refresh_tokens.parse(issued.refresh_token)
            self.store.revoke([], token.tag, token.family_id, 0, self.policy)
            refused = AccessDenied(f"this identity's role was just set by a sign-in; client {client_id!r} may "
                                   "not start a refresh family with another role")
            self._client_refused(client_id, mapped.identity, mapped.role, refused, client_ip)
            raise refused
        return issued

    def sync_user(self, identity: str, role_sid: str, friendly_name: str | None = None) -> None:
        """Make the Conversations User carry the role (cached: usually no REST call at all)."""
        if self.user_sync is not None:
            self.user_sync.ensure(identity, role_sid, friendly_name)

    def start_family(self, mapped: Mapped, *, issuer: str, subject: str, idp_session: str, platform: str | None,
                     client_ip: str | None, friendly_name: str | None = None, browser_session: str = "",
                     confirmed_at: int = 0, endpoint: str = "token", buckets: list[Bucket] | None = None,
                     audit_fields: dict[str, object] | None = None) -> IssuedToken:
        """Rate-limit, store a new refresh family (one store call) and mint the access token."""
        tag = identity_tag(mapped.identity)
        family = NewFamily(
            tag=tag, family_id=new_family_id(), identity=mapped.identity, role=mapped.role, issuer=issuer,
            subject=subject, idp_session=idp_session, browser_session=browser_session, confirmed_at=confirmed_at,
            logout_index=issuer == self.logout_issuer,
        )
        if buckets is None:
            buckets = self.limiter.buckets(endpoint, ip=client_ip, tag=tag)
        issued = self.store.issue(buckets, family, self.policy, current_month())
        _refuse_if_limited(endpoint, issued.limits)
        if issued.previous_role:
            child(ROLE_CHANGES, "sign_in").inc()
            audit.info("role changed", extra={
                "event": "role_changed", "identity": mapped.identity, "role": issued.role,
                "previous_role": issued.previous_role, "issuer": issuer, "sub": subject, "client_ip": client_ip,
            })
        try:
            current = mapped._replace(role=issued.role, role_sid=self.role_sid(issued.role))
            self.sync_user(current.identity, current.role_sid, friendly_name)
        except ServiceError:
            # No token goes out (fail_closed sync, a role no longer configured), so the family just
            # stored must not outlive the refusal.
            self.store.revoke([], tag, family.family_id, 0, self.policy)
            raise
        minted = self.mint(current, platform)
        child(TOKENS_ISSUED, issuer, current.role).inc()
        audit.info(
            "token issued",
            extra={
                "event": "token_issued",
                "identity": current.identity,
                "role": current.role,
                "issuer": issuer,
                "sub": subject,
                "jti": minted.jti,
                "family": family.family_id,
                "client_ip": client_ip,
                **(audit_fields or {}),
            },
        )
        refresh_token = self.refresh_tokens.mint(tag, family.family_id, 0)
        return IssuedToken(minted, current, refresh_token, issued.expires_at, issued.limits)

    def refresh(self, presented: str, *, platform: str | None, client_ip: str | None) -> IssuedToken:
        """Spend ``presented`` and mint again for the family's identity, with its current role."""
        self.push_credential(platform)
        try:
            token = self.refresh_tokens.parse(presented)
        except InvalidGrant as exc:
            child(REFRESHES, "invalid").inc()
            raise self._count_failure("refresh", self.limiter.failure_buckets("refresh", ip=client_ip), exc) from None
        buckets = self.limiter.buckets("refresh", ip=client_ip, tag=token.tag, family_id=token.family_id)
        rotation = self.store.rotate(buckets, token.tag, token.family_id, token.generation, self.policy,
                                     current_month())
        child(REFRESHES, rotation.outcome).inc()
        _refuse_if_limited("refresh", rotation.limits)
        family = rotation.family
        if rotation.outcome == "reused" and family is not None:
            child(FAMILIES_REVOKED, "reuse").inc()
            audit.warning("refresh token reuse detected: family revoked",
                          extra=_family_event("refresh_reuse_detected", family, client_ip))
        if rotation.outcome == "role_revoked" and family is not None:
            child(FAMILIES_REVOKED, "role_change").inc()
            child(REFRESH_ROLE_UPDATES, "revoked").inc()
            audit.info("family revoked: the role changed",
                       extra=_family_event("family_revoked", family, client_ip, reason="role_change"))
            raise LoginRequired(ROLE_CHANGED)
        if rotation.outcome == "login_required":
            raise LoginRequired(ROLE_UNCONFIRMED)
        if rotation.outcome not in ("rotated", "retried") or family is None:
            raise InvalidGrant(INVALID_REFRESH)
        mapped = Mapped(identity=family.identity, role=family.role, role_sid=self.role_sid(family.role))
        if rotation.previous_role:
            child(REFRESH_ROLE_UPDATES, "followed").inc()
        self.sync_user(mapped.identity, mapped.role_sid)  # the newest role; cached, so usually no REST call
        minted = self.mint(mapped, platform)
        audit.info(
            "token refreshed",
            extra={
                "event": "token_refreshed",
                "identity": family.identity,
                "role": family.role,
                "previous_role": rotation.previous_role or None,
                "issuer": family.issuer,
                "sub": family.subject,
                "family": family.family_id,
                "jti": minted.jti,
                "retry": rotation.outcome == "retried",
                "client_ip": client_ip,
            },
        )
        refresh_token = self.refresh_tokens.mint(token.tag, token.family_id, rotation.generation)
        return IssuedToken(minted, mapped, refresh_token, rotation.expires_at, rotation.limits)

    def revoke(self, presented: str, *, client_ip: str | None) -> LimitDecision:
        """RFC 7009: end the token's family; unknown or malformed tokens are not an error."""
        buckets = self.limiter.buckets("revoke", ip=client_ip)
        try:
            token = self.refresh_tokens.parse(presented)
        except InvalidGrant:
            limits = self.store.hit(buckets)
            _refuse_if_limited("revoke", limits)
            return limits
        revocation = self.store.revoke(buckets, token.tag, token.family_id, token.generation, self.policy)
        _refuse_if_limited("revoke", revocation.limits)
        if revocation.revoked and revocation.family is not None:
            child(FAMILIES_REVOKED, "revoke").inc()
            audit.info("refresh family revoked",
                       extra=_family_event("family_revoked", revocation.family, client_ip, reason="revoke"))
        return revocation.limits

    def revoke_identity(self, identity: str, *, actor: str = "cli") -> int:
        """End every family of ``identity`` (an employee leaves); audited and counted."""
        ended = self.store.end_families(identity_tag(identity), reason="revoke_identity", policy=self.policy)
        record_ended("identity", ended, identity=identity, event="identity_revoked", actor=actor)
        return len(ended.family_ids)


def _family_event(event: str, family: FamilyInfo, client_ip: str | None, **more: str) -> dict[str, object]:
    """The audit fields of an event about one family (the request id is added by the log record)."""
    return {
        "event": event,
        "identity": family.identity,
        "issuer": family.issuer or None,
        "sub": family.subject or None,
        "family": family.family_id,
        "client_ip": client_ip,
        **more,
    }


def record_ended(reason: str, ended: Ended, *, event: str, identity: str = "", **fields: object) -> None:
    """Metric and audit line for families ended at once (sign-out, back-channel logout, revoke-all)."""
    FAMILIES_REVOKED.labels(reason).inc(len(ended.family_ids))
    audit.info("refresh families ended", extra={
        "event": event, "identity": ended.identity or identity or None, "families": list(ended.family_ids),
        "count": len(ended.family_ids), **fields,
    })
