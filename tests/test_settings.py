"""Configuration validation: each rule names the key, the value and what to fix (design 4)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.support import ROOT, SERVICE_ENV, TWILIO_SECRET, config_dict
from token_service.errors import ConfigError
from token_service.settings import load_settings, settings_from_dict

pytestmark = pytest.mark.unit

ENV = {"TWILIO_API_KEY_SECRET": TWILIO_SECRET}
ISSUER = "https://login.example.com/"


def problems(data: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, environ=ENV if env is None else env)
    return info.value.problems


def with_(path: str, value: object) -> dict:
    data = copy.deepcopy(config_dict(ISSUER))
    node = data
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


def test_the_test_configuration_is_valid() -> None:
    settings = settings_from_dict(config_dict(ISSUER), environ=ENV)
    assert settings.twilio.token_ttl == 900
    assert settings.issuers[0].identity_source == "{email}"


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("twilio.account_sid", "AC"),
        ("twilio.api_key_sid", "SK"),
        ("twilio.service_sid", "IS"),
        ("roles.sids.user", "RL"),
        ("twilio.push_credentials.ios", "CR"),
    ],
)
@pytest.mark.parametrize("bad", ["{p}123", "{p}" + "g" * 32, "XX" + "0" * 32, "{p}" + "0" * 33])
def test_every_sid_pattern(path: str, prefix: str, bad: str) -> None:
    value = bad.format(p=prefix)
    found = problems(with_(path, value))
    assert found == [f"{path}: {value!r}: must be a Twilio SID: '{prefix}' followed by 32 hexadecimal digits"]


@pytest.mark.parametrize(("ttl", "ok"), [(179, False), (180, True), (86400, True), (86401, False)])
def test_token_ttl_bounds(ttl: int, ok: bool) -> None:
    data = with_("twilio.token_ttl", ttl)
    if ok:
        assert settings_from_dict(data, environ=ENV).twilio.token_ttl == ttl
    else:
        assert problems(data)[0].startswith(f"twilio.token_ttl: {ttl}: Input should be")


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://login.example.com", "must use https"),
        ("ftp://login.example.com", "absolute https URL"),
        ("login.example.com", "absolute https URL"),
        ("https://user:pw@login.example.com", "credentials"),
    ],
)
def test_issuer_urls(url: str, rule: str) -> None:
    found = problems(with_("issuers.0.issuer", url))
    assert len(found) == 1 and found[0].startswith("issuers[0].issuer: ") and rule in found[0]


def test_http_issuer_allowed_on_loopback_only() -> None:
    settings_from_dict(with_("issuers.0.issuer", "http://127.0.0.1:9000"), environ=ENV)
    settings_from_dict(with_("issuers.0.issuer", "http://localhost:9000"), environ=ENV)


@pytest.mark.parametrize("alg", ["HS256", "none", "RS1"])
def test_only_asymmetric_algorithms(alg: str) -> None:
    found = problems(with_("issuers.0.algorithms", ["RS256", alg]))
    assert any("issuers[0].algorithms" in p and "only asymmetric" in p for p in found)


def test_role_rules_must_name_known_roles() -> None:
    data = with_("roles.rules", [{"claim": "groups", "equals": "x", "role": "superuser"}])
    assert "'superuser' is not a key of roles.sids" in problems(data)[0]
    assert "'owner' is not a key" in problems(with_("roles.default", "owner"))[0]


def test_conditions_need_exactly_one_test() -> None:
    data = with_("roles.rules", [{"claim": "groups", "equals": "a", "glob": "b*", "role": "user"}])
    assert "exactly one of equals, one_of, glob" in problems(data)[0]


def test_secrets_come_from_env_or_file_never_toml(tmp_path: Path) -> None:
    unset = problems(config_dict(ISSUER), env={})
    assert any("TWILIO_API_KEY_SECRET" in p and "environment" in p for p in unset)
    secret_file = tmp_path / "secret"
    secret_file.write_text(TWILIO_SECRET + "\n")
    env = {"TWILIO_API_KEY_SECRET_FILE": str(secret_file)}
    settings = settings_from_dict(config_dict(ISSUER), environ=env)
    assert settings.secrets.twilio_api_key_secret.get_secret_value() == TWILIO_SECRET
    in_toml = with_("twilio.api_key_secret", "oops-this-is-a-secret")
    found = problems(in_toml)
    assert found[0].startswith("twilio.api_key_secret: (hidden): secrets must come from environment")
    assert "oops" not in "".join(found)


def test_short_secret_is_rejected_without_showing_it() -> None:
    found = problems(config_dict(ISSUER), env={"TWILIO_API_KEY_SECRET": "short-secret"})
    assert found == [
        "TWILIO_API_KEY_SECRET: (hidden): must be at least 32 characters (a Twilio API key secret is 32)"
    ]


def test_identity_policy_rules() -> None:
    assert "needs the explicit allowed_reserved" in problems(with_("identity.allowed_reserved", []))[0]
    assert "is not one of the reserved" in problems(with_("identity.allowed_reserved", ["a"]))[0]
    found = problems(with_("issuers.0.identity_prefix", "corp:"))
    assert "the character ':' is not allowed" in found[0]


def test_unknown_keys_and_duplicates_are_named() -> None:
    assert problems(with_("twilio.ttl", 5))[0].startswith("twilio.ttl: 5: Extra inputs are not permitted")
    data = config_dict(ISSUER)
    data["issuers"].append(copy.deepcopy(data["issuers"][0]))
    assert "name must be unique, repeated: test" in problems(data)[0]


def test_load_settings_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "missing.toml", environ=ENV)
    bad = tmp_path / "bad.toml"
    bad.write_text("[twilio\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ=ENV)
    with pytest.raises(ConfigError, match="TOKEN_SERVICE_CONFIG"):
        load_settings(None, environ=ENV)


def test_shipped_example_and_dev_configs_parse() -> None:
    root = Path(__file__).resolve().parent.parent
    dev = load_settings(root / "dev" / "config.toml", environ=SERVICE_ENV)
    assert dev.store.url == "memory://"
    # The example holds placeholders on purpose: only the SIDs and the secret are wrong.
    with pytest.raises(ConfigError) as info:
        load_settings(root / "config.example.toml", environ={})
    assert all("SID" in p or "TWILIO_API_KEY_SECRET" in p for p in info.value.problems)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("redis://user:pw@127.0.0.1:6379/0", "must not carry a password"),
        ("redis+sentinel://127.0.0.1:26379", "needs the service name"),
        ("mysql://127.0.0.1", "scheme must be one of"),
    ],
)
def test_store_urls(url: str, rule: str) -> None:
    found = problems(with_("store", {"url": url}))
    assert found[0].startswith(f"store.url: {url!r}: ") and rule in found[0]


def test_refresh_and_rate_limit_rules() -> None:
    assert "idle_ttl must not exceed absolute_ttl" in problems(
        with_("refresh", {"idle_ttl": 7200, "absolute_ttl": 3600}))[0]
    bad_policy = {"policies": [{"endpoint": "token", "key": "family", "limit": 1, "window": 1}]}
    assert "the token endpoint has no family yet" in problems(with_("rate_limits", bad_policy))[0]
    twice = {"policies": [{"endpoint": "token", "key": "ip", "limit": 1, "window": 1}] * 2}
    assert "repeated: token-ip" in problems(with_("rate_limits", twice))[0]


def test_redis_password_comes_from_env() -> None:
    env = {**ENV, "REDIS_PASSWORD": "pw-from-env"}
    settings = settings_from_dict(with_("store", {"url": "redis://127.0.0.1:6379/0"}), environ=env)
    assert settings.secrets.redis_password is not None
    assert settings.secrets.redis_password.get_secret_value() == "pw-from-env"


def issuer_with(**keys: object) -> dict:
    data = config_dict(ISSUER)
    data["issuers"][0].update(keys)
    return data


@pytest.mark.parametrize(
    ("keys", "rule"),
    [
        ({"identity_claim": "/a~2b"}, "issuers[0].identity_claim: '/a~2b': is not a valid JSON Pointer"),
        ({"identity_claim": None, "identity_sources": ["uid", "{tid}.{oid"]}, "unmatched brace"),
        ({"identity_claim": None, "identity_sources": ["uid"], "identity_template": "{sub}"},
         "set one of identity_claim, identity_template, identity_sources"),
        ({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "jwks_uri": "https://k.example/keys"},
         "needs the tenants it accepts (tenants = [...]) or, explicitly, any_tenant = true"),
        ({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "any_tenant": True},
         "set discovery_url"),
        ({"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "jwks_uri": "https://k.example/keys",
          "tenants": ["contoso"]}, "'contoso' is not a tenant id"),
        ({"tenants": ["9188040d-6c67-4c5b-b112-36a304b66dad"]}, "need {tenantid} in the issuer"),
        ({"audiences": []}, "needs audiences"),
        ({"client_id_claim": "client_id"}, "client_id_claim = 'client_id' needs client_ids"),
        ({"client_id_claim": "aud", "client_ids": ["x"]}, "issuers[0].client_id_claim: 'aud': Input should be"),
        ({"tolerated_audiences": ["account"]}, "set client_id_claim too"),
        ({"algorithms": ["Ed25519", "HS256"]}, "'HS256' is not allowed"),
        ({"roles": {"rules": [{"claim": "roles", "equals": "x", "role": "owner"}]}},
         "issuers[test].roles.rules[0].role 'owner' is not a key of roles.sids"),
        ({"opaque": {"checks": ["userinfo"]}}, "userinfo alone cannot tell which client"),
        ({"opaque": {"checks": ["introspection"]}}, "introspection needs client_id and credential_env"),
        ({"opaque": {"checks": ["introspection"], "client_id": "c", "credential_env": "IDP_INTROSPECT"}},
         "neither IDP_INTROSPECT nor IDP_INTROSPECT_FILE is set"),
        ({"opaque": {"checks": ["introspection"], "client_id": "c", "credential_env": "secret value"}},
         "issuers[0].opaque.credential_env: 'secret value': String should match pattern"),
    ],
)
def test_new_issuer_keys_are_explained(keys: dict, rule: str) -> None:
    found = problems(issuer_with(**keys))
    assert any(rule in p for p in found), found


def test_issuer_strings_and_opaque_routes_must_be_unambiguous() -> None:
    data = config_dict(ISSUER)
    data["issuers"].append({**data["issuers"][0], "name": "other", "issuer": "https://other.example",
                            "issuer_aliases": [ISSUER]})
    assert "issuer must be unique, repeated: https://login.example.com/" in problems(data)[0]
    opaque = {"checks": ["userinfo"], "any_client": True}
    data = config_dict(ISSUER)
    data["issuers"][0]["opaque"] = opaque
    data["issuers"].append({**data["issuers"][0], "name": "other", "issuer": "https://other.example"})
    assert "give all but one of them opaque.prefix" in problems(data)[0]
    data["issuers"][1]["opaque"] = {**opaque, "prefix": "ya29."}
    data["issuers"][0]["opaque"] = {**opaque, "prefix": "ya"}
    assert "prefixes must not overlap" in problems(data)[0]
    template = {"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "jwks_uri": "https://k.example/k"}
    data = config_dict(ISSUER)
    data["issuers"] = [{**data["issuers"][0], **template, "name": n, "tenants": t}
                       for n, t in (("a", ["9188040d-6c67-4c5b-b112-36a304b66dad"]),
                                    ("b", ["9188040d-6c67-4c5b-b112-36a304b66dad"]))]
    assert "both accept" in problems(data)[0]


def test_examples_for_each_identity_provider_pass_check_config() -> None:
    """Every examples/idp/*.toml, through the real CLI, as an operator would run it."""
    from tests.gunicorn_support import run_cli

    examples = sorted((ROOT / "examples" / "idp").glob("*.toml"))
    assert len(examples) == 8
    for path in examples:
        result = run_cli("check-config", "--config", str(path), env={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})
        assert result.returncode == 0 and "configuration is valid" in result.stdout, (path.name, result.stderr)
