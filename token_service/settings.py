"""Typed configuration: one TOML file for settings, environment variables (or files) for secrets.

Everything is validated at load time and every problem is reported as ``key: value: rule`` in one
``ConfigError``, so ``token-service check-config`` can tell an operator exactly what to fix
(design section 4). Secrets never live in the TOML file: a secret-looking key there is an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import jsonpointer
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from token_service.errors import ConfigError
from token_service.mapping import RESERVED_CHARACTERS, TEMPLATE_FIELD, IdentityPolicy, RolePolicy

CONFIG_ENV = "TOKEN_SERVICE_CONFIG"
API_KEY_SECRET_ENV = "TWILIO_API_KEY_SECRET"
REDIS_PASSWORD_ENV = "REDIS_PASSWORD"
SESSION_KEY_ENV = "TOKEN_SERVICE_SESSION_KEY"
REFRESH_KEY_ENV = "TOKEN_SERVICE_REFRESH_KEY"
OPTIONAL_SECRETS = {
    "refresh_key": REFRESH_KEY_ENV,
    "redis_password": REDIS_PASSWORD_ENV,
    "redis_sentinel_password": "REDIS_SENTINEL_PASSWORD",
    "session_key": SESSION_KEY_ENV,
    "oidc_client_secret": "OIDC_CLIENT_SECRET",
}

MIN_TOKEN_TTL = 3 * 60
MAX_TOKEN_TTL = 24 * 60 * 60
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "Ed25519", "Ed448",  # RFC 9864's fully-specified names for EdDSA
)
TENANT_PLACEHOLDER = "{tenantid}"  # Microsoft's placeholder in the multi-tenant issuer
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _sid(prefix: str) -> Any:
    return Annotated[str, StringConstraints(pattern=rf"^{prefix}[0-9a-fA-F]{{32}}$")]


AccountSid = _sid("AC")
ApiKeySid = _sid("SK")
ServiceSid = _sid("IS")
RoleSid = _sid("RL")
CredentialSid = _sid("CR")


def _loopback(host: str | None) -> bool:
    return host in {"localhost", "127.0.0.1", "::1"}


def _check_url(value: str) -> str:
    """An https URL, or http on loopback (development IdPs); no fragment, no credentials."""
    parts = urlsplit(value)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError("must be an absolute https URL")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError("must use https (plain http is allowed for localhost only)")
    if parts.fragment or parts.username or parts.password:
        raise ValueError("must not carry a fragment or credentials")
    return value


Url = Annotated[str, AfterValidator(_check_url)]


def asymmetric_only(value: Any) -> Any:
    """Refuse ``none`` and HMAC algorithms by name, before the type check lists every allowed one."""
    for alg in value if isinstance(value, list) else []:
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise ValueError(
                f"{alg!r} is not allowed: only asymmetric algorithms "
                f"({', '.join(ASYMMETRIC_ALGORITHMS)})"
            )
    return value


def _check_claim_path(value: str) -> str:
    """A claim name, a dotted path, or an RFC 6901 JSON Pointer (starting with ``/``)."""
    if not value or value.strip() != value or "{" in value or "}" in value:
        raise ValueError("must be a claim name, a dotted path or a JSON Pointer such as '/a/b.c' "
                         "(no braces, no surrounding spaces)")
    if value.startswith("/"):
        try:
            jsonpointer.JsonPointer(value)
        except jsonpointer.JsonPointerException as exc:
            raise ValueError(f"is not a valid JSON Pointer (RFC 6901): {exc}; write '~1' for '/' "
                             "and '~0' for '~' inside a name") from None
    return value


ClaimPath = Annotated[str, AfterValidator(_check_claim_path)]


def _check_identity_source(value: str) -> str:
    """A claim path, or a template such as ``{tid}.{oid}`` whose every field is a claim path."""
    fields = TEMPLATE_FIELD.findall(value)
    if not fields:
        return _check_claim_path(value)
    for field in fields:
        _check_claim_path(field)
    rest = TEMPLATE_FIELD.sub("", value)
    if "{" in rest or "}" in rest:
        raise ValueError("has an unmatched brace: write a template as '{claim}' or '{a}.{b}'")
    return value


IdentitySource = Annotated[str, AfterValidator(_check_identity_source)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_network(value: str) -> str:
    """An IP address or a CIDR network (``10.0.0.0/16``, ``2001:db8::/32``)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError("must be an IP address or a CIDR network such as '10.0.0.0/16'") from None
    return value


Network = Annotated[str, AfterValidator(_check_network)]


class ServerSettings(_Section):
    """``[server]``: how the service is reached and what sits in front of it."""

    public_url: Url = "http://127.0.0.1:8000"
    trusted_proxies: int = Field(0, ge=0, le=10)
    # The addresses the trusted proxies connect from (IPs or CIDRs): a gateway's identity assertion
    # header is read only on connections from one of these.
    trusted_proxy_addresses: list[Network] = []
    cors_origins: list[str] = []
    dev_mode: bool = False
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if "*" in origin:
                raise ValueError(
                    f"{origin!r} is not allowed: the token endpoints answer browsers with credentials (the "
                    "session cookie), and CORS never grants those to '*', so every cross-origin call would "
                    "fail; list each origin, e.g. 'https://chat.example.com'"
                )
            parts = urlsplit(origin)
            if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path.strip("/") \
                    or parts.query or parts.fragment or parts.username:
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], e.g. 'https://chat.example.com'")
        return value


class StoreSettings(_Section):
    """``[store]``: refresh-token families and rate limits (design 2.6).

    ``memory://`` keeps state in one process. Redis: ``redis://host:port/db``, ``rediss://`` (TLS),
    ``redis+sentinel://h1:26379,h2:26379/service``, ``redis+cluster://h1:7000,h2:7001``, ``unix://``.
    The password comes from ``REDIS_PASSWORD`` (or ``REDIS_PASSWORD_FILE``), never from the URL.
    """

    url: str = "memory://"
    username: str | None = None
    key_prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{0,32}$")] = "ts:"
    connect_timeout: float = Field(0.25, gt=0, le=10)
    socket_timeout: float = Field(0.5, gt=0, le=10)
    retry_after: int = Field(2, ge=1, le=300)
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    max_connections: int = Field(64, ge=1, le=10000)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        schemes = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "unix")
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
        if parts.password:
            raise ValueError("must not carry a password: set REDIS_PASSWORD or REDIS_PASSWORD_FILE")
        if parts.scheme == "redis+sentinel" and not parts.path.strip("/"):
            raise ValueError("redis+sentinel:// needs the service name as its path, e.g. /mymaster")
        return value

    @property
    def is_memory(self) -> bool:
        return self.url.startswith("memory:")


class RefreshSettings(_Section):
    """``[refresh]``: refresh-token families (design 2.4) and how they follow role changes."""

    idle_ttl: int = Field(24 * 3600, ge=60, le=90 * 86400)
    absolute_ttl: int = Field(7 * 86400, ge=300, le=365 * 86400)
    # Seconds after a rotation in which the spent token may be presented again (a client that lost the
    # answer) and gets the same successor, as long as that successor is unused. Older: reuse.
    retry_window: int = Field(60, ge=0, le=3600, validation_alias=AliasChoices("retry_window", "reuse_grace"))
    # Seconds a family may keep minting a role no sign-in has confirmed since; 0: up to absolute_ttl.
    role_max_age: int = Field(0, ge=0, le=365 * 86400)
    # When an identity's role changes at a sign-in, its other families take the new role at their next
    # refresh ("follow"), or end there ("revoke"), so those devices must sign in again.
    on_role_change: Literal["follow", "revoke"] = "follow"

    @model_validator(mode="after")
    def _ordered(self) -> RefreshSettings:
        if self.idle_ttl > self.absolute_ttl:
            raise ValueError("idle_ttl must not exceed absolute_ttl")
        if 0 < self.role_max_age < 60:
            raise ValueError("role_max_age must be 0 (no bound) or at least 60 seconds")
        return self


class RatePolicy(_Section):
    """``limit`` requests per ``window`` seconds, per ``key``, on one endpoint."""

    # client: a trusted backend client's mints on someone's behalf ([[trusted_clients]])
    endpoint: Literal["token", "refresh", "revoke", "client"]
    # ip: the client; identity, family: charged once the proof is known to be theirs; global: every
    # failed proof of every client, one budget for the whole service; client: one trusted client
    key: Literal["ip", "identity", "family", "global", "client"]
    limit: int = Field(ge=1, le=1_000_000)
    window: int = Field(ge=1, le=86400)

    @model_validator(mode="after")
    def _key_known_at_endpoint(self) -> RatePolicy:
        if self.endpoint == "token" and self.key == "family":
            raise ValueError("the token endpoint has no family yet: use key 'ip', 'identity' or 'global'")
        if self.endpoint == "revoke" and self.key != "ip":
            raise ValueError("the revoke endpoint proves nothing about its caller: use key 'ip'")
        if self.key == "client" and self.endpoint != "client":
            raise ValueError("key 'client' counts a trusted client's mints: it belongs to endpoint 'client'")
        if self.endpoint == "client" and self.key == "family":
            raise ValueError("a trusted client's mint starts no family yet: use key 'client', 'identity', 'ip' "
                             "or 'global'")
        return self

    @property
    def name(self) -> str:
        return f"{self.endpoint}-{self.key}"


DEFAULT_RATE_POLICIES = [
    RatePolicy(endpoint="token", key="ip", limit=60, window=60),
    RatePolicy(endpoint="token", key="identity", limit=20, window=60),
    RatePolicy(endpoint="token", key="global", limit=1000, window=60),
    RatePolicy(endpoint="refresh", key="ip", limit=120, window=60),
    RatePolicy(endpoint="refresh", key="identity", limit=60, window=60),
    RatePolicy(endpoint="refresh", key="family", limit=10, window=60),
    RatePolicy(endpoint="refresh", key="global", limit=1000, window=60),
    RatePolicy(endpoint="revoke", key="ip", limit=30, window=60),
    RatePolicy(endpoint="client", key="client", limit=300, window=60),
    RatePolicy(endpoint="client", key="identity", limit=20, window=60),
    RatePolicy(endpoint="client", key="global", limit=1000, window=60),
]


class RateLimitSettings(_Section):
    """``[rate_limits]``: per-endpoint policies; a given list replaces the defaults entirely."""

    enabled: bool = True
    policies: list[RatePolicy] = DEFAULT_RATE_POLICIES

    @model_validator(mode="after")
    def _unique(self) -> RateLimitSettings:
        names = [p.name for p in self.policies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"one policy per endpoint and key, repeated: {', '.join(dupes)}")
        return self


class TwilioSettings(_Section):
    """``[twilio]``: what the minted Access Token names and how long it lives (design 2.3)."""

    account_sid: AccountSid
    api_key_sid: ApiKeySid
    service_sid: ServiceSid
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}[0-9]$")] | None = None
    token_ttl: int = Field(900, ge=MIN_TOKEN_TTL, le=MAX_TOKEN_TTL)
    include_nbf: bool = False
    push_credentials: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")], CredentialSid
    ] = {}


class ClaimCondition(_Section):
    """A test on one claim: exactly one of ``equals``, ``one_of``, ``glob``.

    ``claim`` is a claim name, a dotted path into nested objects, or an RFC 6901 JSON Pointer
    (``/resource_access/chat.example.com/roles``); when the claim holds a list, the condition holds
    if any element satisfies it.
    """

    claim: ClaimPath
    equals: str | int | float | bool | None = None
    one_of: list[str | int | float | bool] | None = None
    glob: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ClaimCondition:
        given = [n for n in ("equals", "one_of", "glob") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("needs exactly one of equals, one_of, glob")
        return self


class RoleRule(ClaimCondition):
    role: str


class AccessSettings(_Section):
    """``[access]``: claims every caller must satisfy before any token is minted."""

    require: list[ClaimCondition] = []


class IssuerRoles(_Section):
    """``[issuers.roles]``: this issuer's own role rules and default; replaces ``[roles]`` for its tokens."""

    rules: list[RoleRule] = []
    default: str | None = None


class OpaqueTokenSettings(_Section):
    """``[issuers.opaque]``: access tokens that are not JWTs, checked at the issuer (design 2.1).

    RFC 7662 introspection answers whether the token is active and for which client; OIDC userinfo
    gives the user's claims. A token goes only to the issuer it is routed to: the one whose
    ``prefix`` it starts with, else the single opaque issuer without a prefix.
    """

    checks: list[Literal["introspection", "userinfo"]] = Field(min_length=1, max_length=2)
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._~+/-]{1,32}$")] | None = None
    introspection_endpoint: Url | None = None  # default: the discovery document's
    userinfo_endpoint: Url | None = None  # default: the discovery document's
    client_id: Annotated[str, StringConstraints(min_length=1)] | None = None  # the introspection client
    client_auth: Literal["client_secret_basic", "client_secret_post", "private_key_jwt"] = "client_secret_basic"
    # The environment variable (or NAME_FILE) holding the client secret, or for private_key_jwt
    # the client's RSA private key (PEM). Never the value itself.
    credential_env: Annotated[str, StringConstraints(pattern=r"^[A-Z_][A-Z0-9_]{0,63}$")] | None = None
    any_client: bool = False  # userinfo alone cannot tell which client a token was issued to
    cache_ttl: int = Field(60, ge=0, le=600)
    cache_size: int = Field(10_000, ge=1, le=1_000_000)
    lookup_rate: float = Field(20.0, gt=0, le=10_000)  # IdP calls per second per process, at most
    lookup_burst: int = Field(40, ge=1, le=100_000)

    @field_validator("checks")
    @classmethod
    def _unique_checks(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("lists a check twice")
        return value

    @model_validator(mode="after")
    def _complete(self, info: ValidationInfo) -> OpaqueTokenSettings:
        if "introspection" in self.checks:
            if not self.client_id or not self.credential_env:
                raise ValueError(
                    "introspection needs client_id and credential_env (the name of the environment "
                    "variable holding the introspection client's secret or private key)"
                )
            environ = (info.context or {}).get("environ")
            if environ is not None and not (environ.get(self.credential_env)
                                            or environ.get(f"{self.credential_env}_FILE")):
                raise ValueError(
                    f"credential_env names {self.credential_env}, but neither {self.credential_env} nor "
                    f"{self.credential_env}_FILE is set"
                )
        elif not self.any_client:
            raise ValueError(
                "userinfo alone cannot tell which client a token was issued to: add 'introspection' to "
                "checks, or set any_client = true if every client of this issuer is yours"
            )
        return self

# Where each kind of gateway puts its assertion (header names are case-insensitive).
GATEWAY_HEADERS = {
    "aws_alb": "x-amzn-oidc-data",
    "google_iap": "x-goog-iap-jwt-assertion",
    "cloudflare_access": "cf-access-jwt-assertion",
}
IAP_ISSUER = "https://cloud.google.com/iap"
IAP_JWKS_URI = "https://www.gstatic.com/iap/verify/public_key-jwk"
CLOUDFLARE_CERTS_PATH = "/cdn-cgi/access/certs"
ALB_KEY_URL = "https://public-keys.auth.elb.{region}.amazonaws.com/{kid}"
ALB_ARN = re.compile(
    r"^arn:aws[a-z-]*:elasticloadbalancing:([a-z]{2}(?:-[a-z]+)+-[0-9]):[0-9]{12}:"
    r"loadbalancer/app/[A-Za-z0-9-]{1,32}/[0-9a-f]{16}$"
)
# Headers a gateway assertion may not be read from: the bearer path, cookies, framing, forwarding.
_NOT_GATEWAY_HEADERS = re.compile(r"^(authorization|cookie|host|content-.*|transfer-encoding|x-forwarded-.*|"
                                  r"forwarded|x-request-id)$", re.IGNORECASE)


class GatewaySettings(_Section):
    """``[issuers.gateway]``: this issuer's tokens arrive as a gateway's signed assertion in a header.

    The gateway (AWS ALB, Google Cloud IAP, Cloudflare Access, or any proxy that forwards a JWT
    such as oauth2-proxy) has signed the user in; the service reads the assertion from ``header``,
    only on connections from ``[server] trusted_proxy_addresses``, and verifies it like a bearer token.
    """

    kind: Literal["aws_alb", "google_iap", "cloudflare_access", "jwt"]
    header: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")] | None = None  # default: the kind's
    # aws_alb: the load balancers whose signature counts (the assertion's `signer` header names one).
    load_balancer_arns: list[Annotated[str, StringConstraints(pattern=ALB_ARN.pattern)]] = []
    # aws_alb: where a signing key is fetched by its kid, as PEM; default: the ARN's region's endpoint.
    key_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s{}]*\{kid\}[^\s{}]*$")] | None = None

    @model_validator(mode="after")
    def _complete(self) -> GatewaySettings:
        if self.header is None and self.kind == "jwt":
            raise ValueError("a gateway of kind 'jwt' needs the header its assertion arrives in")
        if _NOT_GATEWAY_HEADERS.match(self.header_name):
            raise ValueError(f"header {self.header_name!r} cannot carry a gateway assertion: name the "
                             "gateway's own header (x-amzn-oidc-data, x-goog-iap-jwt-assertion, ...)")
        if self.kind != "aws_alb":
            if self.load_balancer_arns or self.key_url:
                raise ValueError("load_balancer_arns and key_url belong to kind 'aws_alb'")
            return self
        if not self.load_balancer_arns:
            raise ValueError("kind 'aws_alb' needs load_balancer_arns: the assertion's 'signer' must name one")
        if self.key_url is not None:
            _check_url(self.key_url.replace("{kid}", "kid"))
        elif len({ALB_ARN.match(arn).group(1) for arn in self.load_balancer_arns}) > 1:  # type: ignore[union-attr]
            raise ValueError("load balancers of several regions need an issuer each (their keys are regional)")
        return self

    @property
    def header_name(self) -> str:
        return (self.header or GATEWAY_HEADERS[self.kind]).lower()

    @property
    def alb_key_url(self) -> str:
        """The key URL template with ``{kid}`` (the region's public-key endpoint by default)."""
        if self.key_url:
            return self.key_url
        region = ALB_ARN.match(self.load_balancer_arns[0]).group(1)  # type: ignore[union-attr]
        return ALB_KEY_URL.replace("{region}", region)


class IssuerSettings(_Section):
    """``[[issuers]]``: one trusted OpenID Provider and how its claims become an identity and a role."""

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    issuer: Url
    # Other exact `iss` values of the same issuer (Google: "accounts.google.com").
    issuer_aliases: list[Annotated[str, StringConstraints(pattern=r"^\S{1,512}$")]] = []
    # With "{tenantid}" in the issuer: the tenants accepted, or any_tenant = true.
    tenants: list[Annotated[str, StringConstraints(to_lower=True)]] = []
    any_tenant: bool = False
    audiences: list[Annotated[str, StringConstraints(min_length=1)]] = []
    # Your apps' client ids at this IdP: checked against `azp`, and against client_id_claim.
    client_ids: list[Annotated[str, StringConstraints(min_length=1)]] = []
    # Access tokens without one of our audiences are accepted through this claim (Cognito
    # client_id, Keycloak azp, Okta cid) when it names one of client_ids.
    client_id_claim: Literal["client_id", "azp", "cid"] | None = None
    token_use: ClaimCondition | None = None  # e.g. Cognito: { claim = "token_use", equals = "access" }
    tolerated_audiences: list[Annotated[str, StringConstraints(min_length=1)]] = []  # Keycloak's "account"
    algorithms: list[Literal[ASYMMETRIC_ALGORITHMS]] = Field(  # type: ignore[valid-type]
        ["RS256", "ES256"], min_length=1
    )
    discovery_url: Url | None = None  # when not at issuer + /.well-known/openid-configuration
    jwks_uri: Url | None = None
    jwks_file: str | None = None
    leeway: int = Field(30, ge=0, le=300)
    jwks_ttl: int = Field(600, ge=5, le=86400)
    jwks_refetch_cooldown: int = Field(30, ge=1, le=3600)
    jwks_max_stale: int = Field(86400, ge=5, le=7 * 86400)
    http_timeout: float = Field(3.0, gt=0, le=30)
    identity_claim: ClaimPath | None = None
    identity_template: IdentitySource | None = None
    identity_sources: list[IdentitySource] = []
    identity_prefix: str = ""
    require_email_verified: bool = True
    email_verified_claim: ClaimPath = "email_verified"
    lowercase: bool | None = None  # default: [identity] lowercase
    access: AccessSettings | None = None  # default: [access]
    roles: IssuerRoles | None = None  # default: [roles] rules and default
    opaque: OpaqueTokenSettings | None = None
    gateway: GatewaySettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _gateway_defaults(cls, data: Any) -> Any:
        """A gateway kind's documented key source and algorithm, unless the operator set them."""
        gateway = data.get("gateway") if isinstance(data, dict) else None
        kind = gateway.get("kind") if isinstance(gateway, dict) else None
        if kind not in ("aws_alb", "google_iap", "cloudflare_access"):
            return data
        data = dict(data)
        if kind != "cloudflare_access":
            data.setdefault("algorithms", ["ES256"])  # ALB and IAP sign with ES256
        if kind != "aws_alb" and not any(data.get(k) for k in ("jwks_uri", "jwks_file", "discovery_url")):
            issuer = data.get("issuer")
            if kind == "google_iap":
                data["jwks_uri"] = IAP_JWKS_URI
            elif isinstance(issuer, str):
                data["jwks_uri"] = issuer.rstrip("/") + CLOUDFLARE_CERTS_PATH
        return data

    @field_validator("algorithms", mode="before")
    @classmethod
    def _asymmetric_only(cls, value: Any) -> Any:
        return asymmetric_only(value)

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, value: list[str]) -> list[str]:
        for tenant in value:
            if not GUID.fullmatch(tenant):
                raise ValueError(f"{tenant!r} is not a tenant id (a GUID such as "
                                 "'9188040d-6c67-4c5b-b112-36a304b66dad')")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> IssuerSettings:
        if sum(1 for v in (self.identity_claim, self.identity_template, self.identity_sources) if v) > 1:
            raise ValueError("set one of identity_claim, identity_template, identity_sources")
        if self.identity_template is not None and not TEMPLATE_FIELD.search(self.identity_template):
            raise ValueError("identity_template must reference at least one claim, e.g. '{sub}'")
        if sum(1 for v in (self.jwks_uri, self.jwks_file, self.discovery_url) if v) > 1:
            raise ValueError("set one of jwks_uri, jwks_file, discovery_url")
        if self.jwks_max_stale < self.jwks_ttl:
            raise ValueError("jwks_max_stale must be at least jwks_ttl")
        self._check_tenancy()
        if self.gateway is not None:
            self._check_gateway(self.gateway)
        else:
            self._check_audience_rules()
        return self

    def _check_gateway(self, gateway: GatewaySettings) -> None:
        if self.opaque is not None:
            raise ValueError("a gateway's assertions are JWTs: an issuer with [issuers.gateway] takes no opaque tokens")
        if gateway.kind == "google_iap" and self.issuer != IAP_ISSUER:
            raise ValueError(f"Google IAP's assertions are issued by {IAP_ISSUER!r}: set issuer to it")
        if gateway.kind != "aws_alb":
            self._check_audience_rules()
            return
        if self.algorithms != ["ES256"]:
            raise ValueError("an AWS ALB signs its assertions with ES256 only: set algorithms = ['ES256']")
        if self.jwks_uri or self.jwks_file or self.discovery_url or TENANT_PLACEHOLDER in self.issuer:
            raise ValueError("an AWS ALB's keys are fetched by kid from its region (gateway.key_url): drop "
                             "jwks_uri, jwks_file, discovery_url and tenant templates")
        if not self.client_ids:
            raise ValueError("kind 'aws_alb' needs client_ids: the OIDC client id the load balancer signs in "
                             "with (the assertion's 'client' header)")

    def _check_tenancy(self) -> None:
        templated = [p for p in self.issuer_patterns if TENANT_PLACEHOLDER in p]
        if any(p.count(TENANT_PLACEHOLDER) > 1 or "{" in p.replace(TENANT_PLACEHOLDER, "")
               for p in self.issuer_patterns):
            raise ValueError(f"an issuer may hold {TENANT_PLACEHOLDER} once and no other braces")
        if TENANT_PLACEHOLDER not in self.issuer:
            if templated or self.tenants or self.any_tenant:
                raise ValueError(f"tenants, any_tenant and templated aliases need {TENANT_PLACEHOLDER} "
                                 "in the issuer")
            return
        if bool(self.tenants) == self.any_tenant:
            raise ValueError(f"an issuer with {TENANT_PLACEHOLDER} needs the tenants it accepts "
                             "(tenants = [...]) or, explicitly, any_tenant = true; not both")
        if not (self.jwks_uri or self.jwks_file or self.discovery_url):
            raise ValueError(f"an issuer with {TENANT_PLACEHOLDER} has no discovery document of its own: "
                             "set discovery_url (Entra: https://login.microsoftonline.com/organizations/"
                             "v2.0/.well-known/openid-configuration) or jwks_uri")
        if self.opaque is not None:
            raise ValueError(f"opaque tokens carry no issuer: they cannot be routed to an issuer with "
                             f"{TENANT_PLACEHOLDER}")

    def _check_audience_rules(self) -> None:
        if self.client_id_claim is None:
            if self.token_use is not None or self.tolerated_audiences:
                raise ValueError("token_use and tolerated_audiences apply to tokens accepted through "
                                 "client_id_claim: set client_id_claim too")
            if not self.audiences and not self.opaque:
                raise ValueError("needs audiences (the accepted 'aud' values), or client_id_claim with "
                                 "client_ids for access tokens without one; there is no 'any audience'")
        elif not self.client_ids:
            raise ValueError(f"client_id_claim = {self.client_id_claim!r} needs client_ids, the client "
                             "ids it must name")
        if self.opaque is not None and not self.client_ids and not self.audiences and not self.opaque.any_client:
            raise ValueError("opaque tokens are accepted for client_ids or audiences: list them")

    @property
    def issuer_patterns(self) -> list[str]:
        """Every accepted ``iss``: the issuer and its aliases, each exact or with {tenantid}."""
        return [self.issuer, *self.issuer_aliases]

    @property
    def discovery_document_url(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    @property
    def identity_templates(self) -> tuple[str, ...]:
        """The ordered identity sources as templates; a plain claim path is the template ``{path}``."""
        sources = self.identity_sources or [self.identity_template or self.identity_claim or "sub"]
        return tuple(s if TEMPLATE_FIELD.search(s) else "{" + s + "}" for s in sources)

    @property
    def identity_source(self) -> str:
        """The first identity template (what older configurations called the identity source)."""
        return self.identity_templates[0]


class IdentitySettings(_Section):
    """``[identity]``: the Conversations identity rules (seeds 000/001/004, design 2.2)."""

    max_length: int = Field(256, ge=1, le=1024)
    reserved_characters: Literal["reject", "allow", "percent-encode"] = "reject"
    allowed_reserved: list[str] = []
    lowercase: bool = False

    @field_validator("allowed_reserved")
    @classmethod
    def _reserved_only(cls, value: list[str]) -> list[str]:
        for ch in value:
            if ch not in RESERVED_CHARACTERS:
                raise ValueError(f"{ch!r} is not one of the reserved characters {RESERVED_CHARACTERS}")
        return value

    @model_validator(mode="after")
    def _policy_and_list_agree(self) -> IdentitySettings:
        if self.reserved_characters == "allow" and not self.allowed_reserved:
            raise ValueError("reserved_characters = 'allow' needs the explicit allowed_reserved list")
        if self.reserved_characters == "reject" and self.allowed_reserved:
            raise ValueError("allowed_reserved needs reserved_characters = 'allow' or 'percent-encode'")
        return self


RoleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]


class RolesSettings(_Section):
    """``[roles]``: ordered rules from claims to a role name; each name maps to an ``RL`` SID."""

    sids: dict[RoleName, RoleSid] = Field(min_length=1)
    rules: list[RoleRule] = []
    default: str | None = None

    @model_validator(mode="after")
    def _known_roles(self) -> RolesSettings:
        for i, rule in enumerate(self.rules):
            if rule.role not in self.sids:
                raise ValueError(f"rules[{i}].role {rule.role!r} is not a key of roles.sids")
        if self.default is not None and self.default not in self.sids:
            raise ValueError(f"default {self.default!r} is not a key of roles.sids")
        return self


class LoginSettings(_Section):
    """``[login]``: browser sign-in through the service (OIDC code flow + PKCE), design 2.1."""

    enabled: bool = False
    issuer: str = ""  # the `name` of the [[issuers]] entry to sign in with
    client_id: str = ""
    redirect_uri: Url | None = None  # exactly as registered at the IdP; never taken from a request
    scopes: list[str] = ["openid", "email", "profile"]
    offline_access: bool = False
    after_login: str = "/"  # where /login sends the browser when no return_to is given
    post_logout_redirect_uri: Url | None = None
    session_ttl: int = Field(8 * 3600, ge=300, le=30 * 86400)
    cookie_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "ts_session"
    demo_page: bool = False
    http_timeout: float = Field(5.0, gt=0, le=30)

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> LoginSettings:
        if self.enabled:
            missing = [k for k in ("issuer", "client_id", "redirect_uri") if not getattr(self, k)]
            if missing:
                raise ValueError(f"enabled login needs {', '.join(missing)}")
            if "openid" not in self.scopes:
                raise ValueError("scopes must include 'openid'")
        if not self.after_login.startswith("/") or self.after_login.startswith("//"):
            raise ValueError("after_login must be a path on this service, e.g. '/demo/'")
        return self


class ConversationsSyncSettings(_Section):
    """``[conversations.sync]``: make the Conversations User exist with the mapped role (design 2.7)."""

    enabled: bool = False
    base_url: Url = "https://conversations.twilio.com"
    failure_mode: Literal["fail_open", "fail_closed"] = "fail_open"
    timeout: float = Field(2.0, gt=0, le=10)
    cache_ttl: int = Field(86400, ge=60, le=30 * 86400)
    friendly_name_claim: str | None = None
    max_attempts: int = Field(3, ge=1, le=5)


class ConversationsSettings(_Section):
    sync: ConversationsSyncSettings = ConversationsSyncSettings()


class LoggingSettings(_Section):
    """``[logging]``: JSON lines on stderr; audit events are always on."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One line per request (method, path, status, duration). The gateway usually logs these
    # already, and each line costs CPU on the hot path, so it is opt-in.
    access_log: bool = False


class ClientRateLimit(_Section):
    """A trusted client's own budget: ``limit`` mints per ``window`` seconds (replaces ``client-client``)."""

    limit: int = Field(ge=1, le=1_000_000)
    window: int = Field(ge=1, le=86400)


class TrustedClientSettings(_Section):
    """``[[trusted_clients]]``: a backend that may mint for a named identity, within its allow-list.

    It proves itself with a client-credentials access token from one of the ``[[issuers]]`` (whose
    ``sub`` is ``subject``), or with an RFC 7523 JWT it signs with its own registered key
    (``iss`` = ``sub`` = ``client_id``, ``aud`` = this service, short-lived, single-use ``jti``).
    """

    client_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:@|/+-]{1,128}$")]
    issuer: str | None = None  # the `name` of the [[issuers]] entry whose client-credentials token it sends
    subject: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None  # default: client_id
    jwks_uri: Url | None = None  # RFC 7523: the client's own public keys
    jwks_file: str | None = None
    algorithms: list[Literal[ASYMMETRIC_ALGORITHMS]] = Field(  # type: ignore[valid-type]
        ["RS256", "ES256"], min_length=1
    )
    max_assertion_lifetime: int = Field(300, ge=10, le=3600)  # RFC 7523 JWTs: exp at most this far ahead
    leeway: int = Field(30, ge=0, le=300)
    http_timeout: float = Field(3.0, gt=0, le=30)
    # The allow-list: identities named exactly, and/or glob patterns ("sms:+1*", "bot-?").
    identities: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = []
    identity_patterns: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = []
    roles: list[RoleName] = Field(min_length=1)  # the roles it may grant
    default_role: RoleName | None = None  # when a request names none; default: the first of roles
    refresh_tokens: bool = False  # whether its mints carry a refresh token
    rate_limit: ClientRateLimit | None = None

    @field_validator("algorithms", mode="before")
    @classmethod
    def _asymmetric_only(cls, value: Any) -> Any:
        return asymmetric_only(value)

    @model_validator(mode="after")
    def _complete(self) -> TrustedClientSettings:
        own_keys = [k for k in ("jwks_uri", "jwks_file") if getattr(self, k)]
        if bool(self.issuer) == bool(own_keys) or len(own_keys) > 1:
            raise ValueError("set one way for the client to prove itself: issuer (a client-credentials access "
                             "token from that [[issuers]] entry), or jwks_uri or jwks_file (RFC 7523 JWTs "
                             "signed with its own key)")
        if self.subject is not None and not self.issuer:
            raise ValueError("subject (the client-credentials token's 'sub') goes with issuer")
        if not self.identities and not self.identity_patterns:
            raise ValueError("needs identities and/or identity_patterns: the identities it may mint for")
        if self.default_role is not None and self.default_role not in self.roles:
            raise ValueError(f"default_role {self.default_role!r} must be one of roles")
        return self

    @property
    def credential_subject(self) -> str:
        """The ``sub`` of the client's credential: its client-credentials token's, or its own JWT's."""
        return self.subject or self.client_id

    @property
    def role_when_unnamed(self) -> str:
        return self.default_role or self.roles[0]


class Secrets(BaseModel):
    """Secrets, read from the environment (``NAME``) or a file (``NAME_FILE``), never from TOML."""

    model_config = ConfigDict(frozen=True)

    twilio_api_key_secret: SecretStr
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = None
    session_key: SecretStr | None = None
    oidc_client_secret: SecretStr | None = None
    refresh_key: SecretStr | None = None

    @field_validator("refresh_key")
    @classmethod
    def _refresh_key_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(f"{REFRESH_KEY_ENV} must be at least 32 characters")
        return value

    @field_validator("twilio_api_key_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        # Twilio API key secrets are 32 characters; anything shorter is a paste error.
        if len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (a Twilio API key secret is 32)")
        return value


class Settings(_Section):
    """The whole configuration, as the application factory takes it."""

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    twilio: TwilioSettings
    issuers: list[IssuerSettings] = Field(min_length=1)
    identity: IdentitySettings = IdentitySettings()
    access: AccessSettings = AccessSettings()
    roles: RolesSettings
    refresh: RefreshSettings = RefreshSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    logging: LoggingSettings = LoggingSettings()
    login: LoginSettings = LoginSettings()
    conversations: ConversationsSettings = ConversationsSettings()
    trusted_clients: list[TrustedClientSettings] = []
    secrets: Secrets

    @model_validator(mode="after")
    def _unique_issuers(self) -> Settings:
        names = [i.name for i in self.issuers]
        patterns = [p for i in self.issuers for p in i.issuer_patterns if TENANT_PLACEHOLDER not in p]
        for attr, values in (("name", names), ("issuer", patterns)):
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"issuers: {attr} must be unique, repeated: {', '.join(dupes)}")
        self._check_tenant_overlap()
        self._check_opaque_routes()
        for issuer in self.issuers:
            if issuer.roles is not None:
                self._check_roles_known(f"issuers[{issuer.name}].roles", issuer.roles.rules, issuer.roles.default)
            prefix = issuer.identity_prefix
            bad = [c for c in prefix if c.isspace() or not c.isprintable()]
            bad += [c for c in prefix if c in RESERVED_CHARACTERS
                    and c not in self.identity.allowed_reserved]
            if bad:
                raise ValueError(
                    f"issuers[{issuer.name}].identity_prefix {prefix!r}: the character {bad[0]!r} "
                    "is not allowed in an identity (use letters, digits, '-', '_' or '.')"
                )
        return self

    @model_validator(mode="after")
    def _login_matches_an_issuer(self) -> Settings:
        login = self.login
        if not login.enabled:
            return self
        if login.issuer not in {i.name for i in self.issuers}:
            raise ValueError(f"login.issuer {login.issuer!r} is not the name of an [[issuers]] entry")
        issuer = self.login_issuer()
        if login.client_id not in issuer.audiences:
            raise ValueError(f"login.client_id {login.client_id!r} must be one of issuers[{issuer.name}].audiences")
        key = self.secrets.session_key
        if key is None or len(key.get_secret_value()) < 32:
            raise ValueError(
                f"enabled login needs a session key of at least 32 characters in {SESSION_KEY_ENV} "
                f"(or {SESSION_KEY_ENV}_FILE)"
            )
        return self

    @model_validator(mode="after")
    def _gateways_behind_trusted_proxies(self) -> Settings:
        gateways = [i for i in self.issuers if i.gateway is not None]
        if not gateways:
            return self
        server = self.server
        if server.trusted_proxies < 1 or not server.trusted_proxy_addresses:
            raise ValueError(
                f"issuers[{gateways[0].name}].gateway: a gateway's assertion is read only from trusted proxies: "
                "set server.trusted_proxies (at least 1) and server.trusted_proxy_addresses (the addresses "
                "they connect from)"
            )
        headers = [i.gateway.header_name for i in gateways if i.gateway]
        dupes = sorted({h for h in headers if headers.count(h) > 1})
        if dupes:
            raise ValueError(f"issuers: one gateway issuer per assertion header, repeated: {', '.join(dupes)}")
        if self.login.enabled and any(i.name == self.login.issuer for i in gateways):
            raise ValueError(f"login.issuer {self.login.issuer!r} is a gateway issuer: browser sign-in needs an "
                             "identity provider of its own")
        return self

    @model_validator(mode="after")
    def _trusted_clients_known(self) -> Settings:
        issuers = {i.name: i for i in self.issuers}
        patterns = {p for i in self.issuers for p in i.issuer_patterns}
        seen: set[str] = set()
        subjects: set[tuple[str, str]] = set()
        for client in self.trusted_clients:
            where = f"trusted_clients[{client.client_id}]"
            if client.client_id in seen:
                raise ValueError(f"trusted_clients: client_id must be unique, repeated: {client.client_id}")
            seen.add(client.client_id)
            unknown = [r for r in client.roles if r not in self.roles.sids]
            if unknown:
                raise ValueError(f"{where}.roles: {unknown[0]!r} is not a key of roles.sids")
            if client.issuer is None:
                if client.client_id in patterns:
                    raise ValueError(f"{where}.client_id is also an issuer: an RFC 7523 assertion names its "
                                     "client in 'iss', so the two could not be told apart")
                continue
            issuer = issuers.get(client.issuer)
            if issuer is None:
                raise ValueError(f"{where}.issuer {client.issuer!r} is not the name of an [[issuers]] entry")
            if issuer.gateway is not None:
                raise ValueError(f"{where}.issuer {client.issuer!r} is a gateway issuer, which asserts users: "
                                 "a client-credentials token comes from an identity provider")
            principal = (client.issuer, client.credential_subject)
            if principal in subjects:
                raise ValueError(f"{where}: another trusted client has the same issuer and subject")
            subjects.add(principal)
        return self

    def _check_tenant_overlap(self) -> None:
        """Two issuers with the same tenant template must not both accept a tenant."""
        seen: dict[str, list[IssuerSettings]] = {}
        for issuer in self.issuers:
            for pattern in issuer.issuer_patterns:
                if TENANT_PLACEHOLDER in pattern:
                    seen.setdefault(pattern, []).append(issuer)
        for pattern, sharing in seen.items():
            for i, a in enumerate(sharing):
                for b in sharing[i + 1:]:
                    if a.any_tenant or b.any_tenant or set(a.tenants) & set(b.tenants):
                        raise ValueError(
                            f"issuers: {a.name} and {b.name} both accept {pattern} for the same tenant: "
                            "give each its own tenants, and any_tenant to at most one"
                        )

    def _check_opaque_routes(self) -> None:
        """Every opaque token must have exactly one issuer it may be sent to."""
        opaque = [i for i in self.issuers if i.opaque is not None]
        unprefixed = [i.name for i in opaque if i.opaque and i.opaque.prefix is None]
        if len(unprefixed) > 1:
            raise ValueError(
                f"issuers: {', '.join(unprefixed)} all take opaque tokens without a prefix, so a token "
                "could not be routed to the one that issued it: give all but one of them opaque.prefix"
            )
        prefixes = [(i.name, i.opaque.prefix) for i in opaque if i.opaque and i.opaque.prefix]
        for name, prefix in prefixes:
            for other, longer in prefixes:
                if other != name and longer.startswith(prefix):
                    raise ValueError(f"issuers: the opaque.prefix {prefix!r} of {name} also starts the "
                                     f"one of {other} ({longer!r}): prefixes must not overlap")

    def _check_roles_known(self, where: str, rules: list[RoleRule], default: str | None) -> None:
        for i, rule in enumerate(rules):
            if rule.role not in self.roles.sids:
                raise ValueError(f"{where}.rules[{i}].role {rule.role!r} is not a key of roles.sids")
        if default is not None and default not in self.roles.sids:
            raise ValueError(f"{where}.default {default!r} is not a key of roles.sids")

    def login_issuer(self) -> IssuerSettings:
        return next(i for i in self.issuers if i.name == self.login.issuer)

    def identity_policy(self, issuer: IssuerSettings) -> IdentityPolicy:
        """The mapping rules for identities coming from ``issuer``: its own, then the global ones."""
        return IdentityPolicy(
            sources=issuer.identity_templates,
            prefix=issuer.identity_prefix,
            require_email_verified=issuer.require_email_verified,
            email_verified_claim=issuer.email_verified_claim,
            max_length=self.identity.max_length,
            reserved=self.identity.reserved_characters,
            allowed_reserved=frozenset(self.identity.allowed_reserved),
            lowercase=self.identity.lowercase if issuer.lowercase is None else issuer.lowercase,
        )

    def role_policy(self, issuer: IssuerSettings | None = None) -> RolePolicy:
        """``issuer``'s own ``[issuers.roles]`` when it has one, else ``[roles]``; SIDs are global."""
        own = issuer.roles if issuer is not None else None
        if own is not None:
            return RolePolicy(rules=own.rules, sids=self.roles.sids, default=own.default)
        return RolePolicy(rules=self.roles.rules, sids=self.roles.sids, default=self.roles.default)

    def access_requirements(self, issuer: IssuerSettings) -> list[ClaimCondition]:
        """``issuer``'s own ``[issuers.access]`` when it has one, else ``[access]``."""
        return (issuer.access or self.access).require


_SECRET_KEY = re.compile(r"secret|password|private_key", re.IGNORECASE)
# Under [login] more names hold credentials (session_key, client_secret, a refresh token ...).
_LOGIN_SECRET_KEY = re.compile(r"key|secret|token|password", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(://[^/@\s]*?:)[^/@\s]*@")
# Keys that existed once: what to do instead, rather than "unknown key".
OBSOLETE_KEYS: dict[tuple[str, ...], str] = {
    ("logging", "flush_interval"): "obsolete since 0.2.0: log lines are written as they happen; remove it",
}
_PLACEHOLDER_SID = re.compile(r"^[A-Z]{2}([0-9a-fA-F])\1{30}[0-9a-fA-F]$")


def read_secret(name: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """``NAME`` from the environment, else the stripped content of the file ``NAME_FILE``."""
    if environ.get(name):
        return environ[name]
    path = environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError([f"{name}_FILE: {path!r}: cannot be read ({exc.strerror})"]) from exc
    return None


Loc = tuple[str | int, ...]


def _loc_text(loc: Loc) -> str:
    """``('issuers', 0, 'audiences')`` -> ``issuers[0].audiences``: the key path as the TOML reads."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _looks_secret(loc: Loc) -> bool:
    """A key no section defines, named like a credential: its value is never shown."""
    key = str(loc[-1])
    named_so = _SECRET_KEY.search(key) or (loc[0] == "login" and _LOGIN_SECRET_KEY.search(key))
    return bool(named_so) and key not in _keys_at(loc[:-1])


def _secret_keys_in(data: Any, loc: Loc = ()) -> list[Loc]:
    """Where the TOML document holds a value under a name that looks like a secret."""
    found: list[Loc] = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = (*loc, key)
            if here == ("secrets",) or (_looks_secret(here) and not isinstance(value, dict | list)):
                found.append(here)
            else:
                found.extend(_secret_keys_in(value, here))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            found.extend(_secret_keys_in(item, (*loc, i)))
    return found


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model an annotation holds (itself, or inside ``list[...]``, ``... | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: Loc) -> list[str]:
    """The keys the section at ``loc`` accepts (``()`` is the top level)."""
    annotation: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue  # an element of a list of sections: the list's own model, found below
        model = _model_in(annotation)
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
    model = _model_in(annotation)
    return [name for name in model.model_fields if name != "secrets"] if model else []


def _unknown_key(loc: Loc) -> str:
    parent, key = loc[:-1], str(loc[-1])
    where = _loc_text(parent) or "(top level)"
    obsolete = OBSOLETE_KEYS.get((*(p for p in parent if isinstance(p, str)), key))
    if obsolete:
        return f"{where}: key {key!r} is {obsolete}"
    known = _keys_at(parent)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return f"{where}: unknown key {key!r} ({hint})"


def _shown(value: Any) -> str:
    """A value as a problem line shows it: repr, cut at 80 characters, URL credentials masked."""
    shown = _URL_CREDENTIALS.sub(r"\1***@", repr(value))
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _format_errors(exc: ValidationError, hidden: Collection[Loc] = ()) -> list[str]:
    """pydantic's errors as ``key: value: rule`` lines (``key: rule`` for a whole section).

    Unknown keys get a did-you-mean; keys in ``hidden`` (already reported as secrets) are skipped;
    no value that could be a secret is shown.
    """
    problems = []
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            if loc not in hidden:
                problems.append(_unknown_key(loc))
            continue
        message = err["msg"].removeprefix("Value error, ")
        if loc[:2] == ("secrets", "twilio_api_key_secret"):
            if err["type"] == "missing":
                message = (f"the Twilio API key secret must be set in the environment variable "
                           f"{API_KEY_SECRET_ENV} or a file named by {API_KEY_SECRET_ENV}_FILE")
            problems.append(f"{API_KEY_SECRET_ENV}: {'(unset)' if err['type'] == 'missing' else '(hidden)'}: {message}")
            continue
        sid = re.fullmatch(r"\^([A-Z]{2})\[0-9a-fA-F\]\{32\}\$", str(err.get("ctx", {}).get("pattern", "")))
        if sid:
            message = f"must be a Twilio SID: '{sid.group(1)}' followed by 32 hexadecimal digits"
        where, value = _loc_text(loc), err.get("input")
        if not loc:
            problems.append(message)  # a rule across sections: its message names the keys
        elif err["type"] == "missing":
            problems.append(f"{where}: (missing): {message}")
        elif isinstance(value, dict | list) and loc[-1] not in {"cors_origins"}:
            problems.append(f"{where}: {message}")  # a rule over a whole section or list
        elif loc[0] == "secrets":
            problems.append(f"{where}: (hidden): {message}")
        else:
            problems.append(f"{where}: {_shown(value)}: {message}")
    return problems


def _workers_problem(data: dict[str, Any], workers: int | None) -> list[str]:
    """The memory store lives in one process: refused when several workers would run."""
    store = data.get("store", {})
    url = store.get("url", "memory://") if isinstance(store, dict) else None
    if workers is None or workers <= 1 or not isinstance(url, str) or not url.startswith("memory:"):
        return []
    return [
        f"store.url: {url!r}: the memory store lives in one process but {workers} workers "
        "would run; use one worker (--workers 1) or a redis:// store"
    ]


def settings_from_dict(
    data: dict[str, Any],
    environ: dict[str, str] | os._Environ[str] = os.environ,
    *,
    workers: int | None = None,
) -> Settings:
    """Validate a parsed TOML document plus secrets from ``environ``; raise one ``ConfigError``.

    Every problem is collected before raising: secrets in the file, unknown keys, every rule
    pydantic checks, and the memory store against ``workers`` (the gunicorn workers that would run).
    """
    secret_locs = _secret_keys_in(data)
    problems = [f"{_loc_text(loc)}: (hidden): secrets must come from environment variables or *_FILE files, "
                "never from the TOML file" for loc in secret_locs]
    document = {key: value for key, value in data.items() if key != "secrets"}
    document["secrets"] = {}
    for field, env_name in {"twilio_api_key_secret": API_KEY_SECRET_ENV, **OPTIONAL_SECRETS}.items():
        try:
            value = read_secret(env_name, environ)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if value:
            document["secrets"][field] = value
    settings = None
    try:
        settings = Settings.model_validate(document, context={"environ": environ})
    except ValidationError as exc:
        problems.extend(_format_errors(exc, set(secret_locs)))
    problems.extend(_workers_problem(data, workers))
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def check_workers(settings: Settings, workers: int) -> None:
    """The memory store lives in one process: refuse it when several workers would run."""
    problems = _workers_problem({"store": {"url": settings.store.url}}, workers)
    if problems:
        raise ConfigError(problems)


def _sids(settings: Settings) -> list[tuple[str, str]]:
    twilio = settings.twilio
    return [
        ("twilio.account_sid", twilio.account_sid), ("twilio.api_key_sid", twilio.api_key_sid),
        ("twilio.service_sid", twilio.service_sid),
        *((f"twilio.push_credentials.{name}", sid) for name, sid in twilio.push_credentials.items()),
        *((f"roles.sids.{name}", sid) for name, sid in settings.roles.sids.items()),
    ]


def config_warnings(settings: Settings) -> list[str]:
    """What is valid but probably not meant: placeholder SIDs (all zeros, one digit repeated)."""
    return [
        f"{where}: {sid!r}: looks like a placeholder (one digit repeated); Twilio refuses tokens naming "
        "a SID that does not exist"
        for where, sid in _sids(settings) if _PLACEHOLDER_SID.match(sid)
    ]


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | os._Environ[str] = os.environ,
    *,
    workers: int | None = None,
) -> Settings:
    """Load ``path`` (or ``$TOKEN_SERVICE_CONFIG``) and validate it (see ``settings_from_dict``)."""
    chosen = path or environ.get(CONFIG_ENV)
    if not chosen:
        raise ConfigError([f"--config / {CONFIG_ENV}: (unset): name the TOML configuration file"])
    try:
        with open(chosen, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError([f"config file: {str(chosen)!r}: cannot be read ({exc.strerror})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file: {str(chosen)!r}: not valid TOML ({exc})"]) from exc
    return settings_from_dict(data, environ, workers=workers)
