"""Real misbehaving network peers for fault tests: a proxy that loses Redis's replies, and a stand-in
Redis that answers every command with one error reply (``-LOADING ...``, ``-READONLY ...``).

Both speak plain TCP on loopback; the service under test reaches them exactly as it reaches Redis.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self

from tests.redis_servers import HOST, free_port


class _Listener:
    """A loopback listener that hands each connection to ``serve`` on a thread of its own."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sock = socket.create_server((HOST, self.port))
        self._closed = threading.Event()
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        with self._lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class ReplyDroppingProxy(_Listener):
    """Forwards to a real Redis; ``drop_reply_after(marker)`` makes it swallow Redis's reply to the next
    command whose bytes contain ``marker`` (the command *did* run in Redis), then cut that connection.

    That is a lost reply: a dropped connection, or a stall longer than the client's socket timeout.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._marker: bytes | None = None
        self._close = True
        self.dropped = 0
        super().__init__()

    def drop_reply_after(self, marker: bytes, *, close: bool = True) -> None:
        """Lose the reply to the next command holding ``marker``; then cut the connection, or (``close``
        False) keep it open and silent, as a Redis stalled past the client's socket timeout."""
        self._marker, self._close = marker, close

    def serve(self, conn: socket.socket) -> None:
        upstream = socket.create_connection((HOST, self.upstream_port))
        swallow = threading.Event()

        def replies() -> None:
            while True:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                if swallow.is_set():
                    if self._close or not self.dropped:
                        self.dropped += 1
                    if self._close:
                        break  # the command ran; its answer never reaches the client
                    continue
                try:
                    conn.sendall(data)
                except OSError:
                    break
            for sock in (conn, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=replies, daemon=True).start()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if self._marker is not None and self._marker in data:
                self._marker = None
                swallow.set()
            try:
                upstream.sendall(data)
            except OSError:
                break
        upstream.close()
        conn.close()


class ErrorReplyServer(_Listener):
    """A stand-in Redis that answers every command it reads with ``-<error>\\r\\n``."""

    def __init__(self, error: str) -> None:
        self.reply = f"-{error}\r\n".encode()
        self.commands = 0
        super().__init__()

    def serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                for command in _complete_commands(buffer):
                    buffer = buffer[command:]
                    self.commands += 1
                    try:
                        conn.sendall(self.reply)
                    except OSError:
                        return


def _complete_commands(buffer: bytes) -> list[int]:
    """Lengths of the whole RESP arrays at the start of ``buffer``, one by one (each consumed in turn)."""
    lengths = []
    while buffer.startswith(b"*"):
        end = buffer.find(b"\r\n")
        if end < 0:
            break
        count, pos, whole = int(buffer[1:end]), end + 2, True
        for _ in range(count):
            line = buffer.find(b"\r\n", pos)
            if line < 0 or not buffer.startswith(b"$", pos):
                whole = False
                break
            size = int(buffer[pos + 1:line])
            pos = line + 2 + size + 2
            if pos > len(buffer):
                whole = False
                break
        if not whole:
            break
        lengths.append(pos)
        buffer = buffer[pos:]
    return lengths
