"""The Twilio Access Token (design 2.3), with the ``twilio`` helper library as the oracle."""

from __future__ import annotations

import jwt
import pytest
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import ChatGrant

from token_service.tokens.access import ChatAccess, TwilioKey, mint_access_token

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-0123456789abcdef0123456789ab"
KEY = TwilioKey(account_sid="AC" + "a" * 32, api_key_sid="SK" + "b" * 32, api_key_secret=SECRET)
ACCESS = ChatAccess(identity="alice@example.com", service_sid="IS" + "c" * 32,
                    role_sid="RL" + "1" * 32, push_credential_sid="CR" + "2" * 32)


def oracle(key: TwilioKey, access: ChatAccess, ttl: int) -> str:
    token = AccessToken(key.account_sid, key.api_key_sid, key.api_key_secret,
                        identity=access.identity, ttl=ttl, nbf=None, region=key.region)
    token.add_grant(ChatGrant(service_sid=access.service_sid,
                              deployment_role_sid=access.role_sid,
                              push_credential_sid=access.push_credential_sid))
    return token.to_jwt()


def parts(token: str, secret: str) -> tuple[dict, dict]:
    return jwt.get_unverified_header(token), jwt.decode(token, secret, algorithms=["HS256"])


@pytest.mark.parametrize("region", [None, "ie1"])
@pytest.mark.parametrize(
    "access",
    [ACCESS, ChatAccess(identity="bob", service_sid="IS" + "c" * 32),
     ChatAccess(identity="zoë.łukasz@例え.jp", service_sid="IS" + "c" * 32, role_sid="RL" + "1" * 32)],
    ids=["role-and-push", "service-only", "non-ascii-identity"],
)
def test_same_structure_as_the_twilio_library(region: str | None, access: ChatAccess) -> None:
    key = TwilioKey(**{**KEY.__dict__, "region": region})
    ours_h, ours = parts(mint_access_token(key, access, ttl=900).jwt, key.api_key_secret)
    theirs_h, theirs = parts(oracle(key, access, 900), key.api_key_secret)
    assert ours_h == theirs_h
    # Ours adds iat (the design asks for it); everything else is key-for-key the same.
    assert set(ours) - {"iat"} == set(theirs)
    assert ours["grants"] == theirs["grants"]
    for claim in ("iss", "sub"):
        assert ours[claim] == theirs[claim]
    assert abs(ours["exp"] - theirs["exp"]) <= 2
    assert ours["jti"].rsplit("-", 1)[0] == theirs["jti"].rsplit("-", 1)[0] == key.api_key_sid


def test_header_is_exact_and_twr_only_with_a_region() -> None:
    header = jwt.get_unverified_header(mint_access_token(KEY, ACCESS, ttl=900).jwt)
    assert header == {"alg": "HS256", "typ": "JWT", "cty": "twilio-fpa;v=1"}
    regional = TwilioKey(**{**KEY.__dict__, "region": "au1"})
    assert jwt.get_unverified_header(mint_access_token(regional, ACCESS, ttl=900).jwt)["twr"] == "au1"


def test_claims_times_and_unique_jti() -> None:
    minted = [mint_access_token(KEY, ACCESS, ttl=600, now=1_700_000_000) for _ in range(3)]
    claims = jwt.decode(minted[0].jwt, KEY.api_key_secret, algorithms=["HS256"],
                        options={"verify_exp": False, "verify_iat": False})
    assert claims["iat"] == 1_700_000_000 and claims["exp"] == 1_700_000_600
    assert "nbf" not in claims
    assert len({m.jti for m in minted}) == 3
    with_nbf = mint_access_token(KEY, ACCESS, ttl=600, include_nbf=True, now=1_700_000_000)
    assert jwt.decode(with_nbf.jwt, options={"verify_signature": False})["nbf"] == 1_700_000_000


def test_signed_with_the_api_key_secret() -> None:
    token = mint_access_token(KEY, ACCESS, ttl=900).jwt
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-secret-0123456789abcdef01234", algorithms=["HS256"])
    # The library itself accepts it as one of its own.
    decoded = AccessToken.from_jwt(token, KEY.api_key_secret)
    assert decoded.payload["grants"]["identity"] == "alice@example.com"
