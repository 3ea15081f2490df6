"""Server-side browser sessions, and what logout ends (OIDC RP-Initiated and Back-Channel Logout 1.0).

The cookie holds only a random id; the store keeps the session under the id's SHA-256 digest, so a
store dump reveals no usable cookie. Each family minted through a session carries a short digest of
it, so signing out ends exactly those families. Back-channel logout finds sessions through small
``sid``/``sub`` indexes, and families through the store's logout maps (identity tags per ``sid`` and
``sub`` of the [login] issuer).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass

from token_service.store.base import Ended, FamilyPolicy, Store, short_digest
from token_service.tokens.refresh import identity_tag

_DIGEST_CHARS = 40
_SESSION_MEMBER = "s:"  # how a logout index names a browser session


def _h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def idp_session_index(issuer: str, sid: str) -> str:
    return f"bcls:{issuer}:sid:{_h(sid)}"


def subject_index(issuer: str, sub: str) -> str:
    return f"bcls:{issuer}:sub:{_h(sub)}"


@dataclass(frozen=True)
class BrowserSession:
    identity: str
    role: str
    role_sid: str
    issuer: str
    subject: str
    idp_session: str
    created_at: int
    expires_at: int


class SessionStore:
    """Browser sessions in the shared store (memory or Redis), with a TTL."""

    def __init__(self, store: Store, ttl: int, policy: FamilyPolicy) -> None:
        self.store = store
        self.ttl = ttl
        self.policy = policy

    @staticmethod
    def digest(session_id: str) -> str:
        """How the store and its indexes name a session: never by the cookie's value itself."""
        return _h(session_id)

    @staticmethod
    def _key(digest: str) -> str:
        return f"sess:{digest}"

    def create(self, *, identity: str, role: str, role_sid: str, issuer: str, subject: str,
               idp_session: str) -> tuple[str, BrowserSession]:
        """A new random session id (the cookie value) and its record."""
        now = int(time.time())
        record = BrowserSession(identity, role, role_sid, issuer, subject, idp_session, now, now + self.ttl)
        session_id = secrets.token_urlsafe(32)
        digest = self.digest(session_id)
        self.store.put(self._key(digest), json.dumps(asdict(record)), self.ttl)
        member = _SESSION_MEMBER + digest
        self.store.link(subject_index(issuer, subject), member, self.ttl)
        if idp_session:
            self.store.link(idp_session_index(issuer, idp_session), member, self.ttl)
        return session_id, record

    def load(self, session_id: str) -> BrowserSession | None:
        if not session_id or len(session_id) > 128:
            return None
        return self._load(self.digest(session_id))

    def _load(self, digest: str) -> BrowserSession | None:
        raw = self.store.get(self._key(digest))
        if raw is None:
            return None
        try:
            return BrowserSession(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    def end(self, session_id: str) -> Ended:
        """Delete the session and end every family minted through it."""
        return self._end(self.digest(session_id), "logout")

    def _end(self, digest: str, reason: str) -> Ended:
        record = self._load(digest)
        self.store.delete(self._key(digest))
        if record is None:
            return Ended("", [])
        return self.store.end_families(identity_tag(record.identity), browser_session=short_digest(digest),
                                       reason=reason, policy=self.policy)

    def end_for_idp(self, issuer: str, *, sid: str | None, sub: str | None) -> tuple[int, list[Ended]]:
        """Back-channel logout: the sessions and families of ``sid``, or of ``sub`` when no ``sid``.

        Returns how many browser sessions ended, and the families ended per identity.
        """
        index = idp_session_index(issuer, sid) if sid else subject_index(issuer, sub or "")
        sessions = [m.removeprefix(_SESSION_MEMBER) for m in self.store.members(index)
                    if m.startswith(_SESSION_MEMBER)]
        ended = [self._end(digest, "backchannel_logout") for digest in sessions]
        if sid:
            tags = self.store.logout_tags(issuer, idp_session=sid)
            match = {"idp_session": short_digest(issuer, sid)}
        else:
            tags = self.store.logout_tags(issuer, subject=sub or "")
            match = {"principal": short_digest(issuer, sub or "")}
        for tag in tags:
            ended.append(self.store.end_families(tag, reason="backchannel_logout", policy=self.policy, **match))
        return len(sessions), [e for e in ended if e.family_ids]
