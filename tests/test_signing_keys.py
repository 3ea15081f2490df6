"""Signing keys and algorithms: RFC 9864's ``Ed25519``/``Ed448`` names, RSA keys under 2048 bits.

Tokens here are signed with ``cryptography`` directly (PyJWT would warn about the short key), and
the keys are served from a JWKS file or over real HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519, padding
from cryptography.hazmat.primitives.asymmetric import rsa as rsa_keys
from jwt.utils import base64url_encode, to_base64url_uint

from tests.support import config_dict, id_claims, problem, running, settings_for
from tests.vendor_support import KeyServer
from token_service.authn.jwks import FileKeySource, JwksCache, KeyNotFound

ISSUER = "https://idp.keys.example"


def compact(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> str:
    signing_input = b".".join(base64url_encode(json.dumps(part).encode()) for part in (header, claims))
    return (signing_input + b"." + base64url_encode(sign(signing_input))).decode()


def okp(curve: str) -> tuple[Any, dict[str, Any]]:
    private = (ed25519.Ed25519PrivateKey if curve == "Ed25519" else ed448.Ed448PrivateKey).generate()
    raw = private.public_key().public_bytes_raw()
    return private, {"kty": "OKP", "crv": curve, "x": base64url_encode(raw).decode(), "kid": f"okp-{curve}",
                     "use": "sig"}


def short_rsa(bits: int = 1024) -> tuple[Any, dict[str, Any]]:
    private = rsa_keys.generate_private_key(public_exponent=65537, key_size=bits)
    numbers = private.public_key().public_numbers()
    return private, {"kty": "RSA", "n": to_base64url_uint(numbers.n).decode(),
                     "e": to_base64url_uint(numbers.e).decode(), "kid": f"rsa-{bits}", "alg": "RS256", "use": "sig"}


def jwks_file(tmp_path: Path, *keys: dict[str, Any]) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": list(keys)}))
    return str(path)


@pytest.mark.integration
@pytest.mark.parametrize("curve", ["Ed25519", "Ed448"])
def test_fully_specified_eddsa_names_are_accepted(tmp_path: Path, curve: str) -> None:
    private, public = okp(curve)
    other_private, other_public = okp("Ed448" if curve == "Ed25519" else "Ed25519")
    path = jwks_file(tmp_path, {**public, "alg": curve}, other_public)
    data = config_dict(ISSUER, jwks_file=path, algorithms=["Ed25519", "Ed448", "EdDSA"])
    with running(settings_for(data)) as svc:
        token = compact({"alg": curve, "kid": public["kid"], "typ": "JWT"}, id_claims(ISSUER), private.sign)
        assert svc.post_token(token).status_code == 200
        legacy = compact({"alg": "EdDSA", "kid": other_public["kid"]}, id_claims(ISSUER), other_private.sign)
        assert svc.post_token(legacy).status_code == 200  # the polymorphic name still works
        # The name fixes the curve: an Ed448 key cannot stand in for Ed25519, nor the other way.
        wrong = compact({"alg": curve, "kid": other_public["kid"]}, id_claims(ISSUER), other_private.sign)
        assert svc.post_token(wrong).status_code == 401


@pytest.mark.integration
def test_rsa_key_under_2048_bits_is_refused_at_jwks_load() -> None:
    """A 1024-bit key in the JWKS was trusted: PyJWT's key-length check was skipped."""
    private, public = short_rsa()
    keys = KeyServer()
    keys.documents["/keys"]["keys"].append(public)
    try:
        with running(settings_for(config_dict(ISSUER, jwks_uri=f"{keys.url}/keys"))) as svc:
            token = compact({"alg": "RS256", "kid": public["kid"], "typ": "JWT"}, id_claims(ISSUER),
                            lambda data: private.sign(data, padding.PKCS1v15(), hashes.SHA256()))
            resp = svc.post_token(token)
            assert resp.status_code == 401 and "RSA key of 1024 bits" in problem(resp)["detail"]
            ready = svc.get("/readyz").json()["issuers"]["test"]
            assert ready["refused_keys"] == [
                {"kid": "rsa-1024", "reason": "RSA key of 1024 bits; at least 2048 are required"}]
            assert ready["state"] == "fresh" and ready["keys"] == 2  # the good keys still serve
    finally:
        keys.close()


@pytest.mark.unit
def test_a_set_of_short_keys_only_is_unusable_and_says_why(tmp_path: Path) -> None:
    _, public = short_rsa(1536)
    cache = JwksCache(FileKeySource(jwks_file(tmp_path, public)), ttl=60, cooldown=10, max_stale=300)
    cache.ensure_loaded()
    status = cache.status()
    assert status["state"] == "not_loaded" and "RSA key of 1536 bits" in status["last_error"]
    with pytest.raises(Exception, match="1536 bits"):
        cache.get_key("rsa-1536", "RS256")


@pytest.mark.unit
def test_refused_kid_is_not_fetched_again(tmp_path: Path) -> None:
    _, short = short_rsa()
    _, good = short_rsa(2048)
    source = FileKeySource(jwks_file(tmp_path, short, good))
    cache = JwksCache(source, ttl=60, cooldown=10, max_stale=300)
    assert cache.get_key("rsa-2048", "RS256") is not None
    fetches = cache.status()["fetches"]
    for _ in range(5):
        with pytest.raises(KeyNotFound, match="refused"):
            cache.get_key("rsa-1024", "RS256")
    assert cache.status()["fetches"] == fetches
