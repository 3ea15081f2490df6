"""Test stand-in for Twilio Conversations v1 Users, validated against Twilio's published OpenAPI spec.

    from tests.twilio_standin import ConversationsStandIn, twilio_client

    with ConversationsStandIn() as standin:
        client = twilio_client(standin.base_url, standin.account_sid, standin.api_key_sid, standin.api_key_secret)
        client.conversations.v1.services(standin.service_sid).users.create(identity="alice")
        client.http_client.close()
        assert standin.violations == []

The spec comes from the npm package pinned in tests/twilio_spec (``npm ci --prefix tests/twilio_spec``).
"""

from .client import CONVERSATIONS_ORIGIN, RewritingHttpClient, twilio_client
from .server import Call, ConversationsStandIn, new_sid
from .spec import SpecNotInstalled, conversations_v1

__all__ = [
    "CONVERSATIONS_ORIGIN",
    "Call",
    "ConversationsStandIn",
    "RewritingHttpClient",
    "SpecNotInstalled",
    "conversations_v1",
    "new_sid",
    "twilio_client",
]
