"""``token-service serve | check-config | revoke | sync-user | show-user``: the operator's commands."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from token_service.errors import ConfigError
from token_service.settings import CONFIG_ENV, Settings, config_warnings, load_settings

if TYPE_CHECKING:
    from token_service.conversations import UserSync

GUNICORN_CONFIG_ENV = "TOKEN_SERVICE_GUNICORN_CONFIG"
# The shipped gunicorn settings are part of the package: the same from any working directory.
DEFAULT_GUNICORN_CONFIG = "python:token_service.gunicorn_conf"


def _load_or_exit(path: str | None, workers: int | None = None) -> Settings:
    """The validated settings, or every problem on stderr and exit status 2."""
    try:
        return load_settings(path, workers=workers)
    except ConfigError as exc:
        print(f"configuration is invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure_logging(settings: Settings) -> None:
    """JSON lines on stderr, as the service writes them (the CLI's audit events included)."""
    from token_service.logs import configure_logging

    configure_logging(settings.logging.level)


def _server_shape(options: dict[str, Any], workers: int) -> str:
    """"3 worker(s) x 1000 connection(s), gevent": what one worker serves at once, by worker class."""
    worker_class = options.get("worker_class", "sync")
    if worker_class == "gevent":
        return f"{workers} worker(s) x {options.get('worker_connections', 1000)} connection(s), gevent"
    return f"{workers} worker(s) x {options.get('threads', 1)} thread(s), {worker_class}"


def check_config(args: argparse.Namespace) -> int:
    options, source = _server_options(args)
    workers = int(options.get("workers", 1))
    settings = _load_or_exit(args.config, workers)
    for warning in config_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    where = args.config or os.environ.get(CONFIG_ENV)
    print(
        f"configuration is valid: {where} "
        f"({len(settings.issuers)} issuer(s), {len(settings.roles.sids)} role(s), "
        f"store {settings.store.url.split('://')[0]}://, token ttl {settings.twilio.token_ttl}s; "
        f"gunicorn {source}: {_server_shape(options, workers)})"
    )
    if not args.probe:
        return 0
    from token_service.logs import configure_logging
    from token_service.probe import probe_all

    configure_logging("ERROR")  # each probe reports its own failure; no log lines in between
    probes = probe_all(settings)
    for probe in probes:
        print(probe.line())
    return 0 if all(probe.ok for probe in probes) else 1


def revoke(args: argparse.Namespace) -> int:
    """End every refresh family of one identity (an employee leaves)."""
    from token_service.issuance import TokenIssuer
    from token_service.store import StoreUnavailable, open_store

    settings = _load_or_exit(args.config)
    if settings.store.is_memory:
        print("the memory store lives inside the running service; nothing to revoke from here",
              file=sys.stderr)
        return 2
    _configure_logging(settings)  # the identity_revoked audit line, JSON on stderr
    store = open_store(settings)
    try:
        count = TokenIssuer(settings, store).revoke_identity(args.identity)
    except StoreUnavailable as exc:
        print(f"the store is unavailable: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"revoked {count} refresh famil{'y' if count == 1 else 'ies'} of {args.identity!r}")
    return 0


@contextmanager
def _user_sync(args: argparse.Namespace) -> Iterator[tuple[Settings, UserSync]]:
    """The configured REST sync, for the support commands, closed (with its store) afterwards.

    Exits when the sync is not enabled.
    """
    from token_service.issuance import user_sync_for
    from token_service.store import open_store

    settings = _load_or_exit(args.config)
    _configure_logging(settings)
    if not settings.conversations.sync.enabled:
        print("[conversations.sync] is not enabled in this configuration", file=sys.stderr)
        raise SystemExit(2)
    store = open_store(settings)
    sync = user_sync_for(settings, store)
    assert sync is not None
    try:
        yield settings, sync
    finally:
        sync.close()
        store.close()


def sync_user(args: argparse.Namespace) -> int:
    """Make one identity's Conversations User exist with a role now, ignoring the cache."""
    from token_service.errors import ServiceError

    with _user_sync(args) as (settings, sync):
        role = args.role or settings.roles.default
        if role not in settings.roles.sids:
            print(f"--role must be one of: {', '.join(settings.roles.sids)}", file=sys.stderr)
            return 2
        try:
            result = sync.sync(args.identity, settings.roles.sids[role], args.friendly_name)
        except ServiceError as exc:
            print(f"sync failed: {exc.detail}", file=sys.stderr)
            return 1
    print(f"{args.identity!r}: {result.outcome} (role {role}, {result.rest_calls} REST call(s))")
    return 0


def show_user(args: argparse.Namespace) -> int:
    """Print one identity's Conversations User as Twilio has it (JSON), for support staff."""
    import json

    from token_service.errors import ServiceError

    with _user_sync(args) as (_, sync):
        try:
            user = sync.show(args.identity)
        except ServiceError as exc:
            print(f"lookup failed: {exc.detail}", file=sys.stderr)
            return 1
    if user is None:
        print(f"no Conversations User with identity {args.identity!r}", file=sys.stderr)
        return 3
    print(json.dumps(user, indent=2, sort_keys=True))
    return 0


def _gunicorn_settings(source: str) -> dict[str, Any]:
    """The module-level settings of a gunicorn config: ``python:module.name`` or a file path.

    A setting its variable makes invalid (``TOKEN_SERVICE_WORKERS=two``) is one line and exit status 1.
    """
    try:
        if source.startswith("python:"):
            namespace = runpy.run_module(source.removeprefix("python:"))
        elif Path(source).is_file():
            namespace = runpy.run_path(source)
        else:
            raise SystemExit(f"gunicorn config {source} not found")
    except ImportError as exc:
        raise SystemExit(f"gunicorn config {source}: cannot be imported ({exc})") from None
    except ValueError as exc:
        raise SystemExit(f"gunicorn config {source}: {exc}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_") and not isinstance(v, types.ModuleType)}


def _server_options(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """gunicorn settings and where they came from: ``--gunicorn-config``, the environment, or the
    packaged ``token_service.gunicorn_conf``; then ``--bind`` and ``--workers``."""
    source = args.gunicorn_config or os.environ.get(GUNICORN_CONFIG_ENV) or DEFAULT_GUNICORN_CONFIG
    options = _gunicorn_settings(source)
    if getattr(args, "bind", None):
        options["bind"] = [args.bind]
    if args.workers:
        options["workers"] = args.workers
    return options, source


def _prepare_metrics_dir() -> None:
    """prometheus-client's multiprocess mode: one fresh directory shared by all workers.

    Must run before anything imports ``prometheus_client`` (the app does), hence here.
    """
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="token-service-metrics-")
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):  # samples of a previous run would be added in
        stale.unlink()


def _patch_for_gevent() -> None:
    """gevent's cooperative sockets, locks and threads, before the app is loaded and the workers fork.

    gunicorn's gevent worker patches only in the worker, after the fork: too late for an app preloaded
    in the master, whose locks would still be the blocking kind (one held across a key fetch would
    stop every request of the worker). Patched here, everything the app makes is gevent's.
    """
    from gevent import monkey

    monkey.patch_all()


def serve(args: argparse.Namespace) -> int:
    """Run under gunicorn with the packaged settings (or ``--gunicorn-config``)."""
    options, _ = _server_options(args)
    settings = _load_or_exit(args.config, int(options.get("workers", 1)))
    if options.get("worker_class") == "gevent":
        _patch_for_gevent()
    _prepare_metrics_dir()

    from gunicorn.app.base import BaseApplication

    from token_service.app import create_app

    _configure_logging(settings)
    if not settings.server.dev_mode:
        import logging

        for warning in config_warnings(settings):
            logging.getLogger("token_service.config").warning(warning, extra={"event": "config_warning"})
    app = create_app(settings)

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key.lower() in self.cfg.settings and value is not None:
                    self.cfg.set(key.lower(), value)

        def load(self) -> Any:
            return app

    Server().run()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="token-service", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, text in (
        ("check-config", check_config, "validate the configuration and the secrets it needs"),
        ("serve", serve, "run the service under gunicorn"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help=f"TOML file (default: ${CONFIG_ENV})")
        p.add_argument("--gunicorn-config", help=f"a file, or python:module (default: ${GUNICORN_CONFIG_ENV} "
                                                   f"or {DEFAULT_GUNICORN_CONFIG})")
        p.add_argument("--bind", help="override the bind address, e.g. 127.0.0.1:8000")
        p.add_argument("--workers", type=int, help="override the number of worker processes")
        p.set_defaults(func=func)
        if name == "check-config":
            p.add_argument("--probe", action="store_true",
                           help="also contact each issuer (discovery, JWKS) and the store")

    p = sub.add_parser("revoke", help="end every refresh-token family of one identity")
    p.add_argument("--config", help=f"TOML file (default: ${CONFIG_ENV})")
    p.add_argument("--identity", required=True, help="the Conversations identity, exactly")
    p.set_defaults(func=revoke)

    p = sub.add_parser("sync-user", help="create or update one identity's Conversations User now")
    p.add_argument("identity", help="the Conversations identity, exactly (case-sensitive)")
    p.add_argument("--config", help=f"TOML file (default: ${CONFIG_ENV})")
    p.add_argument("--role", help="a role name from [roles] sids (default: the default role)")
    p.add_argument("--friendly-name", help="FriendlyName, used only when the User is created")
    p.set_defaults(func=sync_user)

    p = sub.add_parser("show-user", help="show one identity's Conversations User as Twilio has it")
    p.add_argument("identity", help="the Conversations identity, exactly (case-sensitive)")
    p.add_argument("--config", help=f"TOML file (default: ${CONFIG_ENV})")
    p.set_defaults(func=show_user)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
