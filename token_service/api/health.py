"""``GET /healthz`` (the process serves) and ``GET /readyz`` (its dependencies are usable).

``/readyz`` is for dashboards and load balancers outside Kubernetes: JSON with the store's state and
each issuer's key state and age. It answers 503 when the store is down or no issuer has usable keys.
One unreachable IdP out of several does not take a replica out of rotation; the per-issuer state
says which is degraded.

Kubernetes' readiness probe must not fail because of a dependency that every replica shares: a
Redis outage would take every pod out of the Service at once, and clients would get the ingress's
error instead of the service's own 503 problem+json with ``Retry-After``. So, as the Kubernetes API
server's own ``/readyz?exclude=etcd`` does, a check can be left out: ``/readyz?exclude=store&
exclude=issuers`` answers 200 whenever this replica's request pipeline answers, and still lists
what it left out. Liveness stays ``/healthz``: the process only.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from token_service.errors import InvalidRequest
from token_service.issuance import TokenIssuer
from token_service.store.base import StoreUnavailable

bp = Blueprint("health", __name__)
CHECKS = ("store", "issuers")


@bp.get("/healthz")
def healthz() -> Response:
    resp = jsonify(status="ok")
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _store(issuer: TokenIssuer) -> dict[str, Any]:
    try:
        store = {"ok": True, "latency_ms": round(issuer.store.ping() * 1000, 2), "error": None}
    except StoreUnavailable as exc:
        store = {"ok": False, "latency_ms": None, "error": str(exc)}
    store["url_scheme"] = issuer.settings.store.url.split("://")[0]
    return store


def _issuers(issuer: TokenIssuer) -> dict[str, dict[str, Any]]:
    found = {}
    for name, cache in issuer.verifier.caches.items():
        cache.ensure_loaded()
        found[name] = cache.status()
    return found


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    excluded = set(request.args.getlist("exclude"))
    unknown = sorted(excluded - set(CHECKS))
    if unknown:
        raise InvalidRequest(f"exclude: unknown check {unknown[0]!r}; the checks are {', '.join(CHECKS)}")
    issuer: TokenIssuer = current_app.extensions["token_service.issuer"]
    store = {"excluded": True} if "store" in excluded else _store(issuer)
    issuers = {} if "issuers" in excluded else _issuers(issuer)
    ready = store.get("ok", True) and ("issuers" in excluded or any(s["usable"] for s in issuers.values()))
    # An AWS ALB's keys are fetched by the kid an assertion names: none yet is not a degradation.
    fresh = all(s["state"] in ("fresh", "on_demand") for s in issuers.values())
    status = "unavailable" if not ready else "ok" if fresh else "degraded"
    resp = jsonify(status=status, store=store, issuers=issuers, excluded=sorted(excluded))
    resp.headers["Cache-Control"] = "no-store"
    return resp, 200 if ready else 503
