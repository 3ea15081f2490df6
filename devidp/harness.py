"""DEVELOPMENT/TEST ONLY - NOT FOR PRODUCTION.

Python driver for the development OpenID Provider in ``server.mjs``: generates
signing keys, starts/stops/restarts the Node process on a local port, and
obtains real tokens through the authorization code + PKCE (S256) flow by
scripting the provider's login form, exactly as a browser would.

Only stdlib, ``requests`` and ``cryptography`` are used so that tests can import
it without extra dependencies.
"""

from __future__ import annotations

import atexit
import base64
import copy
import hashlib
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DEVIDP_DIR = Path(__file__).resolve().parent
SERVER_SCRIPT = DEVIDP_DIR / "server.mjs"
NODE_MODULES = DEVIDP_DIR / "node_modules"

DEFAULT_RESOURCE = "urn:token-service:api"
DEFAULT_CLIENT_ID = "token-service-dev"
ES256_CLIENT_ID = "token-service-es256"
DEFAULT_SCOPE = "openid email profile groups"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8000/callback"
HTTP_TIMEOUT = 10.0
MAX_REDIRECTS = 10

DEFAULT_USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "email": "alice@example.com",
        "email_verified": True,
        "name": "Alice",
        "groups": ["chat-users"],
    },
    "bob": {
        "email": "bob@example.com",
        "email_verified": True,
        "name": "Bob",
        "groups": ["chat-users", "chat-admins"],
    },
    "carol": {
        "email": "carol@example.com",
        "email_verified": False,
        "name": "Carol",
        "groups": ["chat-users"],
    },
    "dave": {
        "email": "dave@example.com",
        "email_verified": True,
        "name": "Dave",
        "groups": [],
    },
}

_PUBLIC_MEMBERS = {
    "RSA": ("kty", "kid", "use", "alg", "n", "e"),
    "EC": ("kty", "kid", "use", "alg", "crv", "x", "y"),
}


class DevIdPError(RuntimeError):
    """The dev IdP failed to start or a scripted login did not complete."""


# --------------------------------------------------------------------------- keys


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int, length: int | None = None) -> str:
    length = length or max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def _rsa_private_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = key.private_numbers()
    pub = priv.public_numbers
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": _b64url_uint(pub.n),
        "e": _b64url_uint(pub.e),
        "d": _b64url_uint(priv.d),
        "p": _b64url_uint(priv.p),
        "q": _b64url_uint(priv.q),
        "dp": _b64url_uint(priv.dmp1),
        "dq": _b64url_uint(priv.dmq1),
        "qi": _b64url_uint(priv.iqmp),
    }


def _ec_private_jwk(kid: str) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv = key.private_numbers()
    pub = priv.public_numbers
    # P-256 coordinates and scalar are fixed-width (32 bytes) per RFC 7518 6.2.1.
    return {
        "kty": "EC",
        "kid": kid,
        "use": "sig",
        "alg": "ES256",
        "crv": "P-256",
        "x": _b64url_uint(pub.x, 32),
        "y": _b64url_uint(pub.y, 32),
        "d": _b64url_uint(priv.private_value, 32),
    }


def generate_keys() -> list[dict[str, Any]]:
    """Return fresh private JWKs: one RSA-2048 (RS256) and one EC P-256 (ES256).

    Kids are random so that a key rotation (``DevIdP.restart(keys=...)``) is
    observable by clients as an unknown ``kid``.
    """
    suffix = secrets.token_hex(6)
    return [_rsa_private_jwk(f"dev-rs256-{suffix}"), _ec_private_jwk(f"dev-es256-{suffix}")]


def public_jwks(keys: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Strip private members, giving the JWKS a relying party would fetch."""
    public = []
    for key in keys:
        members = _PUBLIC_MEMBERS.get(key.get("kty", ""))
        if members is None:
            raise ValueError(f"unsupported key type {key.get('kty')!r}")
        public.append({m: key[m] for m in members if m in key})
    return {"keys": public}


# -------------------------------------------------------------------------- login


def _pkce_pair() -> tuple[str, str]:
    verifier = _b64url(secrets.token_bytes(32))
    challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


def _same_endpoint(url: str, redirect_uri: str) -> bool:
    a, b = urlsplit(url), urlsplit(redirect_uri)
    return (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)


def _jwt_payload(token: str) -> dict[str, Any]:
    """Decode a JWT payload WITHOUT verifying it (only used for the nonce check)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _form_action(page: str, page_url: str) -> str:
    match = re.search(r'<form[^>]*\baction="([^"]+)"', page)
    if not match:
        raise DevIdPError(f"no login form found at {page_url}")
    return urljoin(page_url, match.group(1).replace("&amp;", "&"))


def discover(issuer: str, session: requests.Session | None = None) -> dict[str, Any]:
    """Fetch the provider's OpenID discovery document."""
    http = session or requests
    resp = http.get(f"{issuer.rstrip('/')}/.well-known/openid-configuration", timeout=HTTP_TIMEOUT)
    resp.raise_for_status()
    return resp.json()


def oidc_login(
    issuer: str,
    username: str,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    scope: str = DEFAULT_SCOPE,
    resource: str | None = None,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
) -> dict[str, Any]:
    """Log ``username`` in at a running dev IdP and return the token response JSON.

    Runs authorization code + PKCE S256 + state + nonce with a fresh cookie jar
    (so the login prompt always appears), posts the login form, and stops at the
    redirect to ``redirect_uri`` without following it (nothing listens there).
    ``resource`` is sent on both the authorization and token requests; the
    provider only issues a JWT access token when the token request carries it.
    """
    meta = discover(issuer)
    verifier, challenge = _pkce_pair()
    state = secrets.token_urlsafe(16)
    nonce = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if "offline_access" in scope.split():
        # OIDC Core 11: offline_access is ignored unless prompt=consent is sent.
        params["prompt"] = "consent"
    if resource is not None:
        params["resource"] = resource

    with requests.Session() as session:
        url = f"{meta['authorization_endpoint']}?{urlencode(params)}"
        code = _code_from_callback(follow_authorization(session, url, username, redirect_uri), state)
        token_data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
        }
        if resource is not None:
            token_data["resource"] = resource
        token_resp = session.post(meta["token_endpoint"], data=token_data, timeout=HTTP_TIMEOUT)
    if token_resp.status_code != 200:
        raise DevIdPError(f"token endpoint HTTP {token_resp.status_code}: {_summary(token_resp.text)}")
    tokens = token_resp.json()
    if "id_token" in tokens and _jwt_payload(tokens["id_token"]).get("nonce") != nonce:
        raise DevIdPError("id_token nonce does not match the request")
    return tokens


def client_credentials_token(
    issuer: str, client_id: str, client_secret: str, *, resource: str | None = DEFAULT_RESOURCE, scope: str = ""
) -> dict[str, Any]:
    """A backend's own access token (RFC 6749 4.4), the client authenticated by ``client_secret_basic``.

    With ``resource`` the provider issues a JWT access token for that resource server (RFC 9068),
    whose ``sub`` and ``client_id`` are the client's.
    """
    data = {"grant_type": "client_credentials"}
    if resource is not None:
        data["resource"] = resource
    if scope:
        data["scope"] = scope
    resp = requests.post(discover(issuer)["token_endpoint"], data=data, auth=(client_id, client_secret),
                         timeout=HTTP_TIMEOUT)
    if resp.status_code != 200:
        raise DevIdPError(f"token endpoint HTTP {resp.status_code}: {_summary(resp.text)}")
    return resp.json()


def follow_authorization(session: requests.Session, url: str, username: str, redirect_uri: str) -> str:
    """Drive the IdP from an authorization URL to the redirect back to ``redirect_uri``.

    Posts the login form for ``username`` (consent is automatic) and returns the full callback
    URL (with ``code`` and ``state``) without requesting it. Used for relying parties that build
    their own authorization request, such as the service's browser login.
    """
    resp = session.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT)
    posted = False
    for _ in range(MAX_REDIRECTS):
        if resp.is_redirect:
            location = urljoin(resp.url, resp.headers["Location"])
            if _same_endpoint(location, redirect_uri):
                return location
            resp = session.get(location, allow_redirects=False, timeout=HTTP_TIMEOUT)
            continue
        if resp.status_code == 200 and not posted and "/interaction/" in resp.url:
            action = _form_action(resp.text, resp.url)
            resp = session.post(action, data={"login": username}, allow_redirects=False, timeout=HTTP_TIMEOUT)
            posted = True
            continue
        raise DevIdPError(
            f"login for {username!r} stopped at {urlsplit(resp.url).path} "
            f"with HTTP {resp.status_code}: {_summary(resp.text)}"
        )
    raise DevIdPError("too many redirects during login")


def _code_from_callback(location: str, state: str) -> str:
    query = parse_qs(urlsplit(location).query)
    if "error" in query:
        desc = query.get("error_description", [""])[0]
        raise DevIdPError(f"authorization error {query['error'][0]}: {desc}")
    if query.get("state") != [state]:
        raise DevIdPError("state mismatch in authorization response")
    if "code" not in query:
        raise DevIdPError("authorization response carries no code")
    return query["code"][0]


def _summary(text: str, limit: int = 300) -> str:
    """Squash an error page into one readable line for exception messages."""
    text = re.sub(r"<(style|script)\b.*?</\1>|<[^>]+>", " ", text, flags=re.S | re.I)
    return " ".join(html.unescape(text).split())[:limit]


# ------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_node_modules() -> None:
    """Fail early with the fix, rather than with a Node import error."""
    if not (NODE_MODULES / "oidc-provider" / "package.json").is_file():
        raise DevIdPError(f"{NODE_MODULES} is missing oidc-provider; run `npm ci --prefix {DEVIDP_DIR}`")


class DevIdP:
    """A dev OpenID Provider in a child ``node`` process, usable as a context manager.

    ``with DevIdP() as idp: tokens = idp.login("alice")``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        keys: list[dict[str, Any]] | None = None,
        users: dict[str, dict[str, Any]] | None = None,
        clients: list[dict[str, Any]] | None = None,
        extra_clients: list[dict[str, Any]] | None = None,
        resource: str = DEFAULT_RESOURCE,
        workdir: Path | None = None,
        node: str = "node",
    ) -> None:
        self.port = port if port is not None else _free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = keys if keys is not None else generate_keys()
        self.users = copy.deepcopy(users if users is not None else DEFAULT_USERS)
        self.clients = clients
        self.extra_clients = extra_clients or []
        self.resource = resource
        self.node = node
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> DevIdP:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _ensure_workdir(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="devidp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    def config(self) -> dict[str, Any]:
        """The JSON document ``server.mjs`` reads."""
        cfg: dict[str, Any] = {
            "port": self.port,
            "issuer": self.issuer,
            "keys": self.keys,
            "users": self.users,
            "resource": self.resource,
        }
        if self.clients is not None:
            cfg["clients"] = self.clients
        if self.extra_clients:
            cfg["extra_clients"] = self.extra_clients
        return cfg

    def _write_config(self) -> Path:
        path = self._ensure_workdir() / "devidp-config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds private keys
        with os.fdopen(fd, "w") as fh:
            json.dump(self.config(), fh)
        return path

    def command(self) -> list[str]:
        """The argv that runs the server (config file written as a side effect)."""
        check_node_modules()
        return [self.node, str(SERVER_SCRIPT), str(self._write_config())]

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NODE_ENV", None)  # production mode would reject this dev setup
        return env

    def start(self, timeout: float = 20) -> None:
        """Spawn the server and wait until it says ``devidp ready`` or answers discovery."""
        if self._proc is not None and self._proc.poll() is None:
            raise DevIdPError("dev IdP already running")
        argv = self.command()
        assert self.workdir is not None
        self._log_path = self.workdir / "devidp.log"
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env()
            )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self._proc.poll()
            if rc is not None:
                self._proc = None
                raise DevIdPError(f"dev IdP exited with status {rc}:\n{self.output}")
            if f"devidp ready {self.issuer}" in self.output or self._discovery_ok():
                return
            time.sleep(0.05)
        out = self.output
        self.stop()
        raise DevIdPError(f"dev IdP did not become ready within {timeout}s:\n{out}")

    def _discovery_ok(self) -> bool:
        try:
            discover(self.issuer)
        except requests.RequestException:
            return False
        return True

    def stop(self) -> None:
        """Terminate the server (idempotent) and remove a temp workdir we created."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def cleanup(self) -> None:
        """Stop and delete the workdir if the harness created it."""
        self.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def restart(self, keys: list[dict[str, Any]] | None = None) -> None:
        """Restart on the same port, optionally with a new key set (key rotation tests).

        All in-memory state (sessions, grants, refresh tokens) is lost.
        """
        self.stop()
        if keys is not None:
            self.keys = keys
        self.start()

    def serve_forever(self) -> int:
        """Run the server in the foreground with inherited stdio; returns its exit code.

        SIGINT/SIGTERM/SIGHUP are forwarded to node so it is never orphaned.
        """
        proc = subprocess.Popen(self.command(), env=self._env())

        def forward(signum: int, _frame: object) -> None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

        previous = {
            sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        }
        try:
            return proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    # -- queries -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def output(self) -> str:
        """Everything the server printed so far (request log, banner, errors)."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def discovery(self) -> dict[str, Any]:
        return discover(self.issuer)

    def jwks(self) -> dict[str, Any]:
        """The JWKS as served (counts towards ``jwks_requests``)."""
        resp = requests.get(self.discovery()["jwks_uri"], timeout=HTTP_TIMEOUT)
        resp.raise_for_status()
        return resp.json()

    def stats(self) -> dict[str, int]:
        """Requests served since this process started: ``jwks_requests``, ``introspection_requests``,
        ``userinfo_requests``."""
        resp = requests.get(f"{self.issuer}/_devidp/stats", timeout=HTTP_TIMEOUT)
        resp.raise_for_status()
        return {k: int(v) for k, v in resp.json().items()}

    def jwks_requests(self) -> int:
        """How many GETs the jwks endpoint served since this process started."""
        return self.stats()["jwks_requests"]

    def login(
        self,
        username: str,
        *,
        client_id: str = DEFAULT_CLIENT_ID,
        scope: str = DEFAULT_SCOPE,
        resource: str | None = None,
        redirect_uri: str = DEFAULT_REDIRECT_URI,
    ) -> dict[str, Any]:
        """See :func:`oidc_login`."""
        return oidc_login(
            self.issuer,
            username,
            client_id=client_id,
            scope=scope,
            resource=resource,
            redirect_uri=redirect_uri,
        )
