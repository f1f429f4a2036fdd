"""``access: port-forward`` (Lifeboat outside the cluster): a ``PortForwardRelay`` per server port
of a slot listens on 127.0.0.1, and carries each connection it accepts over a port-forward
websocket of its own to the slot's pod (``kubernetes.stream.portforward``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Protocol

import structlog
from kubernetes.stream import portforward

from drills.scratch.common import pump
from drills.scratch.kubernetes.api import KubernetesApi

log = structlog.get_logger(__name__)


class StreamSocket(Protocol):
    """The part of a socket a relay uses (``PortForward.socket`` returns a wrapped socketpair end)."""

    def recv(self, size: int, /) -> bytes: ...
    def sendall(self, data: bytes, /) -> None: ...
    def shutdown(self, how: int, /) -> None: ...
    def close(self) -> None: ...


StreamOpener = Callable[[], tuple[StreamSocket, Callable[[], None]]]


def pod_port_opener(api: KubernetesApi, namespace: str, pod: str, port: int) -> StreamOpener:
    """Opens a new port-forward websocket to ``pod``:``port``: (its socket, what closes it).
    Raises ApiException when the API server refuses (pod gone, RBAC)."""

    def open_stream() -> tuple[StreamSocket, Callable[[], None]]:
        forward = portforward(api.core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        return forward.socket(port), forward.close

    return open_stream


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
        reply = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        reply.start()
        pump(client, upstream)
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
