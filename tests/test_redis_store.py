"""The Redis store as operators run it: every URL form, the round-trip budget, and outages."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from devidp.harness import DevIdP
from tests.redis_servers import RedisCluster, RedisSentinel, RedisServer, make_tls_files
from tests.support import RunningService, config_dict, forge, id_claims, post_refresh, post_revoke, problem, running
from token_service.store.base import Bucket, StoreUnavailable
from token_service.store.redis import RedisStore

pytestmark = pytest.mark.integration


def store_settings(idp: DevIdP, store: dict, env: dict[str, str] | None = None, **extra: object):
    data = config_dict(idp.issuer)
    data["store"] = store
    data.update(extra)
    from tests.support import TWILIO_SECRET
    from token_service.settings import settings_from_dict

    return settings_from_dict(data, environ={"TWILIO_API_KEY_SECRET": TWILIO_SECRET, **(env or {})})


def round_trip(svc: RunningService, token: str) -> None:
    """Issue, refresh, revoke: the whole family life cycle through this store."""
    issued = svc.post_token(token)
    assert issued.status_code == 200, issued.text
    refreshed = post_refresh(svc.url, issued.json()["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()["refresh_token"]
    assert post_revoke(svc.url, new).status_code == 200
    again = post_refresh(svc.url, new)
    assert again.status_code == 401
    ready = svc.get("/readyz").json()
    assert ready["store"]["ok"] is True


def test_standalone_redis_url(idp: DevIdP, rsa_key: dict, redis_server: RedisServer) -> None:
    with running(store_settings(idp, {"url": redis_server.url()})) as svc:
        round_trip(svc, forge(rsa_key, id_claims(idp.issuer)))


def test_tls_with_acl_user_and_password_from_env(idp: DevIdP, rsa_key: dict, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    with RedisServer(acl_user=("tokensvc", "s3cret-pass"), tls=tls) as server:
        url = f"rediss://tokensvc@127.0.0.1:{server.port}/0"
        store = {"url": url, "tls_ca_file": str(tls.ca_cert)}
        with running(store_settings(idp, store, env={"REDIS_PASSWORD": "s3cret-pass"})) as svc:
            round_trip(svc, forge(rsa_key, id_claims(idp.issuer)))
        # Without the password the store is unavailable, and says so instead of failing oddly.
        with running(store_settings(idp, store)) as svc:
            resp = svc.post_token(forge(rsa_key, id_claims(idp.issuer)))
            assert resp.status_code == 503 and problem(resp)["type"] == "unavailable"
            assert svc.get("/readyz").status_code == 503


def test_sentinel(idp: DevIdP, rsa_key: dict) -> None:
    with RedisSentinel() as sentinel:
        with running(store_settings(idp, {"url": sentinel.url()})) as svc:
            round_trip(svc, forge(rsa_key, id_claims(idp.issuer)))


def test_sentinel_with_passwords_on_master_and_sentinel(idp: DevIdP, rsa_key: dict) -> None:
    with RedisSentinel(password="s3cret-pass", sentinel_password="s3cret-pass-sentinel") as sentinel:
        env = {"REDIS_PASSWORD": "s3cret-pass", "REDIS_SENTINEL_PASSWORD": "s3cret-pass-sentinel"}
        with running(store_settings(idp, {"url": sentinel.url()}, env=env)) as svc:
            round_trip(svc, forge(rsa_key, id_claims(idp.issuer)))
        # Without the sentinel's password the master cannot even be found: 503, not 500.
        with running(store_settings(idp, {"url": sentinel.url()}, env={"REDIS_PASSWORD": "s3cret-pass"})) as svc:
            resp = svc.post_token(forge(rsa_key, id_claims(idp.issuer)))
            assert resp.status_code == 503 and problem(resp)["type"] == "unavailable"


def test_cluster(idp: DevIdP, rsa_key: dict, redis_cluster: RedisCluster) -> None:
    with running(store_settings(idp, {"url": redis_cluster.url()})) as svc:
        for i in range(5):  # identities spread over slots on different masters
            round_trip(svc, forge(rsa_key, id_claims(idp.issuer, email=f"user{i}@example.com")))


def test_password_in_the_url_is_refused(idp: DevIdP) -> None:
    from token_service.errors import ConfigError

    with pytest.raises(ConfigError, match="must not carry a password"):
        store_settings(idp, {"url": "redis://user:hunter2@127.0.0.1:6379/0"})


@pytest.fixture
def limited_redis_service(idp: DevIdP, redis_server: RedisServer) -> Iterator[RunningService]:
    redis_server.flush()
    limits = {"enabled": True, "policies": [
        {"endpoint": "token", "key": "ip", "limit": 1000, "window": 60},
        {"endpoint": "token", "key": "identity", "limit": 1000, "window": 60},
        {"endpoint": "refresh", "key": "ip", "limit": 1000, "window": 60},
        {"endpoint": "refresh", "key": "identity", "limit": 1000, "window": 60},
        {"endpoint": "refresh", "key": "family", "limit": 1000, "window": 60},
        {"endpoint": "revoke", "key": "ip", "limit": 1000, "window": 60},
    ]}
    with running(store_settings(idp, {"url": redis_server.url()}, rate_limits=limits)) as svc:
        yield svc


def test_round_trip_budget_one_command_per_request(
    limited_redis_service: RunningService, redis_server: RedisServer, idp: DevIdP, rsa_key: dict
) -> None:
    """INFO commandstats: issue, refresh and revoke each cost exactly one Redis command."""
    svc = limited_redis_service
    warm = svc.post_token(forge(rsa_key, id_claims(idp.issuer)))  # loads scripts, opens the pool
    post_refresh(svc.url, warm.json()["refresh_token"])
    post_revoke(svc.url, "rt2." + "A" * 80)

    def commands_for(action):
        """The commands the service sent (MONITOR), not those its Lua scripts ran inside Redis."""
        seen: list[str] = []
        monitor_client = redis_server.client(decode_responses=True)
        marker_client = redis_server.client()
        marker_client.ping()  # connected before MONITOR starts, so its handshake is not counted
        with monitor_client.monitor() as monitor:
            marker = f"marker-{time.monotonic_ns()}"
            result = action()
            marker_client.echo(marker)
            for command in monitor.listen():
                if marker in command["command"]:
                    break
                if command.get("client_type") != "lua":
                    seen.append(command["command"].split()[0].lower())
        monitor_client.close()
        marker_client.close()
        return {name: seen.count(name) for name in set(seen)}, result

    spent, issued = commands_for(lambda: svc.post_token(forge(rsa_key, id_claims(idp.issuer))))
    assert issued.status_code == 200 and spent == {"evalsha": 1}
    token = issued.json()["refresh_token"]
    spent, refreshed = commands_for(
        lambda: post_refresh(svc.url, token))
    assert refreshed.status_code == 200 and spent == {"evalsha": 1}
    new = refreshed.json()["refresh_token"]
    spent, revoked = commands_for(
        lambda: post_revoke(svc.url, new))
    assert revoked.status_code == 200 and spent == {"evalsha": 1}


def test_redis_killed_then_restarted(idp: DevIdP, rsa_key: dict) -> None:
    with RedisServer() as server:
        settings = store_settings(idp, {"url": server.url(), "socket_timeout": 0.5, "connect_timeout": 0.25})
        with running(settings) as svc:
            first = svc.post_token(forge(rsa_key, id_claims(idp.issuer)))
            assert first.status_code == 200
            held = first.json()["refresh_token"]
            server.kill()
            for call in (
                lambda: svc.post_token(forge(rsa_key, id_claims(idp.issuer))),
                lambda: post_refresh(svc.url, held),
            ):
                started = time.monotonic()
                resp = call()
                elapsed = time.monotonic() - started
                assert resp.status_code == 503, resp.text
                assert problem(resp)["type"] == "unavailable"
                assert int(resp.headers["Retry-After"]) >= 1
                assert elapsed < 5  # bounded by the timeouts, never a hang (not a speed assertion)
            down = svc.get("/readyz")
            assert down.status_code == 503 and down.json()["store"]["ok"] is False

            server.start()  # same port, empty (no persistence): the service reconnects by itself
            deadline = time.monotonic() + 10
            while svc.post_token(forge(rsa_key, id_claims(idp.issuer))).status_code != 200:
                assert time.monotonic() < deadline, "service did not recover after Redis came back"
                time.sleep(0.2)
            assert svc.get("/readyz").json()["store"]["ok"] is True


def _bucket() -> Bucket:
    return Bucket("ip", "-", "ip:192.0.2.1", 10, 3600)  # one hit back per 6 minutes: none in a test


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_a_redis_that_stops_answering_is_cut_off_by_the_socket_timeout(tmp_path: Path, tls: bool) -> None:
    """The request path's connection (plain: blocking, with kernel timeouts; TLS: redis-py's) gives
    up after ``socket_timeout``, and works again on a fresh connection once Redis answers."""
    with (
        RedisServer(tls=make_tls_files(tmp_path) if tls else None) as server,
        _store_and_admin(server, socket_timeout=0.3, socket_connect_timeout=0.3) as (store, admin),
    ):
        admin.execute_command("CLIENT", "PAUSE", "5000", "ALL")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="TimeoutError"):
            store.hit([_bucket()])
        # Ended by the 0.3 s timeout, not by the end of the 5 s pause (a bound, not a speed check).
        assert time.monotonic() - started < 4
        admin.execute_command("CLIENT", "UNPAUSE")
        decision = store.hit([_bucket()])
        # The abandoned call ran or not, as Redis saw its connection close: never twice.
        assert decision.allowed and decision.states[0].remaining in (7, 8)


@contextmanager
def _store_and_admin(server: RedisServer, **client: object) -> Iterator[tuple[RedisStore, Any]]:
    """A store on ``server`` (its client options ``client``) and an admin client; both closed after."""
    store = RedisStore(server.client(decode_responses=True, **client))
    admin = server.client(decode_responses=True)
    try:
        admin.flushall()
        assert store.hit([_bucket()]).allowed  # this thread's connection is up
        yield store, admin
    finally:
        store.close()
        admin.close()


def test_a_connection_redis_dropped_is_replaced_without_an_error(redis_server: RedisServer) -> None:
    with _store_and_admin(redis_server) as (store, admin):
        assert admin.client_kill_filter(_type="normal", skipme=True) >= 1
        assert store.hit([_bucket()]).states[0].remaining == 8  # retried once, on a new connection


def test_a_script_redis_forgot_is_loaded_again(redis_server: RedisServer) -> None:
    with _store_and_admin(redis_server) as (store, admin):
        admin.script_flush()
        assert store.hit([_bucket()]).states[0].remaining == 8


def test_redis_killed_mid_rotation_leaves_no_half_rotated_family(idp: DevIdP, rsa_key: dict) -> None:
    """A rotation is one Lua script: after a crash the family is either untouched or fully rotated.

    Redis runs with an fsync-always AOF here so the family survives the SIGKILL; writes are paused
    so the rotation is in flight (sent, not yet run) when the server dies.
    """
    durable = ["--appendonly", "yes", "--appendfsync", "always"]
    with RedisServer(extra_args=durable) as server:
        with running(store_settings(idp, {"url": server.url()})) as svc:
            token = svc.post_token(forge(rsa_key, id_claims(idp.issuer))).json()["refresh_token"]
            client = server.client(decode_responses=True)
            client.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
            client.close()
            result: dict[str, int] = {}
            thread = threading.Thread(target=lambda: result.update(
                status=post_refresh(svc.url, token).status_code))
            thread.start()
            time.sleep(0.2)
            server.kill()
            thread.join()
            assert result["status"] == 503
            server.start()
            # The interrupted rotation left the family as it was: the token was not spent...
            after = post_refresh(svc.url, token)
            assert after.status_code == 200, after.text
            # ...and it rotates normally now: once its successor is used, presenting it again is reuse.
            assert post_refresh(svc.url, after.json()["refresh_token"]).status_code == 200
            replay = post_refresh(svc.url, token)
            assert replay.status_code == 401


def test_sign_ins_forget_ended_families_so_the_record_stays_bounded(redis_server: RedisServer) -> None:
    """Cleaning the record is amortized (a scan each 8 new fields), never skipped: however many
    families end, an identity's hash holds its live ones plus a few fields."""
    from tests.test_store_contract import issue
    from token_service.store.base import FamilyPolicy

    short = FamilyPolicy(idle=1, absolute=3600)
    with _store_and_admin(redis_server) as (store, admin):
        ended = [issue(store, policy=short) for _ in range(40)]
        time.sleep(2.2)  # every one of them is past its idle time now
        live = [issue(store) for _ in range(20)]
        record = store.record_key(live[0].tag)
        fields = admin.hkeys(record)
        assert not {f.family_id for f in ended} & set(fields)
        assert {f.family_id for f in live} <= set(fields)
        assert len(fields) <= 20 + 8 + 5  # live families, the slack between scans, i r rc s and one p:
