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
    assert problems(with_("twilio.token_tll", 5)) == ["twilio: unknown key 'token_tll' (did you mean 'token_ttl'?)"]
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
    shown = url.replace(":pw@", ":***@")  # a password in the URL is refused, and not printed
    assert found[0].startswith(f"store.url: {shown!r}: ") and rule in found[0]
    assert "pw@" not in found[0]


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
# ------------------------------------------------------------------ check-config: every problem


def test_every_problem_is_listed_in_one_run_even_beside_a_secret() -> None:
    """Seven mistakes, one of them a secret in the file: seven problems, and the secret not shown."""
    data = with_("twilio.token_ttl", 60)
    data["twilio"]["service_sid"] = "IX" + "0" * 32
    data["twilio"]["api_key_secret"] = "pasted-secret-value"
    data["twilio"]["tokn_ttl"] = 900
    data["server"] = {"cors_origins": ["*"], "trusted_proxies": -1}
    found = problems(data, env={})
    assert len(found) == 7, found
    assert found[0] == ("twilio.api_key_secret: (hidden): secrets must come from environment variables or "
                        "*_FILE files, never from the TOML file")
    assert "server.trusted_proxies: -1: Input should be greater than or equal to 0" in found
    assert any(p.startswith("server.cors_origins: ['*']: '*' is not allowed") for p in found)
    assert "twilio: unknown key 'tokn_ttl' (did you mean 'token_ttl'?)" in found
    assert any(p.startswith("twilio.service_sid: 'IX000") for p in found)
    assert any(p.startswith("TWILIO_API_KEY_SECRET: (unset)") for p in found)
    assert "pasted-secret-value" not in "\n".join(found)


def test_the_memory_store_rule_is_checked_with_every_other_rule() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(with_("twilio.token_ttl", 60), environ=ENV, workers=3)
    found = info.value.problems
    assert len(found) == 2
    assert found[0].startswith("twilio.token_ttl: 60:")
    assert found[1].startswith("store.url: 'memory://': the memory store lives in one process but 3 workers")
    assert settings_from_dict(config_dict(ISSUER), environ=ENV, workers=1).store.is_memory


@pytest.mark.parametrize("key", ["session_key", "client_secret", "refresh_token", "admin_password", "api_key"])
def test_login_keys_named_like_secrets_are_refused_and_never_shown(key: str) -> None:
    data = with_("login", {"enabled": False, key: "do-not-print-me-0123456789abcdef"})
    found = problems(data)
    assert found == [f"login.{key}: (hidden): secrets must come from environment variables or *_FILE files, "
                     "never from the TOML file"]


def test_a_key_that_cannot_be_placed_never_shows_its_value() -> None:
    data = with_("store", {"sentinel_pass": "hunter2-value"})
    data["twilio"]["auth"] = "hunter3-value"
    found = problems(data)
    assert "hunter" not in "\n".join(found)
    assert found == ["store: unknown key 'sentinel_pass' (known keys: url, username, key_prefix, connect_timeout, "
                     "socket_timeout, retry_after, tls, tls_ca_file, tls_cert_file, tls_key_file, max_connections)",
                     "twilio: unknown key 'auth' (known keys: account_sid, api_key_sid, service_sid, region, "
                     "token_ttl, include_nbf, push_credentials)"]


def test_unknown_sections_and_list_entries_get_a_did_you_mean() -> None:
    data = config_dict(ISSUER)
    data["twillio"] = {}
    data["issuers"][0]["audience"] = ["x"]
    found = problems(data)
    assert "(top level): unknown key 'twillio' (did you mean 'twilio'?)" in found
    assert "issuers[0]: unknown key 'audience' (did you mean 'audiences'?)" in found


def test_an_obsolete_key_says_so() -> None:
    found = problems(with_("logging", {"level": "INFO", "flush_interval": 0.25}))
    assert found == ["logging: key 'flush_interval' is obsolete since 0.2.0: log lines are written as they "
                     "happen; remove it"]


def test_rules_over_a_section_name_the_key_path_not_a_dump_of_the_section() -> None:
    found = problems(with_("refresh", {"idle_ttl": 7200, "absolute_ttl": 3600}))
    assert found == ["refresh: idle_ttl must not exceed absolute_ttl"]
    data = config_dict(ISSUER)
    data["issuers"].append(copy.deepcopy(data["issuers"][0]))
    (found,) = problems(data)
    assert "{" not in found and "audiences" not in found  # no dict of the whole configuration


@pytest.mark.parametrize("origin", ["*", "https://*.example.com"])
def test_a_wildcard_cors_origin_is_refused_with_the_reason(origin: str) -> None:
    (found,) = problems(with_("server", {"cors_origins": ["https://chat.example.com", origin]}))
    assert found.startswith("server.cors_origins: ")
    assert "credentials" in found and "list each origin" in found


@pytest.mark.parametrize("origin", ["chat.example.com", "https://chat.example.com/app", "ftp://chat.example.com"])
def test_a_cors_origin_must_be_scheme_host_and_port(origin: str) -> None:
    (found,) = problems(with_("server", {"cors_origins": [origin]}))
    assert "is not an origin: scheme://host[:port]" in found


def test_placeholder_sids_are_warned_about_not_refused() -> None:
    from token_service.settings import config_warnings

    data = with_("twilio.account_sid", "AC" + "0" * 32)
    data["roles"]["sids"]["admin"] = "RL" + "0" * 31 + "2"
    warned = config_warnings(settings_from_dict(data, environ=ENV))
    assert [w.split(":")[0] for w in warned] == [
        "twilio.account_sid", "twilio.api_key_sid", "twilio.service_sid", "twilio.push_credentials.ios",
        "roles.sids.user", "roles.sids.admin",
    ]  # the test SIDs repeat one digit too ("b" * 32, ...)
    assert all("looks like a placeholder" in w for w in warned)
    real = {"account_sid": "AC3f9a0c2e7b1d4f6a8c0e2b4d6f8a1c3e", "api_key_sid": "SK0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
            "service_sid": "IS9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"}
    data = config_dict(ISSUER)
    data["twilio"] = real
    data["roles"] = {"sids": {"user": "RL5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f"}, "default": "user"}
    assert config_warnings(settings_from_dict(data, environ=ENV)) == []


def test_the_shipped_kubernetes_configmap_warns_about_its_placeholders() -> None:
    import tomllib

    import yaml

    from token_service.settings import config_warnings

    root = Path(__file__).resolve().parent.parent
    configmap = yaml.safe_load((root / "deploy" / "kubernetes" / "configmap.yaml").read_text(encoding="utf-8"))
    data = tomllib.loads(configmap["data"]["config.toml"])
    warned = config_warnings(settings_from_dict(data, environ={**ENV, "REDIS_PASSWORD": "pw"}))
    assert any(w.startswith("twilio.account_sid:") for w in warned)
