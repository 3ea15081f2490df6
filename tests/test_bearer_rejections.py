"""Every way a bearer proof can be wrong: right status, stable ``type``, never a 500.

Tokens are signed with the IdP's own keys (which the tests generated) or an attacker's key, so
each case isolates exactly one fault. Names follow what each case defends against.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from devidp.harness import DevIdP, generate_keys
from tests.support import RunningService, forge, id_claims, private_key, problem

pytestmark = pytest.mark.integration


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assert_invalid_token(resp, detail_part: str = "") -> dict:
    assert resp.status_code == 401, resp.text
    body = problem(resp)
    assert body["type"] == "invalid_token"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="token-service", error="invalid_token"')
    assert detail_part in body["detail"]
    return body


def test_valid_forged_baseline_is_accepted(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    # The control case: the same forging helper with nothing wrong gives a token.
    resp = service.post_token(forge(rsa_key, id_claims(idp.issuer)))
    assert resp.status_code == 200, resp.text


def test_expired(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    now = int(time.time())
    token = forge(rsa_key, id_claims(idp.issuer, iat=now - 3600, exp=now - 31))
    assert_invalid_token(service.post_token(token), "expired")


def test_expired_within_leeway_is_accepted(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    now = int(time.time())
    token = forge(rsa_key, id_claims(idp.issuer, iat=now - 3600, exp=now - 5))
    assert service.post_token(token).status_code == 200


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_not_yet_valid_beyond_leeway(service: RunningService, idp: DevIdP, rsa_key: dict, claim: str) -> None:
    token = forge(rsa_key, id_claims(idp.issuer, **{claim: int(time.time()) + 120}))
    assert_invalid_token(service.post_token(token), "not valid yet")


@pytest.mark.parametrize(
    "variant",
    [
        "{iss}/",
        "{iss}/extra",
        "{iss}x",
        "https://127.0.0.1:{port}",
        "HTTP://127.0.0.1:{port}",
        "evil.example",
    ],
)
def test_wrong_issuer_including_prefix_and_trailing_slash(
    service: RunningService, idp: DevIdP, rsa_key: dict, variant: str
) -> None:
    iss = variant.format(iss=idp.issuer, port=idp.port)
    assert_invalid_token(service.post_token(forge(rsa_key, id_claims(iss))), "issuer")


def test_wrong_audience(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    for aud in ["other-app", ["other-app", "another"], "token-service-dev-x"]:
        token = forge(rsa_key, id_claims(idp.issuer, aud=aud))
        assert_invalid_token(service.post_token(token), "audience")


def test_alg_none(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": rsa_key["kid"]}
    token = f"{b64(header)}.{b64(id_claims(idp.issuer))}."
    assert_invalid_token(service.post_token(token))
    token = f"{b64(header)}.{b64(id_claims(idp.issuer))}.{b64(b'sig')}"
    assert_invalid_token(service.post_token(token), "algorithm")


def test_hs256_signed_with_the_idp_public_key(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    """CVE-2015-9235 class: algorithm confusion, HMAC keyed with the public key."""
    public_pem = private_key(rsa_key).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    import hashlib
    import hmac

    header = {"alg": "HS256", "typ": "JWT", "kid": rsa_key["kid"]}
    signing_input = f"{b64(header)}.{b64(id_claims(idp.issuer))}"
    sig = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    assert_invalid_token(service.post_token(f"{signing_input}.{b64(sig)}"), "algorithm")


def test_tampered_payload(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer))
    header, _, sig = token.split(".")
    evil = b64(id_claims(idp.issuer, email="ceo@example.com", groups=["chat-admins"]))
    assert_invalid_token(service.post_token(f"{header}.{evil}.{sig}"), "signature")


def test_tampered_signature(service: RunningService, idp: DevIdP, ec_key: dict) -> None:
    token = forge(ec_key, id_claims(idp.issuer))
    head, body, sig = token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert_invalid_token(service.post_token(f"{head}.{body}.{flipped}"))


def test_unknown_crit_header(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer), headers={"crit": ["exp-ext"], "exp-ext": 1})
    assert_invalid_token(service.post_token(token), "critical")


@pytest.mark.parametrize("attack", ["jwk", "jku", "x5u"])
def test_key_headers_pointing_at_the_attackers_key_are_not_followed(
    service: RunningService, idp: DevIdP, attack: str
) -> None:
    """The attacker signs with their own key and tells us where to find it."""
    attacker = next(k for k in generate_keys() if k["alg"] == "RS256")
    public = {k: v for k, v in attacker.items() if k in {"kty", "n", "e", "kid", "alg", "use"}}
    headers = {
        "jwk": {"jwk": public},
        "jku": {"jku": "http://127.0.0.1:1/jwks.json"},
        "x5u": {"x5u": "http://127.0.0.1:1/cert.pem"},
    }[attack]
    token = forge(attacker, id_claims(idp.issuer), headers=headers)
    assert_invalid_token(service.post_token(token), "signing key")
    # Even when the attacker reuses the IdP's kid, the signature is checked with the IdP's key.
    rsa_kid = next(k["kid"] for k in idp.keys if k["alg"] == "RS256")
    token = forge(attacker, id_claims(idp.issuer), headers={**headers, "kid": rsa_kid})
    assert_invalid_token(service.post_token(token), "signature")


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b",
        "a.b.c.d.e",
        "..",
        "!!!.???.***",
        b64(b"[1,2]") + "." + b64(b"{}") + ".c2ln",
        b64(b"\xff\xfe") + "." + b64(b"{}") + ".c2ln",
    ],
)
def test_malformed_tokens(service: RunningService, token: str) -> None:
    assert_invalid_token(service.post_token(token))


def test_oversized_token(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer, padding="x" * 17000))
    assert len(token) > 16 * 1024
    assert_invalid_token(service.post_token(token), "16 KiB")


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "aud"])
def test_missing_registered_claims(service: RunningService, idp: DevIdP, rsa_key: dict, claim: str) -> None:
    token = forge(rsa_key, id_claims(idp.issuer, **{claim: None}))
    assert_invalid_token(service.post_token(token), "claim")


def test_missing_identity_claim(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    resp = service.post_token(forge(rsa_key, id_claims(idp.issuer, email=None)))
    assert resp.status_code == 403
    assert problem(resp)["type"] == "invalid_identity"


@pytest.mark.parametrize(
    ("email", "detail"),
    [
        ("al ice@example.com", "whitespace"),
        ("alice\u0000@example.com", "control"),
        ("alice/x@example.com", "reserved character '/'"),
        ("a#b@example.com", "reserved character '#'"),
        ("a" * 300 + "@example.com", "limit is 256"),
    ],
)
def test_identity_violating_conversations_rules(
    service: RunningService, idp: DevIdP, rsa_key: dict, email: str, detail: str
) -> None:
    resp = service.post_token(forge(rsa_key, id_claims(idp.issuer, email=email)))
    assert resp.status_code == 403, resp.text
    body = problem(resp)
    assert body["type"] == "invalid_identity" and detail in body["detail"]


def test_logout_token_is_not_a_bearer_proof(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer), headers={"typ": "logout+jwt"})
    assert_invalid_token(service.post_token(token), "type")


def test_missing_and_wrong_authorization(service: RunningService) -> None:
    missing = service.post_token(None)
    assert missing.status_code == 401 and problem(missing)["type"] == "invalid_token"
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="token-service"'
    basic = service.post_token(None, headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 400 and problem(basic)["type"] == "invalid_request"
    empty = service.post_token(None, headers={"Authorization": "Bearer "})
    assert empty.status_code in (400, 401)


def test_bad_bodies(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer))
    for kwargs in (
        {"data": "{not json", "headers": {"Content-Type": "application/json"}},
        {"data": "[1]", "headers": {"Content-Type": "application/json"}},
        {"data": "platform=ios", "headers": {"Content-Type": "text/plain"}},
        {"json": {"platform": 7}},
    ):
        headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
        resp = service.post_token(None, headers=headers, **kwargs)
        assert resp.status_code == 400, (kwargs, resp.text)
        assert problem(resp)["type"] == "invalid_request"
    huge = service.post_token(token, data="x" * 70000, headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and problem(huge)["type"] == "invalid_request"


def test_no_role_match_is_403(idp: DevIdP, rsa_key: dict) -> None:
    from tests.support import config_dict, running, settings_for

    data = config_dict(idp.issuer)
    del data["roles"]["default"]
    with running(settings_for(data)) as strict:
        ok = strict.post_token(forge(rsa_key, id_claims(idp.issuer, groups=["chat-admins"])))
        assert ok.status_code == 200 and ok.json()["role"] == "admin"
        resp = strict.post_token(forge(rsa_key, id_claims(idp.issuer)))
        assert resp.status_code == 403
        body = problem(resp)
        assert body["type"] == "access_denied" and "no role rule matches" in body["detail"]


def test_error_bodies_never_echo_the_token(service: RunningService, idp: DevIdP, rsa_key: dict) -> None:
    token = forge(rsa_key, id_claims(idp.issuer, aud="other"))
    resp = service.post_token(token)
    for part in token.split("."):
        assert part not in resp.text


def test_pyjwt_decode_is_given_a_key_from_the_issuer_only(idp: DevIdP, rsa_key: dict) -> None:
    # Sanity check of the forging helper itself: it produces tokens the IdP's key verifies.
    token = forge(rsa_key, id_claims(idp.issuer))
    public = private_key(rsa_key).public_key()
    assert jwt.decode(token, public, algorithms=["RS256"], audience="token-service-dev")["sub"] == "alice"
