"""Store selection by URL (``memory://``, ``redis://``, ``rediss://``, ``redis+sentinel://``,
``redis+cluster://``, ``unix://``), the way the ``limits`` library picks its storage."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from token_service.settings import Settings, StoreSettings
from token_service.store.base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store"]


def _hosts(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``h1:p1,h2:p2`` (user info dropped) as (host, port) pairs."""
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        parsed = urlsplit("//" + item)
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or default_port))
    return hosts


def _connection_options(store: StoreSettings, password: str | None) -> dict[str, Any]:
    """What every Redis connection gets: short timeouts, one retry on a dropped connection."""
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    options: dict[str, Any] = {
        "socket_connect_timeout": store.connect_timeout,
        "socket_timeout": store.socket_timeout,
        # A pooled connection may be dead after a Redis restart: retry once on a fresh one.
        # Timeouts are not retried: the script may have run, and a rerun could look like reuse.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        "decode_responses": True,
        # RESP2: no HELLO handshake, and hiredis (when installed) parses every reply in C.
        "protocol": 2,
        # No CLIENT SETINFO on connect: one round trip less for every new connection.
        "driver_info": None,
    }
    if password:
        options["password"] = password
    if store.username:
        options["username"] = store.username
    return options


def _slots(store: StoreSettings) -> dict[str, Any]:
    """At most ``max_connections`` calls at once, each waiting up to one socket timeout for its turn."""
    return {"max_connections": store.max_connections, "wait": store.socket_timeout}


def _tls_options(store: StoreSettings) -> dict[str, Any]:
    return {
        "ssl": True,
        "ssl_ca_certs": store.tls_ca_file,
        "ssl_certfile": store.tls_cert_file,
        "ssl_keyfile": store.tls_key_file,
    }


def open_store(settings: Settings) -> Store:
    """The configured backend, wrapped so every call is timed and every failure counted."""
    from token_service.store.instrumented import InstrumentedStore

    return InstrumentedStore(_open_backend(settings))


def _open_backend(settings: Settings) -> Store:
    store = settings.store
    if store.is_memory:
        from token_service.store.memory import MemoryStore

        return MemoryStore()

    import redis
    from redis.cluster import ClusterNode
    from redis.sentinel import Sentinel

    from token_service.store.redis import RedisStore

    secret = settings.secrets.redis_password
    options = _connection_options(store, secret.get_secret_value() if secret else None)
    parts = urlsplit(store.url)
    if parts.username and not store.username:
        options["username"] = unquote(parts.username)
    tls = store.tls or parts.scheme == "rediss"
    if parts.scheme == "redis+cluster":
        if tls:
            options.update(_tls_options(store))
        nodes = [ClusterNode(h, p) for h, p in _hosts(parts.netloc, 6379)]

        def connect() -> redis.RedisCluster:
            return redis.RedisCluster(startup_nodes=nodes, max_connections=store.max_connections, **options)

        return RedisStore(connect=connect, prefix=store.key_prefix, cluster=True, **_slots(store))
    if parts.scheme == "redis+sentinel":
        service, _, db = parts.path.strip("/").partition("/")
        if tls:
            options.update(_tls_options(store))
        # The sentinels get the same timeouts and TLS as the master, and their own password if set.
        sentinel_options = {k: v for k, v in options.items() if k.startswith(("socket_", "ssl", "retry"))}
        sentinel_secret = settings.secrets.redis_sentinel_password
        if sentinel_secret:
            sentinel_options["password"] = sentinel_secret.get_secret_value()
        sentinel = Sentinel(_hosts(parts.netloc, 26379), sentinel_kwargs=sentinel_options, **options)
        client = sentinel.master_for(service, db=int(db or 0), max_connections=store.max_connections)
        return RedisStore(client, prefix=store.key_prefix, **_slots(store))
    if tls and parts.scheme == "rediss":
        options.update({k: v for k, v in _tls_options(store).items() if k != "ssl"})
    client = redis.Redis.from_url(store.url, max_connections=store.max_connections, **options)
    return RedisStore(client, prefix=store.key_prefix, **_slots(store))
