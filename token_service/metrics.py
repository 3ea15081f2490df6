"""Prometheus metrics: what the dashboards and alert rules in ``deploy/`` are built on.

Under gunicorn, ``token-service serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before anything imports ``prometheus_client``, so every worker writes its samples there and
``/metrics`` (answered by any one worker) adds them all up: prometheus-client's multiprocess mode.
Labels are bounded: endpoints are route templates, reasons are problem types, never identities.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

HTTP_REQUESTS = Counter(
    "token_service_http_requests_total", "HTTP requests answered.", ["endpoint", "method", "status"]
)
HTTP_DURATION = Histogram(
    "token_service_http_request_duration_seconds", "Time to answer a request.", ["endpoint"],
    buckets=LATENCY_BUCKETS,
)
TOKENS_ISSUED = Counter(
    "token_service_tokens_issued_total", "Twilio Access Tokens minted at sign-in.", ["issuer", "role"]
)
REFRESHES = Counter("token_service_refreshes_total", "Refresh attempts by outcome.", ["outcome"])
DENIALS = Counter(
    "token_service_denials_total", "Requests refused, by problem type.", ["endpoint", "reason"]
)
RATE_LIMITED = Counter(
    "token_service_rate_limited_total", "Requests refused by a rate limit.", ["endpoint", "policy"]
)
JWKS_FETCHES = Counter(
    "token_service_jwks_fetches_total", "Signing-key fetches from issuers.", ["issuer", "result"]
)
STORE_ERRORS = Counter(
    "token_service_store_errors_total", "Store calls that failed (store unavailable).", ["operation"]
)
STORE_DURATION = Histogram(
    "token_service_store_duration_seconds", "Time of one store call.", ["operation"], buckets=STORE_BUCKETS
)
ROLE_CHANGES = Counter(
    "token_service_role_changes_total",
    "Sign-ins that changed an identity's current role (its other families follow at their next refresh).",
    ["source"],
)
REFRESH_ROLE_UPDATES = Counter(
    "token_service_refresh_role_updates_total",
    "Refreshes of a family minted under an older role: 'followed' the new role, or 'revoked' by policy.",
    ["action"],
)
GROUP_OVERAGE = Counter(
    "token_service_group_overage_total",
    "Tokens refused because the IdP left the groups out (group overage).", ["issuer"]
)
OPAQUE_CHECKS = Counter(
    "token_service_opaque_token_checks_total",
    "Opaque access tokens checked at their issuer (introspection, userinfo), by result.", ["issuer", "result"]
)
GATEWAY_HEADERS_IGNORED = Counter(
    "token_service_gateway_headers_ignored_total",
    "Gateway assertion headers ignored because the connection did not come from a trusted proxy.", ["issuer"]
)
CLIENT_MINTS = Counter(
    "token_service_client_mints_total",
    "Trusted backend clients' mints on someone's behalf: 'issued', or 'refused' outside the allow-list.",
    ["client", "result"],
)
FAMILIES_REVOKED = Counter(
    "token_service_families_revoked_total", "Refresh-token families ended, by reason.", ["reason"]
)


@lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: every request needs the same few children.

    ``labels()`` validates and locks on each call, several microseconds on the hot path;
    prometheus-client's documentation suggests keeping the child. Every label set is bounded
    (route templates, methods, statuses, outcomes), so the cache never evicts in practice.
    """
    return metric.labels(*labels)


_month: tuple[float, str] = (0.0, "")  # (valid until, month): months change on a minute boundary


def current_month() -> str:
    """The billing month of "active identities": Twilio counts per calendar month (UTC).

    Every token request asks, so the answer is kept until the next whole minute.
    """
    global _month
    now = time.time()
    until, month = _month
    if now >= until:
        month = datetime.fromtimestamp(now, UTC).strftime("%Y-%m")
        _month = (now - now % 60 + 60, month)
    return month


class ActiveIdentities(Collector):
    """``token_service_active_identities``: read from the store's HyperLogLog at scrape time."""

    def __init__(self, count: Callable[[str], int | None]) -> None:
        self._count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        month = current_month()
        value = self._count(month)
        family = GaugeMetricFamily(
            "token_service_active_identities",
            "Distinct identities that got a token this calendar month (Twilio bills per active user).",
            labels=["month"],
        )
        if value is not None:
            family.add_metric([month], value)
        yield family


def render(extra: Collector | None = None) -> tuple[bytes, str]:
    """The exposition text for ``/metrics``: every worker's samples in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Default())
    if extra is not None:
        registry.register(extra)
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Default(Collector):
    """The process-wide default registry, wrapped so a per-scrape collector can join it."""

    def collect(self) -> Iterator:  # type: ignore[type-arg]
        yield from REGISTRY.collect()
