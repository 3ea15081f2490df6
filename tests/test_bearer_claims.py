"""The verifier's claim rules and signature check, with PyJWT's ``jwt.decode`` as the oracle.

``BearerVerifier`` checks the signature with PyJWT's ``PyJWS`` and the claims with ``jwt.decode``,
after its own stricter shape checks; these tests hold its decisions to a plain ``jwt.decode`` with
the same issuer, audiences, leeway and required claims on a grid of claim sets, and to PyJWT's
signature rules on tampered tokens. Where it is stricter on purpose, the test says so.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from devidp.harness import generate_keys, public_jwks
from token_service.authn.bearer import BearerVerifier
from token_service.errors import InvalidToken
from token_service.settings import IssuerSettings

from .support import forge, private_key, rsa

pytestmark = pytest.mark.unit

ISSUER = "https://idp.example"
AUDIENCES = ["chat-app", "urn:chat:api"]
LEEWAY = 30
REQUIRED = ["iss", "sub", "aud", "exp", "iat"]
NOW = int(time.time())
MARGIN = 20  # seconds either side of a boundary: the grid takes far less to run

TIMES: list[Any] = [None, NOW - 3600, NOW - LEEWAY - MARGIN, NOW - LEEWAY + MARGIN, NOW + LEEWAY - MARGIN,
                    NOW + LEEWAY + MARGIN, NOW + 3600, float(NOW + 10) + 0.5, True, "soon", str(NOW + 600),
                    float("inf"), float("nan")]
AUDS: list[Any] = [None, "chat-app", "other", ["other", "urn:chat:api"], ["other"], [], [1], {"a": 1}, ""]
ISSUERS: list[Any] = [None, ISSUER, ISSUER + "/", 7]
SUBS: list[Any] = [None, "alice", 12]


def _accepts(call: Callable[[], object], refusal: type[Exception]) -> bool:
    """True when ``call`` returns, False when it raises ``refusal``."""
    try:
        call()
    except refusal:
        return False
    return True


def _claims(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _cases() -> list[dict[str, Any]]:
    cases = [_claims(iss=ISSUER, sub="alice", aud="chat-app", exp=exp, iat=iat, nbf=nbf)
             for exp, iat, nbf in itertools.product(TIMES, TIMES, [None, *TIMES[1:8]])]
    cases += [_claims(iss=iss, sub=sub, aud=aud, exp=NOW + 600, iat=NOW)
              for iss, sub, aud in itertools.product(ISSUERS, SUBS, AUDS)]
    cases += [_claims(iss=ISSUER, sub="alice", aud="chat-app", exp=NOW + 600, iat=NOW, jti=jti)
              for jti in ["j-1", 5, None]]
    cases.append({"iss": ISSUER, "sub": "alice", "aud": "chat-app", "exp": NOW + 600, "iat": NOW, "nbf": None})
    return cases


def _sign(jwk: dict[str, Any], claims: dict[str, Any]) -> str:
    """Any claims, even those PyJWT's encoder refuses (a numeric ``iss``), signed as they are."""
    payload = json.dumps(claims).encode()
    return jwt.PyJWS().encode(payload, private_key(jwk), algorithm=jwk["alg"], headers={"kid": jwk["kid"]})


def _verifier(tmp_path: Path, keys: list[dict[str, Any]]) -> BearerVerifier:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(public_jwks(keys)))
    return BearerVerifier([IssuerSettings(name="t", issuer=ISSUER, audiences=AUDIENCES, jwks_file=str(jwks))])


def test_claim_rules_agree_with_pyjwt(tmp_path: Path) -> None:
    keys = generate_keys()
    ec = next(k for k in keys if k["alg"] == "ES256")
    public = private_key(ec).public_key()
    verifier = _verifier(tmp_path, keys)
    cases = _cases()
    disagreements = []
    for claims in cases:
        token = _sign(ec, claims)
        ours = _accepts(lambda t=token: verifier.verify(t), InvalidToken)
        # Where we are stricter: PyJWT turns strings of digits and booleans into numbers; we refuse.
        if any(isinstance(claims.get(n), str | bool) for n in ("exp", "iat", "nbf")):
            assert not ours, claims
            continue
        theirs = _accepts(lambda t=token: jwt.decode(t, public, algorithms=["ES256"], audience=AUDIENCES,
                                                      issuer=ISSUER, leeway=LEEWAY, options={"require": REQUIRED}),
                          jwt.PyJWTError)
        if ours != theirs:
            disagreements.append((claims, ours, theirs))
    assert not disagreements, disagreements[:5]
    assert len(cases) > 800


def test_signature_rules_agree_with_pyjwt(tmp_path: Path) -> None:
    keys = generate_keys()
    verifier = _verifier(tmp_path, keys)
    now = int(time.time())
    good = forge(rsa(keys), {"iss": ISSUER, "sub": "alice", "aud": "chat-app", "exp": now + 600, "iat": now})
    head, body, sig = good.split(".")
    flipped = sig[:-6] + ("A" if sig[-6] != "A" else "B") + sig[-5:]
    variants = {
        "good": good,
        "flipped signature": f"{head}.{body}.{flipped}",
        "padded signature": f"{head}.{body}.{sig}==",
        "junk in signature": f"{head}.{body}.{sig[:-4]}!!!!",
        "short signature": f"{head}.{body}.{sig[:40]}",
        # 256 bytes end in one byte: its last character's low 4 bits are unused, and must be zero.
        "non-canonical signature": f"{head}.{body}.{sig[:-1]}{chr(ord(sig[-1]) + 1)}",
        "standard alphabet": f"{head}.{body}.{sig.replace('-', '+').replace('_', '/')}",
        "other payload": f"{head}.{jwt.utils.base64url_encode(b'{}').decode()}.{sig}",
    }
    public = private_key(rsa(keys)).public_key()  # the key the tokens are signed with
    for name, token in variants.items():
        theirs = _accepts(lambda t=token: jwt.decode(t, public, algorithms=["RS256"], audience=AUDIENCES,
                                                     issuer=ISSUER), jwt.PyJWTError)
        ours = _accepts(lambda t=token: verifier.verify(t), InvalidToken)
        assert ours == theirs, name
    assert verifier.verify(good).claims["sub"] == "alice"
