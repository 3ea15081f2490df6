"""Reading a request body safely, for every endpoint that takes one.

A body is read whole, up to the configured limit: a longer one is a 413, never silently cut short.
One the server cannot read (malformed chunked framing, a client gone mid-body) is a 400, whatever
exception the server's reader raises (gunicorn's parse errors are plain ``Exception``s, werkzeug's
dev server raises ``OSError``). ``read_body`` works on the WSGI environ (the token endpoints,
``api/token_api.py``); ``request_body`` on Flask's request (every other endpoint).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length

from token_service.errors import InvalidRequest, PayloadTooLarge

FORM = "application/x-www-form-urlencoded"
MALFORMED = "the request body could not be read (malformed framing)"


def read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    """The whole body of a WSGI request, at most ``max_bytes``."""
    try:
        return _read(environ, max_bytes)
    except PayloadTooLarge:
        raise
    except Exception:  # noqa: BLE001 - the server's own framing errors
        raise InvalidRequest(MALFORMED) from None


def _read(environ: dict[str, Any], max_bytes: int) -> bytes:
    """With ``Content-Length`` the length decides up front; a chunked body (the server says it ends
    the stream, ``wsgi.input_terminated``) is read until it ends or passes the limit."""
    length = get_content_length(environ)
    if length is not None:
        if length > max_bytes:
            raise PayloadTooLarge("the request body is too large")
        # The server bounds wsgi.input by Content-Length (PEP 3333): read exactly that much.
        return environ["wsgi.input"].read(length) if length else b""
    if not environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: a body cannot be read safely
    stream, chunks, total = environ["wsgi.input"], [], 0
    while total <= max_bytes:
        chunk = stream.read(max_bytes + 1 - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise PayloadTooLarge("the request body is too large")
    return b"".join(chunks)


def parse_params(data: bytes, mimetype: str) -> dict[str, Any]:
    """A body as a dict: a JSON object, or an HTML form (RFC 7009 and OAuth clients send forms)."""
    if mimetype == FORM:
        form: dict[str, Any] = {}
        for name, value in parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True):
            form.setdefault(name, value)  # the first of repeated names
        return form
    if not data:
        return {}
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise InvalidRequest("the body must be JSON (Content-Type: application/json) or a form")
    try:
        body = orjson.loads(data)  # RFC 8259: UTF-8 only; NaN, Infinity and lone surrogates refused
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def request_body() -> bytes:
    """The whole body of Flask's request (cached on it); Flask bounds it by ``MAX_CONTENT_LENGTH``."""
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
        raise InvalidRequest(MALFORMED) from None


def form_value(name: str) -> str:
    """The first ``name`` of Flask's request's form body ('' when absent)."""
    return str(parse_params(request_body(), FORM).get(name, ""))
