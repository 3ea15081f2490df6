"""DEVELOPMENT/TEST ONLY - NOT FOR PRODUCTION.

Command line for the dev OpenID Provider::

    python -m devidp serve [--port 9000] [--keys-file .dev/idp-keys.json]
    python -m devidp token alice [--issuer http://127.0.0.1:9000] [--access-token]

``serve`` runs the provider in the foreground with ``DEFAULT_USERS``; ``token``
logs a user in against an already running one and prints a single token, so
``curl -H "Authorization: Bearer $(python -m devidp token alice)"`` works.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests

from .harness import (
    DEFAULT_CLIENT_ID,
    DEFAULT_REDIRECT_URI,
    DEFAULT_RESOURCE,
    DEFAULT_SCOPE,
    DEFAULT_USERS,
    DevIdP,
    DevIdPError,
    generate_keys,
    oidc_login,
)


def load_or_create_keys(path: Path) -> list[dict[str, Any]]:
    """Load the dev signing keys, creating them (mode 0600) on first use.

    Persisting them keeps tokens minted before a restart verifiable after it.
    """
    if path.exists():
        data = json.loads(path.read_text())
        keys = data["keys"] if isinstance(data, dict) else data
        if not isinstance(keys, list) or not keys:
            raise DevIdPError(f"{path} holds no keys")
        return keys
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = generate_keys()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"keys": keys}, fh, indent=2)
        fh.write("\n")
    print(f"devidp: wrote new dev signing keys to {path}", file=sys.stderr)
    return keys


def cmd_serve(args: argparse.Namespace) -> int:
    keys = load_or_create_keys(Path(args.keys_file))
    idp = DevIdP(port=args.port, keys=keys, users=DEFAULT_USERS)
    try:
        return idp.serve_forever()
    finally:
        idp.cleanup()


def cmd_token(args: argparse.Namespace) -> int:
    resource = args.resource
    if args.access_token and resource is None:
        resource = DEFAULT_RESOURCE  # only a resource-bound access token is a JWT
    tokens = oidc_login(
        args.issuer,
        args.user,
        client_id=args.client_id,
        scope=args.scope,
        resource=resource,
        redirect_uri=args.redirect_uri,
    )
    print(tokens["access_token"] if args.access_token else tokens["id_token"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devidp",
        description="DEVELOPMENT/TEST ONLY OpenID Provider (not for production).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the dev IdP in the foreground")
    serve.add_argument("--port", type=int, default=9000)
    serve.add_argument(
        "--keys-file", default=".dev/idp-keys.json", help="private JWKs; generated (mode 0600) if missing"
    )
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="log a user in and print a token")
    token.add_argument("user")
    token.add_argument("--issuer", default="http://127.0.0.1:9000")
    token.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    token.add_argument("--scope", default=DEFAULT_SCOPE)
    token.add_argument("--redirect-uri", default=DEFAULT_REDIRECT_URI)
    token.add_argument(
        "--resource",
        default=None,
        help=f"resource indicator (default with --access-token: {DEFAULT_RESOURCE})",
    )
    token.add_argument(
        "--access-token", action="store_true", help="print the JWT access token instead of the ID token"
    )
    token.set_defaults(func=cmd_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DevIdPError as exc:
        print(f"devidp: {exc}", file=sys.stderr)
        return 1
    except requests.RequestException as exc:
        print(
            f"devidp: cannot reach the dev IdP ({exc}); is `python -m devidp serve` running?", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
