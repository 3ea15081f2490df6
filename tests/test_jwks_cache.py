"""The JWKS cache's rules on a controlled clock, with keys from a real JWKS file."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from devidp.harness import generate_keys, public_jwks
from token_service.authn.jwks import FileKeySource, JwksCache, KeyNotFound, KeysUnavailable

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingSource(FileKeySource):
    """A file source that counts reads, and can be made to fail like an unreachable IdP."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.reads = 0
        self.gate = threading.Event()
        self.gate.set()

    def fetch(self):  # type: ignore[no-untyped-def]
        self.reads += 1
        self.gate.wait(5)
        return super().fetch()


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(public_jwks(generate_keys())))
    return path


def kid_of(path: Path, kty: str) -> str:
    return next(k["kid"] for k in json.loads(path.read_text())["keys"] if k["kty"] == kty)


def make(path: Path, clock: Clock, **kw: float) -> tuple[JwksCache, CountingSource]:
    source = CountingSource(path)
    opts = {"ttl": 60, "cooldown": 10, "max_stale": 300, **kw}
    return JwksCache(source, clock=clock, **opts), source


def test_keys_are_fetched_once_and_matched_to_the_algorithm(jwks_file: Path) -> None:
    cache, source = make(jwks_file, Clock())
    rsa, ec = kid_of(jwks_file, "RSA"), kid_of(jwks_file, "EC")
    assert cache.get_key(rsa, "RS256") is not None
    assert cache.get_key(ec, "ES256") is not None
    assert source.reads == 1
    with pytest.raises(KeyNotFound, match="does not fit"):
        cache.get_key(rsa, "ES256")
    with pytest.raises(KeyNotFound, match="does not fit"):
        cache.get_key(ec, "ES384")


def test_unknown_kid_refetches_after_cooldown_and_is_then_remembered(jwks_file: Path) -> None:
    clock = Clock()
    cache, source = make(jwks_file, clock)
    cache.get_key(kid_of(jwks_file, "RSA"), "RS256")
    for _ in range(20):  # inside the cooldown: no fetch at all
        with pytest.raises(KeyNotFound):
            cache.get_key("nope", "RS256")
    assert source.reads == 1
    clock.now += 11
    with pytest.raises(KeyNotFound):
        cache.get_key("nope", "RS256")
    assert source.reads == 2
    clock.now += 11
    with pytest.raises(KeyNotFound):
        cache.get_key("nope", "RS256")  # remembered as bad: no fetch
    assert source.reads == 2
    assert cache.status()["fetches"] == 2


def test_kid_that_appears_after_rotation_is_found(jwks_file: Path) -> None:
    clock = Clock()
    cache, source = make(jwks_file, clock)
    cache.get_key(kid_of(jwks_file, "RSA"), "RS256")
    jwks_file.write_text(json.dumps(public_jwks(generate_keys())))
    new_kid = kid_of(jwks_file, "RSA")
    with pytest.raises(KeyNotFound):
        cache.get_key(new_kid, "RS256")  # within the cooldown: not fetched, not marked bad
    clock.now += 11
    assert cache.get_key(new_kid, "RS256") is not None


def test_stale_keys_serve_until_max_stale_then_unavailable(jwks_file: Path) -> None:
    clock = Clock()
    cache, source = make(jwks_file, clock, ttl=60, max_stale=300)
    kid = kid_of(jwks_file, "RSA")
    cache.get_key(kid, "RS256")
    jwks_file.unlink()  # the IdP is gone
    clock.now += 100
    assert cache.get_key(kid, "RS256") is not None
    assert cache.status()["state"] == "stale"
    clock.now += 250
    with pytest.raises(KeysUnavailable):
        cache.get_key(kid, "RS256")
    assert cache.status()["state"] == "expired" and not cache.status()["usable"]


def test_single_flight_across_threads(jwks_file: Path) -> None:
    cache, source = make(jwks_file, Clock())
    source.gate.clear()  # the first fetch hangs until released
    errors: list[Exception] = []

    def lookup() -> None:
        try:
            cache.get_key(kid_of(jwks_file, "RSA"), "RS256")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=lookup) for _ in range(20)]
    for t in threads:
        t.start()
    source.gate.set()
    for t in threads:
        t.join()
    assert errors == [] and source.reads == 1


def test_no_kid_only_with_a_single_published_key(tmp_path: Path, jwks_file: Path) -> None:
    cache, _ = make(jwks_file, Clock())
    with pytest.raises(KeyNotFound):
        cache.get_key(None, "RS256")
    single = tmp_path / "one.json"
    rsa = [k for k in json.loads(jwks_file.read_text())["keys"] if k["kty"] == "RSA"]
    single.write_text(json.dumps({"keys": rsa}))
    one, _ = make(single, Clock())
    assert one.get_key(None, "RS256") is not None


@pytest.mark.parametrize("document", [[], {"keys": "x"}, {"keys": []}, {"keys": [{"kty": "oct", "k": "AA"}]}])
def test_unusable_documents_leave_the_cache_unloaded(tmp_path: Path, document: object) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    cache, _ = make(path, Clock())
    with pytest.raises(KeysUnavailable):
        cache.get_key("k", "RS256")
    assert cache.status()["state"] == "not_loaded" and cache.status()["last_error"]
