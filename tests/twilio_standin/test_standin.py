"""Self-check of the Conversations stand-in: the REAL twilio client against it, every exchange checked against
Twilio's published OpenAPI description (tests/twilio_spec)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

from tests.twilio_standin import (
    CONVERSATIONS_ORIGIN,
    Call,
    ConversationsStandIn,
    RewritingHttpClient,
    SpecNotInstalled,
    conversations_v1,
    new_sid,
    twilio_client,
)
from tests.twilio_standin.spec import load_spec_document

pytestmark = pytest.mark.integration

TIMEOUT = 2.0


def _client(standin: ConversationsStandIn, secret: str | None = None, key: str | None = None) -> Client:
    return twilio_client(
        standin.base_url,
        standin.account_sid,
        key or standin.api_key_sid,
        secret or standin.api_key_secret,
        timeout=TIMEOUT,
    )


@pytest.fixture
def client(standin: ConversationsStandIn) -> Iterator[Client]:
    twilio = _client(standin)
    yield twilio
    twilio.http_client.close()


@pytest.fixture
def users(client: Client, standin: ConversationsStandIn):
    return client.conversations.v1.services(standin.service_sid).users


def _users_path(standin: ConversationsStandIn, tail: str = "") -> str:
    return f"/v1/Services/{standin.service_sid}/Users{tail}"


# -- happy paths -----------------------------------------------------------------------------------------------


def test_create_then_fetch_by_identity_and_by_sid(standin: ConversationsStandIn, users) -> None:
    role = new_sid("RL")
    created = users.create(identity="alice@example.com", role_sid=role, friendly_name="Alice")

    assert created.sid.startswith("US") and len(created.sid) == 34
    assert created.account_sid == standin.account_sid
    assert created.chat_service_sid == standin.service_sid
    assert (created.identity, created.role_sid, created.friendly_name) == ("alice@example.com", role, "Alice")
    assert created.attributes == "{}"
    assert created.url == f"{CONVERSATIONS_ORIGIN}{_users_path(standin, '/' + created.sid)}"
    assert created.links == {"user_conversations": created.url + "/Conversations"}
    assert created.date_created is not None and created.date_created == created.date_updated
    assert created.is_online is None and created.is_notifiable is None  # the Service has no reachability

    by_identity = users("alice@example.com").fetch()
    by_sid = users(created.sid).fetch()
    assert by_identity.sid == by_sid.sid == created.sid
    assert by_sid.identity == "alice@example.com"

    assert standin.calls == [
        Call(
            "POST",
            _users_path(standin),
            {"Identity": "alice@example.com", "RoleSid": role, "FriendlyName": "Alice"},
        ),
        Call("GET", _users_path(standin, "/alice@example.com"), {}),
        Call("GET", _users_path(standin, f"/{created.sid}"), {}),
    ]


def test_create_without_role_gets_the_default_role(standin: ConversationsStandIn, users) -> None:
    created = users.create(identity="bob", x_twilio_webhook_enabled="true")

    assert created.role_sid == standin.default_role_sid
    assert created.friendly_name is None


def test_update_role_sid(standin: ConversationsStandIn, users) -> None:
    created = users.create(identity="carol", role_sid=new_sid("RL"))
    new_role = new_sid("RL")

    updated = users("carol").update(role_sid=new_role)

    assert (updated.sid, updated.role_sid) == (created.sid, new_role)
    assert users(created.sid).fetch().role_sid == new_role
    assert standin.user("carol")["role_sid"] == new_role
    assert standin.calls[1] == Call("POST", _users_path(standin, "/carol"), {"RoleSid": new_role})


def test_list_follows_pages(standin: ConversationsStandIn, users) -> None:
    for i in range(5):
        users.create(identity=f"user{i}")

    listed = users.list(page_size=2)

    assert [u.identity for u in listed] == [f"user{i}" for i in range(5)]
    gets = [c for c in standin.calls if c.method == "GET"]
    # 3 pages; the 2nd and 3rd come from meta.next_page_url (https://conversations.twilio.com/..., rewritten)
    assert [c.form for c in gets] == [
        {"PageSize": "2"},
        {"PageSize": "2", "Page": "1", "PageToken": "PT2"},
        {"PageSize": "2", "Page": "2", "PageToken": "PT4"},
    ]
    assert [u.identity for u in users.list(limit=3)] == ["user0", "user1", "user2"]


def test_delete(standin: ConversationsStandIn, users) -> None:
    users.create(identity="dave")

    assert users("dave").delete() is True

    assert standin.users() == []
    with pytest.raises(TwilioRestException) as info:
        users("dave").fetch()
    assert info.value.status == 404


def test_default_service_paths(standin: ConversationsStandIn, client: Client) -> None:
    created = client.conversations.v1.users.create(identity="erin")

    assert created.chat_service_sid == standin.service_sid
    assert created.url == f"{CONVERSATIONS_ORIGIN}/v1/Users/{created.sid}"
    assert client.conversations.v1.users("erin").fetch().sid == created.sid
    assert standin.calls[0].path == "/v1/Users"


# -- errors ----------------------------------------------------------------------------------------------------


def test_missing_user_is_404(standin: ConversationsStandIn, users) -> None:
    with pytest.raises(TwilioRestException) as info:
        users("nobody").fetch()

    assert info.value.status == 404
    assert info.value.code == 20404


def test_unknown_service_is_404(standin: ConversationsStandIn, client: Client) -> None:
    with pytest.raises(TwilioRestException) as info:
        client.conversations.v1.services(new_sid("IS")).users("nobody").fetch()
    assert (info.value.status, info.value.code) == (404, 20404)


def test_duplicate_identity_is_409(standin: ConversationsStandIn, users) -> None:
    users.create(identity="frank")

    with pytest.raises(TwilioRestException) as info:
        users.create(identity="frank")

    assert (info.value.status, info.value.code) == (409, 50201)
    assert len(standin.users()) == 1


def test_identities_are_case_sensitive(standin: ConversationsStandIn, users) -> None:
    upper = users.create(identity="Grace")

    with pytest.raises(TwilioRestException) as info:
        users("grace").fetch()
    assert info.value.status == 404

    lower = users.create(identity="grace")  # no 409: a different identity
    assert lower.sid != upper.sid
    assert users("Grace").fetch().sid == upper.sid
    assert users("grace").fetch().sid == lower.sid


@pytest.mark.parametrize("secret, key", [("wrong-secret", None), (None, new_sid("SK"))])
def test_bad_credentials_are_401(standin: ConversationsStandIn, secret: str | None, key: str | None) -> None:
    bad = _client(standin, secret=secret, key=key)
    try:
        with pytest.raises(TwilioRestException) as info:
            bad.conversations.v1.services(standin.service_sid).users("anyone").fetch()
    finally:
        bad.http_client.close()
    assert (info.value.status, info.value.code) == (401, 20003)
    assert bad.http_client.last_response.headers["WWW-Authenticate"] == 'Basic realm="Twilio API"'


# -- failure injection -----------------------------------------------------------------------------------------


def test_injected_429_with_retry_after_reaches_the_client(standin: ConversationsStandIn, client: Client, users) -> None:
    standin.fail_next(429, retry_after=7)

    with pytest.raises(TwilioRestException) as info:
        users.create(identity="heidi")

    assert (info.value.status, info.value.code) == (429, 20429)
    assert client.http_client.last_response.headers["Retry-After"] == "7"
    assert standin.users() == []  # the throttled request was not executed
    assert len(standin.calls) == 1  # and the library did not retry on its own
    assert users.create(identity="heidi").identity == "heidi"  # the injection is used up


@pytest.mark.parametrize("status, code", [(500, 20500), (503, 20503)])
def test_injected_server_errors_count(standin: ConversationsStandIn, users, status: int, code: int) -> None:
    standin.fail_next(status, count=2)

    for _ in range(2):
        with pytest.raises(TwilioRestException) as info:
            users("ivan").fetch()
        assert (info.value.status, info.value.code) == (status, code)
    with pytest.raises(TwilioRestException) as info:
        users("ivan").fetch()
    assert info.value.status == 404  # back to normal


def test_injected_delay_trips_the_client_timeout(standin: ConversationsStandIn) -> None:
    slow = twilio_client(standin.base_url, standin.account_sid, standin.api_key_sid, standin.api_key_secret, 0.3)
    users = slow.conversations.v1.services(standin.service_sid).users
    try:
        standin.fail_next(None, delay=1.0)
        with pytest.raises(requests.exceptions.Timeout):
            users.create(identity="judy")

        # like Twilio, the request the client gave up on still runs once its delay is over
        deadline = time.monotonic() + 5
        while standin.user("judy") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert standin.user("judy") is not None
        with pytest.raises(TwilioRestException) as info:
            users.create(identity="judy")
        assert info.value.status == 409
    finally:
        slow.http_client.close()


def test_reset_interrupts_a_delay_without_executing_the_request(standin: ConversationsStandIn) -> None:
    slow = twilio_client(standin.base_url, standin.account_sid, standin.api_key_sid, standin.api_key_secret, 0.3)
    try:
        standin.fail_next(None, delay=30)
        started = time.monotonic()
        with pytest.raises(requests.exceptions.Timeout):
            slow.conversations.v1.services(standin.service_sid).users.create(identity="ken")
        standin.reset()
        time.sleep(0.2)
        assert standin.users() == []
        assert time.monotonic() - started < 5
    finally:
        slow.http_client.close()


# -- the validation itself can fail ----------------------------------------------------------------------------


def test_requests_outside_the_spec_are_recorded(standin: ConversationsStandIn) -> None:
    auth = (standin.api_key_sid, standin.api_key_secret)
    with requests.Session() as http:
        unknown_field = http.post(
            standin.base_url + _users_path(standin), data={"Identity": "kim", "Role": "admin"}, auth=auth
        )
        bad_role = http.post(
            standin.base_url + _users_path(standin), data={"Identity": "kim", "RoleSid": "admin"}, auth=auth
        )
        no_identity = http.post(standin.base_url + _users_path(standin), data={"FriendlyName": "Kim"}, auth=auth)
        too_big_page = http.get(standin.base_url + _users_path(standin), params={"PageSize": 100}, auth=auth)
        no_such_path = http.get(standin.base_url + "/v1/Services/not-a-sid/Userz", auth=auth)
        wrong_method = http.put(standin.base_url + _users_path(standin), auth=auth)
        bad_header = http.delete(
            standin.base_url + _users_path(standin, "/kim"), headers={"X-Twilio-Webhook-Enabled": "maybe"}, auth=auth
        )
        not_implemented = http.get(standin.base_url + f"/v1/Services/{standin.service_sid}/Roles", auth=auth)

    assert [r.status_code for r in (unknown_field, bad_role, no_identity, too_big_page)] == [400] * 4
    assert unknown_field.json()["code"] == 20001
    assert (no_such_path.status_code, wrong_method.status_code) == (404, 405)
    assert (bad_header.status_code, not_implemented.status_code) == (400, 501)
    assert standin.users() == []

    violations = standin.take_violations()
    expected = [
        "parameter 'Role' is not in the spec",
        "body RoleSid: 'admin' does not match ^RL[0-9a-fA-F]{32}$",
        "required parameter 'Identity' is missing",
        "query PageSize: 100 is greater than the maximum 50",
        "no such path in the spec",
        "no operation for this method in the spec",
        "header X-Twilio-Webhook-Enabled: 'maybe' is not one of ['true', 'false']",
        "ListServiceRole (GET /v1/Services/{ChatServiceSid}/Roles) is not implemented",
    ]
    for fragment in expected:
        assert any(fragment in v for v in violations), (fragment, violations)


def test_response_checks_can_fail() -> None:
    spec = conversations_v1()
    fetch = spec.operation("FetchServiceUser")
    good = {
        "sid": new_sid("US"),
        "account_sid": new_sid("AC"),
        "chat_service_sid": new_sid("IS"),
        "role_sid": new_sid("RL"),
        "identity": "x",
        "friendly_name": None,
        "attributes": "{}",
        "is_online": None,
        "is_notifiable": None,
        "date_created": "2019-12-16T22:18:37Z",
        "date_updated": "2019-12-16T22:18:38Z",
        "url": "https://conversations.twilio.com/v1/Services/IS/Users/US",
        "links": {"user_conversations": "https://conversations.twilio.com/v1/Services/IS/Users/US/Conversations"},
    }

    def check(payload: object, status: int = 200, closed: bool = True) -> list[str]:
        return spec.check_response(fetch, status, "application/json", json.dumps(payload).encode(), closed=closed)

    assert check(good) == []
    assert any("$.sid" in e and "does not match" in e for e in check({**good, "sid": "XX" + good["sid"][2:]}))
    assert any("expected boolean" in e for e in check({**good, "is_online": "yes"}))
    assert any("not an RFC 3339 date-time" in e for e in check({**good, "date_created": "yesterday"}))
    assert any("'links' is missing" in e for e in check({k: v for k, v in good.items() if k != "links"}))
    assert any("'extra' is not declared" in e for e in check({**good, "extra": 1}))
    assert check({**good, "extra": 1}, closed=False) == []  # the spec itself does not close the object
    assert any("status 201 is not listed" in e for e in check(good, status=201))
    assert any("'more_info' is missing" in e for e in check({"code": 20404, "message": "x", "status": 404}, 404))


def test_missing_spec_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(SpecNotInstalled, match=r"npm ci --prefix tests/twilio_spec"):
        load_spec_document(tmp_path / "twilio_conversations_v1.json")


# -- the http client -------------------------------------------------------------------------------------------


def test_rewriting_is_by_origin_and_refuses_unmapped_hosts() -> None:
    with RewritingHttpClient(
        {"https://conversations.twilio.com": "http://127.0.0.1:9/prefix/", "https://api.twilio.com/2010": "http://h"},
        timeout=1.0,
    ) as http:
        assert http.rewrite("https://conversations.twilio.com/v1/Users?PageSize=2") == (
            "http://127.0.0.1:9/prefix/v1/Users?PageSize=2"
        )
        assert http.rewrite("https://CONVERSATIONS.twilio.com/v1") == "http://127.0.0.1:9/prefix/v1"
        assert http.rewrite("https://api.twilio.com/2010/x") == "http://h/x"  # path prefixes match whole segments
        for url in (
            "https://conversations.twilio.com.evil.example/v1/Users",
            "http://conversations.twilio.com/v1/Users",
            "https://api.twilio.com/2010-04-01/Accounts",
            "https://chat.twilio.com/v2/Services",
        ):
            with pytest.raises(TwilioException, match="refusing"):
                http.rewrite(url)
    with RewritingHttpClient({}, timeout=1.0, passthrough=True) as http:
        assert http.rewrite("https://chat.twilio.com/v2") == "https://chat.twilio.com/v2"


def test_secrets_stay_out_of_logs_and_errors(
    standin: ConversationsStandIn, client: Client, users, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    standin.fail_next(503)
    with pytest.raises(TwilioRestException) as info:
        users.create(identity="leo")
    users.create(identity="leo")

    secret = standin.api_key_secret
    assert "Response Status Code: 201" in caplog.text  # the library did log the exchange
    assert secret not in caplog.text
    assert secret not in str(info.value) and secret not in repr(client) and secret not in repr(client.http_client)
