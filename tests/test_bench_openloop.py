"""bench/openloop.c, the open-loop generator of ``make bench``, against a real HTTP server.

What the bench's numbers rest on: each refresh token is presented once and the next one is read from
the answer, the tokens left at the end are the live ones, and a server that closes every connection
(gunicorn's sync workers) is reconnected without losing a request. No timing is asserted.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.loadgen import Load, OpenLoop, build_openloop, read_lines, write_lines

pytestmark = pytest.mark.integration


class RotatingTokens:
    """A refresh-token server in miniature: a token is good once, and its answer names the next."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: set[str] = set()
        self.reused: list[str] = []
        self.requests = 0

    def first(self, count: int) -> list[str]:
        tokens = [secrets.token_urlsafe(16) for _ in range(count)]
        self.live.update(tokens)
        return tokens

    def rotate(self, token: str) -> str | None:
        with self.lock:
            self.requests += 1
            if token not in self.live:
                self.reused.append(token)
                return None
            self.live.remove(token)
            successor = secrets.token_urlsafe(16)
            self.live.add(successor)
            return successor


def serve(tokens: RotatingTokens, protocol: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = protocol  # HTTP/1.0: the server closes after every answer, as sync workers do

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            successor = tokens.rotate(json.loads(body)["refresh_token"])
            answer = json.dumps({"access_token": "x", "refresh_token": successor}).encode()
            self.send_response(200 if successor else 400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def openloop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_openloop(tmp_path_factory.mktemp("openloop"))


@pytest.fixture(params=["HTTP/1.1", "HTTP/1.0"])
def rotating(request: pytest.FixtureRequest) -> Iterator[tuple[RotatingTokens, str, str]]:
    tokens = RotatingTokens()
    server = serve(tokens, request.param)
    yield tokens, f"127.0.0.1:{server.server_address[1]}", request.param
    server.shutdown()
    server.server_close()


def test_openloop_presents_every_refresh_token_once_and_keeps_the_live_ones(
    openloop: Path, rotating: tuple[RotatingTokens, str, str], tmp_path: Path
) -> None:
    tokens, address, protocol = rotating
    items = write_lines(tmp_path / "tokens.txt", tokens.first(20))
    leftover = tmp_path / "leftover.txt"
    load = Load("POST", "/refresh", headers=("Content-Type: application/json",), body='{"refresh_token":"{}"}',
                items=items, chain="refresh_token", leftover=leftover)

    result = OpenLoop(openloop, connections=4, warmup=0.2, drain=5).run(address, load, rate=100, duration=1)

    assert tokens.reused == []
    assert result.sent == tokens.requests == result.completed
    assert (result.errors, result.non_2xx, result.starved, result.unfinished) == (0, 0, 0, 0)
    assert set(read_lines(leftover)) == tokens.live  # every answer arrived, so the unused are all the live
    if protocol == "HTTP/1.0":
        assert result.connects == result.sent  # one connection per request, none lost
    else:
        assert result.connects <= 4


def test_openloop_counts_a_refused_token_as_a_failed_answer(
    openloop: Path, rotating: tuple[RotatingTokens, str, str], tmp_path: Path
) -> None:
    tokens, address, _ = rotating
    tokens.first(5)
    items = write_lines(tmp_path / "tokens.txt", ["never-issued"] + sorted(tokens.live))
    load = Load("POST", "/refresh", body='{"refresh_token":"{}"}', items=items, chain="refresh_token")

    result = OpenLoop(openloop, connections=2, warmup=0, drain=5).run(address, load, rate=50, duration=0.5)

    assert tokens.reused == ["never-issued"]
    assert result.non_2xx == 1
    assert result.answered == result.completed - 1
