"""Every error leaves as RFC 9457 ``application/problem+json``, rendered here and only here.

``type`` is the stable code of the design (``invalid_token``, ``access_denied`` ...); the OAuth
members ``error`` / ``error_description`` are added because OAuth clients read them (RFC 9457
allows extension members). Unexpected exceptions become a bare 500 problem: no stack trace, no
echo of the request.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from token_service.api.observability import endpoint_label, record_denial
from token_service.errors import (
    InvalidRequest,
    MethodNotAllowed,
    MissingToken,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unavailable,
)
from token_service.store.base import StoreUnavailable

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
REALM = "token-service"


def problem(err: ServiceError) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and headers (Content-Type included) of ``err`` as a problem document."""
    body = {
        "type": err.type,
        "title": err.title,
        "status": err.status,
        "detail": err.detail,
        "error": err.type,
        "error_description": err.detail,
    }
    headers = [("Content-Type", PROBLEM_JSON), ("Cache-Control", "no-store"), *err.headers.items()]
    if err.status == 401 and err.type == "invalid_token":
        # RFC 6750 3: no error code when the request carried no credentials at all.
        challenge = f'Bearer realm="{REALM}"'
        if not isinstance(err, MissingToken):
            challenge += f', error="invalid_token", error_description="{err.title}"'
        headers.append(("WWW-Authenticate", challenge))
    return json.dumps(body).encode(), headers


def as_service_error(exc: Exception, *, store_retry_after: int) -> ServiceError:
    """What a caller sees for ``exc``: itself, a 503 for a store outage, else a bare 500."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, StoreUnavailable):
        return Unavailable("the token store is unavailable; retry shortly", retry_after=store_retry_after)
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return ServiceError("an internal error occurred; it has been logged")


def problem_response(err: ServiceError) -> Response:
    record_denial(endpoint_label(), err, request.remote_addr)
    body, headers = problem(err)
    return Response(body, status=err.status, headers=headers)


_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
}


def _from_http_exception(exc: HTTPException) -> Response:
    cls = _HTTP_ERRORS.get(exc.code or 500)
    if cls is None:
        return problem_response(ServiceError("the request could not be processed"))
    detail = {
        404: "no such endpoint; see /openapi.json",
        405: "this endpoint does not accept that method",
        413: "the request body is too large",
    }.get(exc.code or 0, "the request is malformed")
    resp = problem_response(cls(detail))
    if exc.code == 405 and isinstance(exc.valid_methods, list):
        resp.headers["Allow"] = ", ".join(exc.valid_methods)
    return resp


def register_error_handlers(app: Flask, *, store_retry_after: int) -> None:
    def other(exc: Exception) -> Response:
        return problem_response(as_service_error(exc, store_retry_after=store_retry_after))

    app.register_error_handler(ServiceError, problem_response)
    app.register_error_handler(HTTPException, _from_http_exception)
    app.register_error_handler(Exception, other)
