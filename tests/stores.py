"""Store backends for the contract suite: fresh state per test, real servers started once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from token_service.store.base import Store
from token_service.store.memory import MemoryStore
from token_service.store.redis import RedisStore


@contextmanager
def make_store(kind: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    if kind == "memory":
        yield MemoryStore()
        return
    if kind == "redis":
        server = request.getfixturevalue("redis_server")
        client = server.client(decode_responses=True)
        client.flushall()
        store = RedisStore(client)
    else:
        cluster = request.getfixturevalue("redis_cluster")
        client = cluster.client(decode_responses=True)
        client.flushall(target_nodes="primaries")
        store = RedisStore(client, cluster=True)
    try:
        yield store
    finally:
        store.close()
