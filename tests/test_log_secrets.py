"""No secret reaches a log at any level: every line a run writes, searched for every secret it used.

Two runs with logging at DEBUG, each through a browser sign-in (Authlib's client logs the PKCE
``code_verifier`` at DEBUG; the callback's query carries the code), bearer tokens, refresh and
revocation (JSON and form), and credentials a careless client puts in a query string or a
``Referer``: one in-process under werkzeug's server, one under gunicorn with its access log on.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from devidp.harness import DevIdP, follow_authorization, generate_keys
from tests.browser_support import BrowserStack, client_for
from tests.gunicorn_support import dev_config, gunicorn
from tests.redis_servers import free_port
from tests.support import SESSION_KEY, TWILIO_SECRET, find_leaks
from token_service.logs import configure_logging

pytestmark = pytest.mark.integration
CSRF = {"X-Requested-With": "test"}


@dataclass
class Used:
    """The secrets one run handled, as the client saw them."""

    secrets: set[str] = field(default_factory=lambda: {TWILIO_SECRET, SESSION_KEY})
    code_challenges: set[str] = field(default_factory=set)


def exercise(base: str, idp: DevIdP) -> Used:
    """Everything that carries a credential, against the service at ``base``; what it used."""
    used = Used()
    with requests.Session() as browser:
        login = browser.get(f"{base}/login", allow_redirects=False, timeout=10)
        assert login.status_code == 302, login.text
        used.code_challenges.add(parse_qs(urlsplit(login.headers["Location"]).query)["code_challenge"][0])
        callback = follow_authorization(browser, login.headers["Location"], "bob", f"{base}/callback")
        query = parse_qs(urlsplit(callback).query)
        used.secrets.add(query["code"][0])  # (state is no credential: it is in the browser's URL bar)
        assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 303
        used.secrets.add(browser.cookies["ts_session"])
        minted = browser.post(f"{base}/v1/token", headers={"Origin": base, **CSRF}, timeout=10).json()
        used.secrets |= {minted["token"], minted["refresh_token"]}

        id_token = idp.login("alice", redirect_uri=f"{base}/callback")["id_token"]
        used.secrets.add(id_token)
        issued = requests.post(f"{base}/v1/token", headers={"Authorization": f"Bearer {id_token}"}, timeout=10)
        assert issued.status_code == 200, issued.text
        refresh = issued.json()["refresh_token"]
        used.secrets |= {issued.json()["token"], refresh}
        for as_form in (False, True):
            sent = {"data" if as_form else "json": {"refresh_token": refresh}}
            body = requests.post(f"{base}/v1/token/refresh", timeout=10, **sent).json()
            refresh = body["refresh_token"]
            used.secrets |= {body["token"], refresh}
        # A careless client: credentials in a query string and in the Referer.
        careless = requests.get(f"{base}/healthz", params={"access_token": minted["token"], "refresh_token": refresh},
                                headers={"Referer": f"{base}/app?code={query['code'][0]}&refresh_token={refresh}"},
                                timeout=10)
        assert careless.status_code == 200
        revoked = requests.post(f"{base}/v1/token/revoke",
                                data={"token": refresh, "token_type_hint": "refresh_token"}, timeout=10)
        assert revoked.status_code == 200
        refused = requests.post(f"{base}/v1/token", headers={"Authorization": f"Bearer {id_token}x"}, timeout=10)
        assert refused.status_code == 401
        out = browser.post(f"{base}/logout", headers={"Origin": base, **CSRF}, timeout=10)
        assert out.status_code == 200
    return used


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def assert_no_secret_in(text: str, used: Used) -> None:
    leaked = sorted(secret[:12] + "..." for secret in used.secrets if len(secret) >= 8 and secret in text)
    assert not leaked, f"secrets in the log: {leaked}"
    assert not find_leaks(text), find_leaks(text)
    # The code_verifier never crosses the client's side: find it by its S256 challenge.
    for candidate in set(re.findall(r"[A-Za-z0-9._~-]{43,128}", text)):
        assert _s256(candidate) not in used.code_challenges, "the PKCE code_verifier is in the log"


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Every logger at DEBUG into the service's JSON handler (and the suite log, still attached)."""
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    werkzeug = logging.getLogger("werkzeug")
    saved_werkzeug = werkzeug.level
    stream = io.StringIO()
    configure_logging("DEBUG", stream)
    root.handlers.extend(saved)
    werkzeug.setLevel(logging.DEBUG)  # tests/support.py quiets the test server's request lines
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)
        werkzeug.setLevel(saved_werkzeug)
        logging.captureWarnings(False)


def test_no_secret_reaches_the_log_at_debug_in_process(stack: BrowserStack, debug_log: io.StringIO) -> None:
    used = exercise(stack.base, stack.idp)
    text = debug_log.getvalue()
    # The run really went through the lines that would have held secrets...
    assert re.search(r'"logger":"authlib[^"]*".*code_verifier: \'\[redacted\]\'', text), "Authlib's DEBUG line"
    assert re.search(r'"logger":"werkzeug".*GET /callback\?\[redacted\]', text), "the callback's request line"
    assert "access_token=[redacted]" in text and "refresh_token=[redacted]" in text
    # ... and none of them holds one.
    assert_no_secret_in(text, used)


def test_no_secret_reaches_gunicorns_output_at_debug_with_the_access_log_on(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with DevIdP(keys=generate_keys(), clients=[client_for(base)]) as idp:
        config = dev_config(tmp_path, idp.issuer, extra='\n[logging]\nlevel = "DEBUG"\naccess_log = true\n')
        config.write_text(config.read_text().replace("http://127.0.0.1:8000", base))
        env = {"TOKEN_SERVICE_ACCESS_LOG": "-", "TOKEN_SERVICE_LOG_LEVEL": "debug"}
        with gunicorn(config, workers=1, port=port, env=env) as served:
            used = exercise(base, idp)
    lines = served.lines  # every line JSON (the helper checked find_leaks too)
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert any(line["path"] == "/callback" and line["query"] == "[redacted]" for line in access)
    careless = next(line for line in access if line["path"] == "/healthz" and line.get("referer"))
    assert "refresh_token=[redacted]" in careless["query"] and "code=[redacted]" in careless["referer"]
    assert any(line["logger"].startswith("authlib") and line["level"] == "debug" for line in lines)
    assert_no_secret_in(served.output, used)
