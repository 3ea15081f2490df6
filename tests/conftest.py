"""Shared fixtures: one real oidc-provider for the session, and the service in front of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devidp.harness import DevIdP, generate_keys
from tests.redis_servers import RedisCluster, RedisServer
from tests.support import RunningService, config_dict, running, settings_for


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
    return next(k for k in idp.keys if k["alg"] == "RS256")


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
