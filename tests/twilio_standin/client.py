"""The real ``twilio`` REST client, pointed at the stand-in (or any configured endpoint).

:class:`RewritingHttpClient` is product code (``token_service.conversations``: the service needs a configurable
Conversations endpoint too); it is re-exported here so the stand-in's tests use exactly the class the service
ships. See its docstring for the hook (``TwilioHttpClient.request``) and what it guarantees.
"""

from __future__ import annotations

from twilio.rest import Client

from token_service.conversations import CONVERSATIONS_ORIGIN, RewritingHttpClient
from token_service.conversations import twilio_client as _product_twilio_client

__all__ = ["CONVERSATIONS_ORIGIN", "RewritingHttpClient", "twilio_client"]


def twilio_client(
    base_url: str,
    account_sid: str,
    api_key_sid: str,
    api_key_secret: str,
    timeout: float = 5.0,
) -> Client:
    """A real ``twilio.rest.Client`` authenticating with an API key, whose Conversations traffic goes to
    ``base_url``, ignoring ``*_PROXY`` variables (the stand-in is local). Close it with
    ``client.http_client.close()``."""
    return _product_twilio_client(base_url, account_sid, api_key_sid, api_key_secret, timeout, trust_env=False)
