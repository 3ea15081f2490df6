"""gunicorn's own log lines as JSON, like the app's (``logger_class`` in ``gunicorn_conf.py``).

gunicorn builds the handlers of its ``gunicorn.error`` and ``gunicorn.access`` loggers itself,
with plain-text formats. This subclass of its ``Logger`` (gunicorn's documented ``logger_class``
hook) gives those handlers the service's ``JsonFormatter`` and writes each access line as fields
instead of an Apache-style string: method, path, status, size, duration, peer, and the query string
and ``Referer`` with their credentials redacted (the whole query of ``/callback``, which carries
the authorization code). ``access_log_format`` is therefore not used.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger

from token_service.logs import REDACTED, JsonFormatter, request_id_var


class JsonLogger(Logger):  # type: ignore[misc]
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        request_id = next((value for name, value in resp.headers if name.lower() == "x-request-id"), None)
        token = request_id_var.set(request_id)  # the app's id for this request, as on its own lines
        try:
            self.access_log.info("request", extra=_access_fields(resp, environ, request_time))
        except Exception:  # noqa: BLE001 - as gunicorn's own access(): a log line never fails a request
            self.exception("could not write the access log line")
        finally:
            request_id_var.reset(token)


def _access_fields(resp: Any, environ: dict[str, Any], request_time: timedelta) -> dict[str, Any]:
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING") or None
    if query and path.rstrip("/").endswith("/callback"):
        query = REDACTED  # code, state, session_state: the redirect that ends a sign-in
    status = resp.status
    return {
        "event": "http_request",
        "method": environ.get("REQUEST_METHOD"),
        "path": path,
        "query": query,  # JsonFormatter redacts access_token, refresh_token, code, ... in it
        "status": int(status.split(None, 1)[0]) if isinstance(status, str) else status,
        "bytes": getattr(resp, "sent", None),
        "duration_ms": round(request_time.total_seconds() * 1000, 2),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "referer": environ.get("HTTP_REFERER"),
        "user_agent": environ.get("HTTP_USER_AGENT"),
    }
