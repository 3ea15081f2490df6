"""One contract for every store backend: memory, standalone Redis, and a 3-master Redis Cluster.

Each test calls the store directly with the same arguments the service uses and asserts only
what the interface promises (design 2.4-2.6), so every backend must behave identically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from token_service.store.base import Bucket, Family, FamilyLifetimes, Store
from token_service.tokens.refresh import identity_tag, mint_refresh_token, new_family_id

pytestmark = pytest.mark.integration

LONG = FamilyLifetimes(idle=3600, absolute=86400)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    from tests.stores import make_store

    with make_store(request.param, request) as backend:
        yield backend


def new_family(identity: str = "alice@example.com") -> tuple[Family, Any]:
    tag = identity_tag(identity)
    token = mint_refresh_token(tag, new_family_id())
    family = Family(family_id=token.family_id, tag=tag, identity=identity, role="user",
                    role_sid="RL" + "1" * 32, issuer="test", subject="sub-" + identity, session_id="sid-1")
    return family, token


def issue(store: Store, identity: str = "alice@example.com", lifetimes: FamilyLifetimes = LONG,
          buckets: list[Bucket] | None = None) -> tuple[Family, Any]:
    family, token = new_family(identity)
    issued = store.issue(buckets or [], family, token.digest, lifetimes)
    assert issued.limits.allowed
    return family, token


def rotate(store: Store, token: Any, lifetimes: FamilyLifetimes = LONG, buckets: list[Bucket] | None = None):
    new = mint_refresh_token(token.tag, token.family_id)
    result = store.rotate(buckets or [], token.tag, token.family_id, token.digest, new.digest, lifetimes)
    return result, new


def test_issue_then_rotate_returns_the_family(store: Store) -> None:
    family, token = issue(store)
    result, _ = rotate(store, token)
    assert result.outcome == "rotated"
    assert result.family == family
    assert result.expires_at >= int(time.time()) + 3590


def test_rotation_chain(store: Store) -> None:
    _, token = issue(store)
    for _ in range(5):
        result, token = rotate(store, token)
        assert result.outcome == "rotated"


def test_replay_after_use_revokes_the_whole_family(store: Store) -> None:
    _, first = issue(store)
    _, second = rotate(store, first)
    replay, _ = rotate(store, first)
    assert replay.outcome == "reused" and replay.family is not None
    assert replay.family.identity == "alice@example.com"
    after, _ = rotate(store, second)  # the newer token dies too
    assert after.outcome == "revoked"


def test_grace_window(store: Store) -> None:
    grace = FamilyLifetimes(idle=3600, absolute=86400, reuse_grace=2)
    _, first = issue(store, lifetimes=grace)
    r1, second = rotate(store, first, grace)
    r2, third = rotate(store, first, grace)  # inside the grace window: a retry, not a theft
    assert (r1.outcome, r2.outcome) == ("rotated", "grace")
    assert rotate(store, second, grace)[0].outcome == "rotated"
    assert rotate(store, third, grace)[0].outcome == "rotated"
    time.sleep(2.2)
    assert rotate(store, first, grace)[0].outcome == "reused"


def test_idle_expiry(store: Store) -> None:
    short = FamilyLifetimes(idle=1, absolute=3600)
    _, token = issue(store, lifetimes=short)
    result, token = rotate(store, token, short)
    assert result.outcome == "rotated"  # each use extends the idle deadline
    time.sleep(1.3)
    assert rotate(store, token, short)[0].outcome == "unknown"


def test_absolute_expiry_caps_the_idle_deadline(store: Store) -> None:
    lifetimes = FamilyLifetimes(idle=60, absolute=2)
    _, token = issue(store, lifetimes=lifetimes)
    result, token = rotate(store, token, lifetimes)
    assert result.outcome == "rotated" and result.expires_at <= int(time.time()) + 2
    time.sleep(2.3)
    assert rotate(store, token, lifetimes)[0].outcome == "unknown"


def test_revoke(store: Store) -> None:
    family, token = issue(store)
    revocation = store.revoke([], token.tag, token.family_id, token.digest)
    assert revocation.revoked and revocation.family == family
    assert rotate(store, token)[0].outcome == "revoked"
    again = store.revoke([], token.tag, token.family_id, token.digest)
    assert not again.revoked


def test_revoke_with_a_spent_token_still_ends_the_family(store: Store) -> None:
    _, first = issue(store)
    _, second = rotate(store, first)
    assert store.revoke([], first.tag, first.family_id, first.digest).revoked
    assert rotate(store, second)[0].outcome == "revoked"


def test_unknown_tokens(store: Store) -> None:
    _, token = issue(store)
    stranger = mint_refresh_token(token.tag, new_family_id())
    assert rotate(store, stranger)[0].outcome == "unknown"
    forged = mint_refresh_token(token.tag, token.family_id)  # right family, wrong secret
    assert rotate(store, forged)[0].outcome == "unknown"
    assert rotate(store, token)[0].outcome == "rotated"  # and the forgery did not hurt the owner
    assert not store.revoke([], forged.tag, forged.family_id, forged.digest).revoked


def test_revoke_identity_ends_every_family_of_that_identity_only(store: Store) -> None:
    tokens = [issue(store, "leaver@example.com")[1] for _ in range(3)]
    _, other = issue(store, "stayer@example.com")
    assert store.revoke_identity(identity_tag("leaver@example.com"), "leaver@example.com") == 3
    assert all(rotate(store, t)[0].outcome == "revoked" for t in tokens)
    assert rotate(store, other)[0].outcome == "rotated"
    assert store.revoke_identity(identity_tag("nobody@example.com"), "nobody@example.com") == 0


def bucket(policy: str, tag: str, limit: int, window: int = 60, key: str = "-") -> Bucket:
    return Bucket(policy=policy, key=key, tag=tag, limit=limit, window=window)


def test_buckets_allow_the_limit_then_refuse(store: Store) -> None:
    ip = bucket("token-ip", "ip:198.51.100.7", 3)
    remaining = [store.hit([ip]).tightest().remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    refused = store.hit([ip])
    assert not refused.allowed and refused.retry_after >= 1
    assert refused.tightest().remaining == 0 and refused.tightest().reset >= 1
    other_ip = bucket("token-ip", "ip:198.51.100.8", 3)
    assert store.hit([other_ip]).allowed


def test_a_limit_above_a_thousand_per_second_is_kept_exactly(store: Store) -> None:
    """Each request spends window / limit (0.2 ms here), not a whole millisecond rounded up."""
    fast = bucket("token-ip", "ip:198.51.100.9", 5000, window=1)
    started = time.monotonic()
    for _ in range(499):
        assert store.hit([fast]).allowed
    remaining = store.hit([fast]).tightest().remaining
    elapsed = time.monotonic() - started
    # Only calls faster than one per ms can tell the two apart (rounded up, 500 calls spend 500 ms
    # and the time they take gives it back), so a machine too slow for that fails here, not silently.
    assert elapsed < 0.4, f"500 calls took {elapsed * 1000:.0f} ms: too slow to test a limit above 1,000/s"
    assert remaining >= 5000 - 500


def test_a_refused_issue_writes_nothing(store: Store) -> None:
    family, token = new_family()
    tight = bucket("token-identity", family.tag, 1)
    assert store.issue([tight], family, token.digest, LONG).limits.allowed
    family2, token2 = new_family()
    refused = store.issue([tight], family2, token2.digest, LONG)
    assert not refused.limits.allowed
    assert rotate(store, token2)[0].outcome == "unknown"


def test_a_refused_rotation_spends_nothing(store: Store) -> None:
    _, token = issue(store)
    per_family = bucket("refresh-family", token.tag, 1, window=1, key=token.family_id)
    store.hit([per_family])
    limited, _ = rotate(store, token, buckets=[per_family])
    assert limited.outcome == "limited" and not limited.limits.allowed
    time.sleep(1.1)
    assert rotate(store, token, buckets=[per_family])[0].outcome == "rotated"


def test_ip_and_identity_buckets_together(store: Store) -> None:
    family, token = new_family()
    ip = bucket("token-ip", "ip:203.0.113.1", 10)
    ident = bucket("token-identity", family.tag, 2)
    first = store.issue([ip, ident], family, token.digest, LONG)
    assert first.limits.allowed and first.limits.tightest().policy == "token-identity"
    assert {s.policy for s in first.limits.states} == {"token-ip", "token-identity"}


def test_concurrent_refreshes_of_one_token_yield_exactly_one_success(store: Store) -> None:
    _, token = issue(store)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def attempt() -> None:
        start.wait()
        result, _ = rotate(store, token)
        with lock:
            outcomes.append(result.outcome)

    threads = [threading.Thread(target=attempt) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("rotated") == 1
    assert set(outcomes) <= {"rotated", "reused", "revoked"}


def test_key_values_expire_and_delete(store: Store) -> None:
    store.put("sess:abc", '{"a": 1}', 1)
    assert store.get("sess:abc") == '{"a": 1}'
    store.delete("sess:abc")
    assert store.get("sess:abc") is None
    store.put("sess:short", "x", 1)
    time.sleep(1.2)
    assert store.get("sess:short") is None


def test_add_once_refuses_a_replay(store: Store) -> None:
    assert store.add_once("bcl-jti:test:j1", 60) is True
    assert store.add_once("bcl-jti:test:j1", 60) is False
    assert store.add_once("bcl-jti:test:j2", 60) is True


def test_logout_indexes_find_and_end_families(store: Store) -> None:
    from token_service.store.base import family_ref, parse_family_ref

    family, token = new_family()
    links = ["bcl:test:sid:s1", "bcl:test:sub:u1"]
    assert store.issue([], family, token.digest, LONG, "", links).limits.allowed
    other, other_token = new_family("bob@example.com")
    store.issue([], other, other_token.digest, LONG, "", ["bcl:test:sub:u2"])
    members = store.members("bcl:test:sid:s1")
    assert members == [family_ref(family.tag, family.family_id)]
    store.link("bcl:test:sid:s1", "s:session-digest", 60)
    assert sorted(store.members("bcl:test:sid:s1")) == sorted([*members, "s:session-digest"])
    refs = [r for m in store.members("bcl:test:sub:u1") if (r := parse_family_ref(m))]
    assert store.revoke_families(refs) == 1
    assert store.revoke_families(refs) == 0  # already ended
    assert rotate(store, token)[0].outcome == "revoked"
    assert rotate(store, other_token)[0].outcome == "rotated"


def test_active_identities_count_distinct_identities_per_month(store: Store) -> None:
    for identity in ["a@x", "b@x", "a@x"]:
        family, token = new_family(identity)
        store.issue([], family, token.digest, LONG, "2026-11")
    assert store.active_identities("2026-11") == 2
    assert store.active_identities("2026-10") == 0
