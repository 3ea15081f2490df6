"""The shipped gevent workers: one worker runs many requests at once, over a bounded Redis pool."""

from __future__ import annotations

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
