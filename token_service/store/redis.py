"""Redis backend: standalone, TLS, ACL users, Sentinel or Cluster, with Lua for atomicity.

Every request-path operation is one ``EVALSHA`` (one round trip): the rate-limit buckets and the
family work run in the same script. Keys of one identity's families, its index and its identity
and family buckets share the hash tag ``{<identity tag>}``, so they live in one Cluster slot. A
client-IP bucket has its own tag; on a Cluster it is therefore checked by a separate script just
before (two round trips there; one on standalone and Sentinel). Redis errors become
``StoreUnavailable`` here and nowhere else.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, TypeVar

import hiredis
import orjson
import redis
from redis._parsers import BaseParser
from redis.commands.core import Script

from token_service.pid import current_pid
from token_service.store.base import (
    Bucket,
    BucketState,
    Family,
    FamilyLifetimes,
    Issued,
    LimitDecision,
    Revocation,
    Rotation,
    Store,
    StoreUnavailable,
    family_ref,
)

log = logging.getLogger(__name__)
MAX_USED_DIGESTS = 256
_FAMILY_FIELDS = ("identity", "role", "role_sid", "issuer", "subject", "session_id")
T = TypeVar("T")


def _source(name: str) -> str:
    lua = resources.files("token_service.store").joinpath("lua")
    return lua.joinpath("gcra.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()


def _decision(outcome: str, retry: Any, flat: Sequence[Any], buckets: Sequence[Bucket]) -> LimitDecision:
    states = [
        BucketState(b.policy, b.limit, b.window, int(flat[2 * i]), int(flat[2 * i + 1]))
        for i, b in enumerate(buckets)
    ]
    return LimitDecision(allowed=outcome != "limited", retry_after=int(retry), states=states)


def _family(tag: str, family_id: str, meta: str) -> Family:
    fields = orjson.loads(meta)  # written by _meta, never by a caller
    return Family(family_id=family_id, tag=tag, **{k: fields.get(k, "") for k in _FAMILY_FIELDS})


def _meta(family: Family) -> str:
    """The family's description as one JSON field: one argument in, one string out."""
    return orjson.dumps({k: getattr(family, k) for k in _FAMILY_FIELDS}).decode()


_READ_SIZE = 65536


def _blocking_socket(connection: Any) -> socket.socket | None:
    """The connection's plain socket, made blocking with its timeouts kept by the kernel; None for TLS.

    A socket with a Python-level timeout polls before every send and every receive, and each of
    those calls releases the GIL: under gunicorn's threads, a hand-off to another thread and back.
    Blocking calls bounded by ``SO_SNDTIMEO``/``SO_RCVTIMEO`` make one system call each, and a
    timeout still ends them (``EAGAIN``). TLS sockets keep redis-py's own path.
    """
    sock = getattr(connection, "_sock", None)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return None
    timeout = connection.socket_timeout
    if timeout:
        whole = int(timeout)
        micros = max(1, round((timeout - whole) * 1_000_000)) if timeout > whole else 0  # 0 s 0 µs: none
        timeval = struct.pack("ll", whole, micros)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    sock.settimeout(None)
    return sock


class _ThreadConnection:
    """One thread's connection to Redis, and its round trip: send one command, read one reply."""

    def __init__(self, pool: Any) -> None:
        # The pool's class and options: TLS, ACL user, Sentinel master lookup, timeouts.
        self.connection = pool.connection_class(**pool.connection_kwargs)
        encoder = self.connection.encoder
        # As redis-py sets up its own hiredis reader: its error classes (NOSCRIPT -> NoScriptError,
        # READONLY, ...) and the client's decoding.
        self._reader_options: dict[str, Any] = {
            "protocolError": redis.exceptions.InvalidResponse,
            "replyError": BaseParser.parse_error,
            "errors": encoder.encoding_errors,
        }
        if encoder.decode_responses:
            self._reader_options["encoding"] = encoder.encoding
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def round_trip(self, packed: bytes) -> Any:
        connection = self.connection
        if not connection.is_connected:
            # Through connect(): a Sentinel-managed connection looks the master up there.
            connection.connect()
            self._sock = _blocking_socket(connection)
            self._reader = hiredis.Reader(**self._reader_options) if self._sock is not None else None
        sock, reader = self._sock, self._reader
        if sock is None:  # TLS
            connection.send_packed_command([packed], check_health=False)
            return connection.read_response()
        try:
            sock.sendall(packed)
            reply: Any = False  # hiredis's "not a whole reply yet"
            while reply is False:
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
        except BlockingIOError:  # SO_SNDTIMEO / SO_RCVTIMEO ran out
            raise redis.TimeoutError("Timeout talking to Redis") from None
        except OSError as exc:
            raise redis.ConnectionError(f"Error talking to Redis: {exc}") from None
        if isinstance(reply, redis.ResponseError):
            raise reply  # as redis-py's parser raises an error reply
        return reply

    def disconnect(self) -> None:
        self.connection.disconnect()
        self._sock = self._reader = None  # a half-read reply goes with them


class PinnedScripts:
    """``EVALSHA`` over a connection of the calling thread's own: the request path's round trip.

    redis-py's generic command path (pool checkout and return, retry wrapper, command lookup)
    costs more CPU than the round trip itself, on every request. A connection that belongs to one
    thread needs none of it: the command is packed by hiredis, sent with one ``sendall`` and its
    reply parsed by a hiredis reader (see ``_blocking_socket``). Connections are made again after a
    fork (gunicorn preloads the app), and close when their thread ends. The failure policy is the
    client's: a dropped connection is retried once on a fresh one, a timeout is not (the script may
    have run); a script Redis has forgotten (a restart) is loaded again.
    """

    def __init__(self, client: Any, scripts: dict[str, Script]) -> None:
        self._client = client
        self._pool = client.connection_pool
        self._scripts = scripts  # redis-py's registered scripts: their SHA1 and their source
        self._local = threading.local()

    def _connection(self) -> _ThreadConnection:
        local = self._local
        pid = current_pid()
        if getattr(local, "pid", None) != pid:
            local.connection = _ThreadConnection(self._pool)
            local.pid = pid
        return local.connection  # type: ignore[no-any-return]

    def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        connection = self._connection()
        # hiredis packs str and int arguments itself, in C (redis-py would re-encode each first).
        script = self._scripts[name]
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        for attempt in (1, 2):
            try:
                return connection.round_trip(packed)
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self._client.script_load(script.script)
            except redis.ConnectionError:
                connection.disconnect()
                if attempt == 2:
                    raise
            except redis.ResponseError:
                raise  # the reply was read whole: the connection stays usable
            except BaseException:
                connection.disconnect()  # a timeout or an interruption mid-reply
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.disconnect()


class RedisStore(Store):
    def __init__(self, client: Any, *, prefix: str = "ts:", cluster: bool = False) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self._scripts: dict[str, Script] = {
            name: client.register_script(_source(name))
            for name in ("limit", "issue", "rotate", "revoke", "revoke_identity", "link", "revoke_family")
        }
        # A Cluster routes each call by slot: it keeps redis-py's own path.
        self._pinned = None if cluster else PinnedScripts(client, self._scripts)

    # -- keys -------------------------------------------------------------------------------
    def bucket_key(self, b: Bucket) -> str:
        return f"{self.prefix}{{{b.tag}}}:rl:{b.policy}:{b.key}"

    def family_key(self, tag: str, family_id: str) -> str:
        return f"{self.prefix}{{{tag}}}:fam:{family_id}"

    def index_key(self, tag: str) -> str:
        return f"{self.prefix}{{{tag}}}:idx"

    def active_key(self, month: str) -> str:
        return f"{self.prefix}active:{month}"

    def _active_keys(self, month: str) -> list[str]:
        """The HyperLogLog joins the request's script, except on a Cluster (another slot)."""
        return [self.active_key(month)] if month and not self.cluster else []

    def _count_active_apart(self, month: str, tag: str) -> None:
        if month and self.cluster:
            key = self.active_key(month)
            self._call(lambda: self.client.pfadd(key, tag))

    # -- plumbing ---------------------------------------------------------------------------
    @staticmethod
    def _unavailable(exc: redis.RedisError) -> StoreUnavailable:
        log.warning("store error: %s: %s", type(exc).__name__, exc)
        return StoreUnavailable(type(exc).__name__)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _run(self, name: str, buckets: Sequence[Bucket], keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One script: the buckets' keys and (limit, window) pairs first, then the script's own."""
        bucket_args: list[Any] = [len(buckets)]
        for b in buckets:
            bucket_args += (b.limit, b.window)
        all_keys = [*map(self.bucket_key, buckets), *keys]
        pinned = self._pinned
        try:  # inline rather than through _call: this is every request's path
            if pinned is not None:
                return pinned.run(name, all_keys, [*bucket_args, *args])
            return self._scripts[name](keys=all_keys, args=[*bucket_args, *args])
        except redis.RedisError as exc:
            raise self._unavailable(exc) from None

    def _limit_by_slot(self, buckets: Sequence[Bucket]) -> LimitDecision:
        """One limit script per hash tag (a Cluster slot); stop at the first refusal."""
        decision = LimitDecision()
        for tag in dict.fromkeys(b.tag for b in buckets):
            decision = decision.merged(self._limit([b for b in buckets if b.tag == tag]))
            if not decision.allowed:
                break
        return decision

    def _split(self, buckets: Sequence[Bucket], tag: str) -> tuple[LimitDecision, list[Bucket]]:
        """On a Cluster, check buckets of other slots first; return the decision and the rest."""
        if not self.cluster:
            return LimitDecision(), list(buckets)
        return self._limit_by_slot([b for b in buckets if b.tag != tag]), [b for b in buckets if b.tag == tag]

    def _limit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        outcome, retry, flat = self._run("limit", buckets, [], [])
        return _decision(outcome, retry, flat, buckets)

    # -- Store ------------------------------------------------------------------------------
    def hit(self, buckets: Sequence[Bucket]) -> LimitDecision:
        if not buckets:
            return LimitDecision()
        return self._limit_by_slot(buckets) if self.cluster else self._limit(buckets)

    def issue(self, buckets: Sequence[Bucket], family: Family, digest: str,
              lifetimes: FamilyLifetimes, month: str = "", links: Sequence[str] = ()) -> Issued:
        first, rest = self._split(buckets, family.tag)
        if not first.allowed:
            return Issued(first)
        fam = self.family_key(family.tag, family.family_id)
        hll = self._active_keys(month)
        # Logout indexes live in other slots: inside the script on standalone, apart on a Cluster.
        inline_links = [] if self.cluster else [self.prefix + index for index in links]
        member = family_ref(family.tag, family.family_id)
        reply = self._run(
            "issue", rest, [fam, fam + ":live", self.index_key(family.tag), *hll, *inline_links],
            [family.family_id, digest, lifetimes.idle, lifetimes.absolute, family.tag, family.identity,
             _meta(family), len(hll), member],
        )
        limits = first.merged(_decision(reply[0], reply[1], reply[2], rest))
        if not limits.allowed:
            return Issued(limits)
        self._count_active_apart(month, family.tag)
        if self.cluster:
            for index in links:
                self.link(index, member, lifetimes.absolute)
        return Issued(limits, expires_at=int(reply[4]))

    def rotate(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str,
               new_digest: str, lifetimes: FamilyLifetimes, month: str = "") -> Rotation:
        first, rest = self._split(buckets, tag)
        if not first.allowed:
            return Rotation("limited", first)
        fam = self.family_key(tag, family_id)
        reply = self._run(
            "rotate", rest, [fam, fam + ":live", fam + ":used", *self._active_keys(month)],
            [presented, new_digest, lifetimes.idle, lifetimes.reuse_grace, MAX_USED_DIGESTS, tag],
        )
        outcome = reply[0]
        if outcome in ("rotated", "grace"):
            self._count_active_apart(month, tag)
        limits = first.merged(_decision(outcome, reply[1], reply[2], rest))
        family = _family(tag, family_id, reply[3]) if len(reply) > 3 and reply[3] else None
        expires_at = int(reply[4]) if len(reply) > 4 else 0
        return Rotation(outcome, limits, family, expires_at)

    def revoke(self, buckets: Sequence[Bucket], tag: str, family_id: str, presented: str) -> Revocation:
        first, rest = self._split(buckets, tag)
        if not first.allowed:
            return Revocation(first)
        fam = self.family_key(tag, family_id)
        reply = self._run("revoke", rest, [fam, fam + ":live", fam + ":used"], [presented])
        limits = first.merged(_decision(reply[0], reply[1], reply[2], rest))
        family = _family(tag, family_id, reply[3]) if len(reply) > 3 and reply[3] else None
        return Revocation(limits, revoked=reply[0] == "revoked", family=family)

    def revoke_identity(self, tag: str, identity: str) -> int:
        script = self._scripts["revoke_identity"]
        prefix = self.family_key(tag, "")
        return int(self._call(lambda: script(keys=[self.index_key(tag)], args=[prefix, identity])))

    def put(self, key: str, value: str, ttl: int) -> None:
        self._call(lambda: self.client.set(self.prefix + key, value, ex=ttl))

    def get(self, key: str) -> str | None:
        return self._call(lambda: self.client.get(self.prefix + key))  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        self._call(lambda: self.client.delete(self.prefix + key))

    def add_once(self, key: str, ttl: int) -> bool:
        return bool(self._call(lambda: self.client.set(self.prefix + key, "1", ex=ttl, nx=True)))

    def link(self, index: str, member: str, ttl: int) -> None:
        script = self._scripts["link"]
        self._call(lambda: script(keys=[self.prefix + index], args=[member, ttl]))

    def members(self, index: str) -> list[str]:
        return sorted(self._call(lambda: self.client.smembers(self.prefix + index)))

    def revoke_families(self, refs: Sequence[tuple[str, str]]) -> int:
        script = self._scripts["revoke_family"]
        count = 0
        for tag, family_id in refs:  # one slot each: a Cluster routes every call on its own
            fam = self.family_key(tag, family_id)
            count += int(self._call(lambda fam=fam: script(keys=[fam, fam + ":live"], args=["logout"])))
        return count

    def active_identities(self, month: str) -> int:
        key = self.active_key(month)
        return int(self._call(lambda: self.client.pfcount(key)))

    def ping(self) -> float:
        started = time.perf_counter()
        self._call(self.client.ping)
        return time.perf_counter() - started

    def close(self) -> None:
        try:
            if self._pinned is not None:
                self._pinned.close()
            self.client.close()
        except redis.RedisError:  # pragma: no cover - closing a dead connection
            pass
