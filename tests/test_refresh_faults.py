"""Refresh that survives faults and attackers (issue: fault-safe refresh).

Each fault is the real thing: a proxy that loses Redis's reply after the script ran, a Redis process
stopped with SIGSTOP for longer than the socket timeout, a stand-in that answers every command with
one of Redis's error replies, malformed HTTP framing on a raw socket, and a stranger who knows a
victim's identity.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from devidp.harness import DevIdP
from tests.fault_servers import ErrorReplyServer, ReplyDroppingProxy
from tests.redis_servers import RedisServer
from tests.support import (
    RunningService,
    config_dict,
    forge,
    id_claims,
    post_refresh,
    post_revoke,
    problem,
    running,
    settings_for,
)
from token_service.tokens.refresh import identity_tag, new_family_id

pytestmark = pytest.mark.integration

SOCKET_TIMEOUT = 0.5


def store_config(idp: DevIdP, url: str, **extra: Any) -> dict[str, Any]:
    data = config_dict(idp.issuer)
    data["store"] = {"url": url, "socket_timeout": SOCKET_TIMEOUT, "connect_timeout": 0.25, "retry_after": 1}
    data.update(extra)
    return data


def family_of(svc: RunningService, refresh_token: str) -> str:
    return svc.app.extensions["token_service.issuer"].refresh_tokens.parse(refresh_token).family_id


def reuse_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "") == "refresh_reuse_detected"]


# -- a lost reply -------------------------------------------------------------------------------------------------


def test_a_reply_lost_after_the_rotation_ran_is_not_reuse(
    idp: DevIdP, rsa_key: dict, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy swallows Redis's answer to the rotation (which ran) and drops the connection."""
    caplog.set_level(logging.INFO)
    with ReplyDroppingProxy(redis_server.port) as proxy, running(settings_for(store_config(idp, proxy.url()))) as svc:
        first = svc.post_token(forge(rsa_key, id_claims(idp.issuer))).json()["refresh_token"]
        proxy.drop_reply_after(family_of(svc, first).encode())
        answer = post_refresh(svc.url, first)
        if answer.status_code == 503:  # the client's retry, with the same token, as the README's code does
            answer = post_refresh(svc.url, first)
        assert answer.status_code == 200, answer.text
        assert proxy.dropped == 1
        successor = answer.json()["refresh_token"]
        assert post_refresh(svc.url, first).json()["refresh_token"] == successor  # still the same one
        assert post_refresh(svc.url, successor).status_code == 200  # and the session goes on
    assert reuse_warnings(caplog) == []


def test_a_reply_stalled_past_the_socket_timeout_then_retried(
    idp: DevIdP, rsa_key: dict, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer never comes: 503 within the timeout; the client's retry gets the successor."""
    caplog.set_level(logging.INFO)
    with ReplyDroppingProxy(redis_server.port) as proxy, running(settings_for(store_config(idp, proxy.url()))) as svc:
        first = svc.post_token(forge(rsa_key, id_claims(idp.issuer))).json()["refresh_token"]
        proxy.drop_reply_after(family_of(svc, first).encode(), close=False)
        stalled = post_refresh(svc.url, first)
        assert stalled.status_code == 503 and problem(stalled)["type"] == "unavailable"
        assert int(stalled.headers["Retry-After"]) >= 1
        retried = post_refresh(svc.url, first)
        assert retried.status_code == 200, retried.text
        assert post_refresh(svc.url, retried.json()["refresh_token"]).status_code == 200
    assert reuse_warnings(caplog) == []


def test_redis_stopped_longer_than_the_socket_timeout_under_load(
    idp: DevIdP, rsa_key: dict, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP: the rotations sent meanwhile run when Redis resumes, after the service gave up on them."""
    caplog.set_level(logging.INFO)
    with RedisServer() as server, running(settings_for(store_config(idp, server.url()))) as svc:
        clients = [Client(svc.url, svc.post_token(forge(rsa_key, id_claims(
            idp.issuer, email=f"load{i}@example.com"))).json()["refresh_token"]) for i in range(6)]
        stop = threading.Event()
        threads = [threading.Thread(target=c.refresh_until, args=(stop,)) for c in clients]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        time.sleep(3 * SOCKET_TIMEOUT)
        os.kill(server.pid, signal.SIGCONT)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
        statuses = [s for c in clients for s in c.statuses]
        assert 503 in statuses and set(statuses) <= {200, 503}, sorted(set(statuses))
        for c in clients:  # every session goes on
            assert post_refresh(svc.url, c.token).status_code == 200
    assert reuse_warnings(caplog) == []


class Client:
    """A chat client: refreshes in a loop, and retries a 503 with the same token."""

    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token
        self.statuses: list[int] = []

    def refresh_until(self, stop: threading.Event) -> None:
        with requests.Session() as http:
            while not stop.is_set():
                resp = http.post(f"{self.base}/v1/token/refresh", json={"refresh_token": self.token}, timeout=10)
                self.statuses.append(resp.status_code)
                if resp.status_code == 200:
                    self.token = resp.json()["refresh_token"]
                else:
                    time.sleep(0.1)


# -- every store error is a 503 -----------------------------------------------------------------------------------

REDIS_ERRORS = [
    "LOADING Redis is loading the dataset in memory",
    "NOAUTH Authentication required.",
    "WRONGPASS invalid username-password pair or user is disabled.",
    "ERR max number of clients reached",
    "READONLY You can't write against a read only replica.",
    "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
    "OOM command not allowed when used memory > 'maxmemory'.",
    "CLUSTERDOWN The cluster is down",
    "MOVED 3999 127.0.0.1:6381",
    "ASK 3999 127.0.0.1:6381",
    "TRYAGAIN Multiple keys request during rehashing of slot",
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
    "NOSCRIPT No matching script. Please use EVAL.",
]


@pytest.fixture(scope="module")
def refresh_token_for_any_store(idp: DevIdP) -> str:
    """A refresh token with a valid MAC (the test secret's key): the request reaches the store."""
    with running(settings_for(config_dict(idp.issuer))) as svc:
        tokens = svc.app.extensions["token_service.issuer"].refresh_tokens
        return tokens.mint(identity_tag("x"), new_family_id(), 3)


@pytest.mark.parametrize("error", REDIS_ERRORS, ids=[e.split()[0] for e in REDIS_ERRORS])
def test_every_redis_error_reply_is_a_503(
    idp: DevIdP, rsa_key: dict, error: str, refresh_token_for_any_store: str
) -> None:
    with ErrorReplyServer(error) as standin, running(settings_for(store_config(idp, standin.url()))) as svc:
        answers = {
            "token": svc.post_token(forge(rsa_key, id_claims(idp.issuer))),
            "refresh": post_refresh(svc.url, refresh_token_for_any_store),
            "revoke": post_revoke(svc.url, refresh_token_for_any_store),
        }
        for endpoint, resp in answers.items():
            assert resp.status_code == 503, (endpoint, resp.text)
            assert problem(resp)["type"] == "unavailable" and int(resp.headers["Retry-After"]) >= 1
        assert svc.get("/readyz").json()["store"]["ok"] is False
        assert standin.commands > 0  # the replies really came from the stand-in


def test_a_cluster_that_is_down_at_start_is_a_503_not_a_crash(
    idp: DevIdP, rsa_key: dict, refresh_token_for_any_store: str
) -> None:
    with ErrorReplyServer("CLUSTERDOWN The cluster is down") as standin:
        url = f"redis+cluster://127.0.0.1:{standin.port}"
        with running(settings_for(store_config(idp, url))) as svc:
            assert svc.post_token(forge(rsa_key, id_claims(idp.issuer))).status_code == 503
            assert post_refresh(svc.url, refresh_token_for_any_store).status_code == 503


# -- no lockouts --------------------------------------------------------------------------------------------------


def test_a_stranger_cannot_use_up_a_victims_refresh_budget(idp: DevIdP, rsa_key: dict) -> None:
    """Made-up refresh tokens built on the victim's identity tag charge the stranger's IP, never the
    victim's identity or family buckets."""
    policies = [{"endpoint": "refresh", "key": key, "limit": limit, "window": 60}
                for key, limit in (("ip", 1000), ("identity", 3), ("family", 3), ("global", 1000))]
    data = config_dict(idp.issuer)
    data["rate_limits"] = {"enabled": True, "policies": policies}
    data["server"] = {"trusted_proxies": 1}
    with running(settings_for(data)) as svc:
        victim = svc.post_token(forge(rsa_key, id_claims(idp.issuer)), headers={"X-Forwarded-For": "198.51.100.1"})
        token = victim.json()["refresh_token"]
        tag = hashlib.sha256(b"alice@example.com").digest()[:16]  # anyone can compute a tag
        family = base64.urlsafe_b64decode(family_of(svc, token) + "=")

        for generation in range(60):
            raw = tag + family + generation.to_bytes(4, "big") + secrets.token_bytes(32)
            forged = "rt2." + base64.urlsafe_b64encode(raw).decode()
            resp = requests.post(f"{svc.url}/v1/token/refresh", json={"refresh_token": forged},
                                 headers={"X-Forwarded-For": "203.0.113.66"}, timeout=10)
            assert resp.status_code == 401, resp.text
        mine = requests.post(f"{svc.url}/v1/token/refresh", json={"refresh_token": token},
                             headers={"X-Forwarded-For": "198.51.100.1"}, timeout=10)
        assert mine.status_code == 200, mine.text


# -- malformed framing --------------------------------------------------------------------------------------------

BAD_CHUNKS = [
    b"zz\r\nabc\r\n0\r\n\r\n",  # not a hexadecimal chunk size
    b"5\r\nabc\r\n0\r\n\r\n",  # shorter than it says
    b"3\r\nabcXY0\r\n\r\n",  # no CRLF after the chunk
]


def raw_post(base: str, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, bytes]:
    parts = urlsplit(base)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            "Authorization: Bearer not-read-before-the-body\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode() + body
        )
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head + b"\r\n\r\n" + payload


@contextmanager
def browser_service(idp: DevIdP) -> Iterator[RunningService]:
    from tests.browser_support import login_config
    from tests.redis_servers import free_port
    from tests.support import SERVICE_ENV
    from token_service.settings import settings_from_dict

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running(settings_from_dict(login_config(idp, base), environ=SERVICE_ENV), port) as svc:
        yield svc


@pytest.mark.parametrize("path", ["/v1/token", "/v1/token/refresh", "/v1/token/revoke", "/backchannel-logout"])
def test_malformed_chunked_bodies_are_400(idp: DevIdP, path: str) -> None:
    with browser_service(idp) as svc:
        for body in BAD_CHUNKS:
            content_type = "application/x-www-form-urlencoded" if path == "/backchannel-logout" else "application/json"
            status, answer = raw_post(svc.url, path, body, content_type)
            assert status == 400, (path, body, answer)
            assert b"application/problem+json" in answer and b"Traceback" not in answer
