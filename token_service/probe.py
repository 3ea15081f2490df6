"""``token-service check-config --probe``: contact what the configuration names, say how it answered.

Each issuer's keys are fetched through the same key cache the service uses (OIDC discovery then the
JWKS, or ``jwks_uri``, or ``jwks_file``), and the store answers one ``PING``. Each line reports
reachability, key state and latency. Nothing is written anywhere.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from token_service.authn.bearer import cache_for
from token_service.settings import IssuerSettings, Settings
from token_service.store import StoreUnavailable, open_store


class Probe(NamedTuple):
    what: str
    ok: bool
    detail: str
    latency_ms: float

    def line(self) -> str:
        return f"probe: {self.what}: {self.detail} ({self.latency_ms:.1f} ms)"


def probe_store(settings: Settings) -> Probe:
    what = f"store {settings.store.url.split('://')[0]}://"
    started = time.perf_counter()
    store = open_store(settings)
    try:
        store.ping()
        return Probe(what, True, "reachable, PING answered" if not settings.store.is_memory
                     else "in-process memory store, nothing to contact", _ms(started))
    except StoreUnavailable as exc:
        return Probe(what, False, f"unreachable: {exc}", _ms(started))
    finally:
        store.close()


def probe_issuer(issuer: IssuerSettings) -> Probe:
    cache = cache_for(issuer)
    started = time.perf_counter()
    cache.refresh(respect_cooldown=False)
    status = cache.status()
    what = f"issuer {issuer.name} ({status['source']})"
    if not status["usable"]:
        return Probe(what, False, f"unreachable or unusable: {status['last_error']}", _ms(started))
    if not status["keys"]:
        return Probe(what, False, "reachable, but its JWKS holds no usable key", _ms(started))
    return Probe(what, True, f"reachable, {status['keys']} key(s), state {status['state']}", _ms(started))


def probe_all(settings: Settings) -> list[Probe]:
    return [probe_store(settings), *(probe_issuer(issuer) for issuer in settings.issuers)]


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
