"""The operator's commands, run as real processes: ``check-config`` and ``serve`` (gunicorn)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devidp.harness import DevIdP
from tests.gunicorn_support import dev_config, gunicorn, run_cli
from tests.support import ROOT, SERVICE_ENV

pytestmark = pytest.mark.integration



def cli_without_secrets(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with this process's environment, minus the service's secrets, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    full_env.update(env or {})
    return run_cli(*args, env=full_env)


def test_check_config_valid(idp: DevIdP, tmp_path: Path) -> None:
    config = dev_config(tmp_path, idp.issuer)
    env = SERVICE_ENV
    done = cli_without_secrets("check-config", "--config", str(config), "--workers", "1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("configuration is valid: ")
    assert "1 worker(s)" in done.stdout
    # The memory store is per process: the same file with the default gunicorn workers is refused.
    refused = cli_without_secrets("check-config", "--config", str(config), "--workers", "3", env=env)
    assert refused.returncode == 2
    assert "store.url: 'memory://': the memory store lives in one process but 3 workers" in refused.stderr


def test_check_config_names_key_value_and_rule(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    text = (ROOT / "dev" / "config.toml").read_text()
    config.write_text(text.replace('token_ttl = 900', 'token_ttl = 60').replace('"IS0000', '"IX0000'))
    done = cli_without_secrets("check-config", "--config", str(config))
    assert done.returncode == 2
    assert "configuration is invalid (3 problem(s)):" in done.stderr
    assert "twilio.service_sid: 'IX00000000000000000000000000000000': must be a Twilio SID" in done.stderr
    assert "twilio.token_ttl: 60: Input should be greater than or equal to 180" in done.stderr
    assert "TWILIO_API_KEY_SECRET: (unset)" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_uses_the_env_var_for_the_path(idp: DevIdP, tmp_path: Path) -> None:
    config = dev_config(tmp_path, idp.issuer)
    env = {**SERVICE_ENV, "TOKEN_SERVICE_CONFIG": str(config)}
    assert cli_without_secrets("check-config", "--workers", "1", env=env).returncode == 0


@pytest.fixture
def gunicorn_service(idp: DevIdP, tmp_path: Path) -> Iterator[str]:
    with gunicorn(dev_config(tmp_path, idp.issuer), workers=1) as served:
        yield served.url


def test_serve_runs_under_gunicorn_with_the_deploy_config(gunicorn_service: str, idp: DevIdP) -> None:
    id_token = idp.login("bob")["id_token"]
    resp = requests.post(f"{gunicorn_service}/v1/token", headers={"Authorization": f"Bearer {id_token}"},
                         timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["role"] == "admin"
    assert requests.get(f"{gunicorn_service}/readyz", timeout=10).json()["status"] == "ok"


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\ntrusted_proxies = -1\n")
    done = cli_without_secrets("serve", "--config", str(config))
    assert done.returncode == 2
    assert "server.trusted_proxies: -1: Input should be greater than or equal to 0" in done.stderr


def test_serve_refuses_the_memory_store_with_several_workers(idp: DevIdP, tmp_path: Path) -> None:
    config = dev_config(tmp_path, idp.issuer)
    done = cli_without_secrets("serve", "--config", str(config), "--workers", "2", env=SERVICE_ENV)
    assert done.returncode == 2
    assert "store.url: 'memory://': the memory store lives in one process but 2 workers would" in done.stderr
