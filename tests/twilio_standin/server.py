"""A local stand-in for Twilio Conversations v1 Users, checked request by request against Twilio's OpenAPI spec.

Implemented operations (Twilio's operation ids, both the service-scoped and the default-service paths):

    CreateServiceUser  POST   /v1/Services/{ChatServiceSid}/Users        CreateUser  POST   /v1/Users
    ListServiceUser    GET    /v1/Services/{ChatServiceSid}/Users        ListUser    GET    /v1/Users
    FetchServiceUser   GET    /v1/Services/{ChatServiceSid}/Users/{Sid}  FetchUser   GET    /v1/Users/{Sid}
    UpdateServiceUser  POST   /v1/Services/{ChatServiceSid}/Users/{Sid}  UpdateUser  POST   /v1/Users/{Sid}
    DeleteServiceUser  DELETE /v1/Services/{ChatServiceSid}/Users/{Sid}  DeleteUser  DELETE /v1/Users/{Sid}

``{Sid}`` is a ``US`` sid or the (case-sensitive) identity. Every request and response is validated against the
spec; problems are appended to :attr:`ConversationsStandIn.violations`, a request that violates the spec is
answered 400 (Twilio error 20001) and a response that would violate it is replaced by a 500, so nothing
non-conforming passes silently.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import secrets
import socket
import sys
import threading
import traceback
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from .spec import FORM_CONTENT_TYPE, OpenApiSpec, Operation, conversations_v1

_log = logging.getLogger(__name__)

TWILIO_PUBLIC_BASE_URL = "https://conversations.twilio.com"
USER_SCHEMA_REF = "#/components/schemas/conversations.v1.service.service_user"
DEFAULT_PAGE_SIZE = 50

# operationId -> action, for the service-scoped and the default-service (/v1/Users) paths
IMPLEMENTED_OPERATIONS = {
    f"{action}{scope}User": action
    for action in ("Create", "List", "Fetch", "Update", "Delete")
    for scope in ("Service", "")
}

# Twilio error codes used by the stand-in (https://www.twilio.com/docs/api/errors/<code>)
_ERROR_CODES = {
    400: (20001, "Invalid parameter"),
    401: (20003, "Authenticate"),
    404: (20404, "The requested resource was not found"),
    405: (20004, "Method not allowed"),
    409: (50201, "User already exists"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    501: (20500, "Not implemented by the test stand-in"),
    502: (20500, "Bad Gateway"),
    503: (20503, "Service Unavailable"),
    504: (20500, "Gateway Timeout"),
}


def new_sid(prefix: str) -> str:
    """A Twilio-style sid: two-letter prefix + 32 lower-case hex digits."""
    return prefix + secrets.token_hex(16)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Call(NamedTuple):
    """One request as received: method, percent-decoded path (no query), and its form parameters.

    ``form`` holds the form-encoded body for POST, the query string otherwise; a parameter sent once maps to
    its string, one sent several times to the list of its values.
    """

    method: str
    path: str
    form: dict[str, str | list[str]]


@dataclass
class _Failure:
    status: int | None
    retry_after: int | float | str | None
    delay: float


class _Reply(NamedTuple):
    status: int
    body: bytes
    headers: dict[str, str]


class _StandInError(Exception):
    """Raised inside a handler to answer with a Twilio error."""

    def __init__(self, status: int, message: str | None = None, code: int | None = None):
        default_code, default_message = _ERROR_CODES.get(status, (status, "Error"))
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        super().__init__(f"{status} {self.code} {self.message}")


class ConversationsStandIn:
    """Threaded HTTP server on a free 127.0.0.1 port imitating Conversations v1 Users.

    Use as a context manager (or ``start()``/``stop()``). Accepted Basic credentials: the API key
    (``api_key_sid``/``api_key_secret``, generated unless given), the only way the service signs in.
    ``service_sids`` are the Conversation Services that exist (one is generated
    unless given; the first also backs the default-service ``/v1/Users`` paths); other service sids get 404.
    """

    def __init__(
        self,
        *,
        account_sid: str | None = None,
        api_key_sid: str | None = None,
        api_key_secret: str | None = None,
        service_sids: Iterable[str] | None = None,
        default_role_sid: str | None = None,
        public_base_url: str = TWILIO_PUBLIC_BASE_URL,
        spec: OpenApiSpec | None = None,
    ):
        self.spec = spec or conversations_v1()
        self.account_sid = account_sid or new_sid("AC")
        self.api_key_sid = api_key_sid or new_sid("SK")
        self.api_key_secret = api_key_secret or secrets.token_urlsafe(24)
        self._credentials = {self.api_key_sid: self.api_key_secret}
        self.service_sids = list(service_sids or [new_sid("IS")])
        self.service_sid = self.service_sids[0]
        self.default_role_sid = default_role_sid or new_sid("RL")
        self.public_base_url = public_base_url.rstrip("/")
        user_schema = self.spec.schemas.resolve({"$ref": USER_SCHEMA_REF})
        self.user_fields: tuple[str, ...] = tuple(user_schema["properties"])

        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._users: dict[str, dict[str, dict[str, Any]]] = {}
        self._calls: list[Call] = []
        self._violations: list[str] = []
        self._failures: deque[_Failure] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0
        self.reset()

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> ConversationsStandIn:
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        self._wake.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="twilio-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        with self._lock:
            self._generation += 1  # requests in an injected delay are answered 503, not executed
        self._wake.set()  # end injected delays now
        server.shutdown()
        server.close_connections()  # idle keep-alive connections would otherwise block the join below
        server.server_close()  # joins the handler threads
        if thread is not None:
            thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> ConversationsStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test controls -------------------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int | None,
        count: int = 1,
        retry_after: int | float | str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (Twilio error JSON), after waiting ``delay`` seconds.

        ``retry_after`` adds a ``Retry-After`` header. ``status=None`` with a ``delay`` only slows the requests
        down (for client timeout tests); they are then handled normally. Requests are still recorded and
        validated. A delay ends early when the stand-in is reset or stopped; that request is then answered 503
        without being executed, so it cannot leak into the next test. A request whose delay runs out IS executed
        even if the client gave up meanwhile - like Twilio, where a timed-out create may still have happened.
        """
        if status is not None and not 400 <= status <= 599:
            raise ValueError("inject 4xx/5xx statuses only")
        if status is None and delay <= 0:
            raise ValueError("give a status, a delay, or both")
        with self._lock:
            self._failures.extend(_Failure(status, retry_after, delay) for _ in range(count))

    def reset(self) -> None:
        """Forget users, calls, violations and pending injected failures; wake requests stuck in a delay."""
        with self._lock:
            self._generation += 1
            self._users = {sid: {} for sid in self.service_sids}
            self._calls.clear()
            self._violations.clear()
            self._failures.clear()
        self._wake.set()
        self._wake.clear()

    @property
    def calls(self) -> list[Call]:
        """Snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    @property
    def violations(self) -> list[str]:
        """Snapshot of spec violations (requests, responses) and stand-in errors; a test asserts it is empty."""
        with self._lock:
            return list(self._violations)

    def take_violations(self) -> list[str]:
        """Return and clear the recorded violations (for tests that provoke them on purpose)."""
        with self._lock:
            taken = list(self._violations)
            self._violations.clear()
            return taken

    def seed_user(
        self,
        identity: str,
        *,
        role_sid: str | None = None,
        friendly_name: str | None = None,
        attributes: str = "{}",
        service_sid: str | None = None,
    ) -> dict[str, Any]:
        """Store a user directly (no HTTP call recorded); returns a copy of the stored record."""
        with self._lock:
            return dict(self._create(service_sid or self.service_sid, identity, role_sid, friendly_name, attributes))

    def user(self, sid_or_identity: str, service_sid: str | None = None) -> dict[str, Any] | None:
        """A copy of the stored user (by sid or exact identity), or None."""
        with self._lock:
            found = self._find(service_sid or self.service_sid, sid_or_identity)
            return dict(found) if found else None

    def users(self, service_sid: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(u) for u in self._users[service_sid or self.service_sid].values()]

    # -- internals -----------------------------------------------------------------------------------------------

    def _violation(self, message: str) -> None:
        _log.error("Twilio stand-in: %s", message)
        with self._lock:
            self._violations.append(message)

    def _find(self, service_sid: str, sid_or_identity: str) -> dict[str, Any] | None:
        users = self._users[service_sid]
        if sid_or_identity in users:
            return users[sid_or_identity]
        return next((u for u in users.values() if u["identity"] == sid_or_identity), None)  # case-sensitive

    def _create(
        self, service_sid: str, identity: str, role_sid: str | None, friendly_name: str | None, attributes: str | None
    ) -> dict[str, Any]:
        if any(u["identity"] == identity for u in self._users[service_sid].values()):
            raise _StandInError(409, f"User with identity {identity!r} already exists")
        now = _now()
        record = {
            "sid": new_sid("US"),
            "account_sid": self.account_sid,
            "chat_service_sid": service_sid,
            "role_sid": role_sid or self.default_role_sid,
            "identity": identity,
            "friendly_name": friendly_name,
            "attributes": attributes if attributes is not None else "{}",
            "is_online": None,  # null unless the Service has reachability enabled (it has not)
            "is_notifiable": None,
            "date_created": now,
            "date_updated": now,
        }
        self._users[service_sid][record["sid"]] = record
        return record

    def _poll_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            username, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        expected = self._credentials.get(username)
        return expected is not None and hmac.compare_digest(expected.encode(), password.encode())

    # -- request handling (called from handler threads) ----------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> _Reply:
        parts = urlsplit(target)
        raw_path, path = parts.path, unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        content_type = headers.get("Content-Type")
        form: dict[str, list[str]] = {}
        if body and (content_type or "").split(";")[0].strip().lower() == FORM_CONTENT_TYPE:
            try:
                form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
            except (UnicodeDecodeError, ValueError) as exc:
                self._violation(f"{method} {path}: unparseable form body: {exc}")
        with self._lock:
            params = form if method == "POST" else query
            self._calls.append(Call(method, path, {k: v[0] if len(v) == 1 else v for k, v in params.items()}))

        check = self.spec.check_request(method, raw_path, query, headers, content_type, form, bool(body))
        for err in check.errors:
            self._violation(f"request {method} {target}: {err}")

        failure = self._poll_failure()
        if failure is not None:
            if failure.delay > 0:
                generation = self._generation
                self._wake.wait(failure.delay)
                if generation != self._generation:
                    # interrupted by reset()/stop(): answer without touching the (new) state
                    return self._error(_StandInError(503, "stand-in reset or stopped during an injected delay"))
            if failure.status is not None:
                extra = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
                return self._reply_checked(check.operation, self._error(_StandInError(failure.status), extra))

        if not self._authorized(headers.get("Authorization")):
            reply = self._error(
                _StandInError(401),
                {"WWW-Authenticate": 'Basic realm="Twilio API"'},
                detail="Your AccountSid or AuthToken was incorrect.",
            )
            return self._reply_checked(check.operation, reply)

        try:
            if check.operation is None:
                raise _StandInError(check.status_if_unmatched, f"The requested resource {path} was not found")
            if check.errors:
                raise _StandInError(400, "; ".join(check.errors))
            reply = self._route(check.operation, check.path_params, form, query, raw_path)
        except _StandInError as exc:
            reply = self._error(exc)
        return self._reply_checked(check.operation, reply)

    def _reply_checked(self, operation: Operation | None, reply: _Reply) -> _Reply:
        errors = self.spec.check_response(
            operation, reply.status, reply.headers.get("Content-Type"), reply.body, closed=True
        )
        if not errors:
            return reply
        for err in errors:
            self._violation(f"response: {err}")
        return self._error(_StandInError(500, "stand-in response violated the spec: " + "; ".join(errors)))

    def _error(self, exc: _StandInError, headers: Mapping[str, str] | None = None, detail: str | None = None) -> _Reply:
        payload: dict[str, Any] = {
            "code": exc.code,
            "message": exc.message,
            "more_info": f"https://www.twilio.com/docs/errors/{exc.code}",
            "status": exc.status,
        }
        if detail:
            payload["detail"] = detail
        return self._json(exc.status, payload, headers)

    @staticmethod
    def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Reply:
        body = json.dumps(payload).encode()
        return _Reply(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _route(
        self,
        op: Operation,
        path_params: dict[str, str],
        form: dict[str, list[str]],
        query: dict[str, list[str]],
        raw_path: str,
    ) -> _Reply:
        service_sid = path_params.get("ChatServiceSid", self.service_sid)
        if service_sid not in self.service_sids:
            raise _StandInError(404, f"The requested resource /Services/{service_sid} was not found")
        scoped = "ChatServiceSid" in path_params
        collection = f"/v1/Services/{service_sid}/Users" if scoped else "/v1/Users"
        values = {k: v[0] for k, v in form.items()}
        name = IMPLEMENTED_OPERATIONS.get(op.operation_id)
        if name is None:
            self._violation(f"{op.operation_id} ({op.method} {op.template}) is not implemented by the stand-in")
            raise _StandInError(501, f"{op.operation_id} is not implemented by the test stand-in")

        with self._lock:
            if name == "Create":
                record = self._create(
                    service_sid,
                    values["Identity"],
                    values.get("RoleSid"),
                    values.get("FriendlyName"),
                    values.get("Attributes"),
                )
                return self._json(201, self._render(record, collection))
            if name == "List":
                return self._json(200, self._page(service_sid, collection, query))
            record = self._find(service_sid, path_params["Sid"])
            if record is None:
                raise _StandInError(404, f"The requested resource {raw_path.removeprefix('/v1')} was not found")
            if name == "Fetch":
                return self._json(200, self._render(record, collection))
            if name == "Update":
                for param, fieldname in (("RoleSid", "role_sid"), ("FriendlyName", "friendly_name")):
                    if param in values:
                        record[fieldname] = values[param]
                if "Attributes" in values:
                    record["attributes"] = values["Attributes"]
                record["date_updated"] = _now()
                return self._json(200, self._render(record, collection))
            if name == "Delete":
                del self._users[service_sid][record["sid"]]
                return _Reply(204, b"", {})
        raise _StandInError(501, f"{op.operation_id} is not implemented by the test stand-in")

    def _render(self, record: Mapping[str, Any], collection: str) -> dict[str, Any]:
        url = f"{self.public_base_url}{collection}/{record['sid']}"
        rendered = {**record, "url": url, "links": {"user_conversations": f"{url}/Conversations"}}
        return {name: rendered.get(name) for name in self.user_fields}

    def _page(self, service_sid: str, collection: str, query: dict[str, list[str]]) -> dict[str, Any]:
        size = int(query.get("PageSize", [DEFAULT_PAGE_SIZE])[0])
        page = int(query.get("Page", ["0"])[0])
        token = query.get("PageToken", [None])[0]
        if token is None:
            offset = page * size
        elif token.startswith("PT") and token[2:].isdigit():
            offset = int(token[2:])
        else:
            raise _StandInError(400, f"Invalid PageToken {token!r}")
        users = list(self._users[service_sid].values())
        base = f"{self.public_base_url}{collection}"

        def page_url(number: int, start: int | None) -> str:
            params: dict[str, Any] = {"PageSize": size, "Page": number}
            if start is not None:
                params["PageToken"] = f"PT{start}"
            return f"{base}?{urlencode(params)}"

        return {
            "users": [self._render(u, collection) for u in users[offset : offset + size]],
            "meta": {
                "page": page,
                "page_size": size,
                "first_page_url": page_url(0, None),
                "previous_page_url": page_url(page - 1, max(0, offset - size)) if offset > 0 else None,
                "url": page_url(page, None if token is None else offset),
                "next_page_url": page_url(page + 1, offset + size) if offset + size < len(users) else None,
                "key": "users",
            },
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so server_close() joins handler threads: no socket outlives stop()
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], standin: ConversationsStandIn):
        self.standin = standin
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            connections = list(self._open)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the client went away (e.g. it timed out during an injected delay)
        self.standin._violation("stand-in crashed:\n" + traceback.format_exc())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Twilio
    timeout = 30
    server: _Server

    def _dispatch(self) -> None:
        standin = self.server.standin
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            standin._violation(f"{self.command} {self.path}: chunked request bodies are not supported")
            self.close_connection = True
            body = b""
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            reply = standin.handle(self.command, self.path, self.headers, body)
        except Exception:
            standin._violation(f"stand-in crashed on {self.command} {self.path}:\n{traceback.format_exc()}")
            reply = standin._error(_StandInError(500, "stand-in crashed"))
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Twilio-Request-Id", new_sid("RQ"))
        if reply.status != 204:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        _log.debug("%s - %s", self.address_string(), format % args)
