"""Per-request plumbing: request ids, JSON access/audit lines, HTTP metrics, and ``/metrics``.

The request id comes from ``X-Request-ID`` only when a trusted gateway sits in front
(``[server] trusted_proxies`` > 0) and it looks like an id; otherwise one is made here. Either way
it is echoed in the response and put on every log line of the request (see ``logs.py``).
The framework-free helpers (``request_id_for``, ``observe``, ``record_denial``) serve the Flask
hooks below and the token endpoints' WSGI app alike.
"""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Blueprint, Flask, Response, current_app, g, request

from token_service.errors import ServiceError
from token_service.logs import AuditLog, request_id_var
from token_service.metrics import DENIALS, HTTP_DURATION, HTTP_REQUESTS, ActiveIdentities, child, render
from token_service.store.base import StoreUnavailable

access = logging.getLogger("token_service.access")
audit = AuditLog("token_service.audit")
bp = Blueprint("observability", __name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def endpoint_label() -> str:
    """The route template (bounded cardinality), never the raw path.

    A request that named a route with a method it does not take (405) has no rule matched; its path
    is still one of the app's routes, so it is labelled with it.
    """
    if request.url_rule is not None:
        return request.url_rule.rule
    routes = {rule.rule for rule in current_app.url_map.iter_rules()}
    return request.path if request.path in routes else "unmatched"


def request_id_for(incoming: str | None, trusted: bool) -> str:
    """The gateway's ``X-Request-ID`` when a trusted gateway sent a plausible one, else a new id."""
    if trusted and incoming and _REQUEST_ID.fullmatch(incoming):
        return incoming
    return secrets.token_hex(16)  # the shape of a uuid4 hex, without building a UUID


def observe(endpoint: str, method: str, path: str, status: int, elapsed: float, client_ip: str | None,
            access_log: bool) -> None:
    """Count and time one answered request, and write its access line when that log is on."""
    # Methods are caller-chosen strings: only the standard ones become label values.
    child(HTTP_REQUESTS, endpoint, method if method in _METHODS else "other", str(status)).inc()
    child(HTTP_DURATION, endpoint).observe(elapsed)
    if access_log:
        access.info(
            "request",
            extra={
                "event": "http_request",
                "method": method,
                "path": path,  # never the query string: OAuth callbacks carry codes there
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client_ip": client_ip,
            },
        )


def _start() -> None:
    g.started = time.perf_counter()
    trusted = current_app.extensions["token_service.settings"].server.trusted_proxies > 0
    g.request_id = request_id_for(request.headers.get("X-Request-ID"), trusted)
    g.request_id_token = request_id_var.set(g.request_id)


def _finish(resp: Response) -> Response:
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    settings = current_app.extensions["token_service.settings"]
    observe(endpoint_label(), request.method, request.path, resp.status_code, elapsed, request.remote_addr,
            settings.logging.access_log)
    resp.headers["X-Request-ID"] = g.get("request_id", "")
    return resp


def _teardown(_: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def record_denial(endpoint: str, err: ServiceError, client_ip: str | None) -> None:
    """Audit line and metric for a refused request (called wherever a problem is rendered)."""
    if endpoint == "unmatched":
        return
    child(DENIALS, endpoint, err.type).inc()
    audit.info(
        "request denied",
        extra={
            "event": "denied",
            "endpoint": endpoint,
            "reason": err.type,
            "status": err.status,
            "detail": err.detail,
            "client_ip": client_ip,
        },
    )


def install(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_finish)
    app.teardown_request(_teardown)
    app.register_blueprint(bp)


def _count_active(month: str) -> int | None:
    try:
        return current_app.extensions["token_service.issuer"].store.active_identities(month)  # type: ignore[no-any-return]
    except StoreUnavailable:
        return None


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = render(ActiveIdentities(_count_active))
    return Response(body, content_type=content_type)
