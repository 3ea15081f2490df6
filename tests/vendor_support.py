"""Vendor IdP tests: an example config from ``examples/idp/``, its tokens signed by test keys.

Each vendor test module signs tokens shaped as the vendor documents them (header and claims,
with the vendor's real ``iss``) and serves the public keys as a JWKS over real HTTP on loopback;
the example's issuer keeps its real URL and only its key source points at that server.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from devidp.harness import generate_keys, public_jwks
from tests.support import ROOT, TWILIO_SECRET, RunningService, private_key, rsa, running
from token_service.settings import settings_from_dict

EXAMPLES = ROOT / "examples" / "idp"


class KeyServer:
    """A real HTTP server on loopback with the JWKS at ``/keys`` and any documents under their paths
    (JSON, or ``bytes`` served as they are: an AWS ALB's PEM keys). ``hits`` counts requests per path."""

    def __init__(self, documents: dict[str, Any] | None = None) -> None:
        self.keys = generate_keys()
        self.documents: dict[str, Any] = {"/keys": public_jwks(self.keys), **(documents or {})}
        self.requests = 0
        self.hits: dict[str, int] = {}
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @Request.application  # type: ignore[arg-type]
    def _app(self, request: Request) -> Response:
        self.requests += 1
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        document = self.documents.get(request.path)
        if document is None:
            return Response("not found", status=404)
        if isinstance(document, bytes):
            return Response(document, content_type="application/x-pem-file")
        return Response(json.dumps(document), content_type="application/json")

    @property
    def key(self) -> dict[str, Any]:
        return rsa(self.keys)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def example(name: str, folder: str = "idp") -> dict[str, Any]:
    """The parsed example file ``examples/<folder>/<name>.toml``."""
    with open(EXAMPLES.parent / folder / f"{name}.toml", "rb") as fh:
        return tomllib.load(fh)


def for_test(data: dict[str, Any], keys: KeyServer) -> dict[str, Any]:
    """The example with its keys served by ``keys``, an in-process store and no rate limits."""
    for issuer in data["issuers"]:
        issuer.pop("discovery_url", None)
        issuer["jwks_uri"] = f"{keys.url}/keys"
    data["store"] = {"url": "memory://"}
    data["rate_limits"] = {"enabled": False}
    return data


@contextmanager
def vendor_service(name: str, **issuer_overrides: Any) -> Iterator[tuple[RunningService, KeyServer]]:
    """The service running ``examples/idp/<name>.toml``, with a key server of the test's own."""
    keys = KeyServer()
    data = for_test(example(name), keys)
    data["issuers"][0].update(issuer_overrides)
    try:
        with running(settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})) as svc:
            yield svc, keys
    finally:
        keys.close()


def sign(jwk: dict[str, Any], claims: dict[str, Any], header: dict[str, Any]) -> str:
    """A token with exactly this header (plus ``alg`` and ``kid``) and these claims."""
    payload = json.dumps(claims).encode()
    return jwt.PyJWS().encode(payload, private_key(jwk), algorithm=jwk["alg"],
                              headers={"kid": jwk["kid"], **header}, sort_headers=False)


def times(lifetime: int = 3600) -> dict[str, int]:
    now = int(time.time())
    return {"iat": now, "nbf": now, "exp": now + lifetime}
