"""Peer for the benchmark: the token server pattern of Twilio's own samples (sdk-starter-python's ``/token``).

A Flask app that mints a ``twilio`` ``AccessToken`` with a ``ChatGrant`` for the identity the caller
names: no authentication, no store, no rate limits. It is the least a Conversations token server can do,
so token-service's ``POST /v1/token`` (which verifies an ID token, maps it, checks limits and starts a
refresh family) is compared with it. Served by the same gunicorn config as the service.
"""

from __future__ import annotations

import os

from flask import Flask, Response, jsonify, request
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import ChatGrant

ACCOUNT_SID = os.environ.get("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000")
API_KEY_SID = os.environ.get("TWILIO_API_KEY_SID", "SK00000000000000000000000000000000")
API_KEY_SECRET = os.environ.get("TWILIO_API_KEY_SECRET", "bench-only-secret")
SERVICE_SID = os.environ.get("TWILIO_CONVERSATIONS_SERVICE_SID", "IS00000000000000000000000000000000")
TOKEN_TTL = 900  # as the service's dev config

app = Flask("bench_twilio_sample")


@app.post("/token")
def token() -> Response:
    """As the sample does: the identity from the JSON body (or the form), one Chat grant, the JWT back."""
    content = request.get_json(silent=True) or request.form
    return mint(content.get("identity", "anonymous"))


@app.get("/token")
def token_for_query() -> Response:
    """The sample's GET form (it picks a random name; here the query names one)."""
    return mint(request.args.get("identity", "anonymous"))


def mint(identity: str) -> Response:
    access_token = AccessToken(ACCOUNT_SID, API_KEY_SID, API_KEY_SECRET, identity=identity, ttl=TOKEN_TTL)
    access_token.add_grant(ChatGrant(service_sid=SERVICE_SID))
    return jsonify(identity=identity, token=access_token.to_jwt())
