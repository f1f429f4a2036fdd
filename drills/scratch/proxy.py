"""TCP relays on loopback. ``CuttableRelay``: one a drill can cut, the kill-target fault for scratch
servers that Lifeboat does not run itself (a scratch ClickHouse or MinIO elsewhere); cutting it
resets every connection through it and refuses new ones: to the restore, the server died
mid-transfer. ``PortForwardRelay``: each connection carried by a stream of its own (a Kubernetes
port-forward to a scratch pod).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)
BUFFER = 256 * 1024


class CuttableRelay:
    """Listens on 127.0.0.1:<port> and relays each connection to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: cut
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    server.close()
                    return
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(BUFFER):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> int:
        """Reset every relayed connection and stop listening; returns how many were open."""
        with self._lock:
            self._cut = True
            sockets = list(self._sockets)
            self._sockets.clear()
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close with a RST, as a dying server's kernel would; shutdown() first, since
                # close() alone does not wake the relay thread blocked in recv() on the same socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        return len(sockets) // 2

    def close(self) -> None:
        if not self._cut:
            self.cut()


class StreamSocket(Protocol):
    """The part of a socket a relay uses (``PortForward.socket`` returns a wrapped socketpair end)."""

    def recv(self, size: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


StreamOpener = Callable[[], tuple[StreamSocket, Callable[[], None]]]


class PortForwardRelay:
    """Listens on 127.0.0.1:<free port>; each connection accepted gets its own stream from ``open_stream``
    (a port-forward to the pod) and bytes are pumped both ways until either side closes."""

    def __init__(self, open_stream: StreamOpener, *, label: str) -> None:
        self.open_stream = open_stream
        self.label = label
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: set[Callable[[], None]] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name=f"port-forward-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream, close_upstream = self.open_stream()
        except Exception as exc:  # noqa: BLE001 - the client sees a closed connection; the reason is logged
            log.warning("kubernetes.port_forward_failed", target=self.label, error=f"{type(exc).__name__}: {exc}")
            client.close()
            return

        def close_both() -> None:
            with contextlib.suppress(OSError):
                client.close()
            with contextlib.suppress(OSError):
                close_upstream()

        with self._lock:
            if self._closed:
                close_both()
                return
            self._open.add(close_both)
        reply = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        reply.start()
        _pump(client, upstream)
        reply.join()
        with self._lock:
            self._open.discard(close_both)
        close_both()

    def close(self) -> None:
        """Stop listening and close every relayed connection; safe to call twice."""
        with self._lock:
            self._closed = True
            closers = list(self._open)
            self._open.clear()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it; close() alone does not
        self._listener.close()
        for close_both in closers:
            close_both()


def _pump(source: Any, sink: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        while data := source.recv(BUFFER):
            sink.sendall(data)
    with contextlib.suppress(OSError, ValueError):
        sink.shutdown(socket.SHUT_WR)
