"""``CuttableRelay``: a TCP relay on loopback that a drill can cut, the kill-target fault for scratch
servers that Lifeboat does not run itself (a scratch ClickHouse or MinIO elsewhere); cutting it
resets every connection through it and refuses new ones: to the restore, the server died
mid-transfer.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from drills.scratch.common import pump


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
                threading.Thread(target=pump, args=(source, sink), daemon=True).start()

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
