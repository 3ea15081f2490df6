"""Shared fixtures: one real oidc-provider for the session, and the service in front of it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from devidp.harness import DevIdP, generate_keys
from tests.browser_support import BrowserStack, browser_stack
from tests.redis_servers import RedisCluster, RedisServer
from tests.support import (
    ARTIFACTS,
    TWILIO_SECRET,
    RunningService,
    config_dict,
    find_leaks,
    rsa,
    running,
    settings_for,
)
from tests.twilio_standin.server import ConversationsStandIn
from token_service.logs import JsonFormatter


@pytest.fixture(scope="session")
def idp() -> Iterator[DevIdP]:
    """The shared IdP: never restarted (tests that rotate keys start their own)."""
    with DevIdP(keys=generate_keys()) as provider:
        yield provider


@pytest.fixture
def own_idp() -> Iterator[DevIdP]:
    """An IdP of this test's own, free to be stopped or restarted with other keys."""
    with DevIdP(keys=generate_keys()) as provider:
        yield provider


@pytest.fixture(scope="session")
def service(idp: DevIdP) -> Iterator[RunningService]:
    with running(settings_for(config_dict(idp.issuer))) as svc:
        yield svc


@pytest.fixture(scope="session")
def rsa_key(idp: DevIdP) -> dict:
    return rsa(idp.keys)


@pytest.fixture(scope="session")
def ec_key(idp: DevIdP) -> dict:
    return next(k for k in idp.keys if k["alg"] == "ES256")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, shared; tests flush it and may kill/restart it."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """Three real masters with the slots split between them."""
    with RedisCluster(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session", autouse=True)
def suite_log() -> Iterator[Path]:
    """Every log line of the whole suite, as the service writes them (JSON), grepped at the end.

    No token, secret or cookie may appear in any of them: the session fails if one does.
    """
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "suite-log.jsonl"
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield path
    root.removeHandler(handler)
    root.setLevel(old_level)
    handler.close()
    text = path.read_text(encoding="utf-8")
    leaks = find_leaks(text)
    assert not leaks, f"{leaks} in the suite log: see {path}"


@pytest.fixture(scope="session")
def standin_server() -> Iterator[ConversationsStandIn]:
    """The Conversations Users API stand-in (validated against Twilio's OpenAPI description)."""
    with ConversationsStandIn(api_key_secret=TWILIO_SECRET) as server:
        yield server


@pytest.fixture
def standin(standin_server: ConversationsStandIn) -> Iterator[ConversationsStandIn]:
    """A clean stand-in for one test, which fails if any request or response broke the spec."""
    standin_server.reset()
    yield standin_server
    violations = standin_server.violations
    standin_server.reset()
    assert violations == []


@pytest.fixture(scope="module")
def stack() -> Iterator[BrowserStack]:
    """A dev IdP with the service's client, and the service with browser sign-in on (one per module)."""
    with browser_stack() as built:
        yield built
