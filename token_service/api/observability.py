"""Per-request plumbing: request ids, JSON access/audit lines, HTTP metrics, and ``/metrics``.

The request id comes from ``X-Request-ID`` only when a trusted gateway sits in front
(``[server] trusted_proxies`` > 0) and it looks like an id; otherwise one is made here. Either way
it is echoed in the response and put on every log line of the request (see ``logs.py``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Blueprint, Flask, Response, current_app, g, request

from token_service.logs import request_id_var
from token_service.metrics import DENIALS, HTTP_DURATION, HTTP_REQUESTS, ActiveIdentities, render
from token_service.store.base import StoreUnavailable

access = logging.getLogger("token_service.access")
audit = logging.getLogger("token_service.audit")
bp = Blueprint("observability", __name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def endpoint_label() -> str:
    """The route template (bounded cardinality), never the raw path."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def _start() -> None:
    g.started = time.perf_counter()
    incoming = request.headers.get("X-Request-ID", "")
    trusted = current_app.extensions["token_service.settings"].server.trusted_proxies > 0
    g.request_id = incoming if trusted and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
    g.request_id_token = request_id_var.set(g.request_id)


def _finish(resp: Response) -> Response:
    elapsed = time.perf_counter() - g.get("started", time.perf_counter())
    endpoint = endpoint_label()
    HTTP_REQUESTS.labels(endpoint, request.method, str(resp.status_code)).inc()
    HTTP_DURATION.labels(endpoint).observe(elapsed)
    resp.headers["X-Request-ID"] = g.get("request_id", "")
    if not current_app.extensions["token_service.settings"].logging.access_log:
        return resp
    access.info(
        "request",
        extra={
            "event": "http_request",
            "method": request.method,
            "path": request.path,  # never the query string: OAuth callbacks carry codes there
            "status": resp.status_code,
            "duration_ms": round(elapsed * 1000, 2),
            "client_ip": request.remote_addr,
        },
    )
    return resp


def _teardown(_: BaseException | None) -> None:
    token = g.pop("request_id_token", None)
    if token is not None:
        request_id_var.reset(token)


def record_denial(problem_type: str, status: int, detail: str) -> None:
    """Audit line and metric for a refused request (called by the problem renderer)."""
    endpoint = endpoint_label()
    if endpoint == "unmatched":
        return
    DENIALS.labels(endpoint, problem_type).inc()
    audit.info(
        "request denied",
        extra={
            "event": "denied",
            "endpoint": endpoint,
            "reason": problem_type,
            "status": status,
            "detail": detail,
            "client_ip": request.remote_addr,
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
