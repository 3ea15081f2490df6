"""The shipped gevent workers: one worker runs many requests at once, over a bounded Redis pool."""

from __future__ import annotations

import contextlib
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from devidp.harness import DevIdP
from tests.gunicorn_support import dev_config, gunicorn
from tests.redis_servers import RedisServer
from tests.support import forge, id_claims

pytestmark = pytest.mark.integration

AT_ONCE = 48
POOL = 2


def service_connections(redis_server: RedisServer) -> int:
    """Connections Redis holds, besides the one asking."""
    with redis_server.client() as client:
        return len(client.client_list()) - 1


def test_more_requests_at_once_than_pooled_redis_connections_wait_for_one(
    idp: DevIdP, redis_server: RedisServer, rsa_key: dict, tmp_path: Path
) -> None:
    """redis-py refuses a call past ``max_connections`` ("Too many connections"); a gevent worker runs
    every request it has accepted at once, so its calls wait for a pooled connection instead: all 200."""
    redis_server.flush()
    url = redis_server.url()
    config = dev_config(tmp_path, idp.issuer, store_url=url)
    config.write_text(config.read_text().replace(f'url = "{url}"', f'url = "{url}"\nmax_connections = {POOL}'))
    tokens = [forge(rsa_key, id_claims(idp.issuer, sub=f"user-{i}", email=f"user{i}@example.com"))
              for i in range(AT_ONCE)]
    baseline = service_connections(redis_server)

    def mint(token: str) -> int:
        with requests.Session() as session:
            return session.post(f"{served.url}/v1/token", headers={"Authorization": f"Bearer {token}"},
                                timeout=30).status_code

    with gunicorn(config, workers=1) as served:
        with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
            statuses = list(pool.map(mint, tokens))
        opened = service_connections(redis_server) - baseline
    assert statuses == [200] * AT_ONCE
    assert 1 <= opened <= POOL
    messages = [line["msg"] for line in served.lines if line["logger"] == "gunicorn.error"]
    assert "Using worker: gevent" in messages


def answers_in(sock: socket.socket) -> int:
    """How many complete answers to ``GET /healthz`` have arrived on ``sock`` so far (without waiting)."""
    sock.setblocking(False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    return data.count(b"HTTP/1.1 200")


def one_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer (headers and Content-Length body) from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_client_with_requests_queued_does_not_keep_the_worker_from_the_others(
    idp: DevIdP, tmp_path: Path
) -> None:
    """A greenlet reads a kept-alive connection's next request without yielding when it is already
    there: 200 pipelined requests would all be answered before another client's one. The worker
    yields after each answer, so the other client is answered while most of them still wait."""
    host, pipelined = "127.0.0.1", 200
    request = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
    with gunicorn(dev_config(tmp_path, idp.issuer), workers=1) as served:
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection((host, port)) as busy, socket.create_connection((host, port)) as other:
            busy.sendall(request)  # both connections accepted and served once
            other.sendall(request)
            one_answer(other)
            one_answer(busy)
            busy.setblocking(True)
            busy.sendall(request * pipelined)
            other.sendall(request)
            other.settimeout(30)
            assert one_answer(other).startswith(b"HTTP/1.1 200")
            assert answers_in(busy) < pipelined // 2
