"""Conversations REST sync (design 2.7): the real ``twilio`` client against the spec-checked stand-in.

Twilio bills a User as active whenever it is created or updated (seed 001), so these tests count writes: a
create only when missing, an update of ``RoleSid`` only when it differs, nothing at all on a cached login.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pytest

from tests.redis_servers import RedisServer, free_port
from tests.support import sample
from tests.twilio_standin import Call, ConversationsStandIn, new_sid
from token_service.conversations import (
    ConversationsUnavailable,
    SyncResult,
    SyncSettings,
    UnaddressableIdentity,
    UserSync,
    parse_retry_after,
    path_segment,
)
from token_service.errors import InvalidIdentity, Unavailable
from token_service.store.base import Store, StoreUnavailable
from token_service.store.memory import MemoryStore
from token_service.store.redis import RedisStore

pytestmark = pytest.mark.integration

ROLE_USER = new_sid("RL")
ROLE_ADMIN = new_sid("RL")


# -- fixtures ----------------------------------------------------------------------------------------------------


def settings_for(standin: ConversationsStandIn, **overrides: Any) -> SyncSettings:
    base = SyncSettings(
        service_sid=standin.service_sid,
        account_sid=standin.account_sid,
        api_key_sid=standin.api_key_sid,
        api_key_secret=standin.api_key_secret,
        base_url=standin.base_url,
    )
    return replace(base, **overrides)


@pytest.fixture
def make_sync(standin: ConversationsStandIn) -> Iterator[Callable[..., UserSync]]:
    """Builds UserSyncs (the real client, built by UserSync itself) and closes them after the test."""
    made: list[UserSync] = []

    def make(store: Store | None = None, **overrides: Any) -> UserSync:
        sync = UserSync(settings_for(standin, **overrides), store if store is not None else MemoryStore())
        made.append(sync)
        return sync

    yield make
    for sync in made:
        sync.close()


@pytest.fixture
def sync(make_sync: Callable[..., UserSync]) -> UserSync:
    return make_sync()


@pytest.fixture
def redis_stores(redis_server: RedisServer) -> Iterator[Callable[[], RedisStore]]:
    """Fresh Redis (flushed); each call gives another connection, as another worker process would have."""
    made: list[RedisStore] = []
    redis_server.flush()

    def make() -> RedisStore:
        store = RedisStore(redis_server.client(decode_responses=True))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def users_path(standin: ConversationsStandIn, tail: str = "") -> str:
    return f"/v1/Services/{standin.service_sid}/Users{tail}"


def creates(standin: ConversationsStandIn) -> list[Call]:
    return [c for c in standin.calls if c.method == "POST" and c.path == users_path(standin)]


def updates(standin: ConversationsStandIn) -> list[Call]:
    return [c for c in standin.calls if c.method == "POST" and c.path.startswith(users_path(standin, "/"))]


def writes(standin: ConversationsStandIn) -> list[Call]:
    return [c for c in standin.calls if c.method != "GET"]


class FlakyStore(MemoryStore):
    """A store that is down: every key-value call raises StoreUnavailable."""

    def get(self, key: str) -> str | None:
        raise StoreUnavailable("ConnectionError")

    def add_once(self, key: str, ttl: int) -> bool:
        raise StoreUnavailable("ConnectionError")


# -- create, update, unchanged, cached ---------------------------------------------------------------------------


def test_creates_a_missing_user_with_role_and_friendly_name(standin: ConversationsStandIn, sync: UserSync) -> None:
    result = sync.ensure("alice@example.com", ROLE_USER, friendly_name="Alice")

    assert result == SyncResult("created", rest_calls=2)
    user = standin.user("alice@example.com")
    assert user is not None and (user["role_sid"], user["friendly_name"]) == (ROLE_USER, "Alice")
    assert standin.calls == [
        Call("GET", users_path(standin, "/alice@example.com"), {}),
        Call(
            "POST",
            users_path(standin),
            {"Identity": "alice@example.com", "RoleSid": ROLE_USER, "FriendlyName": "Alice"},
        ),
    ]
    assert sync.store.get(sync.cache_key("alice@example.com")) == ROLE_USER
    assert standin.violations == []


def test_existing_user_with_the_same_role_is_not_written(standin: ConversationsStandIn, sync: UserSync) -> None:
    standin.seed_user("bob", role_sid=ROLE_USER)

    assert sync.ensure("bob", ROLE_USER, friendly_name="Bob") == SyncResult("unchanged", rest_calls=1)

    assert standin.calls == [Call("GET", users_path(standin, "/bob"), {})]
    assert standin.user("bob")["friendly_name"] is None  # friendly_name is only sent on create
    assert sync.store.get(sync.cache_key("bob")) == ROLE_USER
    assert standin.violations == []


def test_a_different_role_updates_only_the_role_sid(standin: ConversationsStandIn, sync: UserSync) -> None:
    seeded = standin.seed_user("carol", role_sid=ROLE_USER, friendly_name="Carol C.", attributes='{"a": 1}')

    assert sync.ensure("carol", ROLE_ADMIN, friendly_name="Carol") == SyncResult("updated", rest_calls=2)

    assert standin.calls == [
        Call("GET", users_path(standin, "/carol"), {}),
        Call("POST", users_path(standin, f"/{seeded['sid']}"), {"RoleSid": ROLE_ADMIN}),
    ]
    user = standin.user("carol")
    assert (user["role_sid"], user["friendly_name"], user["attributes"]) == (ROLE_ADMIN, "Carol C.", '{"a": 1}')
    assert standin.violations == []


def test_a_repeat_login_makes_no_rest_call(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync], redis_stores: Callable[[], RedisStore]
) -> None:
    worker_a, worker_b = make_sync(redis_stores()), make_sync(redis_stores())
    assert worker_a.ensure("dave", ROLE_USER).outcome == "created"
    before = standin.calls

    for worker in (worker_a, worker_b, worker_a):
        assert worker.ensure("dave", ROLE_USER) == SyncResult("cached", rest_calls=0)

    assert standin.calls == before
    assert standin.violations == []


def test_a_role_change_is_exactly_one_update(standin: ConversationsStandIn, sync: UserSync) -> None:
    roles = (ROLE_USER, ROLE_USER, ROLE_ADMIN, ROLE_ADMIN, ROLE_ADMIN)
    outcomes = [sync.ensure("erin", role).outcome for role in roles]

    assert outcomes == ["created", "cached", "updated", "cached", "cached"]
    assert (len(creates(standin)), len(updates(standin)), len(standin.calls)) == (1, 1, 4)
    assert updates(standin)[0].form == {"RoleSid": ROLE_ADMIN}
    assert standin.user("erin")["role_sid"] == ROLE_ADMIN
    assert standin.violations == []


def test_identities_are_case_sensitive(standin: ConversationsStandIn, sync: UserSync) -> None:
    assert sync.ensure("Alice", ROLE_ADMIN).outcome == "created"
    assert sync.ensure("alice", ROLE_USER).outcome == "created"  # not "cached": another identity, another key
    assert sync.ensure("Alice", ROLE_ADMIN).outcome == "cached"

    assert sorted((u["identity"], u["role_sid"]) for u in standin.users()) == [
        ("Alice", ROLE_ADMIN),
        ("alice", ROLE_USER),
    ]
    assert sync.cache_key("Alice") != sync.cache_key("alice")
    assert standin.violations == []


# -- concurrency --------------------------------------------------------------------------------------------------


def test_concurrent_first_logins_create_once(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync], redis_stores: Callable[[], RedisStore]
) -> None:
    workers = [make_sync(redis_stores()), make_sync(redis_stores())]
    standin.fail_next(None, delay=0.3)  # the first fetch is slow: everyone else piles up behind the lock
    start = threading.Barrier(10)

    def login(i: int) -> SyncResult:
        start.wait()
        return workers[i % 2].ensure("frank", ROLE_USER)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(login, range(10)))

    assert Counter(r.outcome for r in results) == {"created": 1, "cached": 9}
    assert sum(r.rest_calls for r in results) == len(standin.calls) == 2  # one GET, one create: nobody else asked
    assert len(creates(standin)) == 1 and len(standin.users()) == 1
    assert standin.violations == []


def test_a_create_that_loses_a_race_adopts_the_existing_user(standin: ConversationsStandIn, sync: UserSync) -> None:
    """No shared lock (another deployment, a console edit): the create answers 409, we fetch and carry on."""
    standin.fail_next(None, delay=0.01)  # the fetch: normal (404)
    standin.fail_next(None, delay=0.5)  # the create: held while "someone else" creates the user
    seeded: list[dict[str, Any]] = []

    def someone_else() -> None:
        deadline = time.monotonic() + 5
        while not creates(standin) and time.monotonic() < deadline:
            time.sleep(0.01)
        seeded.append(standin.seed_user("grace", role_sid=ROLE_USER))

    racer = threading.Thread(target=someone_else)
    racer.start()
    result = sync.ensure("grace", ROLE_ADMIN)
    racer.join()

    assert result == SyncResult("updated", rest_calls=4)  # GET 404, POST 409, GET 200, POST update
    assert [(c.method, c.path) for c in standin.calls] == [
        ("GET", users_path(standin, "/grace")),
        ("POST", users_path(standin)),
        ("GET", users_path(standin, "/grace")),
        ("POST", users_path(standin, f"/{seeded[0]['sid']}")),
    ]
    assert [u["role_sid"] for u in standin.users()] == [ROLE_ADMIN]
    assert standin.violations == []


# -- failures -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_fail_open_defers_on_server_errors_and_retries_next_time(
    standin: ConversationsStandIn, sync: UserSync, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    deferred_before = sample("token_service_conversations_sync_total", outcome="deferred")
    errors_before = sample("token_service_conversations_rest_calls_total", method="GET", status=str(status))
    standin.fail_next(status)

    assert sync.ensure("heidi", ROLE_USER) == SyncResult("deferred", rest_calls=1)

    assert sync.store.get(sync.cache_key("heidi")) is None
    assert standin.users() == []
    assert sample("token_service_conversations_sync_total", outcome="deferred") == deferred_before + 1
    assert sample("token_service_conversations_rest_calls_total", method="GET", status=str(status)) == errors_before + 1
    warning = next(r for r in caplog.records if r.name == "token_service.conversations")
    assert warning.levelno == logging.WARNING and f"GET answered {status}" in warning.getMessage()
    assert standin.api_key_secret not in caplog.text

    assert sync.ensure("heidi", ROLE_USER).outcome == "created"
    assert standin.violations == []


def test_fail_open_defers_when_twilio_is_slower_than_the_timeout(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync]
) -> None:
    sync = make_sync(timeout=0.3)
    standin.fail_next(None, delay=2.0)

    started = time.monotonic()
    result = sync.ensure("ivan", ROLE_USER)

    assert result == SyncResult("deferred", rest_calls=1)
    assert time.monotonic() - started < 1.5
    assert sync.store.get(sync.cache_key("ivan")) is None
    assert sync.ensure("ivan", ROLE_USER) == SyncResult("created", rest_calls=2)
    assert standin.violations == []


def test_fail_open_defers_when_twilio_cannot_be_reached(standin: ConversationsStandIn) -> None:
    closed_port = free_port()  # nothing listens there
    before = sample("token_service_conversations_rest_calls_total", method="GET", status="error")
    with UserSync(settings_for(standin, base_url=f"http://127.0.0.1:{closed_port}"), MemoryStore()) as sync:
        assert sync.ensure("judy", ROLE_USER) == SyncResult("deferred", rest_calls=1)
    assert sample("token_service_conversations_rest_calls_total", method="GET", status="error") == before + 1
    assert standin.violations == []


def test_fail_closed_raises_unavailable_with_retry_after(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync]
) -> None:
    sync = make_sync(failure_mode="fail_closed")
    standin.fail_next(503)

    with pytest.raises(ConversationsUnavailable) as info:
        sync.ensure("ken", ROLE_USER)

    assert isinstance(info.value, Unavailable)
    assert info.value.status == 503 and info.value.headers == {"Retry-After": "5"}
    assert "GET answered 503" in info.value.detail and standin.api_key_secret not in info.value.detail
    assert sync.store.get(sync.cache_key("ken")) is None
    assert sync.ensure("ken", ROLE_USER).outcome == "created"
    assert standin.violations == []


def test_fail_closed_passes_on_a_long_retry_after_without_waiting(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync]
) -> None:
    sync = make_sync(failure_mode="fail_closed")
    standin.fail_next(429, retry_after=30)

    started = time.monotonic()
    with pytest.raises(ConversationsUnavailable) as info:
        sync.ensure("leo", ROLE_USER)

    assert time.monotonic() - started < 1.0  # 30 s is more than a login may wait: give up at once, say so
    assert info.value.retry_after == 30 and info.value.headers == {"Retry-After": "30"}
    assert len(standin.calls) == 1
    assert standin.violations == []


def test_429_honours_retry_after_then_succeeds(standin: ConversationsStandIn, sync: UserSync) -> None:
    standin.fail_next(429, retry_after=1)

    started = time.monotonic()
    result = sync.ensure("mallory", ROLE_USER)

    assert time.monotonic() - started >= 1.0
    assert result == SyncResult("created", rest_calls=3)  # GET 429, GET 404, POST 201
    assert [c.method for c in standin.calls] == ["GET", "GET", "POST"]
    assert standin.violations == []


def test_429_gives_up_after_max_attempts(standin: ConversationsStandIn, make_sync: Callable[..., UserSync]) -> None:
    sync = make_sync(max_attempts=3)
    standin.fail_next(429, count=3, retry_after=0)

    assert sync.ensure("nina", ROLE_USER) == SyncResult("deferred", rest_calls=3)
    assert [c.method for c in standin.calls] == ["GET"] * 3
    assert sync.ensure("nina", ROLE_USER) == SyncResult("created", rest_calls=2)
    assert standin.violations == []


def test_bad_credentials_are_a_failure_not_a_create(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync]
) -> None:
    sync = make_sync(api_key_secret="wrong")

    assert sync.ensure("oscar", ROLE_USER) == SyncResult("deferred", rest_calls=1)
    assert standin.users() == []
    assert standin.violations == []


def test_an_unknown_service_is_a_failure(standin: ConversationsStandIn, make_sync: Callable[..., UserSync]) -> None:
    sync = make_sync(service_sid=new_sid("IS"), failure_mode="fail_closed")

    with pytest.raises(ConversationsUnavailable, match="does the Conversation Service IS"):
        sync.ensure("peggy", ROLE_USER)  # fetch 404, then create 404
    assert len(standin.calls) == 2
    assert standin.violations == []


@pytest.mark.parametrize("mode", ["fail_open", "fail_closed"])
def test_store_down_is_a_failure_of_the_configured_mode(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync], mode: str
) -> None:
    sync = make_sync(FlakyStore(), failure_mode=mode)

    if mode == "fail_open":
        assert sync.ensure("quinn", ROLE_USER) == SyncResult("deferred", rest_calls=0)
    else:
        with pytest.raises(ConversationsUnavailable, match="store unavailable"):
            sync.ensure("quinn", ROLE_USER)
    assert standin.calls == []
    assert standin.violations == []


# -- identities in the URL path -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "identity", ["a/b", "a?b=c", "x#frag", "100%", "a%41b", "trailing/", "/leading", "é l@x.com", "[v6]", "x+y"]
)
def test_identities_are_percent_encoded_in_the_path(
    standin: ConversationsStandIn, sync: UserSync, identity: str
) -> None:
    """The library formats the identity into the path raw: ``a%41b`` would fetch ``aAb``, ``x#frag`` would fetch
    ``x`` and ``trailing/`` would fetch ``trailing`` - other people. Encoded, each reaches its own User."""
    assert sync.ensure(identity, ROLE_USER).outcome == "created"
    assert sync.sync(identity, ROLE_USER).outcome == "unchanged"
    assert sync.show(identity)["identity"] == identity

    assert [u["identity"] for u in standin.users()] == [identity]
    assert [c.path for c in standin.calls if c.method == "GET"] == [users_path(standin, "/" + identity)] * 3
    assert standin.violations == []


def test_path_segment_encodes_only_what_a_segment_cannot_hold() -> None:
    assert path_segment("alice@example.com") == "alice@example.com"
    assert path_segment("a/b?c#d%e f") == "a%2Fb%3Fc%23d%25e%20f"
    assert path_segment("..x") == "..x"


@pytest.mark.parametrize("identity", ["", ".", ".."])
def test_unaddressable_identities_are_refused(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync], identity: str
) -> None:
    """``/Users/`` would list users and ``/Users/..`` is normalised away: no path names these identities."""
    open_sync, closed_sync = make_sync(), make_sync(failure_mode="fail_closed")

    assert open_sync.ensure(identity, ROLE_USER) == SyncResult("deferred", rest_calls=0)
    with pytest.raises(UnaddressableIdentity) as info:
        closed_sync.ensure(identity, ROLE_USER)
    assert isinstance(info.value, InvalidIdentity) and info.value.status == 403
    for call in (lambda: open_sync.sync(identity, ROLE_USER), lambda: open_sync.show(identity)):
        with pytest.raises(UnaddressableIdentity):
            call()
    assert standin.calls == []
    assert standin.violations == []


# -- show and sync (CLI) ------------------------------------------------------------------------------------------


def test_show_returns_the_user_or_none(standin: ConversationsStandIn, sync: UserSync) -> None:
    seeded = standin.seed_user("rita", role_sid=ROLE_ADMIN, friendly_name="Rita")

    shown = sync.show("rita")

    assert shown is not None
    assert {k: shown[k] for k in ("sid", "identity", "role_sid", "friendly_name", "chat_service_sid")} == {
        "sid": seeded["sid"],
        "identity": "rita",
        "role_sid": ROLE_ADMIN,
        "friendly_name": "Rita",
        "chat_service_sid": standin.service_sid,
    }
    assert json.loads(json.dumps(shown))["date_created"].startswith(seeded["date_created"][:10])
    assert sync.show("nobody") is None
    assert writes(standin) == []
    assert standin.violations == []


def test_show_raises_when_twilio_fails(standin: ConversationsStandIn, sync: UserSync) -> None:
    standin.fail_next(500)
    with pytest.raises(ConversationsUnavailable):
        sync.show("rita")
    assert standin.violations == []


def test_sync_ignores_the_cache_and_repairs_drift(standin: ConversationsStandIn, sync: UserSync) -> None:
    assert sync.ensure("sam", ROLE_USER).outcome == "created"
    sync.client.conversations.v1.services(standin.service_sid).users("sam").update(role_sid=ROLE_ADMIN)  # console

    assert sync.ensure("sam", ROLE_USER) == SyncResult("cached", rest_calls=0)  # trusts the cache until its TTL
    assert sync.sync("sam", ROLE_USER) == SyncResult("updated", rest_calls=2)
    assert sync.sync("sam", ROLE_USER) == SyncResult("unchanged", rest_calls=1)
    assert standin.user("sam")["role_sid"] == ROLE_USER
    assert standin.violations == []


def test_sync_raises_even_when_fail_open(standin: ConversationsStandIn, sync: UserSync) -> None:
    standin.fail_next(500)
    with pytest.raises(ConversationsUnavailable):
        sync.sync("tom", ROLE_USER)
    assert standin.violations == []


def test_retry_after_values() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("-1") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 50 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 60


def test_settings_hide_the_secret_and_check_their_ranges(standin: ConversationsStandIn) -> None:
    settings = settings_for(standin)
    assert standin.api_key_secret not in repr(settings)
    for bad in ({"timeout": 0}, {"timeout": 60}, {"failure_mode": "ignore"}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            replace(settings, **bad)


# -- the scripted day -----------------------------------------------------------------------------------------------


def test_the_scripted_day(
    standin: ConversationsStandIn, make_sync: Callable[..., UserSync], redis_stores: Callable[[], RedisStore]
) -> None:
    """100 users, 2 workers sharing Redis, logins in random order and in parallel; 5 role changes at noon.

    Billing: exactly 100 creates and 5 updates, no other write; every other login costs no REST call at all.
    """
    rng = random.Random(20240607)
    workers = [make_sync(redis_stores()), make_sync(redis_stores())]
    people = [f"user{i:03d}@example.com" for i in range(100)]
    role = dict.fromkeys(people, ROLE_USER)
    promoted = rng.sample(people, 5)

    def run(phase: list[str]) -> list[SyncResult]:
        rng.shuffle(phase)
        picks = [(who, role[who], rng.choice(workers)) for who in phase]
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda p: p[2].ensure(p[0], p[1], friendly_name=p[0].split("@")[0]), picks))

    morning = run([p for p in people for _ in range(rng.randint(1, 4))])
    for who in promoted:
        role[who] = ROLE_ADMIN
    afternoon = run([p for p in people for _ in range(rng.randint(1, 3))] + promoted * 2)

    outcomes = Counter(r.outcome for r in morning + afternoon)
    assert outcomes["created"] == 100 and outcomes["updated"] == 5
    assert outcomes["cached"] == len(morning) + len(afternoon) - 105
    assert len(creates(standin)) == 100
    assert sorted(c.form["RoleSid"] for c in updates(standin)) == [ROLE_ADMIN] * 5
    assert len(writes(standin)) == 105  # nothing else billed
    assert sum(r.rest_calls for r in morning + afternoon) == len(standin.calls) == 210  # + one GET each
    assert {u["identity"]: u["role_sid"] for u in standin.users()} == role
    assert standin.violations == []
