"""Browser sign-in over HTTP: code flow + PKCE, sessions, CSRF, CORS, logout, back-channel logout."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from devidp.harness import follow_authorization
from tests.browser_support import SPA_ORIGIN, BrowserStack
from tests.support import forge, post_refresh, problem, rsa

pytestmark = pytest.mark.integration
CSRF = {"X-Requested-With": "test"}


def start_login(browser: requests.Session, stack: BrowserStack, return_to: str | None = None) -> str:
    query = f"?{urlencode({'return_to': return_to})}" if return_to else ""
    resp = browser.get(f"{stack.base}/login{query}", allow_redirects=False, timeout=10)
    assert resp.status_code == 302, resp.text
    return resp.headers["Location"]


def come_back(browser: requests.Session, stack: BrowserStack, user: str, return_to: str | None) -> requests.Response:
    """Start a login, sign ``user`` in at the IdP, and return the service's answer to the callback."""
    callback = follow_authorization(browser, start_login(browser, stack, return_to), user, f"{stack.base}/callback")
    return browser.get(callback, allow_redirects=False, timeout=10)


def sign_in(stack: BrowserStack, user: str = "alice", return_to: str | None = None) -> requests.Session:
    browser = requests.Session()
    resp = come_back(browser, stack, user, return_to)
    assert resp.status_code == 303, resp.text
    return browser


def token_with_cookie(browser: requests.Session, stack: BrowserStack, **headers: str) -> requests.Response:
    return browser.post(f"{stack.base}/v1/token", headers={"Origin": stack.base, **CSRF, **headers}, timeout=10)


def test_authorization_request_uses_pkce_state_and_nonce(stack: BrowserStack) -> None:
    with requests.Session() as browser:
        query = parse_qs(urlsplit(start_login(browser, stack)).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert query["state"][0] and query["nonce"][0]
    assert query["redirect_uri"] == [f"{stack.base}/callback"]
    assert query["response_type"] == ["code"] and "openid" in query["scope"][0].split()


def test_sign_in_then_cookie_token_then_logout(stack: BrowserStack) -> None:
    browser = sign_in(stack, "bob")
    cookie = browser.cookies.get("ts_session")
    assert cookie
    set_cookie = [c for c in browser.cookies if c.name == "ts_session"][0]
    assert set_cookie.has_nonstandard_attr("HttpOnly")
    resp = token_with_cookie(browser, stack)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["identity"], body["role"]) == ("bob@example.com", "admin")
    refresh = body["refresh_token"]

    out = browser.post(f"{stack.base}/logout", headers={"Origin": stack.base, **CSRF}, timeout=10)
    assert out.status_code == 200
    assert out.json()["families_revoked"] == 1
    assert out.json()["end_session_url"].startswith(stack.idp.issuer)
    # The session's refresh family is gone, and the cookie no longer signs anyone in.
    gone = post_refresh(stack.base, refresh)
    assert gone.status_code == 401
    again = browser.post(f"{stack.base}/v1/token", headers={"Origin": stack.base, **CSRF,
                                                           "Cookie": f"ts_session={cookie}"}, timeout=10)
    assert again.status_code == 401


def test_session_cookie_is_rotated_at_login(stack: BrowserStack) -> None:
    browser = sign_in(stack)
    first = browser.cookies.get("ts_session")
    auth_url = start_login(browser, stack)
    callback = follow_authorization(browser, auth_url, "alice", f"{stack.base}/callback")
    assert browser.get(callback, allow_redirects=False, timeout=10).status_code == 303
    second = browser.cookies.get("ts_session")
    assert second and second != first
    stale = requests.post(f"{stack.base}/v1/token", headers={"Origin": stack.base, **CSRF,
                                                              "Cookie": f"ts_session={first}"}, timeout=10)
    assert stale.status_code == 401


def test_csrf_needs_the_header_and_an_allowed_origin(stack: BrowserStack) -> None:
    browser = sign_in(stack)
    no_header = browser.post(f"{stack.base}/v1/token", headers={"Origin": stack.base}, timeout=10)
    assert no_header.status_code == 403 and problem(no_header)["type"] == "access_denied"
    evil = browser.post(f"{stack.base}/v1/token", headers={"Origin": "https://evil.example", **CSRF}, timeout=10)
    assert evil.status_code == 403
    no_origin = browser.post(f"{stack.base}/v1/token", headers=CSRF, timeout=10)
    assert no_origin.status_code == 403
    by_referer = browser.post(f"{stack.base}/v1/token", headers={**CSRF, "Referer": f"{stack.base}/demo/"},
                              timeout=10)
    assert by_referer.status_code == 200
    from_spa = browser.post(f"{stack.base}/v1/token", headers={"Origin": SPA_ORIGIN, **CSRF}, timeout=10)
    assert from_spa.status_code == 200
    # A cross-site form post: a simple request with no custom header, from another site.
    form = browser.post(f"{stack.base}/v1/token", data={"platform": "ios"},
                        headers={"Origin": "https://evil.example"}, timeout=10)
    assert form.status_code == 403


def test_cors_preflight_allowed_and_refused(stack: BrowserStack) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-requested-with"}
    ok = requests.options(f"{stack.base}/v1/token", headers={"Origin": SPA_ORIGIN, **preflight}, timeout=10)
    assert ok.status_code == 204
    assert ok.headers["Access-Control-Allow-Origin"] == SPA_ORIGIN
    assert ok.headers["Access-Control-Allow-Credentials"] == "true"
    assert "X-Requested-With" in ok.headers["Access-Control-Allow-Headers"]
    refused = requests.options(f"{stack.base}/v1/token",
                               headers={"Origin": "https://evil.example", **preflight}, timeout=10)
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    simple = requests.post(f"{stack.base}/v1/token", headers={"Origin": "https://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in simple.headers


def test_tampered_or_replayed_state_and_code(stack: BrowserStack) -> None:
    browser = requests.Session()
    auth_url = start_login(browser, stack)
    callback = follow_authorization(browser, auth_url, "alice", f"{stack.base}/callback")
    parts = urlsplit(callback)
    query = parse_qs(parts.query)
    bad_state = f"{stack.base}/callback?{urlencode({'code': query['code'][0], 'state': 'forged'})}"
    resp = browser.get(bad_state, allow_redirects=False, timeout=10)
    assert resp.status_code == 400 and problem(resp)["type"] == "invalid_request"
    ok = browser.get(callback, allow_redirects=False, timeout=10)
    assert ok.status_code == 303
    replay = browser.get(callback, allow_redirects=False, timeout=10)  # same code and state again
    assert replay.status_code == 400


def test_replayed_code_with_fresh_state_is_refused_by_the_idp(stack: BrowserStack) -> None:
    browser = requests.Session()
    first_cb = follow_authorization(browser, start_login(browser, stack), "alice", f"{stack.base}/callback")
    assert browser.get(first_cb, allow_redirects=False, timeout=10).status_code == 303
    # Start a new login (new state) but present the old, spent code with it.
    other = requests.Session()
    new_auth = start_login(other, stack)
    state = parse_qs(urlsplit(new_auth).query)["state"][0]
    code = parse_qs(urlsplit(first_cb).query)["code"][0]
    resp = other.get(f"{stack.base}/callback?{urlencode({'code': code, 'state': state})}",
                     allow_redirects=False, timeout=10)
    assert resp.status_code == 400 and "authorization code" in problem(resp)["detail"]


def test_state_from_another_browser_is_refused(stack: BrowserStack) -> None:
    victim, attacker = requests.Session(), requests.Session()
    callback = follow_authorization(attacker, start_login(attacker, stack), "alice", f"{stack.base}/callback")
    resp = victim.get(callback, allow_redirects=False, timeout=10)  # login CSRF: attacker's code, victim's browser
    assert resp.status_code == 400


def test_a_foreign_browser_cannot_cancel_a_victims_sign_in(stack: BrowserStack) -> None:
    """Another browser presents the victim's callback URL first: refused, and the victim's own
    browser still completes the sign-in (the state is only consumed by the browser it belongs to)."""
    victim, stranger = requests.Session(), requests.Session()
    callback = follow_authorization(victim, start_login(victim, stack), "alice", f"{stack.base}/callback")
    assert stranger.get(callback, allow_redirects=False, timeout=10).status_code == 400
    assert victim.get(callback, allow_redirects=False, timeout=10).status_code == 303


def test_pkce_verifier_is_required_by_the_idp(stack: BrowserStack) -> None:
    """The IdP enforces PKCE: the code cannot be redeemed without the verifier we kept server-side."""
    browser = requests.Session()
    callback = follow_authorization(browser, start_login(browser, stack), "alice", f"{stack.base}/callback")
    code = parse_qs(urlsplit(callback).query)["code"][0]
    token_endpoint = stack.idp.discovery()["token_endpoint"]
    stolen = requests.post(token_endpoint, data={
        "grant_type": "authorization_code", "code": code, "client_id": "token-service-dev",
        "redirect_uri": f"{stack.base}/callback",
    }, timeout=10)
    assert stolen.status_code == 400


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/path", "/\\evil.example", "javascript:alert(1)",
     "http://127.0.0.1:1/elsewhere", "https://user@" + "spa.example.test:5173/"],
)
def test_open_redirects_are_refused(stack: BrowserStack, target: str) -> None:
    resp = requests.get(f"{stack.base}/login", params={"return_to": target}, allow_redirects=False, timeout=10)
    assert resp.status_code == 400 and problem(resp)["type"] == "invalid_request"


@pytest.mark.parametrize("target", ["/demo/?refresh_in=5", f"{SPA_ORIGIN}/chat"])
def test_allowed_return_targets(stack: BrowserStack, target: str) -> None:
    """A path of this service, or a page of an allowed CORS origin: the callback sends the browser there."""
    with requests.Session() as browser:
        resp = come_back(browser, stack, "alice", target)
    assert resp.status_code == 303 and resp.headers["Location"] == target


def logout_claims(stack: BrowserStack, **overrides: object) -> dict:
    now = int(time.time())
    claims = {
        "iss": stack.idp.issuer, "aud": "token-service-dev", "iat": now, "exp": now + 120,
        "jti": uuid.uuid4().hex, "sub": "alice",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def post_logout_token(stack: BrowserStack, token: str) -> requests.Response:
    return requests.post(f"{stack.base}/backchannel-logout", data={"logout_token": token}, timeout=10)


@pytest.mark.parametrize(
    "case",
    ["bad signature", "wrong iss", "wrong aud", "no iat", "expired", "no events", "nonce", "no sub or sid",
     "wrong typ", "not a jwt"],
)
def test_backchannel_logout_rejects_invalid_tokens(stack: BrowserStack, case: str) -> None:
    key = rsa(stack.idp.keys)
    headers = {"typ": "logout+jwt"}
    claims = logout_claims(stack)
    if case == "bad signature":
        from devidp.harness import generate_keys

        key = {**rsa(generate_keys()), "kid": key["kid"]}
    elif case == "wrong iss":
        claims["iss"] = "https://other.example"
    elif case == "wrong aud":
        claims["aud"] = "someone-else"
    elif case == "no iat":
        del claims["iat"]
    elif case == "expired":
        claims.update(iat=int(time.time()) - 600, exp=int(time.time()) - 300)
    elif case == "no events":
        del claims["events"]
    elif case == "nonce":
        claims["nonce"] = "n-0"
    elif case == "no sub or sid":
        del claims["sub"]
    elif case == "wrong typ":
        headers = {"typ": "JWT+other"}
    token = "not.a.jwt" if case == "not a jwt" else forge(key, claims, headers=headers)
    resp = post_logout_token(stack, token)
    assert resp.status_code == 400, (case, resp.text)
    assert resp.headers["Cache-Control"] == "no-store"


def test_backchannel_logout_by_sub_revokes_only_that_user(stack: BrowserStack) -> None:
    alice, bob = sign_in(stack, "alice"), sign_in(stack, "bob")
    alice_rt = token_with_cookie(alice, stack).json()["refresh_token"]
    bob_rt = token_with_cookie(bob, stack).json()["refresh_token"]
    token = forge(rsa(stack.idp.keys), logout_claims(stack, sub="alice"), headers={"typ": "logout+jwt"})
    resp = post_logout_token(stack, token)
    assert resp.status_code == 200, resp.text
    assert post_refresh(stack.base, alice_rt).status_code == 401
    assert token_with_cookie(alice, stack).status_code == 401  # the browser session is gone too
    assert post_refresh(stack.base, bob_rt).status_code == 200
    replay = post_logout_token(stack, token)
    assert replay.status_code == 400 and "replay" in problem(replay)["detail"]


def test_a_logout_token_with_a_huge_exp_still_logs_out(stack: BrowserStack) -> None:
    """exp far in the future (or absurd) caps how long its jti is remembered; the logout applies."""
    browser = sign_in(stack, "alice")
    refresh = token_with_cookie(browser, stack).json()["refresh_token"]
    for exp in (10**12, 2**63):
        claims = logout_claims(stack, sub="alice", exp=exp)
        resp = post_logout_token(stack, forge(rsa(stack.idp.keys), claims, headers={"typ": "logout+jwt"}))
        assert resp.status_code == 200, resp.text
    assert post_refresh(stack.base, refresh).status_code == 401


def test_backchannel_logout_by_sid_from_the_real_idp_token(stack: BrowserStack) -> None:
    """The ID token's sid (backchannel_logout_session_required) keys the logout."""
    browser = sign_in(stack, "dave")
    refresh = token_with_cookie(browser, stack).json()["refresh_token"]
    id_token = stack.idp.login("dave", redirect_uri=f"{stack.base}/callback")["id_token"]  # a 2nd IdP session
    import jwt as pyjwt

    sid = pyjwt.decode(id_token, options={"verify_signature": False}).get("sid")
    assert sid, "the IdP must put sid in ID tokens for this client"
    other = requests.post(f"{stack.base}/v1/token", headers={"Authorization": f"Bearer {id_token}"}, timeout=10)
    other_rt = other.json()["refresh_token"]
    token = forge(rsa(stack.idp.keys), logout_claims(stack, sub=None, sid=sid), headers={"typ": "logout+jwt"})
    assert post_logout_token(stack, token).status_code == 200
    assert post_refresh(stack.base, other_rt).status_code == 401
    # The browser's own IdP session is a different sid: untouched.
    assert post_refresh(stack.base, refresh).status_code == 200


def test_logout_at_the_idp_reaches_the_service_by_back_channel(stack: BrowserStack) -> None:
    """The real oidc-provider sends the logout token when the user signs out there."""
    import re

    browser = sign_in(stack, "bob")
    refresh = token_with_cookie(browser, stack).json()["refresh_token"]
    end_session = stack.idp.discovery()["end_session_endpoint"]
    page = browser.get(end_session, params={"client_id": "token-service-dev"}, timeout=10)
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text).group(1)
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', page.text).group(1)
    done = browser.post(action, data={"xsrf": xsrf, "logout": "yes"}, allow_redirects=False, timeout=10)
    assert done.status_code in (200, 303)
    gone = post_refresh(stack.base, refresh)
    assert gone.status_code == 401
    assert token_with_cookie(browser, stack).status_code == 401


def test_tampered_nonce_is_refused(stack: BrowserStack) -> None:
    """The authorization request is altered to carry another nonce: PKCE still matches, the nonce not."""
    browser = requests.Session()
    auth_url = start_login(browser, stack)
    parts = urlsplit(auth_url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["nonce"] = "attacker-chosen-nonce"
    tampered = parts._replace(query=urlencode(query)).geturl()
    callback = follow_authorization(browser, tampered, "alice", f"{stack.base}/callback")
    resp = browser.get(callback, allow_redirects=False, timeout=10)
    assert resp.status_code == 400
    assert "nonce" in problem(resp)["detail"]
    assert "ts_session" not in browser.cookies


def test_tampered_pkce_challenge_is_refused(stack: BrowserStack) -> None:
    """A code obtained with another code_challenge cannot be redeemed with this login's verifier."""
    browser = requests.Session()
    auth_url = start_login(browser, stack)
    parts = urlsplit(auth_url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["code_challenge"] = "A" * 43
    callback = follow_authorization(browser, parts._replace(query=urlencode(query)).geturl(), "alice",
                                    f"{stack.base}/callback")
    resp = browser.get(callback, allow_redirects=False, timeout=10)
    assert resp.status_code == 400 and "authorization code" in problem(resp)["detail"]
