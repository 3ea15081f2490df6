"""``GET /healthz`` (the process serves) and ``GET /readyz`` (its dependencies are usable).

Readiness is for gateways and dashboards: JSON with the store's state and each issuer's key
state and age. It answers 503 when the store is down or no issuer has usable keys. One unreachable
IdP out of several does not take every replica out of rotation for users of the others; the
per-issuer state says which is degraded.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from token_service.issuance import TokenIssuer
from token_service.store.base import StoreUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    resp = jsonify(status="ok")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    issuer: TokenIssuer = current_app.extensions["token_service.issuer"]
    verifier = issuer.verifier
    try:
        store = {"ok": True, "latency_ms": round(issuer.store.ping() * 1000, 2), "error": None}
    except StoreUnavailable as exc:
        store = {"ok": False, "latency_ms": None, "error": str(exc)}
    store["url_scheme"] = issuer.settings.store.url.split("://")[0]
    issuers = {}
    for name, cache in verifier.caches.items():
        cache.ensure_loaded()
        issuers[name] = cache.status()
    usable = [s["usable"] for s in issuers.values()]
    fresh = [s["state"] == "fresh" for s in issuers.values()]
    ready = store["ok"] and any(usable)
    status = "unavailable" if not ready else "ok" if all(fresh) else "degraded"
    resp = jsonify(status=status, store=store, issuers=issuers)
    resp.headers["Cache-Control"] = "no-store"
    return resp, 200 if ready else 503
