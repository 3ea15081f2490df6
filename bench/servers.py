"""The servers under test, all on loopback: the peers, token-service in a chosen server shape, and nginx.

Every Python app runs under the same gunicorn settings (the packaged ones, through
``deploy/gunicorn.conf.py``) and the same shape: worker class, workers, threads and keep-alive come from
the ``TOKEN_SERVICE_*`` variables those settings read. "Behind nginx" puts nginx in front of
token-service, with the proxy settings of the shipped ``deploy/nginx/token-service.conf`` (plain HTTP
on loopback: no TLS anywhere in the bench).
"""

from __future__ import annotations

import os
import re
import runpy
import secrets
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import ensure_tool
from bench.procs import BenchError, Server
from tests.redis_servers import free_port

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"  # the packaged settings, read afresh
DEV_CONFIG = ROOT / "dev" / "config.toml"
HOST = "127.0.0.1"
WORKER_CLASSES = ("gevent", "gthread", "sync")  # what the shipped gunicorn settings accept

# Limits no run can reach, so nothing is refused but every request still pays for the bucket checks.
# 1,000,000 is the most settings.RatePolicy accepts: a burst of a million, then ~16,700 req/s per key.
RATE_LIMITS = """
[rate_limits]
enabled = true
policies = [
  { endpoint = "token", key = "ip", limit = 1000000, window = 60 },
  { endpoint = "token", key = "identity", limit = 1000000, window = 60 },
  { endpoint = "refresh", key = "ip", limit = 1000000, window = 60 },
  { endpoint = "refresh", key = "identity", limit = 1000000, window = 60 },
  { endpoint = "refresh", key = "family", limit = 1000000, window = 60 },
]
"""


# --------------------------------------------------------------------------- server shape


@dataclass(frozen=True)
class Shape:
    """How gunicorn serves (and whether nginx fronts) token-service: one point of the server-layer space."""

    worker_class: str
    workers: int
    threads: int
    keepalive: int
    nginx: bool = False

    @property
    def label(self) -> str:
        threads = f"x{self.threads}" if self.worker_class == "gthread" else ""
        keepalive = "" if self.keepalive == shipped()["keepalive"] else f" keep-alive {self.keepalive}s"
        front = " behind nginx" if self.nginx else ""
        return f"{self.worker_class} {self.workers}{threads}{keepalive}{front}"

    def env(self) -> dict[str, str]:
        """The variables the gunicorn settings read. gunicorn turns sync into gthread when threads > 1."""
        threads = self.threads if self.worker_class == "gthread" else 1
        return {
            "TOKEN_SERVICE_WORKER_CLASS": self.worker_class,
            "TOKEN_SERVICE_WORKERS": str(self.workers),
            "TOKEN_SERVICE_THREADS": str(threads),
            "TOKEN_SERVICE_KEEPALIVE": str(self.keepalive),
        }


def shipped() -> dict[str, object]:
    """What the bench's gunicorn settings give on this machine, without the variables that override them."""
    names = ("TOKEN_SERVICE_WORKER_CLASS", "TOKEN_SERVICE_WORKERS", "TOKEN_SERVICE_THREADS", "TOKEN_SERVICE_KEEPALIVE")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        return runpy.run_path(str(GUNICORN_CONF))
    finally:
        os.environ.update(saved)


def shape_from_env(env: Mapping[str, str]) -> Shape:
    """The shipped shape, changed by ``TOKEN_SERVICE_WORKER_CLASS``/``_WORKERS``/``_THREADS``/``_KEEPALIVE``
    and ``BENCH_NGINX=1``."""
    conf = shipped()

    def number(name: str, default: object) -> int:
        raw = env.get(name, str(default))
        if not raw.isdigit():
            raise BenchError(f"{name}={raw!r} is not a whole number")
        return int(raw)

    worker_class = env.get("TOKEN_SERVICE_WORKER_CLASS", str(conf["worker_class"]))
    if worker_class not in WORKER_CLASSES:
        raise BenchError(f"TOKEN_SERVICE_WORKER_CLASS={worker_class!r}: the bench knows {', '.join(WORKER_CLASSES)}")
    return Shape(
        worker_class=worker_class,
        workers=max(1, number("TOKEN_SERVICE_WORKERS", conf["workers"])),
        threads=max(1, number("TOKEN_SERVICE_THREADS", conf["threads"])),
        keepalive=number("TOKEN_SERVICE_KEEPALIVE", conf["keepalive"]),
        nginx=env.get("BENCH_NGINX", "0") == "1",
    )


def parse_shape(text: str) -> Shape:
    """``gevent:3``, ``gthread:3x4``, ``sync:3+nginx``, ``gthread:3x4:ka0`` (keep-alive 0 s)."""
    match = re.fullmatch(rf"({'|'.join(WORKER_CLASSES)}):(\d+)(?:x(\d+))?(?::ka(\d+))?(\+nginx)?", text.strip())
    if not match:
        raise BenchError(f"{text!r} is not a shape such as gthread:3x4, sync:3+nginx or gthread:3x4:ka0")
    worker_class, workers, threads, keepalive, nginx = match.groups()
    return Shape(worker_class, int(workers), int(threads or 1),
                 int(keepalive) if keepalive is not None else int(shipped()["keepalive"]), bool(nginx))


# --------------------------------------------------------------------------- servers


def server_env(shape: Shape) -> dict[str, str]:
    env = {**os.environ, **shape.env()}
    # The bench's SIDs are fake, so a throwaway signing secret is as good as a real one.
    env.setdefault("TWILIO_API_KEY_SECRET", secrets.token_hex(32))
    env.setdefault("TOKEN_SERVICE_SESSION_KEY", secrets.token_hex(32))
    return env


def flask_app(name: str, app: str, shape: Shape, workdir: Path, ready_path: str = "/",
              env: Mapping[str, str] | None = None) -> Server:
    """A WSGI app of bench/ under the bench's gunicorn settings and ``shape``."""
    port = free_port()
    argv = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "--bind", f"{HOST}:{port}", app]
    return Server(name, argv, {**server_env(shape), **(env or {})}, port, ready_path, workdir / f"{name}.log",
                  shape.workers, ROOT)


def hello_server(shape: Shape, workdir: Path) -> Server:
    return flask_app("hello", "bench.hello:app", shape, workdir)


def twilio_sample_server(shape: Shape, workdir: Path) -> Server:
    return flask_app("twilio-sample", "bench.twilio_sample:app", shape, workdir, ready_path="/token")


def floor_server(shape: Shape, workdir: Path, redis_url: str, issuer: str, jwks_uri: str, audience: str) -> Server:
    """``bench/floor.py``: the least a token endpoint on this stack costs (one Redis script, one mint)."""
    env = {"FLOOR_REDIS_URL": redis_url, "FLOOR_ISSUER": issuer, "FLOOR_AUDIENCE": audience,
           "FLOOR_JWKS_URL": jwks_uri}
    return flask_app("floor", "bench.floor:app", shape, workdir, env=env)


def token_server(shape: Shape, workdir: Path, config: Path, checkout: Path = ROOT, tag: str = "") -> Server:
    """``token-service serve`` of ``checkout`` (this repository unless told), with the bench's gunicorn
    settings; ``tag`` tells apart the logs and metrics of several servers in one workdir."""
    port = free_port()
    argv = [
        sys.executable, "-m", "token_service.cli", "serve", "--config", str(config),
        "--gunicorn-config", str(GUNICORN_CONF), "--bind", f"{HOST}:{port}", "--workers", str(shape.workers),
    ]  # fmt: skip
    env = server_env(shape)
    # The service keeps multiprocess metrics in this directory (it makes one under /tmp otherwise): in
    # the bench's own temp dir, it goes when the bench ends. Metrics stay on, as in production.
    name = f"token-service{tag}"
    metrics = workdir / f"metrics{tag}"
    metrics.mkdir(exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    return Server(name, argv, env, port, "/healthz", workdir / f"{name}.log", shape.workers, checkout)


NGINX_CONF = """# bench/servers.py: the proxy settings of deploy/nginx/token-service.conf, plain HTTP on loopback
worker_processes {workers};
pid {workdir}/nginx{tag}.pid;
error_log {workdir}/nginx{tag}.error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {workdir}/nginx{tag}-body;
    proxy_temp_path {workdir}/nginx{tag}-proxy;
    fastcgi_temp_path {workdir}/nginx{tag}-fastcgi;
    uwsgi_temp_path {workdir}/nginx{tag}-uwsgi;
    scgi_temp_path {workdir}/nginx{tag}-scgi;
    upstream token_service {{
        server {upstream};
        keepalive 32;
        keepalive_timeout 4s;
    }}
    map $http_x_request_id $token_service_request_id {{
        default $http_x_request_id;
        ""      $request_id;
    }}
    log_format token_service '$remote_addr [$time_iso8601] "$request_method $uri" $status '
                             '$body_bytes_sent $request_time $upstream_response_time '
                             '$upstream_addr rid=$token_service_request_id "$http_user_agent"';
    server {{
        listen {listen};
        server_tokens off;
        access_log {workdir}/nginx{tag}.access.log token_service;
        client_max_body_size 64k;
        client_body_buffer_size 64k;
        large_client_header_buffers 4 32k;
        keepalive_timeout 30s;
        keepalive_requests 100000;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Request-ID $token_service_request_id;
        proxy_set_header Forwarded "";
        proxy_set_header X-Forwarded-Port "";
        proxy_set_header X-Forwarded-Prefix "";
        proxy_connect_timeout 2s;
        proxy_read_timeout 15s;
        proxy_next_upstream error timeout;
        location /v1/token {{
            proxy_pass http://token_service;
            proxy_max_temp_file_size 0;
            proxy_hide_header Cache-Control;
            proxy_hide_header Pragma;
            add_header Cache-Control "no-store" always;
            add_header Pragma "no-cache" always;
            add_header X-Content-Type-Options "nosniff" always;
            add_header Referrer-Policy "no-referrer" always;
        }}
        location / {{
            proxy_pass http://token_service;
        }}
    }}
}}
"""


def nginx_front(upstream: Server, workdir: Path, workers: int = 1, tag: str = "") -> Server:
    """nginx (one worker unless told: it is not the bottleneck) in front of ``upstream``."""
    binary = ensure_tool("nginx")
    port = free_port()
    conf = workdir / f"nginx{tag}.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, workdir=workdir, tag=tag, upstream=upstream.address,
                                      listen=f"{HOST}:{port}"))
    argv = [binary, "-c", str(conf), "-g", "daemon off;"]
    return Server(f"nginx{tag}", argv, dict(os.environ), port, "/healthz", workdir / f"nginx{tag}.log", workers)


def write_config(path: Path, issuer: str, redis_url: str, trusted_proxies: int = 0) -> None:
    """dev/config.toml with the running IdP's issuer, the Redis store and never-refusing rate limits."""
    text = DEV_CONFIG.read_text()
    text, issuers = re.subn(r'(?m)^issuer\s*=\s*"http://127\.0\.0\.1:9000"\s*$', f'issuer = "{issuer}"', text)
    text, stores = re.subn(r'(?m)^url\s*=\s*"memory://"\s*$', f'url = "{redis_url}"', text)
    text, servers = re.subn(r"(?m)^\[server\]\s*$", f"[server]\ntrusted_proxies = {trusted_proxies}", text)
    text += RATE_LIMITS
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"cannot build the bench config from {DEV_CONFIG}: {exc}") from None
    if (issuers, stores, servers) != (1, 1, 1) or data["store"]["url"] != redis_url:
        raise BenchError(f"{DEV_CONFIG} no longer has one dev issuer, a [server] table and a memory:// store; "
                         "update write_config()")
    path.write_text(text)
