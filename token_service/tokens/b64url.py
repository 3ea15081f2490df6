"""Unpadded base64url (RFC 4648 section 5), the encoding of JWS segments and of refresh tokens.

``binascii`` directly: ``base64.urlsafe_b64encode`` is two Python calls around the same C function,
and the token path encodes three times per request.
"""

from __future__ import annotations

import binascii

_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """``data`` as base64url without ``=`` padding."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")
