"""Browser sign-in as an OIDC relying party: authorization code + PKCE (S256) + state + nonce.

Authlib's Flask client (``authlib.integrations.flask_client``) discovers the IdP, builds the
authorization request and exchanges the code. Its per-login state (state, nonce, code verifier,
redirect URI) is kept server-side in the store through Authlib's cache hook, bound to the browser
by a marker in Flask's signed cookie session. The ID token is then verified by the same
``BearerVerifier`` as bearer tokens, plus the nonce, so there is one validation path.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask, session

from token_service.authn.bearer import BearerVerifier, VerifiedToken
from token_service.errors import InvalidRequest, Unavailable
from token_service.settings import Settings
from token_service.store.base import Store, StoreUnavailable

CLIENT_NAME = "idp"


class StoreCache:
    """Authlib's cache interface (get/set/delete) over the service's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> Any:
        return self.store.get(f"oauth:{key}")

    def set(self, key: str, value: str, expires: int | None = None) -> None:
        self.store.put(f"oauth:{key}", value, int(expires or 600))

    def delete(self, key: str) -> None:
        self.store.delete(f"oauth:{key}")


@dataclass(frozen=True)
class Login:
    verified: VerifiedToken
    return_to: str


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def return_to_pattern(settings: Settings) -> str:
    """What ``return_to`` may be, as one regex (also published in the OpenAPI description).

    A path that cannot be read as another host (no ``//``, no backslash, no control characters),
    or a URL that starts exactly with this service's origin or an allowed CORS origin.
    """
    path = r"/([^/\\\x00-\x1f][^\\\x00-\x1f]*)?"
    origins = [settings.server.public_url, *settings.server.cors_origins]
    literal = "|".join(re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", origin_of(o)) for o in origins)
    return f"^({path}|({literal}){path}|({literal}))$"


class BrowserLogin:
    """The relying-party side of the code flow, for one configured issuer and client."""

    def __init__(self, app: Flask, settings: Settings, store: Store, verifier: BearerVerifier) -> None:
        login = settings.login
        self.settings = settings
        self.verifier = verifier
        self.issuer = settings.login_issuer()
        scopes = list(dict.fromkeys([*login.scopes, *(["offline_access"] if login.offline_access else [])]))
        secret = settings.secrets.oidc_client_secret
        self.oauth = OAuth(app, cache=StoreCache(store))
        self.client = self.oauth.register(
            CLIENT_NAME,
            client_id=login.client_id,
            client_secret=secret.get_secret_value() if secret else None,
            server_metadata_url=self.issuer.discovery_document_url,
            client_kwargs={
                "scope": " ".join(scopes),
                "code_challenge_method": "S256",
                "token_endpoint_auth_method": "client_secret_basic" if secret else "none",
                "timeout": login.http_timeout,
            },
        )
        self.allowed_origins = {origin_of(settings.server.public_url),
                                *(origin_of(o) for o in settings.server.cors_origins)}

    # -- return URLs --------------------------------------------------------------------------
    def safe_return_to(self, value: str | None) -> str:
        """A local path, or a URL on an allowed origin (exactly): never an open redirect."""
        if not value:
            return self.settings.login.after_login
        if re.fullmatch(return_to_pattern(self.settings), value):
            return value
        raise InvalidRequest("return_to must be a path on this service or a URL on an allowed origin")

    # -- the flow -------------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        try:
            return self.client.load_server_metadata()  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - any network or parse failure means the IdP is unreachable
            raise Unavailable("the identity provider cannot be reached; retry shortly") from None

    def authorization_url(self, return_to: str | None) -> str:
        """Start a login: remember state, nonce, verifier and return_to; give the IdP URL."""
        target = self.safe_return_to(return_to)
        self._metadata()
        redirect_uri = self.settings.login.redirect_uri
        try:
            rv = self.client.create_authorization_url(redirect_uri)
            self.client.save_authorize_data(redirect_uri=redirect_uri, return_to=target, **rv)
        except StoreUnavailable:
            raise
        except Exception:  # noqa: BLE001
            raise Unavailable("the identity provider cannot be reached; retry shortly") from None
        return str(rv["url"])

    def complete(self, args: dict[str, str]) -> Login:
        """Finish a login from the callback's query: state, code exchange, ID token, nonce."""
        state = args.get("state", "")
        # Authlib finds the state only through this browser's own signed marker: another browser
        # presenting a victim's callback URL gets nothing, and leaves the victim's sign-in alone.
        data = self.client.framework.get_state_data(session, state) if state else None
        if data is None:
            raise InvalidRequest("this sign-in is unknown or expired; start again at /login")
        self.client.framework.clear_state_data(session, state)  # one use, whatever happens next
        if args.get("error"):
            raise InvalidRequest(f"the identity provider refused the sign-in ({args['error'][:64]})")
        code = args.get("code")
        if not code:
            raise InvalidRequest("the callback carries no authorization code")
        try:
            token = self.client.fetch_access_token(
                redirect_uri=data["redirect_uri"], code=code, code_verifier=data.get("code_verifier"),
            )
        except OAuthError:
            raise InvalidRequest(
                "the identity provider rejected the authorization code (used or expired); start again at /login"
            ) from None
        except Exception:  # noqa: BLE001
            raise Unavailable("the identity provider cannot be reached; retry shortly") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise InvalidRequest("the identity provider returned no ID token")
        verified = self.verifier.verify(id_token)
        nonce = verified.claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce, str(data.get("nonce", ""))):
            raise InvalidRequest("the ID token's nonce does not match this sign-in; start again at /login")
        if verified.issuer.name != self.issuer.name:
            raise InvalidRequest("the ID token comes from another issuer")
        return Login(verified=verified, return_to=str(data.get("return_to") or self.settings.login.after_login))

    def end_session_url(self) -> str | None:
        """RP-initiated logout at the IdP, when it offers an end-session endpoint."""
        try:
            endpoint = self._metadata().get("end_session_endpoint")
        except Unavailable:
            return None
        if not isinstance(endpoint, str):
            return None
        params = {"client_id": self.settings.login.client_id}
        if self.settings.login.post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = self.settings.login.post_logout_redirect_uri
        return f"{endpoint}?{urlencode(params)}"


def parse_events(claims: dict[str, Any]) -> bool:
    """OIDC Back-Channel Logout 1.0, 2.4: ``events`` holds the logout event as a JSON object."""
    events = claims.get("events")
    if isinstance(events, str):
        try:
            events = json.loads(events)
        except ValueError:
            return False
    return isinstance(events, dict) and isinstance(
        events.get("http://schemas.openid.net/event/backchannel-logout"), dict
    )
