"""Real Redis processes for the test suite: plain, password, ACL user, TLS, cluster and sentinel.

Tests of the Redis-backed store must see real failures (connection refused, a crashed node, a cluster
that loses a master), so these helpers run the Debian ``redis-server`` binary on free loopback ports in
temporary directories instead of fakes or mocks. Every process is stopped at interpreter exit as well.

Only stdlib, ``redis`` and ``cryptography`` are used so that tests can import it without extras.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.debian import ToolUnavailable, ensure_tool

HOST = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
CLUSTER_SLOTS = 16384
_LOG_TAIL_LINES = 40
_POLL_INTERVAL = 0.05
_PORT_ATTEMPTS = 3


class RedisServerError(RuntimeError):
    """A Redis process could not be installed, started, reached or stopped."""


# --------------------------------------------------------------------------- binary




def ensure_redis_server() -> str:
    """Path of ``redis-server``; CI images may lack it, so as root install the Debian package once."""
    try:
        return ensure_tool("redis-server", ["redis-server"])
    except ToolUnavailable as exc:
        raise RedisServerError(str(exc)) from None


# --------------------------------------------------------------------------- ports


_ports_lock = threading.Lock()
_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that is free now, never the same one twice in this process.

    Another process may still take it before Redis binds, so ``start()`` picks a new port and retries
    when a server it chose the port for fails with "Address already in use".
    """
    with _ports_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, 0))
                port: int = sock.getsockname()[1]
            if port not in _ports_handed_out:
                _ports_handed_out.add(port)
                return port


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS server: the CA clients trust, and the server's certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_tls_files(directory: Path) -> TlsFiles:
    """Self-signed CA and a server certificate for 127.0.0.1 and localhost, so clients verify fully."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=7)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token-service test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    files = TlsFiles(
        ca_cert=directory / "ca.crt", cert=directory / "server.crt", key=directory / "server.key"
    )
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(
        files.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return files


# --------------------------------------------------------------------------- processes


_live_lock = threading.Lock()
_live: set[RedisProcess] = set()


def _stop_all() -> None:
    """atexit hook: a failing or interrupted test run must not leave redis-server processes behind."""
    with _live_lock:
        processes = list(_live)
    for process in processes:
        with contextlib.suppress(Exception):  # best effort: keep stopping the others
            process.stop()


atexit.register(_stop_all)


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def _conf_quote(value: str) -> str:
    """Quote a value for redis.conf (sdssplitargs rules), so paths and passwords survive verbatim."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class _StartStop:
    """``with X() as x:`` starts on entry and stops on exit, for every server kind below."""

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class RedisProcess(_StartStop):
    """One ``redis-server`` process with its own temp dir: the lifecycle shared by servers and sentinels.

    The temp dir survives ``kill()`` and ``restart()`` (a cluster node needs its nodes.conf to rejoin)
    and is deleted by ``stop()``.
    """

    host: str = HOST
    log_name = "redis.log"

    def __init__(self, port: int | None = None) -> None:
        self._port_is_ours = port is None
        self.port: int = free_port() if port is None else port
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._log_offset = 0

    # -- subclass hooks

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write files the process needs before it is spawned."""

    def _ready(self) -> bool:
        """True once the process serves requests; connection errors mean "not yet"."""
        raise NotImplementedError

    def _repick_ports(self) -> None:
        self.port = free_port()

    # -- state

    @property
    def directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__.lower()}-"))
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.directory / self.log_name

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The end of the server log and of its stdout/stderr (config errors go there, not to the log)."""
        if self._dir is None:
            return "(no log: the temp dir is gone)"
        parts = []
        for path in (self._dir / self.log_name, self._dir / "stdout.log"):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                tail = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {path}:\n{tail}")
        return "\n".join(parts) if parts else "(no log output)"

    # -- lifecycle

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Spawn the process and wait until it serves requests; no-op when already running."""
        if self.running:
            return
        for attempt in range(_PORT_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready(timeout)
            except RedisServerError:
                clash = "Address already in use" in self._new_log_text()
                self._terminate(signal.SIGKILL)
                if clash and self._port_is_ours and not self._started_once and attempt + 1 < _PORT_ATTEMPTS:
                    self._repick_ports()
                    continue
                raise
            self._started_once = True
            return

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL if it hangs), then delete the temp dir. Safe to call repeatedly."""
        try:
            self._terminate(signal.SIGTERM)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
            with _live_lock:
                _live.discard(self)

    def kill(self) -> None:
        """SIGKILL, like a crash; ``start()`` brings it back on the same port (with an empty dataset)."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        """Graceful stop and start on the same port, keeping the temp dir."""
        self._terminate(signal.SIGTERM)
        self.start(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the running process serves requests again (e.g. after a sentinel failover)."""
        self._wait_ready(timeout)


    # -- internals

    def _spawn(self) -> None:
        binary = ensure_redis_server()
        directory = self.directory
        self._prepare()
        try:
            self._log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        with _live_lock:
            _live.add(self)
        # The child keeps its own copy of the descriptor, so the parent can close the file at once.
        with open(directory / "stdout.log", "ab") as output:
            self._proc = subprocess.Popen(
                [binary, *self._argv()],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )

    def _new_log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                status = None if proc is None else proc.returncode
                raise RedisServerError(
                    f"{self!r} exited (status {status}) during start-up\n{self.log_tail()}"
                )
            try:
                if self._ready():
                    return
            except (redis.RedisError, OSError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"{self!r} not ready after {timeout:.0f}s (last error: {last_error!r})\n{self.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- single server


class RedisServer(RedisProcess):
    """A standalone Redis on a loopback port, optionally with a password, an ACL user or TLS only.

    ``password`` protects the ``default`` user (``requirepass``); ``acl_user`` adds a user with full access
    (``~* &* +@all``) and switches ``default`` off unless a password is also given, so no unauthenticated
    access remains whenever auth is requested.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        acl_user: tuple[str, str] | None = None,
        tls: TlsFiles | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(port)
        self.password = password
        self.acl_user = acl_user
        self.tls = tls
        self.extra_args = list(extra_args or [])

    @property
    def auth_required(self) -> bool:
        return self.password is not None or self.acl_user is not None

    def _argv(self) -> list[str]:
        directory = self.directory
        args = [
            "--bind", HOST,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca_cert),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if not self.auth_required:
            args += ["--protected-mode", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.acl_user is not None:
            name, secret = self.acl_user
            args += ["--user", name, "on", f">{secret}", "~*", "&*", "+@all"]
            if self.password is None:
                args += ["--user", "default", "off"]
        return args + self.extra_args

    def _auth_kwargs(self) -> dict[str, Any]:
        if self.password is not None:
            return {"password": self.password}
        if self.acl_user is not None:
            return {"username": self.acl_user[0], "password": self.acl_user[1]}
        return {}

    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, **self._auth_kwargs()}
        if self.tls is not None:
            kwargs.update(ssl=True, ssl_ca_certs=str(self.tls.ca_cert))
        return kwargs

    def url(
        self,
        *,
        scheme: str = "redis",
        username: str | None = None,
        with_password: bool = False,
        db: int = 0,
    ) -> str:
        """URL of this server (``rediss://`` when TLS), credentials only on request.

        With ``with_password`` and no ``username``, the credentials that work are used: the default
        user's password, else the ACL user's name and password.
        """
        if self.tls is not None and scheme == "redis":
            scheme = "rediss"
        name, secret = username, None
        if with_password:
            if username is None and self.password is None and self.acl_user is not None:
                name, secret = self.acl_user
            elif username is not None and self.acl_user is not None and username == self.acl_user[0]:
                secret = self.acl_user[1]
            else:
                secret = self.password
        userinfo = ""
        if name is not None:
            userinfo = quote(name, safe="")
        if secret is not None:
            userinfo += ":" + quote(secret, safe="")
        if userinfo:
            userinfo += "@"
        return f"{scheme}://{userinfo}{self.host}:{self.port}/{db}"

    def client(self, **kw: Any) -> redis.Redis:
        """Authenticated, TLS-aware client for assertions; no retries so an outage shows at once. Close it."""
        kwargs: dict[str, Any] = {"retry": _no_retry(), "socket_connect_timeout": 5, "socket_timeout": 10}
        kwargs.update(self._connection_kwargs())
        kwargs.update(kw)
        return redis.Redis(**kwargs)

    def flush(self) -> None:
        """Empty every database: a test that shares the server starts from nothing."""
        with self._admin() as admin:
            admin.flushall()

    def _admin(self) -> redis.Redis:
        # RESP2 without CLIENT SETINFO: the helper's own connections add as little as possible to the
        # command statistics that tests assert on.
        return redis.Redis(
            **self._connection_kwargs(),
            protocol=2,
            driver_info=None,
            retry=_no_retry(),
            single_connection_client=True,
            socket_connect_timeout=2,
            socket_timeout=5,
        )

    def _ready(self) -> bool:
        with self._admin() as admin:
            return bool(admin.ping())

    def command_count(self) -> dict[str, int]:
        """Calls per command since start or ``reset_stats()`` (e.g. ``"evalsha"``, ``"client|setname"``).

        The helper's own INFO (and AUTH, and the CONFIG RESETSTAT of ``reset_stats()``) are counted too,
        so assert on the commands under test rather than on the whole dict.
        """
        with self._admin() as admin:
            stats = admin.info("commandstats")
        return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT, so a test counts only the commands its own code sends."""
        with self._admin() as admin:
            admin.config_resetstat()


# --------------------------------------------------------------------------- cluster


class ClusterNode(RedisServer):
    """A cluster-enabled server; the bus port is chosen explicitly instead of the fixed +10000 offset."""

    def __init__(self) -> None:
        super().__init__()
        self.bus_port = free_port()

    def _repick_ports(self) -> None:
        super()._repick_ports()
        self.bus_port = free_port()

    def _argv(self) -> list[str]:
        return super()._argv() + [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.directory / "nodes.conf"),
            "--cluster-node-timeout", "2000",
            "--cluster-port", str(self.bus_port),
        ]  # fmt: skip

    def cluster_info(self) -> dict[str, str]:
        with self._admin() as admin:
            text = admin.execute_command("CLUSTER", "INFO")
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in str(text).splitlines() if ":" in line)


class RedisCluster(_StartStop):
    """Three masters, no replicas, slots split evenly.

    Formed by hand (ADDSLOTSRANGE, SET-CONFIG-EPOCH, MEET) rather than ``redis-cli --cluster create``:
    it needs no redis-cli, supports the explicit bus ports, and is quicker than redis-cli's join polling.
    """

    def __init__(self, masters: int = 3) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.nodes: list[RedisServer] = [ClusterNode() for _ in range(masters)]

    @property
    def _cluster_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if isinstance(node, ClusterNode)]

    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{node.host}:{node.port}" for node in self.nodes)

    def client(self, **kw: Any) -> redis.RedisCluster:
        """Cluster client for assertions, bootstrapped from the first node. Close it."""
        first = self.nodes[0]
        kwargs: dict[str, Any] = {"host": first.host, "port": first.port, "socket_connect_timeout": 5}
        kwargs.update(kw)
        return redis.RedisCluster(**kwargs)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every node (spawned together), form the cluster if new, wait for ``cluster_state:ok``."""
        deadline = time.monotonic() + timeout
        try:
            pending = [node for node in self._cluster_nodes if not node.running]
            for node in pending:
                node._spawn()
            for node in pending:
                try:
                    node._wait_ready(max(deadline - time.monotonic(), 1.0))
                except RedisServerError:
                    if "Address already in use" not in node._new_log_text():
                        raise
                    # Someone took a port between free_port() and the bind: new ports, single-server path.
                    node._terminate(signal.SIGKILL)
                    node._repick_ports()
                    node.start(max(deadline - time.monotonic(), 1.0))
                node._started_once = True
            infos = [node.cluster_info() for node in self._cluster_nodes]
            if all(info.get("cluster_slots_assigned") == "0" for info in infos):
                self._form()
            self.wait_ok(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.stop()
            raise

    def _form(self) -> None:
        nodes = self._cluster_nodes
        count = len(nodes)
        for index, node in enumerate(nodes):
            first = index * CLUSTER_SLOTS // count
            last = (index + 1) * CLUSTER_SLOTS // count - 1
            with node._admin() as admin:
                admin.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                # Distinct epochs up front, as redis-cli does, so no slot ownership conflict is resolved.
                admin.execute_command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
        seed = nodes[0]
        for node in nodes[1:]:
            with node._admin() as admin:
                admin.execute_command("CLUSTER", "MEET", seed.host, seed.port, seed.bus_port)

    def wait_ok(self, timeout: float = START_TIMEOUT) -> None:
        """Block until every running node reports ``cluster_state:ok`` and knows all nodes."""
        deadline = time.monotonic() + timeout
        nodes = [node for node in self._cluster_nodes if node.running]
        last: dict[int, dict[str, str]] = {}
        while True:
            ready = True
            for node in nodes:
                try:
                    info = node.cluster_info()
                except (redis.RedisError, OSError) as exc:
                    info = {"error": repr(exc)}
                last[node.port] = info
                known = info.get("cluster_known_nodes")
                if info.get("cluster_state") != "ok" or known != str(len(self.nodes)):
                    ready = False
            if ready:
                return
            if time.monotonic() >= deadline:
                states = {
                    port: {
                        k: v
                        for k, v in info.items()
                        if k in ("cluster_state", "cluster_known_nodes", "error")
                    }
                    for port, info in last.items()
                }
                tails = "\n".join(node.log_tail(10) for node in nodes)
                raise RedisServerError(f"cluster not ok after {timeout:.0f}s: {states}\n{tails}")
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """Stop every node, even if stopping one of them fails."""
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.stop()
            except Exception as exc:  # stop the rest first, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def command_count(self) -> dict[str, int]:
        """``RedisServer.command_count()`` summed over all nodes."""
        total: dict[str, int] = {}
        for node in self.nodes:
            for name, calls in node.command_count().items():
                total[name] = total.get(name, 0) + calls
        return total

    def reset_stats(self) -> None:
        for node in self.nodes:
            node.reset_stats()



# --------------------------------------------------------------------------- sentinel


class SentinelProcess(RedisProcess):
    """``redis-server sentinel.conf --sentinel``; the conf must be writable because Sentinel rewrites it."""

    log_name = "sentinel.log"

    def __init__(self, master: RedisServer, service_name: str, password: str | None,
                 sentinel_password: str | None = None) -> None:
        super().__init__()
        self.master = master
        self.service_name = service_name
        self.password = password
        self.sentinel_password = sentinel_password  # protects the sentinel itself (requirepass)

    @property
    def conf_path(self) -> Path:
        return self.directory / "sentinel.conf"

    def _prepare(self) -> None:
        # Written fresh on every spawn: the master's port is fixed, and a kill must not leave us with a
        # half-rewritten file.
        lines = [
            f"port {self.port}",
            f"bind {HOST}",
            "daemonize no",
            "protected-mode no",
            f"dir {_conf_quote(str(self.directory))}",
            f"logfile {_conf_quote(str(self.log_path))}",
            f"sentinel monitor {self.service_name} {self.master.host} {self.master.port} 1",
            f"sentinel down-after-milliseconds {self.service_name} 2000",
        ]
        if self.password is not None:
            lines.append(f"sentinel auth-pass {self.service_name} {_conf_quote(self.password)}")
        if self.sentinel_password is not None:
            lines.append(f"requirepass {_conf_quote(self.sentinel_password)}")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _argv(self) -> list[str]:
        return [str(self.conf_path), "--sentinel"]

    def client(self, **kw: Any) -> redis.Redis:
        """Client for the sentinel itself (SENTINEL commands). Close it."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "retry": _no_retry(),
                                  "password": self.sentinel_password}
        kwargs.update(kw)
        return redis.Redis(**kwargs)

    def _ready(self) -> bool:
        # Ready once it has connected to the master: before that, clients may see a "disconnected" master.
        with self.client(protocol=2, driver_info=None, socket_timeout=5) as admin:
            state = admin.sentinel_master(self.service_name)
        return bool(state.get("is_master")) and not state.get("is_disconnected", False)


class RedisSentinel(_StartStop):
    """One master plus one sentinel monitoring it under the name ``mymaster`` (quorum 1)."""

    def __init__(self, *, service_name: str = "mymaster", password: str | None = None,
                 sentinel_password: str | None = None) -> None:
        self.service_name = service_name
        self.password = password
        self.master = RedisServer(password=password)
        self.sentinel = SentinelProcess(self.master, service_name, password, sentinel_password)

    @property
    def host(self) -> str:
        return self.sentinel.host

    @property
    def sentinel_port(self) -> int:
        return self.sentinel.port

    def url(self) -> str:
        return f"redis+sentinel://{self.sentinel.host}:{self.sentinel.port}/{self.service_name}"

    def client(self, **kw: Any) -> redis.Redis:
        """Direct client to the master for assertions (no sentinel lookup). Close it."""
        return self.master.client(**kw)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        try:
            self.master.start(timeout)
            self.sentinel.start(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the sentinel first, so it does not log the master going down."""
        try:
            self.sentinel.stop()
        finally:
            self.master.stop()

    def command_count(self) -> dict[str, int]:
        return self.master.command_count()

    def reset_stats(self) -> None:
        self.master.reset_stats()

