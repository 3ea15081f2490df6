"""The operator's commands, run as real processes: ``check-config`` and ``serve`` (gunicorn)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devidp.harness import DevIdP
from tests.gunicorn_support import dev_config, gunicorn, json_lines, run_cli
from tests.redis_servers import RedisServer, free_port
from tests.support import ROOT, SERVICE_ENV

pytestmark = pytest.mark.integration


def cli_without_secrets(*args: str, env: dict[str, str] | None = None,
                        cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The CLI with this process's environment, minus the service's secrets and any gunicorn
    settings, plus ``env``."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in SERVICE_ENV and not k.startswith("TOKEN_SERVICE_")}
    full_env.update(env or {})
    return run_cli(*args, env=full_env, cwd=cwd)


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the repository, as an operator's would be."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    assert ROOT not in directory.parents
    return directory


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
    assert "configuration is invalid (4 problem(s)):" in done.stderr
    assert "twilio.service_sid: 'IX00000000000000000000000000000000': must be a Twilio SID" in done.stderr
    assert "twilio.token_ttl: 60: Input should be greater than or equal to 180" in done.stderr
    assert "TWILIO_API_KEY_SECRET: (unset)" in done.stderr
    assert "store.url: 'memory://': the memory store lives in one process but" in done.stderr  # with the rest
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


# --------------------------------------------------------- the same settings from any directory


def test_check_config_reads_the_same_gunicorn_settings_from_any_directory(
    idp: DevIdP, redis_server: RedisServer, tmp_path: Path, elsewhere: Path
) -> None:
    config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url())
    from_root = cli_without_secrets("check-config", "--config", str(config), env=SERVICE_ENV)
    from_elsewhere = cli_without_secrets("check-config", "--config", str(config), env=SERVICE_ENV, cwd=elsewhere)
    assert from_root.returncode == from_elsewhere.returncode == 0, from_elsewhere.stderr
    assert from_root.stdout == from_elsewhere.stdout
    shipped = multiprocessing.cpu_count() + 1
    assert (f"gunicorn python:token_service.gunicorn_conf: {shipped} worker(s) x 1000 connection(s), gevent"
            in from_elsewhere.stdout)
    # ... and the memory-store rule is checked against those workers, not gunicorn's default of one.
    (tmp_path / "memory").mkdir()
    memory = dev_config(tmp_path / "memory", idp.issuer)
    refused = cli_without_secrets("check-config", "--config", str(memory), env=SERVICE_ENV, cwd=elsewhere)
    assert refused.returncode == 2
    assert f"the memory store lives in one process but {shipped} workers would run" in refused.stderr


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("TOKEN_SERVICE_WORKER_CLASS", "eventlet", "expected gevent, gthread or sync"),
    ("TOKEN_SERVICE_WORKERS", "two", "invalid literal"),
])
def test_a_gunicorn_variable_with_a_bad_value_is_one_line(idp: DevIdP, tmp_path: Path, variable: str, value: str,
                                                         says: str) -> None:
    done = cli_without_secrets("check-config", "--config", str(dev_config(tmp_path, idp.issuer)),
                               env={**SERVICE_ENV, variable: value})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and says in done.stderr
    assert done.stderr.startswith("gunicorn config python:token_service.gunicorn_conf: ")


def test_an_explicit_gunicorn_config_or_its_variable_overrides_the_shipped_one(
    idp: DevIdP, tmp_path: Path, elsewhere: Path
) -> None:
    config = dev_config(tmp_path, idp.issuer)
    own = tmp_path / "gunicorn.conf.py"
    own.write_text("workers = 1\nthreads = 2\nworker_class = 'gthread'\n")
    flag = cli_without_secrets("check-config", "--config", str(config), "--gunicorn-config", str(own),
                               env=SERVICE_ENV, cwd=elsewhere)
    variable = cli_without_secrets("check-config", "--config", str(config),
                                   env={**SERVICE_ENV, "TOKEN_SERVICE_GUNICORN_CONFIG": str(own)}, cwd=elsewhere)
    for done in (flag, variable):
        assert done.returncode == 0, done.stderr
        assert f"gunicorn {own}: 1 worker(s) x 2 thread(s), gthread" in done.stdout
    # deploy/gunicorn.conf.py, the shim bench/, the Dockerfile and the unit name, gives the shipped settings.
    shim = cli_without_secrets("check-config", "--config", str(config), "--workers", "1",
                               "--gunicorn-config", str(ROOT / "deploy" / "gunicorn.conf.py"), env=SERVICE_ENV,
                               cwd=elsewhere)
    assert shim.returncode == 0 and "1 worker(s) x 1000 connection(s), gevent" in shim.stdout
    missing = cli_without_secrets("check-config", "--config", str(config), "--gunicorn-config",
                                  str(tmp_path / "nope.py"), env=SERVICE_ENV)
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_serve_from_another_directory_runs_the_shipped_settings(
    idp: DevIdP, redis_server: RedisServer, tmp_path: Path, elsewhere: Path
) -> None:
    config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url())
    home = tmp_path / "home"  # gunicorn's control socket would go to $HOME/.gunicorn/gunicorn.ctl
    home.mkdir()
    env = {"HOME": str(home), "XDG_RUNTIME_DIR": "", "TOKEN_SERVICE_WORKERS": "", "TOKEN_SERVICE_THREADS": "",
           "TOKEN_SERVICE_GUNICORN_CONFIG": ""}  # empty: unset
    with gunicorn(config, workers=None, cwd=elsewhere, env=env) as served:
        assert requests.get(f"{served.url}/healthz", timeout=10).status_code == 200
    messages = [line["msg"] for line in served.lines if line["logger"] == "gunicorn.error"]
    assert "Using worker: gevent" in messages
    assert sum(m.startswith("Booting worker") for m in messages) == multiprocessing.cpu_count() + 1
    # No control socket: nothing in HOME shared with other gunicorns, and no error about it.
    assert not any("control" in m.lower() for m in messages), messages
    assert list(home.iterdir()) == []


def test_gunicorn_lines_are_json_like_the_apps(gunicorn_service_lines: list[dict]) -> None:
    loggers = {line["logger"] for line in gunicorn_service_lines}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers
    pids = {line["pid"] for line in gunicorn_service_lines}
    assert len(pids) == 2  # the master and its one worker
    from token_service import __version__

    assert {line["version"] for line in gunicorn_service_lines} == {__version__}


@pytest.fixture
def gunicorn_service_lines(idp: DevIdP, tmp_path: Path) -> list[dict]:
    """Every line of one short gunicorn run with the access log on: a token, two refreshes, a revoke."""
    config = dev_config(tmp_path, idp.issuer)
    with gunicorn(config, workers=1, env={"TOKEN_SERVICE_ACCESS_LOG": "-"}) as served:
        id_token = idp.login("alice")["id_token"]
        body = requests.post(f"{served.url}/v1/token", headers={"Authorization": f"Bearer {id_token}"},
                             timeout=10).json()
        refresh = body["refresh_token"]
        for _ in range(2):
            refresh = requests.post(f"{served.url}/v1/token/refresh", json={"refresh_token": refresh},
                                    timeout=10).json()["refresh_token"]
        assert requests.post(f"{served.url}/v1/token/revoke", json={"refresh_token": refresh},
                             timeout=10).status_code == 200
    # (served.output is read after SIGTERM: what follows proves nothing was held back.)
    return served.lines


def test_one_workers_lines_are_in_order_and_none_is_lost_at_sigterm(gunicorn_service_lines: list[dict]) -> None:
    audit = [line for line in gunicorn_service_lines if line["logger"] == "token_service.audit"]
    assert [line["event"] for line in audit] == ["token_issued", "token_refreshed", "token_refreshed",
                                                 "family_revoked"]
    access = [line for line in gunicorn_service_lines if line["logger"] == "gunicorn.access"]
    assert [line["path"] for line in access] == ["/healthz", "/v1/token", "/v1/token/refresh",
                                                 "/v1/token/refresh", "/v1/token/revoke"]
    # Each request's audit line comes before its access line, and shares its request id. (The next
    # request's lines may come before an access line: gunicorn writes it after the answer is sent.)
    position = {(line["logger"], line.get("request_id")): i for i, line in enumerate(gunicorn_service_lines)}
    for line in audit:
        assert position[("token_service.audit", line["request_id"])] < position[("gunicorn.access", line["request_id"])]


# ------------------------------------------------------------------------ check-config's checks


def test_check_config_lists_every_problem_in_one_run(tmp_path: Path) -> None:
    config = tmp_path / "six.toml"
    text = (ROOT / "dev" / "config.toml").read_text()
    text = text.replace("token_ttl = 900", "token_tll = 900\napi_key_secret = 'pasted-api-key-secret-value'")
    text = text.replace('dev_mode = true', 'dev_mode = true\ncors_origins = ["*"]\ntrusted_proxies = -1')
    text = text.replace("[login]\n", "[login]\nsession_key = 'another-pasted-session-key'\n")
    text += "\n[logging]\nflush_interval = 0.25\n"
    config.write_text(text)
    done = cli_without_secrets("check-config", "--config", str(config), "--workers", "3")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == "configuration is invalid (8 problem(s)):", done.stderr
    expected = [
        "twilio.api_key_secret: (hidden): secrets must come from environment variables",
        "login.session_key: (hidden): secrets must come from environment variables",
        "server.trusted_proxies: -1: Input should be greater than or equal to 0",
        "server.cors_origins: ['*']: '*' is not allowed",
        "twilio: unknown key 'token_tll' (did you mean 'token_ttl'?)",
        "logging: key 'flush_interval' is obsolete",
        "TWILIO_API_KEY_SECRET: (unset)",
        "store.url: 'memory://': the memory store lives in one process but 3 workers would run",
    ]
    for start in expected:
        assert any(line.startswith(f"  - {start}") for line in lines), (start, done.stderr)
    assert "pasted" not in done.stderr and "Traceback" not in done.stderr


def test_check_config_warns_about_placeholder_sids_but_passes(idp: DevIdP, tmp_path: Path) -> None:
    config = dev_config(tmp_path, idp.issuer)
    done = cli_without_secrets("check-config", "--config", str(config), "--workers", "1", env=SERVICE_ENV)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert "warning: twilio.account_sid: 'AC00000000000000000000000000000000': looks like a placeholder" in warned[0]
    assert len(warned) == 7  # account, key, service, two push credentials, two roles


def test_check_config_probe_reports_each_issuer_and_the_store(
    idp: DevIdP, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url())
    done = cli_without_secrets("check-config", "--config", str(config), "--probe", env=SERVICE_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    probes = [line for line in done.stdout.splitlines() if line.startswith("probe: ")]
    assert probes[0].startswith("probe: store redis://: reachable, PING answered (")
    assert probes[1].startswith(f"probe: issuer devidp ({idp.issuer}/.well-known/openid-configuration): "
                                "reachable, 2 key(s), state fresh (")
    assert probes[1].endswith(" ms)")


def test_check_config_probe_fails_on_an_unreachable_issuer_or_store(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = dev_config(tmp_path, dead, store_url=f"redis://127.0.0.1:{free_port()}/0")
    done = cli_without_secrets("check-config", "--config", str(config), "--probe", env=SERVICE_ENV)
    assert done.returncode == 1, done.stdout + done.stderr
    probes = [line for line in done.stdout.splitlines() if line.startswith("probe: ")]
    assert probes[0].startswith("probe: store redis://: unreachable: ")
    assert probes[1].startswith(f"probe: issuer devidp ({dead}/.well-known/openid-configuration): "
                                "unreachable or unusable: GET ")
    assert "Traceback" not in done.stderr


def test_cli_revoke_writes_its_audit_line_as_json(idp: DevIdP, redis_server: RedisServer, tmp_path: Path) -> None:
    config = dev_config(tmp_path, idp.issuer, store_url=redis_server.url())
    done = cli_without_secrets("revoke", "--config", str(config), "--identity", "nobody@example.com",
                               env=SERVICE_ENV)
    assert done.returncode == 0, done.stderr
    (audit,) = [line for line in json_lines(done.stderr) if line["logger"] == "token_service.audit"]
    assert audit["event"] == "identity_revoked" and audit["identity"] == "nobody@example.com"
    assert json.loads(done.stderr.splitlines()[-1]) == audit
