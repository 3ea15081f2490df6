"""Lower bound for the benchmark: the least a token endpoint on this stack can cost.

Plain WSGI under the same gunicorn settings as the service (no Flask, no limits, no logs, no metrics),
each route doing only what its endpoint cannot do without:

- ``GET /``: a small JSON answer, nothing else: what the server alone costs;
- ``POST /refresh``: read the JSON body, one Redis script that reads and rewrites a hash field (the
  least a rotation that keeps its state in Redis does), one Twilio Access Token, a random successor
  token, the JSON answer;
- ``POST /token``: the bearer ID token's RS256 signature and claims checked by one PyJWT ``decode``,
  the same one-script Redis call, one Twilio Access Token, the JSON answer.

Whatever the service does beyond these costs CPU too, so a target that this floor already misses in
the same run cannot be met by changing the service's code: only by changing the stack under it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable
from functools import cache

import jwt
import orjson
import redis

from token_service.tokens.access import ChatAccess, TwilioKey, mint_access_token

StartResponse = Callable[[str, list[tuple[str, str]]], object]

KEY = TwilioKey(
    os.environ.get("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
    os.environ.get("TWILIO_API_KEY_SID", "SK00000000000000000000000000000000"),
    os.environ.get("TWILIO_API_KEY_SECRET", "bench-only-secret"),
)
SERVICE_SID = "IS00000000000000000000000000000000"
TOKEN_TTL = 900
# One HGET and one HSET in one script: the family record read and rewritten.
ROTATE = "redis.call('HGET', KEYS[1], 'g') return redis.call('HSET', KEYS[1], 'g', ARGV[1])"


@cache
def rotate() -> Callable[..., object]:
    """The script, registered on the worker's first request (after gunicorn's gevent patching)."""
    client = redis.Redis.from_url(os.environ["FLOOR_REDIS_URL"])
    return client.register_script(ROTATE)


@cache
def signing_keys() -> dict[str, jwt.PyJWK]:
    """The IdP's keys by ``kid``, fetched once per worker."""
    client = jwt.PyJWKClient(os.environ["FLOOR_JWKS_URL"])
    return {key.key_id: key for key in client.get_jwk_set().keys if key.key_id}


def answer(start_response: StartResponse, status: str, body: dict[str, object]) -> Iterable[bytes]:
    data = orjson.dumps(body)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def mint_for(identity: str, generation: str) -> dict[str, object]:
    rotate()(keys=[f"floor:{identity}"], args=[generation])
    token = mint_access_token(KEY, ChatAccess(identity, SERVICE_SID), ttl=TOKEN_TTL)
    return {"token": token.jwt, "identity": identity}


def refresh(environ: dict[str, object]) -> dict[str, object]:
    """The bench sends an identity as the "refresh token": no token is checked, only the record rewritten."""
    length = int(str(environ.get("CONTENT_LENGTH") or 0))
    stream = environ["wsgi.input"]
    assert hasattr(stream, "read")
    presented = orjson.loads(stream.read(length))["refresh_token"]
    return {**mint_for(presented, presented), "refresh_token": secrets.token_urlsafe(32)}


def token(environ: dict[str, object]) -> dict[str, object]:
    bearer = str(environ.get("HTTP_AUTHORIZATION", "")).removeprefix("Bearer ")
    key = signing_keys()[jwt.get_unverified_header(bearer)["kid"]]
    claims = jwt.decode(bearer, key, algorithms=["RS256"], audience=os.environ["FLOOR_AUDIENCE"],
                        issuer=os.environ["FLOOR_ISSUER"])  # fmt: skip
    return mint_for(claims["email"], claims["sub"])


ROUTES = {"/refresh": refresh, "/token": token}


def app(environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
    """The two token routes; anything else gets the small JSON answer (the server's own floor)."""
    route = ROUTES.get(str(environ.get("PATH_INFO")))
    if route is None or environ.get("REQUEST_METHOD") != "POST":
        return answer(start_response, "200 OK", {"floor": "ready"})
    return answer(start_response, "200 OK", route(environ))
