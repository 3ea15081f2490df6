"""Identity asserted by a gateway in front: AWS ALB, Google IAP, Cloudflare Access, and a proxy's JWT.

Each runs the service with its ``examples/gateways/`` configuration; assertions are shaped as each
vendor documents them and signed by keys the test controls, served over real HTTP on loopback (the
ALB's as PEM documents by kid, the others as a JWKS). The proxy case forwards a real ID token of the
oidc-provider. Connections come from 127.0.0.1, the configured trusted proxy; the negative cases
connect from 127.0.0.2, another loopback address, with the very same headers.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from devidp.harness import DevIdP
from tests.support import TWILIO_SECRET, RunningService, post_refresh, problem, running, sample
from tests.vendor_support import KeyServer, example, sign, times
from token_service.authn.alb import AlbKeyCache
from token_service.authn.jwks import KeyNotFound, KeysUnavailable
from token_service.settings import settings_from_dict

pytestmark = pytest.mark.integration

ALB_ISSUER = "https://cognito-idp.eu-central-1.amazonaws.com/eu-central-1_Example01"
ALB_CLIENT = "4fmvht22tjrgd7d3k3tghttct7"
ALB_ARN = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:loadbalancer/app/chat-tokens/50dc6c495c0c9188"
OTHER_ARN = "arn:aws:elasticloadbalancing:eu-central-1:123456789012:loadbalancer/app/someone-else/0123456789abcdef"
IAP_AUDIENCE = "/projects/123456789012/global/backendServices/1234567890123456789"
CF_TEAM = "https://example.cloudflareaccess.com"
CF_AUD = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2"
UNTRUSTED = "127.0.0.2"  # another loopback address: a peer that is not the configured proxy


def post_from(source: str, url: str, headers: dict[str, str], path: str = "/v1/token") -> tuple[int, dict]:
    """POST over a connection opened from ``source`` (the TCP peer the service sees)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("POST", path, body=b"", headers={"Content-Length": "0", **headers})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


@contextmanager
def gateway_service(name: str, keys: KeyServer, **issuer: Any) -> Iterator[RunningService]:
    """The service running ``examples/gateways/<name>.toml``, its keys served by ``keys``."""
    data = example(name, "gateways")
    data["store"] = {"url": "memory://"}
    data["rate_limits"] = {"enabled": False}
    data["server"]["trusted_proxy_addresses"] = ["127.0.0.1"]
    data["server"].pop("public_url", None)
    data["issuers"][0].update(issuer)
    with running(settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})) as svc:
        yield svc


# -- AWS ALB ---------------------------------------------------------------------------------------
def _padded(data: dict[str, Any]) -> str:
    """base64url WITH padding, as an ALB writes each segment (JSON of a length that needs some)."""
    raw = json.dumps(data, separators=(",", ":"))
    if len(raw) % 3 == 0:  # 3n bytes encode without '=': one space more
        raw += " "
    return base64.urlsafe_b64encode(raw.encode()).decode()


def alb_assertion(key: ec.EllipticCurvePrivateKey, kid: str, *, claims: dict[str, Any] | None = None,
                  **header: Any) -> str:
    """``x-amzn-oidc-data`` as AWS documents it: protection in the header, padded segments, ES256."""
    exp = int(time.time()) + 120
    head = {"typ": "JWT", "kid": kid, "alg": "ES256", "iss": ALB_ISSUER, "client": ALB_CLIENT, "signer": ALB_ARN,
            "exp": exp, **header}
    body = {"sub": "23d498b2-3031-70d2-8a15-49dd886a087b", "email_verified": "true", "email": "Jane@Example.com",
            "username": "jane", "exp": exp, "iss": ALB_ISSUER, **(claims or {})}
    signing_input = f"{_padded(head)}.{_padded(body)}"
    signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input.encode(), key)
    return f"{signing_input}.{base64.urlsafe_b64encode(signature).decode()}"


def pem(key: ec.EllipticCurvePrivateKey | Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def alb() -> Iterator[tuple[RunningService, KeyServer, ec.EllipticCurvePrivateKey]]:
    keys = KeyServer()
    key = ec.generate_private_key(ec.SECP256R1())
    keys.documents["/alb/c2f80c8b-c05c-4068-af14-17299f7896b1"] = pem(key)
    try:
        gateway = {**example("aws-alb", "gateways")["issuers"][0]["gateway"], "key_url": f"{keys.url}/alb/{{kid}}"}
        with gateway_service("aws-alb", keys, gateway=gateway) as svc:
            yield svc, keys, key
    finally:
        keys.close()


def alb_headers(token: str) -> dict[str, str]:
    return {"x-amzn-oidc-data": token, "x-amzn-oidc-identity": "23d498b2", "x-amzn-oidc-accesstoken": "opaque"}


KID = "c2f80c8b-c05c-4068-af14-17299f7896b1"


def test_alb_assertion_with_padded_segments_mints_and_its_key_is_cached(alb) -> None:  # type: ignore[no-untyped-def]
    svc, keys, key = alb
    token = alb_assertion(key, KID)
    assert all(part.endswith("=") for part in token.split("."))  # AWS pads every segment
    resp = svc.post_token(None, headers=alb_headers(token))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["identity"] == "jane@example.com" and body["role"] == "user" and body["refresh_token"]
    assert jwt.decode(body["token"], TWILIO_SECRET, algorithms=["HS256"])["grants"]["identity"] == "jane@example.com"
    assert svc.post_token(None, headers=alb_headers(alb_assertion(key, KID))).status_code == 200
    assert keys.hits == {f"/alb/{KID}": 1}  # fetched by kid once, then cached


def test_alb_assertion_is_verified_as_sent_with_its_padding(alb) -> None:  # type: ignore[no-untyped-def]
    svc, _, key = alb
    head, payload, signature = alb_assertion(key, KID).split(".")
    unpadded = f"{head.rstrip('=')}.{payload.rstrip('=')}.{signature}"  # the same claims, another signing input
    resp = svc.post_token(None, headers=alb_headers(unpadded))
    assert resp.status_code == 401 and "signature" in problem(resp)["detail"]


def test_alb_of_another_load_balancer_is_refused_before_any_key_fetch(alb) -> None:  # type: ignore[no-untyped-def]
    svc, keys, key = alb
    resp = svc.post_token(None, headers=alb_headers(alb_assertion(key, KID, signer=OTHER_ARN)))
    assert resp.status_code == 401 and "load balancer" in problem(resp)["detail"]
    assert keys.hits == {}


@pytest.mark.parametrize(("header", "reason"), [
    ({"iss": "https://cognito-idp.eu-central-1.amazonaws.com/eu-central-1_Other"}, "identity provider"),
    ({"client": "another-client"}, "another OIDC client"),
    ({"exp": int(time.time()) - 3600}, "expired"),
    ({"exp": "soon"}, "numeric 'exp'"),
    ({"alg": "ES384"}, "algorithm"),
])
def test_alb_header_rules(alb, header: dict[str, Any], reason: str) -> None:  # type: ignore[no-untyped-def]
    svc, _, key = alb
    resp = svc.post_token(None, headers=alb_headers(alb_assertion(key, KID, **header)))
    assert resp.status_code == 401 and reason in problem(resp)["detail"]


def test_alb_assertion_signed_by_another_key_is_refused(alb) -> None:  # type: ignore[no-untyped-def]
    svc, _, _ = alb
    forged = alb_assertion(ec.generate_private_key(ec.SECP256R1()), KID)
    resp = svc.post_token(None, headers=alb_headers(forged))
    assert resp.status_code == 401 and "signature" in problem(resp)["detail"]


def test_alb_unknown_kid_is_remembered_and_a_non_p256_key_refused(alb) -> None:  # type: ignore[no-untyped-def]
    svc, keys, key = alb
    unknown = "0e5a4b5c-0000-4000-8000-000000000000"
    for _ in range(3):
        resp = svc.post_token(None, headers=alb_headers(alb_assertion(key, unknown)))
        assert resp.status_code == 401 and "not published" in problem(resp)["detail"]
    assert keys.hits == {f"/alb/{unknown}": 1}  # a 404 is remembered: asked once
    p384 = "7f1e0c2a-0000-4000-8000-000000000000"
    keys.documents[f"/alb/{p384}"] = pem(ec.generate_private_key(ec.SECP384R1()))
    resp = svc.post_token(None, headers=alb_headers(alb_assertion(key, p384)))
    assert resp.status_code == 401 and "P-256" in problem(resp)["detail"]
    resp = svc.post_token(None, headers=alb_headers(alb_assertion(key, "../../etc/passwd")))
    assert resp.status_code == 401 and "key id" in problem(resp)["detail"]


def test_alb_header_from_an_untrusted_peer_is_ignored(alb) -> None:  # type: ignore[no-untyped-def]
    svc, keys, key = alb
    before = sample("token_service_gateway_headers_ignored_total", issuer="alb")
    headers = {**alb_headers(alb_assertion(key, KID)), "X-Forwarded-For": "127.0.0.1"}
    status, body = post_from(UNTRUSTED, svc.url, headers)
    assert status == 401 and body["type"] == "invalid_token"  # as if no proof had been sent at all
    assert "Authorization: Bearer" in body["detail"]
    assert sample("token_service_gateway_headers_ignored_total", issuer="alb") == before + 1
    assert keys.hits == {}
    status, _ = post_from("127.0.0.1", svc.url, headers)
    assert status == 200


def test_gateway_issuer_is_not_a_bearer_issuer_and_the_header_takes_no_other_issuer(
        alb, idp: DevIdP) -> None:  # type: ignore[no-untyped-def]
    svc, _, key = alb
    as_bearer = svc.post_token(alb_assertion(key, KID))
    assert as_bearer.status_code == 401
    user_token = idp.login("alice")["id_token"]  # a real token of an issuer this service does not trust
    resp = svc.post_token(None, headers=alb_headers(user_token))
    assert resp.status_code == 401


def test_alb_key_cache_serves_stale_keys_and_bounds_new_kids() -> None:
    keys = KeyServer()
    key = ec.generate_private_key(ec.SECP256R1())
    keys.documents[f"/alb/{KID}"] = pem(key)
    now = [1000.0]
    cache = AlbKeyCache(f"{keys.url}/alb/{{kid}}", name="alb", ttl=10, cooldown=30, max_stale=100, timeout=2,
                        clock=lambda: now[0])
    try:
        assert cache.status()["state"] == "on_demand" and cache.status()["usable"]
        assert cache.get_key(KID, "ES256").public_numbers() == key.public_key().public_numbers()
        del keys.documents[f"/alb/{KID}"]
        keys.close()  # AWS unreachable from now on
        now[0] += 50  # past ttl, within max_stale: served (the background refetch fails quietly)
        assert cache.get_key(KID, "ES256") is not None
        now[0] += 100  # past max_stale: refetched, and the failure is a 503, not a stale key
        with pytest.raises(KeysUnavailable):
            cache.get_key(KID, "ES256")
        assert cache.status()["state"] == "expired" and not cache.status()["usable"]
        with pytest.raises(KeyNotFound):
            cache.get_key(KID, "RS256")
        for i in range(4):  # a burst of made-up kids: a few fetches, then refused without one
            with pytest.raises(KeysUnavailable):
                cache.get_key(f"made-up-{i}", "ES256")
        fetches = cache.status()["fetches"]
        with pytest.raises(KeysUnavailable, match="too many unknown key ids"):
            cache.get_key("made-up-5", "ES256")
        assert cache.status()["fetches"] == fetches
    finally:
        keys.close()


# -- Google IAP ------------------------------------------------------------------------------------
def iap_assertion(keys: KeyServer, **claims: Any) -> str:
    jwk = next(k for k in keys.keys if k["alg"] == "ES256")
    body = {"iss": "https://cloud.google.com/iap", "aud": IAP_AUDIENCE, "sub": "accounts.google.com:118230938",
            "email": "Jane.Doe@example.com", "hd": "example.com",
            "google": {"access_levels": ["accessPolicies/1/accessLevels/corp"]}, **times(600), **claims}
    return sign(jwk, {k: v for k, v in body.items() if v is not None}, {"typ": "JWT"})


def test_google_iap_assertion() -> None:
    keys = KeyServer()
    try:
        with gateway_service("google-iap", keys, jwks_uri=f"{keys.url}/keys") as svc:
            resp = svc.post_token(None, headers={"x-goog-iap-jwt-assertion": iap_assertion(keys)})
            assert resp.status_code == 200, resp.text
            assert resp.json()["identity"] == "jane.doe@example.com"
            other_domain = svc.post_token(None, headers={"x-goog-iap-jwt-assertion": iap_assertion(keys, hd="x.io")})
            assert other_domain.status_code == 403
            wrong_backend = iap_assertion(keys, aud="/projects/123456789012/global/backendServices/999")
            assert svc.post_token(None, headers={"x-goog-iap-jwt-assertion": wrong_backend}).status_code == 401
            status, _ = post_from(UNTRUSTED, svc.url, {"x-goog-iap-jwt-assertion": iap_assertion(keys)})
            assert status == 401
    finally:
        keys.close()


def test_iap_defaults_come_from_google() -> None:
    data = example("google-iap", "gateways")
    settings = settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})
    iap = settings.issuers[0]
    assert iap.jwks_uri == "https://www.gstatic.com/iap/verify/public_key-jwk" and iap.algorithms == ["ES256"]
    assert iap.gateway is not None and iap.gateway.header_name == "x-goog-iap-jwt-assertion"


# -- Cloudflare Access -----------------------------------------------------------------------------
def cloudflare_assertion(keys: KeyServer, **claims: Any) -> str:
    body = {"aud": [CF_AUD], "email": "jane@example.com", "exp": int(time.time()) + 600, "iat": int(time.time()),
            "nbf": int(time.time()), "iss": CF_TEAM, "type": "app", "identity_nonce": "6ei69kawdKzMIAPF",
            "sub": "7335d417-61da-459d-899c-0a01c76a2f94", "country": "US", **claims}
    return sign(keys.key, body, {"typ": "JWT"})


def test_cloudflare_access_assertion_and_its_default_key_source() -> None:
    data = example("cloudflare-access", "gateways")
    settings = settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})
    assert settings.issuers[0].jwks_uri == f"{CF_TEAM}/cdn-cgi/access/certs"
    keys = KeyServer()
    try:
        with gateway_service("cloudflare-access", keys, jwks_uri=f"{keys.url}/keys") as svc:
            resp = svc.post_token(None, headers={"Cf-Access-Jwt-Assertion": cloudflare_assertion(keys)})
            assert resp.status_code == 200 and resp.json()["identity"] == "jane@example.com"
            other_app = cloudflare_assertion(keys, aud=["0" * 64])
            assert svc.post_token(None, headers={"Cf-Access-Jwt-Assertion": other_app}).status_code == 401
            as_bearer = svc.post_token(cloudflare_assertion(keys))
            assert as_bearer.status_code == 401 and "gateway" in problem(as_bearer)["detail"]
    finally:
        keys.close()


# -- nginx + oauth2-proxy: the IdP's own ID token in a header of the proxy's ----------------------------
def test_proxy_forwarded_id_token_refresh_and_audit(idp: DevIdP, caplog: pytest.LogCaptureFixture) -> None:
    keys = KeyServer()
    try:
        with gateway_service("nginx-oauth2-proxy", keys, issuer=idp.issuer, audiences=["token-service-dev"]) as svc:
            id_token = idp.login("bob")["id_token"]
            with caplog.at_level(logging.INFO, logger="token_service.audit"):
                resp = svc.post_token(None, headers={"X-Id-Token": f"Bearer {id_token}",
                                                     "X-Forwarded-For": "203.0.113.7"})
            assert resp.status_code == 200, resp.text
            assert resp.json()["identity"] == "bob@example.com" and resp.json()["role"] == "admin"
            (line,) = [r for r in caplog.records if getattr(r, "event", None) == "token_issued"]
            assert line.issuer == "corp" and line.client_ip == "203.0.113.7"  # X-Forwarded-For through nginx
            refreshed = post_refresh(svc.url, resp.json()["refresh_token"])
            assert refreshed.status_code == 200 and refreshed.json()["identity"] == "bob@example.com"
            # The same IdP's token as a plain bearer: this issuer is the gateway's only.
            assert svc.post_token(id_token).status_code == 401
            status, _ = post_from(UNTRUSTED, svc.url, {"X-Id-Token": id_token})
            assert status == 401
    finally:
        keys.close()
