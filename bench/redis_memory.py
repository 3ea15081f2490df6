"""Redis bytes per live refresh family, read from Redis itself (MEMORY USAGE, MEMORY STATS, INFO memory).

Measured on the bench's own Redis before any load, through the real endpoints: ``families`` new
families (``per_identity`` of them per identity), then every family refreshed ``refreshes`` times,
one token after the other as a client does. Rate-limit buckets (keys that expire within the
rate-limit window) are deleted before each reading: they go a minute after a family's last request,
while the family lives for days. A few families are issued before the first reading, so what Redis
creates once (a HyperLogLog of active identities, the scripts) is not charged to the families measured.

The judged figure is what the keys hold: the ``MEMORY USAGE`` of every key summed (key, value and
its entry in the key table), plus each new key's share of the database's key tables (``MEMORY STATS``,
``overhead.hashtable.main`` and ``.expires`` over the keys), per family. The keys are never named or
parsed, so it holds for any store layout. ``used_memory``'s delta (less client buffers and cached
scripts) is given beside it, but it does not judge: it also moves with allocations outside the keys
(connections opened by the refresh threads, a key table doubling), and the same 500 families read
from 240 to 490 bytes each by it, in one Redis, while their keys did not change.

For one identity, the ``MEMORY USAGE`` summed over every key is read by difference: what its first
family adds (with the identity's own keys), what a second family adds (whether new keys or fields of
the identity's), and that second family after the refreshes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
import requests

from bench.pools import issue_refresh_tokens
from bench.procs import BenchError

BUCKET_TTL_MS = 60_000  # the bench's rate-limit window: a key expiring sooner is a bucket
REFRESH_THREADS = 4
WARMUP_FAMILIES = 20  # issued first, so one-off structures (scripts, a HyperLogLog) are not counted per family


@dataclass(frozen=True)
class Keyspace:
    """One reading of what the keys of the client's database hold."""

    usage: int  # MEMORY USAGE summed over every key
    keys: int
    tables_per_key: float  # the database's key tables (main and expires) over its keys

    def per_family(self, before: Keyspace, families: int) -> float:
        """Bytes per family since ``before``: the keys' usage, and the new keys' share of the tables."""
        return (self.usage - before.usage + self.tables_per_key * (self.keys - before.keys)) / families


@dataclass(frozen=True)
class MemoryReport:
    families: int
    per_identity: int
    refreshes: int
    fresh_bytes: float  # the keys' bytes per family (see the module docstring), right after issue
    refreshed_bytes: float  # ... after every family was refreshed `refreshes` times
    fresh_used_memory: float  # used_memory delta per family, right after issue
    refreshed_used_memory: float  # ... after the refreshes
    keys_per_family: float
    identity_first_family: int  # MEMORY USAGE added by an identity with its first family
    further_family: int  # ... by a second family of that identity, fresh
    further_family_refreshed: int  # ... that family after `refreshes` refreshes
    buckets_deleted: int


def refresh_chain(base_url: str, token: str, times: int) -> str:
    """Refresh ``times`` times, each with the token the previous answer gave; the last token back."""
    with requests.Session() as session:
        for _ in range(times):
            resp = session.post(f"{base_url}/v1/token/refresh", json={"refresh_token": token}, timeout=10)
            if resp.status_code != 200:
                raise BenchError(f"POST /v1/token/refresh answered {resp.status_code}: {resp.text[:300]}")
            token = resp.json()["refresh_token"]
    return token


class RedisMemory:
    """Readings of one Redis: used memory, its keys, and what the keys of a set use."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def drop_buckets(self) -> int:
        """Delete keys that expire within the rate-limit window; how many there were."""
        short = [key for key in self.client.scan_iter(count=1000)
                 if 0 <= self.client.pttl(key) <= BUCKET_TTL_MS]
        if short:
            self.client.delete(*short)
        return len(short)

    def used(self) -> int:
        """``used_memory`` less the client buffers and the cached scripts: the data and its keyspace
        overhead, without what depends on how many connections are open or which scripts ran."""
        info = self.client.info("memory")
        return int(info["used_memory"]) - int(info["mem_clients_normal"]) - int(info["used_memory_scripts"])

    def keyspace(self) -> Keyspace:
        keys = self.keys()
        db = self.client.get_connection_kwargs().get("db", 0)
        tables = self.client.memory_stats().get(f"db.{db}", {})
        overhead = int(tables.get("overhead.hashtable.main", 0)) + int(tables.get("overhead.hashtable.expires", 0))
        return Keyspace(self.usage(keys), len(keys), overhead / len(keys) if keys else 0.0)

    def keys(self) -> set[bytes]:
        return set(self.client.scan_iter(count=1000))

    def usage(self, keys: Iterable[bytes]) -> int:
        return sum(self.client.memory_usage(key, samples=0) or 0 for key in keys)


def needed_identities(families: int, per_identity: int) -> int:
    """The families' identities, one more for the lone family, and the warm-up's."""
    return -(-families // per_identity) + 1 + WARMUP_FAMILIES


def measure(
    client: redis.Redis,
    base_url: str,
    id_tokens: Sequence[str],
    families: int,
    per_identity: int,
    refreshes: int,
    log: Callable[[str], None],
) -> MemoryReport:
    """See the module docstring. ``id_tokens`` are of distinct identities, not yet used on this Redis."""
    identities = -(-families // per_identity)
    if len(id_tokens) < needed_identities(families, per_identity):
        raise BenchError(f"the Redis memory reading needs {needed_identities(families, per_identity)} identities; "
                         "raise BENCH_POOL")
    memory = RedisMemory(client)
    issue_refresh_tokens(base_url, id_tokens[identities + 1:][:WARMUP_FAMILIES])
    deleted = memory.drop_buckets()
    before, used_before = memory.keyspace(), memory.used()
    log(f"redis memory: issuing {families} families ({per_identity} per identity)")
    sources = [id_tokens[i % identities] for i in range(families)]
    tokens = issue_refresh_tokens(base_url, sources)
    deleted += memory.drop_buckets()
    fresh, used_fresh = memory.keyspace(), memory.used()
    log(f"redis memory: refreshing each family {refreshes} times")
    with ThreadPoolExecutor(REFRESH_THREADS) as pool:
        list(pool.map(lambda token: refresh_chain(base_url, token, refreshes), tokens))
    deleted += memory.drop_buckets()
    refreshed, used_refreshed = memory.keyspace(), memory.used()

    # One identity by difference of MEMORY USAGE over every key: its first family, then a second one
    # (which may only grow keys the first made), then that family refreshed.
    lone = id_tokens[identities]
    memory.drop_buckets()
    start = memory.usage(memory.keys())
    issue_refresh_tokens(base_url, [lone])
    memory.drop_buckets()
    first = memory.usage(memory.keys())
    (token,) = issue_refresh_tokens(base_url, [lone])
    memory.drop_buckets()
    second = memory.usage(memory.keys())
    refresh_chain(base_url, token, refreshes)
    memory.drop_buckets()
    return MemoryReport(
        families=families,
        per_identity=per_identity,
        refreshes=refreshes,
        fresh_bytes=fresh.per_family(before, families),
        refreshed_bytes=refreshed.per_family(before, families),
        fresh_used_memory=(used_fresh - used_before) / families,
        refreshed_used_memory=(used_refreshed - used_before) / families,
        keys_per_family=(fresh.keys - before.keys) / families,
        identity_first_family=first - start,
        further_family=second - first,
        further_family_refreshed=memory.usage(memory.keys()) - first,
        buckets_deleted=deleted,
    )
