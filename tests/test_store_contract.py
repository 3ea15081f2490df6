"""One contract for every store backend: memory, standalone Redis, and a 3-master Redis Cluster.

Each test calls the store directly with the same arguments the service uses and asserts only
what the interface promises (design 2.4-2.6), so every backend must behave identically.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from token_service.store.base import Bucket, FamilyPolicy, NewFamily, Rotation, Store, short_digest
from token_service.store.redis import RedisStore
from token_service.tokens.refresh import identity_tag, new_family_id

pytestmark = pytest.mark.integration

LONG = FamilyPolicy(idle=3600, absolute=86400, retry_window=60)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    from tests.stores import make_store

    with make_store(request.param, request) as backend:
        yield backend


def new_family(identity: str = "alice@example.com", role: str = "user", **more: object) -> NewFamily:
    fields = {"issuer": "test", "subject": "sub-" + identity, "idp_session": "sid-1", **more}
    return NewFamily(tag=identity_tag(identity), family_id=new_family_id(), identity=identity, role=role,
                     **fields)  # type: ignore[arg-type]


def issue(store: Store, identity: str = "alice@example.com", policy: FamilyPolicy = LONG, **more: object) -> NewFamily:
    family = new_family(identity, **more)
    issued = store.issue([], family, policy)
    assert issued.limits.allowed
    return family


def rotate(store: Store, family: NewFamily, generation: int, policy: FamilyPolicy = LONG,
           buckets: list[Bucket] | None = None) -> Rotation:
    return store.rotate(buckets or [], family.tag, family.family_id, generation, policy)


def chain(store: Store, family: NewFamily, rotations: int, policy: FamilyPolicy = LONG) -> int:
    """Rotate ``rotations`` times from generation 0; the generation now current."""
    generation = 0
    for _ in range(rotations):
        result = rotate(store, family, generation, policy)
        assert result.outcome == "rotated", result
        generation = result.generation
    return generation


def test_issue_then_rotate_returns_the_family(store: Store) -> None:
    family = issue(store)
    result = rotate(store, family, 0)
    assert result.outcome == "rotated" and result.generation == 1
    info = result.family
    assert info is not None
    assert (info.family_id, info.identity, info.role, info.issuer, info.subject) == (
        family.family_id, "alice@example.com", "user", "test", "sub-alice@example.com")
    assert result.expires_at >= int(time.time()) + 3590


def test_rotation_chain(store: Store) -> None:
    family = issue(store)
    assert chain(store, family, 5) == 5


def test_replay_after_use_revokes_the_whole_family(store: Store) -> None:
    family = issue(store)
    rotate(store, family, 0)  # the owner spends generation 0 ...
    rotate(store, family, 1)  # ... and generation 1: 0 is two behind now
    replay = rotate(store, family, 0)
    assert replay.outcome == "reused" and replay.family is not None
    assert replay.family.identity == "alice@example.com"
    assert rotate(store, family, 2).outcome == "revoked"  # the newest token dies too


def test_a_retry_of_the_spent_token_gets_the_same_successor(store: Store) -> None:
    """The answer of a rotation was lost: the client presents the spent token again."""
    family = issue(store)
    first = rotate(store, family, 0)
    again = rotate(store, family, 0)
    assert (first.outcome, again.outcome) == ("rotated", "retried")
    assert again.generation == first.generation == 1  # one successor, whatever the retries
    assert rotate(store, family, 1).outcome == "rotated"  # and it works
    assert rotate(store, family, 0).outcome == "reused"  # once it was used, the old one is reuse


def test_a_retry_after_the_retry_window_is_reuse(store: Store) -> None:
    quick = FamilyPolicy(idle=3600, absolute=86400, retry_window=1)
    family = issue(store, policy=quick)
    assert rotate(store, family, 0, quick).outcome == "rotated"
    time.sleep(2.1)
    assert rotate(store, family, 0, quick).outcome == "reused"


@pytest.mark.parametrize("spent_ago", [1, 300, 5000])
def test_reuse_after_many_rotations_revokes_the_family(store: Store, spent_ago: int) -> None:
    """Reuse detection has no cap: a token whose successor was used, ``spent_ago`` rotations back,
    still revokes the family (the store keeps one generation number, not a list of spent tokens)."""
    family = issue(store)
    current = chain(store, family, spent_ago + 1)
    assert rotate(store, family, 0).outcome == "reused"
    assert rotate(store, family, current).outcome == "revoked"


def test_an_identity_keeps_at_most_64_live_families(store: Store) -> None:
    """However often one identity signs in, its record stays bounded: the least recently used
    family ends first."""
    first = issue(store)
    time.sleep(1.1)  # the oldest by its last use (second resolution)
    rest = [issue(store) for _ in range(64)]
    assert rotate(store, first, 0).outcome == "unknown"
    assert all(rotate(store, f, 0).outcome == "rotated" for f in rest)


def test_idle_expiry(store: Store) -> None:
    short = FamilyPolicy(idle=1, absolute=3600)
    family = issue(store, policy=short)
    result = rotate(store, family, 0, short)
    assert result.outcome == "rotated"  # each use extends the idle deadline
    time.sleep(2.2)
    assert rotate(store, family, 1, short).outcome == "unknown"


def test_absolute_expiry_caps_the_idle_deadline(store: Store) -> None:
    policy = FamilyPolicy(idle=60, absolute=2)
    family = issue(store, policy=policy)
    result = rotate(store, family, 0, policy)
    assert result.outcome == "rotated" and result.expires_at <= int(time.time()) + 2
    time.sleep(2.5)
    assert rotate(store, family, 1, policy).outcome == "unknown"


def test_revoke(store: Store) -> None:
    family = issue(store)
    revocation = store.revoke([], family.tag, family.family_id, 0, LONG)
    assert revocation.revoked and revocation.family is not None
    assert revocation.family.identity == "alice@example.com" and revocation.family.subject == "sub-alice@example.com"
    assert rotate(store, family, 0).outcome == "revoked"
    assert not store.revoke([], family.tag, family.family_id, 0, LONG).revoked


def test_revoke_with_a_spent_token_still_ends_the_family(store: Store) -> None:
    family = issue(store)
    chain(store, family, 3)
    assert store.revoke([], family.tag, family.family_id, 0, LONG).revoked
    assert rotate(store, family, 3).outcome == "revoked"


def test_unknown_families_and_generations(store: Store) -> None:
    family = issue(store)
    stranger = new_family()
    assert rotate(store, stranger, 0).outcome == "unknown"
    assert rotate(store, family, 7).outcome == "unknown"  # a generation never reached
    assert not store.revoke([], family.tag, family.family_id, 7, LONG).revoked
    assert rotate(store, family, 0).outcome == "rotated"  # and nothing hurt the owner


def test_end_families_of_an_identity_only(store: Store) -> None:
    leaver = [issue(store, "leaver@example.com") for _ in range(3)]
    stayer = issue(store, "stayer@example.com")
    ended = store.end_families(identity_tag("leaver@example.com"), reason="revoke_identity", policy=LONG)
    assert ended.identity == "leaver@example.com"
    assert sorted(ended.family_ids) == sorted(f.family_id for f in leaver)
    assert all(rotate(store, f, 0).outcome == "revoked" for f in leaver)
    assert rotate(store, stayer, 0).outcome == "rotated"
    assert store.end_families(identity_tag("nobody@example.com"), reason="x", policy=LONG).family_ids == []


def test_end_families_by_session_and_subject(store: Store) -> None:
    phone = issue(store, idp_session="sid-phone")
    laptop = issue(store, idp_session="sid-laptop", browser_session="browser-1")
    other_issuer = issue(store, issuer="partner", idp_session="sid-phone")
    tag = phone.tag
    by_sid = store.end_families(tag, idp_session=phone.session_digest, reason="backchannel_logout", policy=LONG)
    assert by_sid.family_ids == [phone.family_id]  # the partner's sid-phone is another issuer's session
    by_browser = store.end_families(tag, browser_session=laptop.browser_digest, reason="logout", policy=LONG)
    assert by_browser.family_ids == [laptop.family_id]
    by_sub = store.end_families(tag, principal=short_digest("partner", other_issuer.subject), reason="x", policy=LONG)
    assert by_sub.family_ids == [other_issuer.family_id]


def test_logout_maps_are_kept_only_for_indexed_families(store: Store) -> None:
    issue(store, "alice@example.com", logout_index=True, idp_session="sid-a")
    issue(store, "bob@example.com", logout_index=False, subject="sub-bob", idp_session="sid-b")
    assert store.logout_tags("test", idp_session="sid-a") == [identity_tag("alice@example.com")]
    assert store.logout_tags("test", subject="sub-alice@example.com") == [identity_tag("alice@example.com")]
    assert store.logout_tags("test", idp_session="sid-b") == []
    assert store.logout_tags("other", idp_session="sid-a") == []


def test_a_sign_in_sets_the_identity_role_and_families_follow(store: Store) -> None:
    phone = issue(store, role="user")
    issued = store.issue([], new_family(role="admin"), LONG)  # promoted, signs in on the laptop
    assert (issued.role, issued.previous_role) == ("admin", "user")
    assert store.current_role(phone.tag) == "admin"
    followed = rotate(store, phone, 0)
    assert followed.outcome == "rotated" and followed.family is not None
    assert (followed.family.role, followed.previous_role) == ("admin", "user")
    assert rotate(store, phone, 1).previous_role == ""  # learned once


def test_a_browser_session_family_takes_the_current_role(store: Store) -> None:
    issue(store, role="admin")
    later = store.issue([], new_family(role="user", confirmed_at=int(time.time()) - 60), LONG)
    assert (later.role, later.previous_role) == ("admin", "")  # the session's older role does not win


def test_families_end_on_a_role_change_when_configured(store: Store) -> None:
    strict = FamilyPolicy(idle=3600, absolute=86400, on_role_change="revoke")
    phone = issue(store, role="admin", policy=strict)
    issue(store, role="user", policy=strict)  # demoted
    assert rotate(store, phone, 0, strict).outcome == "role_revoked"
    assert rotate(store, phone, 0, strict).outcome == "revoked"


def test_a_role_older_than_role_max_age_needs_a_sign_in(store: Store) -> None:
    bounded = FamilyPolicy(idle=3600, absolute=86400, role_max_age=1)
    family = issue(store, policy=bounded)
    time.sleep(2.1)
    assert rotate(store, family, 0, bounded).outcome == "login_required"
    issue(store, policy=bounded)  # a sign-in on any device confirms the role again
    assert rotate(store, family, 0, bounded).outcome == "rotated"


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
    """Each request spends window / limit (0.2 ms here), not a whole millisecond rounded up.

    800 requests spend at most 160 ms of a 1 s window, however fast they come, so at least 4,199
    stay. Rounded up, they would spend up to 800 ms; that shows only where calls come faster than
    one per ms, so the stored value itself is checked too: it keeps the fraction of a millisecond.
    """
    from concurrent.futures import ThreadPoolExecutor

    fast = bucket("token-ip", "ip:198.51.100.9", 5000, window=1)
    with ThreadPoolExecutor(8) as pool:  # several connections at once: more than one call per ms
        assert all(pool.map(lambda _: store.hit([fast]).allowed, range(799)))
    assert store.hit([fast]).tightest().remaining >= 5000 - 801
    if isinstance(store, RedisStore):  # the memory store keeps gcra_step's value (tests/test_gcra.py)
        fresh = bucket("token-ip", "ip:198.51.100.10", 5000, window=1)
        store.hit([fresh])
        tat = float(store.client.get(store.bucket_key(fresh)))
        assert abs(tat % 1 - 0.2) < 0.01, f"stored {tat!r}: a request must spend 0.2 ms, not 1 ms"


def test_a_refused_issue_writes_nothing(store: Store) -> None:
    family = new_family()
    tight = bucket("token-identity", family.tag, 1)
    assert store.issue([tight], family, LONG).limits.allowed
    second = new_family()
    refused = store.issue([tight], second, LONG)
    assert not refused.limits.allowed
    assert rotate(store, second, 0).outcome == "unknown"


def test_a_refused_rotation_spends_nothing(store: Store) -> None:
    family = issue(store)
    per_family = bucket("refresh-family", family.tag, 1, window=1, key=family.family_id)
    store.hit([per_family])
    limited = rotate(store, family, 0, buckets=[per_family])
    assert limited.outcome == "limited" and not limited.limits.allowed
    time.sleep(1.1)
    assert rotate(store, family, 0, buckets=[per_family]).outcome == "rotated"


def test_ip_and_identity_buckets_together(store: Store) -> None:
    family = new_family()
    ip = bucket("token-ip", "ip:203.0.113.1", 10)
    ident = bucket("token-identity", family.tag, 2)
    first = store.issue([ip, ident], family, LONG)
    assert first.limits.allowed and first.limits.tightest().policy == "token-identity"
    assert {s.policy for s in first.limits.states} == {"token-ip", "token-identity"}


def test_concurrent_refreshes_of_one_token_leave_exactly_one_successor(store: Store) -> None:
    family = issue(store)
    results: list[Rotation] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def attempt() -> None:
        start.wait()
        result = rotate(store, family, 0)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.outcome for r in results].count("rotated") == 1
    assert {r.outcome for r in results} <= {"rotated", "retried"}
    assert {r.generation for r in results} == {1}  # every caller holds the same, single successor
    assert rotate(store, family, 1).outcome == "rotated"


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


def test_index_sets(store: Store) -> None:
    store.link("bcls:test:sid:s1", "s:one", 60)
    store.link("bcls:test:sid:s1", "s:two", 60)
    assert store.members("bcls:test:sid:s1") == ["s:one", "s:two"]
    assert store.members("bcls:test:sid:none") == []


def test_active_identities_count_distinct_identities_per_month(store: Store) -> None:
    for identity in ["a@x", "b@x", "a@x"]:
        store.issue([], new_family(identity), LONG, "2026-11")
    assert store.active_identities("2026-11") == 2
    assert store.active_identities("2026-10") == 0
