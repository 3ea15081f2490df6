"""CORS for single-page apps on other origins: an explicit allow-list, with credentials.

Only origins in ``[server] cors_origins`` get ``Access-Control-Allow-Origin`` (never ``*``, which
cannot go with credentials). A preflight from any other origin is refused with 403, so the browser
never sends the real request.
"""

from __future__ import annotations

from flask import Flask, Response, request

from token_service.errors import AccessDenied

ALLOWED_HEADERS = "Authorization, Content-Type, X-Requested-With"
EXPOSED_HEADERS = "RateLimit, RateLimit-Policy, Retry-After, X-Request-ID"
# The paths a single-page app on another origin calls.
# (The token endpoints apply the same policy themselves, in front of Flask: api/token_api.py.)
CORS_PATHS = frozenset({"/logout", "/oauth2/token",
                        "/.well-known/oauth-authorization-server"})
PREFLIGHT_HEADERS = (
    ("Access-Control-Allow-Methods", "POST"),
    ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
    ("Access-Control-Max-Age", "600"),
)


class CorsPolicy:
    def __init__(self, origins: list[str]) -> None:
        self.allowed = frozenset(o.rstrip("/").lower() for o in origins)

    def preflight(self, origin: str | None) -> tuple[tuple[str, str], ...]:
        """The 204 answer's own headers for a preflight from ``origin``; raises for other origins.

        Like every answer on a CORS path, it also gets ``response_headers``.
        """
        if (origin or "").lower() not in self.allowed:
            raise AccessDenied("this origin is not allowed to call the token service (CORS)")
        return PREFLIGHT_HEADERS

    def response_headers(self, origin: str | None) -> list[tuple[str, str]]:
        """What every answer on a CORS path carries: ``Vary``, plus the grant for allowed origins."""
        if origin is None or origin.lower() not in self.allowed:
            return [("Vary", "Origin")]
        return [
            ("Vary", "Origin"),
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
        ]


def install(app: Flask, policy: CorsPolicy) -> None:
    """CORS on ``CORS_PATHS``: preflights answered before the view, headers added to every answer."""

    def preflight() -> Response | None:
        if request.method != "OPTIONS" or request.path not in CORS_PATHS:
            return None
        if "Access-Control-Request-Method" not in request.headers:
            return None
        resp = Response(status=204)
        for name, value in policy.preflight(request.headers.get("Origin")):
            resp.headers[name] = value
        return resp

    def add_headers(resp: Response) -> Response:
        if request.path in CORS_PATHS:
            for name, value in policy.response_headers(request.headers.get("Origin")):
                if name == "Vary":
                    resp.vary.add(value)
                else:
                    resp.headers[name] = value
        return resp

    app.before_request(preflight)
    app.after_request(add_headers)
