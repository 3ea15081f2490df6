"""``create_app(settings)``: wiring only. Importing this module has no side effects."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from token_service.api import browser, cors, health, oauth, observability, openapi
from token_service.api.errors import register_error_handlers
from token_service.api.token_api import TokenApi
from token_service.issuance import TokenIssuer
from token_service.logs import install_request_ids
from token_service.settings import Settings
from token_service.store import Store, open_store


def create_app(settings: Settings, store: Store | None = None) -> Flask:
    """Build the WSGI app for ``settings``; tests call this with their own settings.

    The store client connects lazily, so building the app (in gunicorn's master, before the
    fork) opens no connection that workers would share.
    """
    app = Flask("token_service")
    app.config["MAX_CONTENT_LENGTH"] = settings.server.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["token_service.settings"] = settings
    issuer = TokenIssuer(settings, store or open_store(settings))
    app.extensions["token_service.issuer"] = issuer
    install_request_ids()
    observability.install(app)
    register_error_handlers(app, store_retry_after=settings.store.retry_after)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(oauth.bp)
    signed_in = browser.install(app, issuer)
    cors_policy = cors.CorsPolicy(settings.server.cors_origins)
    cors.install(app, cors_policy)
    app.extensions["token_service.openapi"] = openapi.build_openapi(settings)
    # The token endpoints (the hot path) are answered in front of Flask; see api/token_api.py.
    app.wsgi_app = TokenApi(app.wsgi_app, issuer, cors_policy, signed_in)  # type: ignore[method-assign]
    hops = settings.server.trusted_proxies
    if hops:
        # X-Forwarded-* is honoured only through the configured number of trusted proxies.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    return app
