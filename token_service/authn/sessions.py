"""Server-side browser sessions and the indexes logout uses to find what to end.

The cookie holds only a random id; the store keeps the session under the id's SHA-256 digest, so
a store dump reveals no usable cookie. Families are indexed by the IdP's session id (``sid``) and
subject (``sub``) per issuer, and by browser session, so RP-initiated and back-channel logout can
revoke exactly what belongs to a session.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass

from token_service.store.base import Store, parse_family_ref

_DIGEST_CHARS = 40
_SESSION_MEMBER = "s:"  # how a logout index names a browser session (families are family_ref)


def _h(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]


def idp_session_index(issuer: str, sid: str) -> str:
    return f"bcl:{issuer}:sid:{_h(sid)}"


def subject_index(issuer: str, sub: str) -> str:
    return f"bcl:{issuer}:sub:{_h(sub)}"


def logout_indexes(issuer: str, sub: str, sid: str) -> list[str]:
    """Where a new family is listed, so a logout for this ``sid`` or ``sub`` finds it."""
    indexes = [subject_index(issuer, sub)]
    if sid:
        indexes.append(idp_session_index(issuer, sid))
    return indexes


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

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = ttl

    # Keys and index members name a session by its digest: logout indexes hold only the digest.
    @staticmethod
    def _key(digest: str) -> str:
        return f"sess:{digest}"

    @staticmethod
    def _families_key(digest: str) -> str:
        return f"sessfam:{digest}"

    @staticmethod
    def families_index(session_id: str) -> str:
        """The index of the families minted through this browser session."""
        return SessionStore._families_key(_h(session_id))

    @staticmethod
    def member(session_id: str) -> str:
        """How the logout indexes name a browser session."""
        return f"{_SESSION_MEMBER}{_h(session_id)}"

    def _families_of(self, digest: str) -> list[tuple[str, str]]:
        return [r for m in self.store.members(self._families_key(digest)) if (r := parse_family_ref(m))]

    def create(self, *, identity: str, role: str, role_sid: str, issuer: str, subject: str,
               idp_session: str) -> tuple[str, BrowserSession]:
        """A new random session id (the cookie value) and its record."""
        now = int(time.time())
        record = BrowserSession(identity, role, role_sid, issuer, subject, idp_session, now, now + self.ttl)
        session_id = secrets.token_urlsafe(32)
        self.store.put(self._key(_h(session_id)), json.dumps(asdict(record)), self.ttl)
        member = self.member(session_id)
        for index in logout_indexes(issuer, subject, idp_session):
            self.store.link(index, member, self.ttl)
        return session_id, record

    def load(self, session_id: str) -> BrowserSession | None:
        if not session_id or len(session_id) > 128:
            return None
        raw = self.store.get(self._key(_h(session_id)))
        if raw is None:
            return None
        try:
            return BrowserSession(**json.loads(raw))
        except (ValueError, TypeError):
            return None

    def end(self, session_id: str) -> int:
        """Delete the session and revoke every family minted through it; return how many."""
        digest = _h(session_id)
        count = self.store.revoke_families(self._families_of(digest))
        self.store.delete(self._key(digest))
        self.store.delete(self._families_key(digest))
        return count

    def end_for_idp(self, index: str) -> tuple[int, int]:
        """Back-channel logout: end the sessions and families listed under ``index``."""
        members = self.store.members(index)
        families = [r for m in members if (r := parse_family_ref(m))]
        sessions = [m.removeprefix(_SESSION_MEMBER) for m in members if m.startswith(_SESSION_MEMBER)]
        for digest in sessions:
            self.store.delete(self._key(digest))
            families += self._families_of(digest)
        return len(sessions), self.store.revoke_families(families)
