"""The deployment artifacts under ``deploy/``: they parse, agree with each other and with the app.

Kubernetes manifests, the container image, the systemd unit, the nginx example, the Prometheus alert
rules and the Grafana dashboard are files nobody runs in the unit tests of the service, so this
module reads them the way their consumers would: YAML and TOML parsers, the app's own settings
validation, gunicorn's own ``Config``, ``nginx -t`` (and a real nginx in front of a stub upstream),
``systemd-analyze verify`` and ``promtool`` where those are installed.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import runpy
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
import types
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from tests.debian import ToolUnavailable, ensure_tool
from tests.redis_servers import free_port
from tests.support import ROOT
from token_service.settings import check_workers, settings_from_dict

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
GUNICORN_CONF = DEPLOY / "gunicorn.conf.py"
SYSTEMD_UNIT = DEPLOY / "systemd" / "token-service.service"
NGINX_CONF = DEPLOY / "nginx" / "token-service.conf"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "token-service-dashboard.json"

NAMESPACE = "token-service"
# Manifests kustomization.yaml leaves out on purpose (placeholders, CRDs, a host to fill in).
OPTIONAL_MANIFESTS = {"secret.example.yaml", "ingress.example.yaml", "servicemonitor.yaml"}
# What Kubernetes' readiness probe asks: this replica only, never what all replicas share.
READINESS_PATH = "/readyz?exclude=store&exclude=issuers"
SECRETS_ENV = {"TWILIO_API_KEY_SECRET": "x" * 32, "REDIS_PASSWORD": "pw"}

# The metrics the app exposes (token_service/metrics.py); dashboards and alerts may use only these.
HISTOGRAMS = {"token_service_http_request_duration_seconds", "token_service_store_duration_seconds"}
METRICS = HISTOGRAMS | {
    "token_service_http_requests_total",
    "token_service_tokens_issued_total",
    "token_service_refreshes_total",
    "token_service_denials_total",
    "token_service_rate_limited_total",
    "token_service_jwks_fetches_total",
    "token_service_store_errors_total",
    "token_service_active_identities",
    "token_service_families_revoked_total",
}
# Label values the app emits, for labels with a closed set: an `=` matcher must use one of them.
LABEL_VALUES = {
    "outcome": {"rotated", "grace", "reused", "revoked", "unknown", "limited"},
    "reason": {
        "invalid_token", "invalid_grant", "access_denied", "invalid_identity", "invalid_request",
        "rate_limited", "unavailable", "revoke", "reuse", "identity", "logout",
    },
    "result": {"ok", "error"},
    "operation": {"issue", "rotate", "revoke", "hit", "ping"},
}
_METRIC_NAME = re.compile(r"\btoken_service_[a-z0-9_]+")
_EQ_MATCHER = re.compile(r'\b([a-z_]+)="([^"]*)"')



# --------------------------------------------------------------------------------------- helpers


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    found = [doc for _, doc in _manifests() if doc.get("kind") == kind]
    assert found, f"no {kind} in {K8S}"
    return found


def _the(kind: str) -> dict[str, Any]:
    (only,) = _of_kind(kind)
    return only


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def _gunicorn_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The module-level settings of deploy/gunicorn.conf.py, as ``token-service serve`` reads them."""
    for name in list(os.environ):
        if name.startswith("TOKEN_SERVICE_"):
            monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        if name.startswith("TOKEN_SERVICE_"):  # nothing else: PROMETHEUS_MULTIPROC_DIR would change the app
            monkeypatch.setenv(name, value)
    namespace = runpy.run_path(str(GUNICORN_CONF))
    return {
        key: value
        for key, value in namespace.items()
        if not key.startswith("_") and not isinstance(value, types.ModuleType)
    }


def _metric_names(expr: str) -> set[str]:
    names = set()
    for name in _METRIC_NAME.findall(expr):
        for suffix in ("_bucket", "_count", "_sum"):
            base = name.removesuffix(suffix)
            if base != name and base in HISTOGRAMS:
                name = base
        names.add(name)
    return names


def _check_expr(expr: str, where: str) -> set[str]:
    names = _metric_names(expr)
    assert names, f"{where}: {expr!r} uses no token_service_ metric"
    unknown = names - METRICS
    assert not unknown, f"{where}: {expr!r} uses metrics the app does not expose: {sorted(unknown)}"
    for label, value in _EQ_MATCHER.findall(expr):
        if label in LABEL_VALUES:
            assert value in LABEL_VALUES[label], f"{where}: {label}={value!r} is never emitted"
    return names


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line:
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def _dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _env_pairs(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


def _copy_sources(args: str) -> tuple[list[str], str, bool]:
    words = shlex.split(args)
    flags = [w for w in words if w.startswith("--")]
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], paths[-1], any(f.startswith("--from=") for f in flags)


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def _dockerignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent directories, wins."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in patterns:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def _systemd_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows repeating a key), like systemd's own parser."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}:{number}: a setting outside any section"
        assert "=" in line and not line.endswith("\\"), f"{path}:{number}: not KEY=VALUE: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m)?", value)
    assert match, f"not a systemd time span this test understands: {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "min": 60, "m": 60}[unit]


# ----------------------------------------------------------------------------------- kubernetes


@pytest.mark.unit
def test_kubernetes_manifests_parse_into_one_namespace_with_consistent_labels() -> None:
    manifests = _manifests()
    assert {path.name for path, _ in manifests} >= {
        "deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml", "configmap.yaml",
        "secret.example.yaml", "kustomization.yaml",
    }
    for path, doc in manifests:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: needs apiVersion and kind"
        if doc["kind"] == "Kustomization":
            assert doc["namespace"] == NAMESPACE
            continue
        metadata = doc["metadata"]
        assert metadata.get("name"), f"{path.name}: {doc['kind']} without a name"
        if doc["kind"] == "Namespace":
            assert metadata["name"] == NAMESPACE
        else:
            assert metadata.get("namespace") == NAMESPACE, f"{path.name}: {doc['kind']} not in {NAMESPACE}"
        labels = metadata.get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "token-service", f"{path.name}: labels"
        assert labels.get("app.kubernetes.io/instance") == "token-service", f"{path.name}: labels"


@pytest.mark.unit
def test_kustomization_lists_every_manifest_except_the_placeholder_secret() -> None:
    kustomization = _the("Kustomization")
    resources = kustomization["resources"]
    for name in resources:
        assert (K8S / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} - OPTIONAL_MANIFESTS
    assert set(resources) == manifests
    # Applying placeholders would overwrite the real Secret on every deploy; the ServiceMonitor needs
    # the Prometheus Operator's CRDs; the Ingress needs a real host. Each is named, not applied.
    text = (K8S / "kustomization.yaml").read_text(encoding="utf-8")
    for name in OPTIONAL_MANIFESTS:
        assert name not in resources and (K8S / name).is_file()
        assert name in text or name == "secret.example.yaml", f"kustomization.yaml should say what {name} is for"
    images = {image["name"] for image in kustomization.get("images", [])}
    containers = _the("Deployment")["spec"]["template"]["spec"]["containers"]
    deployment_images = {c["image"].rsplit(":", 1)[0] for c in containers}
    assert images <= deployment_images, "kustomization images: must name the Deployment's image"


@pytest.mark.unit
def test_deployment_probes_resources_and_security_context(monkeypatch: pytest.MonkeyPatch) -> None:
    for deployment in _of_kind("Deployment"):
        spec = deployment["spec"]
        assert spec["replicas"] == 3
        assert spec["strategy"]["type"] == "RollingUpdate"
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = spec["template"]["spec"]
        pod_security = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False
        (container,) = pod["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}

        _check_probes(container, ports)

        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind}"

        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert "ALL" in security["capabilities"]["drop"]
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True
        seccomp = security.get("seccompProfile", pod_security.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault"
        uid = security.get("runAsUser", pod_security.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0

        # Topology spread over the Deployment's own pods.
        labels = spec["template"]["metadata"]["labels"]
        constraints = pod["topologySpreadConstraints"]
        assert constraints
        for constraint in constraints:
            assert _selects(constraint["labelSelector"]["matchLabels"], labels)

        # Volumes: config from the ConfigMap at /etc/token-service, writable /tmp on a read-only root.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        config_mount = mounts["/etc/token-service"]
        config_volume = volumes[config_mount["name"]]
        assert config_volume["configMap"]["name"] == _the("ConfigMap")["metadata"]["name"]
        assert config_mount.get("readOnly") is True
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        env = _env(container)
        assert env["TOKEN_SERVICE_CONFIG"] == "/etc/token-service/config.toml"
        assert container["args"][container["args"].index("--config") + 1] == env["TOKEN_SERVICE_CONFIG"]
        assert env["TOKEN_SERVICE_BIND"].endswith(f":{ports['http']}")
        assert env["PROMETHEUS_MULTIPROC_DIR"] in mounts
        assert "emptyDir" in volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]]["name"]]
        # gunicorn.conf.py would count the node's cores, not the pod's CPU limit.
        assert int(env["TOKEN_SERVICE_WORKERS"]) >= 1

        # Secrets: from the Secret, as files (*_FILE) or secretKeyRef, never literal values.
        secret = _the("Secret")
        secret_name, secret_keys = secret["metadata"]["name"], set(secret["stringData"])
        assert "TWILIO_API_KEY_SECRET" not in env and "REDIS_PASSWORD" not in env
        used: set[str] = set()
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret_name
                used.add(ref["key"])
        for name in ("TWILIO_API_KEY_SECRET_FILE", "REDIS_PASSWORD_FILE"):
            if name not in env:
                continue
            directory, _, filename = env[name].rpartition("/")
            volume = volumes[mounts[directory]["name"]]
            assert volume["secret"]["secretName"] == secret_name
            keys = {item["path"]: item["key"] for item in volume["secret"].get("items", [])}
            used.add(keys.get(filename, filename))
        assert used == secret_keys, "the Deployment must use exactly the Secret's keys"

        # Shutdown: endpoints are removed during preStop, then gunicorn drains within graceful_timeout.
        sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0].endswith("sleep")
        graceful = _gunicorn_settings(monkeypatch, env)["graceful_timeout"]
        assert pod["terminationGracePeriodSeconds"] > graceful + int(sleep[1])

        annotations = spec["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == ports["http"]


def _check_probes(container: dict[str, Any], ports: dict[str, int]) -> None:
    """Kubernetes' guidance: startup and liveness look at the process only; readiness at this replica
    only (the store and the IdPs are shared by every replica, so they are excluded)."""
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", READINESS_PATH)):
        assert probe in container, f"no {probe}"
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{probe} must GET {path}"
        assert get["port"] in ports or get["port"] in ports.values(), f"{probe}: unknown port {get['port']}"
    path, _, query = container["readinessProbe"]["httpGet"]["path"].partition("?")
    assert path == "/readyz" and sorted(parse_qs(query)["exclude"]) == ["issuers", "store"]
    # A slow start is the startup probe's to cover (at least a minute), not liveness' to punish.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60
    liveness = container["livenessProbe"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] >= 20, "liveness restarts only a hung process"


@pytest.mark.integration
def test_the_readiness_probe_keeps_a_replica_in_rotation_while_redis_is_down(idp: Any, rsa_key: dict) -> None:
    """With the store down, /readyz says so (503) for dashboards, but the probe's own path answers 200,
    and the token endpoints answer for themselves: 503 problem+json with Retry-After."""
    from tests.support import config_dict, forge, id_claims, problem, running, settings_for

    (container,) = _the("Deployment")["spec"]["template"]["spec"]["containers"]
    probe_path = container["readinessProbe"]["httpGet"]["path"]
    data = config_dict(idp.issuer)
    data["store"] = {"url": f"redis://127.0.0.1:{free_port()}/0", "retry_after": 3}
    with running(settings_for(data)) as service:
        assert service.get("/readyz").status_code == 503
        ready = service.get(probe_path)
        assert ready.status_code == 200, ready.text
        assert ready.json()["excluded"] == ["issuers", "store"]
        refused = service.post_token(forge(rsa_key, id_claims(idp.issuer)))
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "3"
        assert problem(refused)["type"] == "unavailable"
        assert service.get("/readyz?exclude=database").status_code == 400


@pytest.mark.unit
def test_the_redis_password_is_optional_and_the_twilio_secret_is_not() -> None:
    (container,) = _the("Deployment")["spec"]["template"]["spec"]["containers"]
    refs = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"] if "valueFrom" in item}
    assert refs["REDIS_PASSWORD"]["optional"] is True
    volumes = {v["name"]: v for v in _the("Deployment")["spec"]["template"]["spec"]["volumes"]}
    secret_volume = next(v["secret"] for v in volumes.values() if "secret" in v)
    assert secret_volume.get("optional", False) is False
    assert [item["key"] for item in secret_volume["items"]] == ["twilio-api-key-secret"]


@pytest.mark.unit
def test_network_policy_lets_in_the_ingress_and_prometheus_and_out_dns_redis_and_https() -> None:
    policy = _the("NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    pod_labels = _the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    container_ports = {p["name"]: p["containerPort"]
                       for p in _the("Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "every ingress rule names its sources"
        assert all(port["port"] in container_ports for port in rule["ports"])
    egress_ports = {(port["port"], port.get("protocol", "TCP")) for rule in policy["spec"]["egress"]
                    for port in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (443, "TCP")} <= egress_ports
    # The ConfigMap's Redis sentinels listen on a port the policy lets out.
    store_url = tomllib.loads(_the("ConfigMap")["data"]["config.toml"])["store"]["url"]
    assert all((int(host.rsplit(":", 1)[1].split("/")[0]), "TCP") in egress_ports
               for host in store_url.split("://", 1)[1].split(","))


@pytest.mark.unit
def test_service_monitor_scrapes_metrics_through_the_service() -> None:
    monitor = _the("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = _the("Service")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"


@pytest.mark.unit
def test_ingress_example_routes_only_the_public_paths_and_never_retries() -> None:
    ingress = _the("Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] == "off"
    service = _the("Service")
    service_ports = {port["name"] for port in service["spec"]["ports"]}
    paths = []
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] in service_ports
            paths.append(path["path"])
    assert "/v1/" in paths and "/healthz" in paths
    assert not {"/", "/metrics", "/readyz"} & set(paths), "internal endpoints stay inside the cluster"
    assert ingress["spec"]["tls"], "TLS at the ingress"


@pytest.mark.unit
def test_service_hpa_and_pdb_select_the_deployment() -> None:
    deployment = _the("Deployment")
    name = deployment["metadata"]["name"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}

    service = _the("Service")
    assert _selects(service["spec"]["selector"], pod_labels)
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports

    hpa = _the("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"

    pdb = _the("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert _selects(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert "maxUnavailable" in pdb["spec"] or pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]


@pytest.mark.unit
def test_configmap_config_toml_is_valid_for_the_app() -> None:
    configmap = _the("ConfigMap")
    data = tomllib.loads(configmap["data"]["config.toml"])
    settings = settings_from_dict(data, environ=dict(SECRETS_ENV))
    assert not settings.store.is_memory, "replicas share refresh tokens and limits: a Redis store"
    assert settings.server.trusted_proxies >= 1, "the ingress controller is a proxy in front"
    env = _env(_the("Deployment")["spec"]["template"]["spec"]["containers"][0])
    check_workers(settings, int(env["TOKEN_SERVICE_WORKERS"]))


@pytest.mark.unit
def test_secret_example_holds_only_marked_placeholders() -> None:
    secret = _the("Secret")
    assert "data" not in secret, "placeholders in stringData, readable as such"
    text = (K8S / "secret.example.yaml").read_text(encoding="utf-8")
    assert "EXAMPLE ONLY" in text and "PLACEHOLDERS" in text
    for key, value in secret["stringData"].items():
        assert "REPLACE" in value, f"{key}: not a marked placeholder"
    # Too short to pass check-config: a pod started with the example fails fast.
    assert len(secret["stringData"]["twilio-api-key-secret"]) < 32


# ------------------------------------------------------------------------------------- gunicorn


@pytest.mark.unit
def test_gunicorn_config_loads_and_gunicorn_accepts_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.config import Config

    settings = _gunicorn_settings(monkeypatch)
    assert isinstance(settings["workers"], int) and settings["workers"] >= 1
    assert settings["bind"] == ["127.0.0.1:8000"]
    assert settings["preload_app"] is True
    config = Config()
    for key, value in settings.items():
        assert key in config.settings, f"gunicorn has no setting {key!r}"
        config.set(key, value)

    container = _the("Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    in_pod = _gunicorn_settings(monkeypatch, env)
    assert in_pod["bind"] == [env["TOKEN_SERVICE_BIND"]]
    assert in_pod["workers"] == int(env["TOKEN_SERVICE_WORKERS"])


# --------------------------------------------------------------------------------------- docker


def _locked(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a hash-pinned requirements file made by ``uv pip compile``."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", path.read_text(encoding="utf-8")):
        match = re.match(r"([A-Za-z0-9_.\-]+)==(\S+)", block)
        if match:
            found[match.group(1).lower()] = (match.group(2), frozenset(re.findall(r"--hash=(\S+)", block)))
    return found


@pytest.mark.unit
def test_runtime_lock_is_the_dev_lock_minus_the_tools() -> None:
    """The image gets requirements.lock alone; tests run on the same pins plus their tools."""
    runtime, dev = _locked(ROOT / "requirements.lock"), _locked(ROOT / "requirements-dev.lock")
    assert runtime and all(dev.get(name) == pin for name, pin in runtime.items()), "pins must agree"
    assert all(pin[1] for pin in [*runtime.values(), *dev.values()]), "every pin carries hashes"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    for requirement in project["dependencies"]:
        assert re.split(r"[<>=\[]", requirement)[0].lower() in runtime, requirement
    for tool in ("pytest", "ruff", "playwright", "schemathesis"):
        assert tool in dev and tool not in runtime, tool


@pytest.mark.unit
def test_dockerfile_installs_locked_runs_unprivileged_and_checks_health() -> None:
    instructions = _dockerfile_instructions()
    args_defaults = {
        name: value for keyword, args in instructions if keyword == "ARG"
        for name, _, value in [args.partition("=")]
    }
    stages = _dockerfile_stages()
    stage_names = set()
    for stage in stages:
        base = stage[0][1].split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args_defaults.get(m.group(1), m.group(0)), base[0])
        if len(base) == 3 and base[1].upper() == "AS":
            stage_names.add(base[2])
        assert image in stage_names or image == "python:3.11-slim", f"base image {image!r}"

    runs = [args for keyword, args in instructions if keyword == "RUN"]
    commands = [c.strip() for run in runs for c in run.split("&&")]
    assert any(
        re.search(r"pip install --no-cache-dir --require-hashes -r requirements\.lock\b", c) for c in commands
    ), "dependencies must be installed from requirements.lock with --require-hashes"
    assert not any("requirements-dev.lock" in c for c in commands), "no test tools in the image"
    assert any("pip install" in c and "--no-deps" in c for c in commands), "then the project with --no-deps"

    final = stages[-1]
    keywords = [keyword for keyword, _ in final]
    (user,) = [args for keyword, args in final if keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: a numeric non-root user"
    pod = _the("Deployment")["spec"]["template"]["spec"]
    assert int(uid) == pod["securityContext"]["runAsUser"], "the pod's runAsUser is the image's user"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in {"RUN", "COPY"})

    env: dict[str, str] = {}
    for keyword, args in final:
        if keyword == "ENV":
            env.update(_env_pairs(args))
    assert env["TOKEN_SERVICE_BIND"] == "0.0.0.0:8000"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert ("EXPOSE", "8000") in final
    (workdir,) = [args for keyword, args in final if keyword == "WORKDIR"]
    assert workdir == "/app"
    copied = [_copy_sources(args) for keyword, args in final if keyword == "COPY"]
    assert (["deploy/gunicorn.conf.py"], "deploy/gunicorn.conf.py", False) in copied
    assert env["TOKEN_SERVICE_GUNICORN_CONFIG"] == f"{workdir}/deploy/gunicorn.conf.py"

    (healthcheck,) = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    (entrypoint,) = [args for keyword, args in final if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["token-service"]
    (cmd,) = [args for keyword, args in final if keyword == "CMD"]
    assert json.loads(cmd) == ["serve", "--config", "/etc/token-service/config.toml"]
    assert any(keyword == "LABEL" and "org.opencontainers.image.title" in args for keyword, args in final)

    # Every COPY from the build context names something that exists, and survives .dockerignore.
    patterns = _dockerignore_patterns()
    for keyword, args in instructions:
        if keyword not in {"COPY", "ADD"}:
            continue
        sources, _, from_stage = _copy_sources(args)
        if from_stage:
            continue
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            files = [path]
            if path.is_dir():
                files = [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not _dockerignored(relative, patterns), f"COPY {source}: .dockerignore excludes {relative}"


@pytest.mark.unit
def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    patterns = _dockerignore_patterns()
    for relative in (
        ".venv/bin/python", ".git/config", "devidp/node_modules/x/index.js", ".dev/idp-keys.json",
        ".pytest_cache/v/cache/nodeids", ".ruff_cache/x", "tests/test_deploy.py",
        "token_service/__pycache__/app.cpython-311.pyc", "token_service.egg-info/PKG-INFO",
        "config.toml", "dev/config.toml", ".env",
    ):
        assert _dockerignored(relative, patterns), f".dockerignore lets {relative} into the build context"


@pytest.mark.unit
def test_wheel_packages_the_store_lua_scripts() -> None:
    """The image installs a wheel, not the source tree: the store's Lua scripts must be package data."""
    import fnmatch

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"].get("package-data", {}).get("token_service", [])
    package = ROOT / "token_service"
    scripts = sorted(p.relative_to(package).as_posix() for p in (package / "store" / "lua").glob("*.lua"))
    assert scripts
    missing = [s for s in scripts if not any(fnmatch.fnmatch(s, g) for g in globs)]
    assert not missing, f"not package data, so not in the wheel: {missing}"


def _healthcheck_exit_status(port: int) -> subprocess.CompletedProcess[str]:
    """Run the image's HEALTHCHECK command (its python part) against 127.0.0.1:``port``."""
    (healthcheck,) = [args for keyword, args in _dockerfile_stages()[-1] if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "python"
    env = {**os.environ, "TOKEN_SERVICE_BIND": f"0.0.0.0:{port}"}
    return subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.integration
def test_dockerfile_healthcheck_command_follows_the_real_healthz() -> None:
    from tests.support import config_dict, running, settings_for

    # The issuer is never contacted: /healthz needs no keys and no store.
    with running(settings_for(config_dict("http://127.0.0.1:9/"))) as service:
        port = int(service.url.rpartition(":")[2])
        result = _healthcheck_exit_status(port)
        assert result.returncode == 0, result.stderr
    # Nothing answers any more: the check fails, so Docker marks the container unhealthy.
    result = _healthcheck_exit_status(port)
    assert result.returncode != 0


# -------------------------------------------------------------------------------------- systemd


@pytest.mark.unit
def test_systemd_unit_is_hardened_and_stops_gracefully(monkeypatch: pytest.MonkeyPatch) -> None:
    unit = _systemd_unit(SYSTEMD_UNIT)
    service = unit["Service"]

    def one(key: str) -> str:
        assert key in service, f"[Service] {key}= is missing"
        return service[key][-1]

    assert one("User") == "token-service"
    assert "token-service serve --config /etc/token-service/config.toml" in one("ExecStart")
    assert one("WorkingDirectory").startswith("/")
    gunicorn_conf = next(v for v in service["Environment"] if v.startswith("TOKEN_SERVICE_GUNICORN_CONFIG="))
    assert gunicorn_conf.endswith(f"={one('WorkingDirectory')}/deploy/gunicorn.conf.py")
    assert one("EnvironmentFile").lstrip("-").startswith("/etc/token-service/")
    assert "0600" in SYSTEMD_UNIT.read_text(encoding="utf-8"), "say how to protect the EnvironmentFile"
    for key, value in {
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
        "PrivateDevices": "yes", "RestrictSUIDSGID": "yes", "Restart": "on-failure", "KillSignal": "SIGTERM",
    }.items():
        assert one(key) == value, f"{key}={one(key)}, expected {value}"
    assert one("CapabilityBoundingSet") == ""
    graceful = _gunicorn_settings(monkeypatch)["graceful_timeout"]
    assert _seconds(one("TimeoutStopSec")) > graceful
    multiproc = next(v for v in service["Environment"] if v.startswith("PROMETHEUS_MULTIPROC_DIR="))
    assert multiproc.partition("=")[2] == f"/run/{one('RuntimeDirectory')}", "a writable, fresh directory"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.integration
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    # verify insists that ExecStart's binary exists: point it at one that does, change nothing else.
    text = SYSTEMD_UNIT.read_text(encoding="utf-8")
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={shutil.which('true') or '/bin/true'}", text, flags=re.MULTILINE)
    copy = tmp_path / SYSTEMD_UNIT.name
    copy.write_text(text, encoding="utf-8")
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if SYSTEMD_UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# ----------------------------------------------------------------------------- prometheus, grafana


@pytest.mark.unit
def test_alert_rules_parse_and_use_the_service_metrics() -> None:
    (document,) = _documents(ALERTS)
    rules = [rule for group in document["groups"] for rule in group["rules"]]
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    used: set[str] = set()
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{rule['alert']}: for: {rule['for']}"
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        used |= _check_expr(rule["expr"], rule["alert"])
    assert {
        "TokenServiceHigh5xxRatio", "TokenServiceNotReady", "TokenServiceStoreErrors",
        "TokenServiceJwksFetchFailing", "TokenServiceRefreshTokenReuse", "TokenServiceRateLimitSurge",
        "TokenServiceHighLatencyP99", "TokenServiceNoTokensIssued",
    } <= set(names)
    jwks = next(r for r in rules if r["alert"] == "TokenServiceJwksFetchFailing")
    assert _seconds(jwks["for"]) >= 600, "JWKS failures alert after 10 minutes"
    reuse = next(r for r in rules if r["alert"] == "TokenServiceRefreshTokenReuse")
    assert 'outcome="reused"' in reuse["expr"] and "for" not in reuse, "any reuse, at once"
    assert "token_service_tokens_issued_total" in used and "token_service_http_request_duration_seconds" in used


@pytest.mark.integration
def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus); the YAML checks above still ran")
    result = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_grafana_dashboard_is_importable_and_uses_the_service_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"] and dashboard["id"] is None
    (ds_input,) = dashboard["__inputs"]
    assert ds_input["name"] == "DS_PROMETHEUS" and ds_input["pluginId"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == datasource
        _check_expr(variable["query"]["query"], f"variable {variable['name']}")

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"] == datasource, panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource
            used |= _check_expr(target["expr"], panel["title"])
    assert used == METRICS, f"metrics without a panel: {sorted(METRICS - used)}"

    text = DASHBOARD.read_text(encoding="utf-8")
    buckets = "token_service_http_request_duration_seconds_bucket"
    for quantile in ("0.50", "0.95", "0.99"):
        expected = f"histogram_quantile({quantile}, sum by (le) (rate({buckets}"
        assert expected in text, f"no p{quantile[2:]} latency panel"
    stats = [p for p in panels if p["type"] == "stat"]
    assert any("token_service_active_identities" in t["expr"] for p in stats for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in panels)
    for words in ("denials by reason", "jwks", "store errors", "store latency", "rate-limit hits by policy", "reuse"):
        assert words in titles, f"no panel about {words!r}"


# ---------------------------------------------------------------------------------------- nginx


def ensure_nginx() -> str:
    """Path of ``nginx``; as root, install Debian's nginx-light (or nginx) once, else skip the test."""
    try:
        return ensure_tool("nginx", ["nginx-light", "nginx"])
    except ToolUnavailable as exc:
        if os.geteuid() != 0:
            pytest.skip(str(exc))
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def nginx() -> str:
    return ensure_nginx()


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _server_name() -> str:
    match = re.search(r"^\s*server_name\s+(\S+);", NGINX_CONF.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, "no server_name in the nginx example"
    return match.group(1)


def _nginx_sandbox(nginx: str, directory: Path, server_block: str) -> Path:
    """A wrapper nginx.conf that includes ``server_block`` in http {}, with every path in ``directory``."""
    compiled = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False).stderr
    temp_paths = [
        f"{module}_temp_path {directory}/temp-{module};"
        for module in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--without-http_{module}_module" not in compiled
    ]
    (directory / "logs").mkdir()
    cert, key = _self_signed(directory, _server_name())
    block = server_block.replace("/var/log/nginx/", f"{directory}/logs/")
    block = re.sub(r"(ssl_certificate\s+)\S+;", rf"\g<1>{cert};", block)
    block = re.sub(r"(ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", block)
    (directory / "token-service.conf").write_text(block, encoding="utf-8")
    wrapper = directory / "nginx.conf"
    wrapper.write_text(
        "\n".join([
            f"pid {directory}/nginx.pid;",
            f"error_log {directory}/logs/error.log info;",
            "worker_processes 1;",
            "events { worker_connections 64; }",
            "http {",
            f"    access_log {directory}/logs/access.log;",
            *(f"    {line}" for line in temp_paths),
            f"    include {directory}/token-service.conf;",
            "}",
            "",
        ]),
        encoding="utf-8",
    )
    return wrapper


def _nginx_command(nginx: str, directory: Path, wrapper: Path) -> list[str]:
    return [nginx, "-p", f"{directory}/", "-c", str(wrapper), "-e", f"{directory}/logs/error.log"]


@pytest.mark.integration
def test_nginx_example_passes_nginx_t(nginx: str, tmp_path: Path) -> None:
    wrapper = _nginx_sandbox(nginx, tmp_path, NGINX_CONF.read_text(encoding="utf-8"))
    result = subprocess.run(
        [*_nginx_command(nginx, tmp_path, wrapper), "-t"], capture_output=True, text=True, timeout=60, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "test is successful" in output, output
    assert "[warn]" not in output and "[emerg]" not in output, output


class _EchoUpstream(BaseHTTPRequestHandler):
    """Stands in for token-service: answers with the request line and headers it received."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body_size = len(self.rfile.read(length)) if length else 0
        body = json.dumps({
            "method": self.command, "path": self.path, "body_size": body_size,
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.path.startswith("/v1/token"):
            self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def proxied(nginx: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The example server block under a real nginx, on free loopback ports, before an echo upstream.

    Only addresses and ports change; the loopback ``allow`` lines of /metrics and /readyz are dropped
    so that the test (a loopback client) stands for a client outside the internal networks.
    """
    with ThreadingHTTPServer(("127.0.0.1", 0), _EchoUpstream) as upstream:
        thread = threading.Thread(target=upstream.serve_forever, daemon=True)
        thread.start()
        http_port, https_port = free_port(), free_port()
        block = NGINX_CONF.read_text(encoding="utf-8")
        block = re.sub(r"^\s*server 10\.[^;]*;\n", "", block, flags=re.MULTILINE)
        host, port = upstream.server_address[:2]
        block = block.replace("upstream token_service {", f"upstream token_service {{\n    server {host}:{port};", 1)
        block = re.sub(r"^\s*listen \[::\]:\d+[^;]*;\n", "", block, flags=re.MULTILINE)
        block = re.sub(r"listen 80;", f"listen 127.0.0.1:{http_port};", block)
        block = re.sub(r"listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;", block)
        block = re.sub(r"^\s*allow (127\.0\.0\.1|::1);\n", "", block, flags=re.MULTILINE)
        wrapper = _nginx_sandbox(nginx, tmp_path, block)
        process = subprocess.Popen(
            [*_nginx_command(nginx, tmp_path, wrapper), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                if process.poll() is not None:
                    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                    pytest.fail(f"nginx exited with {process.returncode}:\n{output}")
                try:
                    with socket.create_connection(("127.0.0.1", https_port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail("nginx did not listen within 15 s")
                    time.sleep(0.05)
            yield https_port, tmp_path / "server.crt"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()
            upstream.shutdown()
            thread.join()


def _request(
    port: int, ca: Path, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # the certificate names the server_name; we connect to 127.0.0.1
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers={"Host": _server_name(), **(headers or {})})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.integration
def test_nginx_example_forwards_what_the_service_trusts_and_guards_the_rest(proxied: tuple[int, Path]) -> None:
    port, ca = proxied

    # A client-sent X-Forwarded-For stays on the left; nginx appends the real peer on the right, which
    # is what [server] trusted_proxies = 1 picks.
    # The service's ProxyFix trusts one hop of X-Forwarded-For, -Proto, -Host, -Port and -Prefix: nginx
    # must set or drop every one of them, or a client would choose its own value.
    forged = {
        "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Port": "8443", "X-Forwarded-Prefix": "/evil", "Forwarded": "for=203.0.113.9",
    }
    status, headers, body = _request(
        port, ca, "POST", "/v1/token", {**forged, "Authorization": "Bearer " + "a" * 16384}
    )
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == _server_name() and seen["host"] == _server_name()
    assert not {"x-forwarded-port", "x-forwarded-prefix", "forwarded"} & set(seen)
    assert re.fullmatch(r"[0-9a-f]{32}", seen["x-request-id"])
    assert len(seen["authorization"]) == len("Bearer ") + 16384, "a 16 KiB bearer token gets through"
    assert headers.get_all("Cache-Control") == ["no-store"]
    assert "Strict-Transport-Security" in headers

    status, _, body = _request(port, ca, "POST", "/v1/token/refresh", {"X-Request-ID": "client-id-1"}, b"x" * 1000)
    assert status == 200 and json.loads(body)["headers"]["x-request-id"] == "client-id-1"

    status, _, _ = _request(port, ca, "POST", "/v1/token/refresh", body=b"x" * (64 * 1024 + 1))
    assert status == 413, "bodies over the service's max_body_bytes stop at nginx"

    # Outside the internal networks: no metrics, no readiness details; liveness stays public.
    assert _request(port, ca, "GET", "/metrics")[0] == 403
    assert _request(port, ca, "GET", "/readyz")[0] == 403
    assert _request(port, ca, "GET", "/healthz")[0] == 200
    assert _request(port, ca, "GET", "/healthz", {"Host": "evil.example"})[0] == 421
