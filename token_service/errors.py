"""The service's error tree.

Each class carries the stable problem ``type`` of the design (section 3), its HTTP status and a
short title; ``detail`` tells the caller what to fix. The HTTP layer renders them once, as
RFC 9457 ``application/problem+json`` (see ``api/errors.py``). The pure core raises these too,
so the same reason reaches the caller whichever layer found it. Messages never echo tokens.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a caller may see."""

    type: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})


class InvalidRequest(ServiceError):
    type = "invalid_request"
    status = 400
    title = "Invalid request"


class InvalidToken(ServiceError):
    """The bearer proof is missing, malformed, untrusted or invalid (RFC 6750 ``invalid_token``)."""

    type = "invalid_token"
    status = 401
    title = "Invalid bearer token"


class MissingToken(InvalidToken):
    """No credentials at all: RFC 6750 section 3.1 says the challenge then carries no error code."""


class InvalidGrant(ServiceError):
    type = "invalid_grant"
    status = 401
    title = "Invalid grant"


class LoginRequired(ServiceError):
    """The refresh token cannot carry on: the user must sign in with the identity provider again
    (the role it would mint has gone unconfirmed too long, or changed and ended the family)."""

    type = "login_required"
    status = 401
    title = "Sign in again"


class AccessDenied(ServiceError):
    type = "access_denied"
    status = 403
    title = "Access denied"


class GroupOverage(AccessDenied):
    """The IdP left the groups out of the token (Entra ID group overage): never a silent default role."""


class InvalidIdentity(ServiceError):
    """The caller is authenticated but their claims do not give a valid Conversations identity."""

    type = "invalid_identity"
    status = 403
    title = "Invalid identity"


class NotFound(ServiceError):
    type = "not_found"
    status = 404
    title = "Not found"


class MethodNotAllowed(ServiceError):
    type = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class PayloadTooLarge(ServiceError):
    type = "invalid_request"
    status = 413
    title = "Request too large"


class RateLimited(ServiceError):
    type = "rate_limited"
    status = 429
    title = "Too many requests"


class Unavailable(ServiceError):
    """A dependency (IdP keys, store) is unreachable; the caller should retry later."""

    type = "unavailable"
    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


def problem_types() -> list[str]:
    """Every problem ``type`` a caller may see: that of ``ServiceError`` and all its subclasses."""
    found, pending = [], [ServiceError]
    while pending:
        cls = pending.pop(0)
        found.append(cls.type)
        pending += cls.__subclasses__()
    return list(dict.fromkeys(found))


class ConfigError(Exception):
    """Configuration is invalid; ``problems`` lists each as ``key: value: rule``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
