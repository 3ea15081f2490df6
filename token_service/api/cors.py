"""CORS for single-page apps on other origins: an explicit allow-list, with credentials.

Only origins in ``[server] cors_origins`` get ``Access-Control-Allow-Origin`` (never ``*``, which
cannot go with credentials). A preflight from any other origin is refused with 403, so the browser
never sends the real request.
"""

from __future__ import annotations

from flask import Flask, Response, request

from token_service.errors import AccessDenied

ALLOWED_HEADERS = "Authorization, Content-Type, X-Requested-With"
CORS_PATHS = ("/v1/token", "/v1/token/refresh", "/v1/token/revoke", "/logout")


def install(app: Flask, origins: list[str]) -> None:
    allowed = {o.rstrip("/").lower() for o in origins}

    def preflight() -> Response | None:
        if request.method != "OPTIONS" or request.path not in CORS_PATHS:
            return None
        if "Access-Control-Request-Method" not in request.headers:
            return None
        origin = (request.headers.get("Origin") or "").lower()
        if origin not in allowed:
            raise AccessDenied("this origin is not allowed to call the token service (CORS)")
        resp = Response(status=204)
        resp.headers["Access-Control-Allow-Methods"] = "POST"
        resp.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        resp.headers["Access-Control-Max-Age"] = "600"
        return resp

    def add_headers(resp: Response) -> Response:
        if request.path in CORS_PATHS:
            resp.vary.add("Origin")
            origin = (request.headers.get("Origin") or "").lower()
            if origin in allowed:
                resp.headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
                resp.headers["Access-Control-Allow-Credentials"] = "true"
                resp.headers["Access-Control-Expose-Headers"] = "RateLimit, RateLimit-Policy, Retry-After, X-Request-ID"
        return resp

    app.before_request(preflight)
    app.after_request(add_headers)
