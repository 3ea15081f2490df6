"""gunicorn settings for token-service (``token-service serve`` loads this file).

Every value can be overridden by an environment variable, so a container or unit file changes
behaviour without editing this file.
"""

import multiprocessing
import os

bind = [os.environ.get("TOKEN_SERVICE_BIND", "127.0.0.1:8000")]
# Token minting is CPU-bound (signature checks, HMAC): one worker per core, plus one.
workers = int(os.environ.get("TOKEN_SERVICE_WORKERS", multiprocessing.cpu_count() + 1))
# Threads let a worker keep answering while one request waits on the IdP or the store.
worker_class = "gthread"
threads = int(os.environ.get("TOKEN_SERVICE_THREADS", "4"))
timeout = int(os.environ.get("TOKEN_SERVICE_TIMEOUT", "30"))
graceful_timeout = int(os.environ.get("TOKEN_SERVICE_GRACEFUL_TIMEOUT", "20"))
keepalive = int(os.environ.get("TOKEN_SERVICE_KEEPALIVE", "5"))
# Build the app once in the master, then fork: workers share the loaded code.
preload_app = True
# Header limits: a bearer token is at most 16 KiB, so 32 KiB per header field is enough.
limit_request_line = 8190
limit_request_field_size = 32768
accesslog = os.environ.get("TOKEN_SERVICE_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("TOKEN_SERVICE_LOG_LEVEL", "info")
# X-Forwarded-* is handled by the app ([server] trusted_proxies), not by gunicorn.
forwarded_allow_ips = ""


def child_exit(server, worker):  # noqa: ARG001 - gunicorn hook signature
    """Drop a dead worker's live samples from the shared metrics directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
