"""Reading a request body safely, for every endpoint that takes one.

A body is read whole, up to the configured limit: a longer one is a 413, never silently cut short.
One the server cannot read (malformed chunked framing, a client gone mid-body) is a 400, whatever
exception the server's reader raises (gunicorn's parse errors are plain ``Exception``s).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from werkzeug.wsgi import get_content_length

from token_service.errors import InvalidRequest, PayloadTooLarge


def read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
    """The whole body, at most ``max_bytes``: a longer one is a 413, never silently cut short; one
    the server cannot read (malformed chunked framing, a client gone mid-body) is a 400."""
    try:
        return _read_body(environ, max_bytes)
    except PayloadTooLarge:
        raise
    except Exception:  # noqa: BLE001 - the server's own parse errors (gunicorn's are plain Exceptions)
        raise InvalidRequest("the request body could not be read (malformed framing)") from None


def _read_body(environ: dict[str, Any], max_bytes: int) -> bytes:
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


def form_value(environ: dict[str, Any], name: str, max_bytes: int) -> str:
    """The first ``name`` of an ``application/x-www-form-urlencoded`` body ('' when absent)."""
    data = read_body(environ, max_bytes)
    for key, value in parse_qsl(data.decode("utf-8", "replace"), keep_blank_values=True):
        if key == name:
            return value
    return ""
