"""The request body of a POST, read once through Flask's request, for every endpoint that takes one.

Flask bounds the body by ``MAX_CONTENT_LENGTH`` (413), chunked or not. A body the server cannot read
(malformed chunked framing, a client gone mid-body) is a 400, whatever exception the server's reader
raises (gunicorn's parse errors are plain ``Exception``s, werkzeug's dev server raises ``OSError``).
"""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from werkzeug.exceptions import HTTPException

from token_service.errors import InvalidRequest

FORM = "application/x-www-form-urlencoded"


def request_body() -> bytes:
    """The whole body (cached on the request, so ``request.form`` can parse it afterwards)."""
    try:
        data = request.get_data(cache=True)
        limit = request.max_content_length
        if request.content_length is None and limit is not None and len(data) >= limit:
            # A streamed (chunked) body stops silently at the limit: reading on raises the 413.
            request.stream.read(1)
        return data
    except HTTPException:
        raise  # 413, rendered as a problem like every HTTP error
    except Exception:  # noqa: BLE001 - the server's own framing errors
        raise InvalidRequest("the request body could not be read (malformed framing)") from None


def request_params() -> dict[str, Any]:
    """The body as a dict: a JSON object, or an HTML form (RFC 7009 and OAuth clients send forms)."""
    data = request_body()
    if request.mimetype == FORM:
        return {name: request.form.get(name) for name in request.form}  # the first of repeated names
    if not data:
        return {}
    mimetype = request.mimetype
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise InvalidRequest("the body must be JSON (Content-Type: application/json) or a form")
    try:
        body = orjson.loads(data)  # RFC 8259: UTF-8 only; NaN, Infinity and lone surrogates refused
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def form_value(name: str) -> str:
    """The first ``name`` of a form body ('' when absent)."""
    request_body()
    return request.form.get(name, "")
