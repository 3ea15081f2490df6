"""``GET /healthz`` (the process serves) and ``GET /readyz`` (its dependencies are usable).

Readiness is for gateways and dashboards: JSON with each issuer's key state and age. It answers
503 only when no issuer has usable keys, because one unreachable IdP out of several should not
take every replica out of rotation for users of the others; the per-issuer state says which is
degraded.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from token_service.authn.bearer import BearerVerifier

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    resp = jsonify(status="ok")
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    verifier: BearerVerifier = current_app.extensions["token_service.issuer"].verifier
    issuers = {}
    for name, cache in verifier.caches.items():
        cache.ensure_loaded()
        issuers[name] = cache.status()
    usable = [s["usable"] for s in issuers.values()]
    fresh = [s["state"] == "fresh" for s in issuers.values()]
    status = "ok" if all(fresh) else "degraded" if any(usable) else "unavailable"
    resp = jsonify(status=status, issuers=issuers)
    resp.headers["Cache-Control"] = "no-store"
    return resp, 200 if any(usable) else 503
