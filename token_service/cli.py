"""``token-service serve | check-config | revoke | sync-user | show-user``: the operator's commands."""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from token_service.errors import ConfigError
from token_service.settings import CONFIG_ENV, Settings, check_workers, load_settings

if TYPE_CHECKING:
    from token_service.conversations import UserSync

GUNICORN_CONFIG_ENV = "TOKEN_SERVICE_GUNICORN_CONFIG"
DEFAULT_GUNICORN_CONFIG = Path("deploy/gunicorn.conf.py")


def _load_or_exit(path: str | None, workers: int | None = None) -> Settings:
    try:
        settings = load_settings(path)
        if workers is not None:
            check_workers(settings, workers)
        return settings
    except ConfigError as exc:
        print(f"configuration is invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        raise SystemExit(2) from None


def check_config(args: argparse.Namespace) -> int:
    options = _server_options(args)
    workers = int(options.get("workers", 1))
    settings = _load_or_exit(args.config, workers)
    where = args.config or os.environ.get(CONFIG_ENV)
    print(
        f"configuration is valid: {where} "
        f"({len(settings.issuers)} issuer(s), {len(settings.roles.sids)} role(s), "
        f"store {settings.store.url.split('://')[0]}://, {workers} worker(s), "
        f"token ttl {settings.twilio.token_ttl}s)"
    )
    return 0


def revoke(args: argparse.Namespace) -> int:
    """End every refresh family of one identity (an employee leaves)."""
    from token_service.issuance import TokenIssuer
    from token_service.store import StoreUnavailable, open_store

    settings = _load_or_exit(args.config)
    if settings.store.is_memory:
        print("the memory store lives inside the running service; nothing to revoke from here",
              file=sys.stderr)
        return 2
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


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    """gunicorn settings: the config file (``--gunicorn-config``, env, or the default), then flags."""
    chosen = args.gunicorn_config or os.environ.get(GUNICORN_CONFIG_ENV)
    if chosen is None and DEFAULT_GUNICORN_CONFIG.is_file():
        chosen = str(DEFAULT_GUNICORN_CONFIG)
    options: dict[str, Any] = {}
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise SystemExit(f"gunicorn config {path} not found")
        options = {k: v for k, v in runpy.run_path(str(path)).items() if not k.startswith("_")}
    if getattr(args, "bind", None):
        options["bind"] = [args.bind]
    if args.workers:
        options["workers"] = args.workers
    return options


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


def serve(args: argparse.Namespace) -> int:
    """Run under gunicorn with ``deploy/gunicorn.conf.py`` (or ``--gunicorn-config``)."""
    options = _server_options(args)
    settings = _load_or_exit(args.config, int(options.get("workers", 1)))
    _prepare_metrics_dir()

    from gunicorn.app.base import BaseApplication

    from token_service.app import create_app
    from token_service.logs import configure_logging

    configure_logging(settings.logging.level, settings.logging.flush_interval)
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
        p.add_argument("--gunicorn-config", help=f"default: ${GUNICORN_CONFIG_ENV} or {DEFAULT_GUNICORN_CONFIG}")
        p.add_argument("--bind", help="override the bind address, e.g. 127.0.0.1:8000")
        p.add_argument("--workers", type=int, help="override the number of worker processes")
        p.set_defaults(func=func)

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
