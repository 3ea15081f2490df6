"""Browser endpoints: ``/login``, ``/callback``, ``/logout``, ``/backchannel-logout``, ``/demo/``.

Cookie-authenticated state-changing requests need a CSRF proof: the custom header
``X-Requested-With`` (which a cross-site form cannot send, and which forces a CORS preflight) and an
``Origin`` (or ``Referer``) on this service's origin or the CORS allow-list. Back-channel logout
follows OpenID Connect Back-Channel Logout 1.0 (200 on success, 400 otherwise, ``no-store``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from importlib import resources

from flask import Blueprint, Flask, Response, current_app, jsonify, redirect, request, session

from token_service.api.body import form_value
from token_service.authn.browser import BrowserLogin, origin_of, parse_events
from token_service.authn.sessions import BrowserSession, SessionStore
from token_service.errors import AccessDenied, InvalidRequest, InvalidToken, NotFound
from token_service.issuance import TokenIssuer, record_ended

bp = Blueprint("browser", __name__)
audit = logging.getLogger("token_service.audit")
CSRF_HEADER = "X-Requested-With"
# How long a logout token's jti is remembered against replay: its own lifetime, but never longer than
# this (a logout token with a huge exp must not become a huge, failing store TTL).
MAX_REPLAY_WINDOW = 7 * 86400


def _login() -> BrowserLogin:
    found = current_app.extensions.get("token_service.login")
    if found is None:
        raise NotFound("browser sign-in is not enabled on this service")
    return found  # type: ignore[no-any-return]


def _sessions() -> SessionStore:
    return current_app.extensions["token_service.sessions"]  # type: ignore[no-any-return]


def _cookie_name() -> str:
    return current_app.extensions["token_service.settings"].login.cookie_name  # type: ignore[no-any-return]


def check_csrf(header: Callable[[str], str | None], allowed_origins: Collection[str]) -> None:
    """Refuse a cookie-authenticated POST unless it proves it comes from an allowed page."""
    if not header(CSRF_HEADER):
        raise AccessDenied(f"cookie-authenticated requests need the {CSRF_HEADER} header (CSRF protection)")
    origin = header("Origin") or ""
    if not origin or origin == "null":
        referer = header("Referer") or ""
        origin = origin_of(referer) if referer else ""
    if origin_of(origin) not in allowed_origins:
        raise AccessDenied("the request's Origin is not allowed to use this session (CSRF protection)")


def session_for(session_id: str | None, sessions: SessionStore) -> tuple[str, BrowserSession] | None:
    """The signed-in browser session named by the session cookie's value, if it is live."""
    if not session_id:
        return None
    found = sessions.load(session_id)
    return (session_id, found) if found else None


def require_csrf() -> None:
    check_csrf(request.headers.get, _login().allowed_origins)


def current_session() -> tuple[str, BrowserSession] | None:
    if "token_service.sessions" not in current_app.extensions:
        return None
    return session_for(request.cookies.get(_cookie_name()), _sessions())


@bp.after_request
def _no_store(resp: Response) -> Response:
    """Nothing here may be cached: redirects carry state, answers carry session outcomes."""
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/login")
def login() -> Response:
    url = _login().authorization_url(request.args.get("return_to"))
    return redirect(url, code=302)


@bp.get("/callback")
def callback() -> Response:
    browser = _login()
    done = browser.complete(request.args.to_dict())
    verified = done.verified
    issuer_tokens: TokenIssuer = current_app.extensions["token_service.issuer"]
    settings = issuer_tokens.settings
    mapped = issuer_tokens.map_verified(verified)
    old = request.cookies.get(_cookie_name())
    if old:
        _sessions().end(old)  # rotate: a session id never survives a login
    session_id, record = _sessions().create(
        identity=mapped.identity, role=mapped.role, role_sid=mapped.role_sid, issuer=verified.issuer.name,
        subject=verified.claims["sub"], idp_session=str(verified.claims.get("sid", "")),
    )
    session.clear()
    audit.info("browser login", extra={
        "event": "login", "identity": mapped.identity, "role": mapped.role, "issuer": verified.issuer.name,
        "sub": verified.claims["sub"], "client_ip": request.remote_addr,
    })
    resp = redirect(done.return_to, code=303)
    resp.set_cookie(
        _cookie_name(), session_id, max_age=record.expires_at - record.created_at, httponly=True,
        samesite="Lax", secure=not settings.server.dev_mode, path="/",
    )
    return resp


@bp.post("/logout")
def logout() -> Response:
    require_csrf()
    found = current_session()
    families = 0
    if found:
        session_id, record = found
        ended = _sessions().end(session_id)
        families = len(ended.family_ids)
        record_ended("logout", ended, event="logout", identity=record.identity, issuer=record.issuer,
                     sub=record.subject, client_ip=request.remote_addr)
    resp = jsonify(signed_out=True, families_revoked=families, end_session_url=_login().end_session_url())
    resp.delete_cookie(_cookie_name(), path="/", httponly=True, samesite="Lax",
                       secure=not current_app.extensions["token_service.settings"].server.dev_mode)
    return resp


@bp.post("/backchannel-logout")
def backchannel_logout() -> Response:
    browser = _login()
    token = form_value("logout_token")
    if not token:
        raise InvalidRequest("the request carries no logout_token")
    settings = browser.settings
    try:
        verified = browser.verifier.verify_logout_token(token, browser.issuer.name, settings.login.client_id)
    except InvalidToken as exc:
        raise InvalidRequest(f"the logout token is invalid: {exc.detail}") from None
    claims = verified.claims
    if not parse_events(dict(claims)):
        raise InvalidRequest("the logout token lacks the back-channel logout event")
    if "nonce" in claims:
        raise InvalidRequest("a logout token must not carry a nonce")
    sid, sub = claims.get("sid"), claims.get("sub")
    sid = sid if isinstance(sid, str) and sid else None
    sub = sub if isinstance(sub, str) and sub else None
    if sid is None and sub is None:
        raise InvalidRequest("the logout token names neither a session (sid) nor a subject (sub)")
    remaining = int(claims["exp"]) - int(time.time()) + verified.issuer.leeway
    ttl = min(max(60, remaining), MAX_REPLAY_WINDOW)
    store = current_app.extensions["token_service.issuer"].store
    if not store.add_once(f"bcl-jti:{browser.issuer.name}:{claims['jti']}", ttl):
        raise InvalidRequest("this logout token was already used (jti replay)")
    name = browser.issuer.name
    sessions, ended = _sessions().end_for_idp(name, sid=sid, sub=sub)
    for each in ended:
        record_ended("logout", each, event="backchannel_logout", issuer=name, sub=sub, sessions=sessions,
                     client_ip=request.remote_addr)
    if not ended:
        audit.info("back-channel logout", extra={
            "event": "backchannel_logout", "issuer": name, "sub": sub, "sessions": sessions, "families": [],
            "count": 0, "client_ip": request.remote_addr,
        })
    return Response("", status=200)


@bp.get("/demo/")
def demo() -> Response:
    if not current_app.extensions["token_service.settings"].login.demo_page:
        raise NotFound("the demo page is not enabled")
    html = resources.files("token_service.api").joinpath("demo.html").read_text(encoding="utf-8")
    resp = Response(html, mimetype="text/html")
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'"
    )
    return resp


@dataclass(frozen=True)
class BrowserSessions:
    """What ``POST /v1/token`` needs to mint for a signed-in browser (``api/token_api.py``)."""

    allowed_origins: Collection[str]  # where a cookie-authenticated request may come from (CSRF)
    sessions: SessionStore
    cookie_name: str


def install(app: Flask, issuer: TokenIssuer) -> BrowserSessions | None:
    """Enable browser sign-in when ``[login] enabled``; without it these routes do not exist.

    Returns what the token endpoint needs for signed-in browsers, or None when login is off.
    """
    settings = issuer.settings
    if not settings.login.enabled:
        return None
    app.register_blueprint(bp)
    key = settings.secrets.session_key
    assert key is not None  # settings validation guarantees it when login is enabled
    app.secret_key = key.get_secret_value()
    app.config.update(
        SESSION_COOKIE_NAME=f"{settings.login.cookie_name}_login",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=not settings.server.dev_mode,
    )
    sessions = SessionStore(issuer.store, settings.login.session_ttl, issuer.policy)
    login = BrowserLogin(app, settings, issuer.store, issuer.verifier)
    app.extensions["token_service.sessions"] = sessions
    app.extensions["token_service.login"] = login
    return BrowserSessions(login.allowed_origins, sessions, settings.login.cookie_name)

