"""check-config for the gateway and trusted-client keys: each rule names the key and what to fix."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support import ROOT, SERVICE_ENV, TWILIO_SECRET, config_dict
from token_service.errors import ConfigError
from token_service.settings import settings_from_dict

pytestmark = pytest.mark.unit

ENV = {"TWILIO_API_KEY_SECRET": TWILIO_SECRET}
ISSUER = "https://login.example.com/"
ARN = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/chat/50dc6c495c0c9188"
PROXIES = {"trusted_proxies": 1, "trusted_proxy_addresses": ["10.0.0.0/16"]}


def problems(data: dict[str, Any], env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, environ=env)
    return info.value.problems


def with_gateway(gateway: dict[str, Any], server: dict[str, Any] | None = None, **issuer: Any) -> dict[str, Any]:
    data = copy.deepcopy(config_dict(ISSUER))
    data["server"] = PROXIES if server is None else server
    data["issuers"].append({"name": "gw", "issuer": "https://idp.example.com", "client_ids": ["alb-client"],
                            "audiences": ["aud"], "gateway": gateway, **issuer})
    return data


def with_client(**client: Any) -> dict[str, Any]:
    data = copy.deepcopy(config_dict(ISSUER))
    data["trusted_clients"] = [{"client_id": "bot", "issuer": "test", "identity_patterns": ["bot-*"],
                                "roles": ["user"], **client}]
    return data


def alb(**gateway: Any) -> dict[str, Any]:
    return {"kind": "aws_alb", "load_balancer_arns": [ARN], **gateway}


def test_valid_gateways_and_their_defaults() -> None:
    data = with_gateway(alb(), audiences=[])
    data["issuers"].append({"name": "iap", "issuer": "https://cloud.google.com/iap",
                            "audiences": ["/projects/1/apps/x"], "gateway": {"kind": "google_iap"}})
    settings = settings_from_dict(data, environ=ENV)
    gateway = settings.issuers[1].gateway
    assert gateway is not None and gateway.header_name == "x-amzn-oidc-data"
    assert gateway.alb_key_url == "https://public-keys.auth.elb.eu-west-1.amazonaws.com/{kid}"
    assert settings.issuers[1].algorithms == ["ES256"]


@pytest.mark.parametrize(("gateway", "issuer", "server", "expected"), [
    (alb(), {}, {"trusted_proxies": 1}, "set server.trusted_proxies (at least 1) and server.trusted_proxy_addresses"),
    (alb(), {}, {"trusted_proxy_addresses": ["10.0.0.1"]}, "server.trusted_proxies (at least 1)"),
    (alb(load_balancer_arns=[]), {}, None, "needs load_balancer_arns"),
    (alb(load_balancer_arns=["arn:aws:elasticloadbalancing:eu-west-1:1:loadbalancer/app/x/y"]), {}, None,
     "String should match pattern"),
    (alb(key_url="https://keys.example.com/static"), {}, None, "String should match pattern"),
    (alb(key_url="http://keys.example.com/{kid}"), {}, None, "must use https"),
    (alb(), {"client_ids": []}, None, "needs client_ids"),
    (alb(), {"algorithms": ["RS256"]}, None, "ES256 only"),
    (alb(), {"jwks_uri": "https://k.example/keys"}, None, "drop jwks_uri"),
    (alb(load_balancer_arns=[ARN, ARN.replace("eu-west-1", "us-east-1")]), {}, None, "several regions"),
    ({"kind": "jwt"}, {}, None, "needs the header"),
    ({"kind": "jwt", "header": "Authorization"}, {}, None, "cannot carry a gateway assertion"),
    ({"kind": "jwt", "header": "X-Forwarded-User"}, {}, None, "cannot carry a gateway assertion"),
    ({"kind": "jwt", "header": "X-Id-Token", "load_balancer_arns": [ARN]}, {}, None, "belong to kind 'aws_alb'"),
    ({"kind": "google_iap"}, {}, None, "issued by 'https://cloud.google.com/iap'"),
    ({"kind": "cloudflare_access"}, {"opaque": {"checks": ["userinfo"], "any_client": True}}, None,
     "takes no opaque tokens"),
    ({"kind": "tunnel"}, {}, None, "Input should be 'aws_alb', 'google_iap', 'cloudflare_access' or 'jwt'"),
])
def test_gateway_rules(gateway: dict[str, Any], issuer: dict[str, Any], server: dict[str, Any] | None,
                       expected: str) -> None:
    found = problems(with_gateway(gateway, server, **issuer))
    assert len(found) == 1 and expected in found[0], found


def test_gateway_network_headers_and_login() -> None:
    bad_network = with_gateway(alb(), {"trusted_proxies": 1, "trusted_proxy_addresses": ["10.0.0.300/8"]})
    expected = "server.trusted_proxy_addresses[0]: '10.0.0.300/8': must be an IP address or a CIDR"
    assert expected in problems(bad_network)[0]
    twice = with_gateway({"kind": "jwt", "header": "X-Amzn-Oidc-Data"})
    twice["issuers"].append({"name": "gw2", "issuer": "https://idp2.example.com", "client_ids": ["c"],
                             "gateway": alb()})
    assert "one gateway issuer per assertion header, repeated: x-amzn-oidc-data" in problems(twice)[0]
    login = with_gateway({"kind": "jwt", "header": "X-Id-Token"})
    login["login"] = {"enabled": True, "issuer": "gw", "client_id": "aud", "redirect_uri": "https://x.example/cb"}
    assert "login.issuer 'gw' is a gateway issuer" in problems(login, {**ENV, **SERVICE_ENV})[0]


@pytest.mark.parametrize(("client", "expected"), [
    ({"jwks_uri": "https://bot.example/jwks"}, "set one way for the client to prove itself"),
    ({"issuer": None}, "set one way for the client to prove itself"),
    ({"issuer": None, "jwks_uri": "https://bot.example/jwks", "jwks_file": "/k.json"}, "set one way"),
    ({"issuer": None, "jwks_file": "/k.json", "subject": "x"}, "subject (the client-credentials token's 'sub') goes"),
    ({"identity_patterns": []}, "needs identities and/or identity_patterns"),
    ({"roles": []}, "List should have at least 1 item"),
    ({"roles": ["user"], "default_role": "admin"}, "default_role 'admin' must be one of roles"),
    ({"roles": ["owner"]}, "trusted_clients[bot].roles: 'owner' is not a key of roles.sids"),
    ({"issuer": "nope"}, "trusted_clients[bot].issuer 'nope' is not the name of an [[issuers]] entry"),
    ({"algorithms": ["HS256"]}, "'HS256' is not allowed"),
    ({"refresh_tokens": "sometimes"}, "Input should be a valid boolean"),
    ({"rate_limit": {"limit": 0, "window": 60}}, "greater than or equal to 1"),
    ({"client_id": "a bot"}, "String should match pattern"),
])
def test_trusted_client_rules(client: dict[str, Any], expected: str) -> None:
    found = problems(with_client(**client))
    assert len(found) == 1 and expected in found[0], found


def test_trusted_clients_must_be_told_apart() -> None:
    data = with_client()
    data["trusted_clients"].append({**data["trusted_clients"][0]})
    assert "client_id must be unique, repeated: bot" in problems(data)[0]
    data["trusted_clients"][1].update(client_id="bot2", subject="bot")  # the same client-credentials 'sub'
    assert "another trusted client has the same issuer and subject" in problems(data)[0]
    own = with_client(issuer=None, jwks_file="/k.json", client_id=ISSUER)
    assert "client_id is also an issuer" in problems(own)[0]
    gateway = with_gateway({"kind": "jwt", "header": "X-Id-Token"})
    gateway["trusted_clients"] = [{"client_id": "bot", "issuer": "gw", "identities": ["b"], "roles": ["user"]}]
    assert "is a gateway issuer, which asserts users" in problems(gateway)[0]


@pytest.mark.parametrize(("policy", "expected"), [
    ({"endpoint": "token", "key": "client"}, "key 'client' counts a trusted client's mints"),
    ({"endpoint": "client", "key": "family"}, "starts no family"),
])
def test_client_rate_policies(policy: dict[str, Any], expected: str) -> None:
    data = copy.deepcopy(config_dict(ISSUER))
    data["rate_limits"] = {"policies": [{**policy, "limit": 1, "window": 1}]}
    found = problems(data)
    assert len(found) == 1 and expected in found[0], found


def test_gateway_examples_pass_check_config() -> None:
    """Every examples/gateways/*.toml, through the real CLI, as an operator would run it."""
    from tests.gunicorn_support import run_cli

    examples = sorted((ROOT / "examples" / "gateways").glob("*.toml"))
    assert [p.name for p in examples] == ["aws-alb.toml", "cloudflare-access.toml", "google-iap.toml",
                                          "nginx-oauth2-proxy.toml"]
    for path in examples:
        result = run_cli("check-config", "--config", str(path), env={"TWILIO_API_KEY_SECRET": TWILIO_SECRET})
        assert result.returncode == 0 and "configuration is valid" in result.stdout, (path.name, result.stderr)
