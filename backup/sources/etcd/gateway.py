"""One etcd endpoint's HTTP side: ``/version`` and the v3 JSON gateway (authentication, paged key
ranges) over one kept-alive connection, and the SSL context a source's TLS settings make.

Our gateway client only ever moves keys (a census, a version): snapshots go through etcdctl
(``etcdctl.py``), as the gateway's snapshot stream would cost a base64 + JSON decode of every byte.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from policies.errors import SourceError
from policies.model import EtcdTls

HTTP_TIMEOUT = 60.0
CENSUS_PAGE = 10_000  # keys per range request: ~1 MiB of JSON per page


@dataclass(frozen=True)
class KeyPage:
    revision: int
    keys: list[bytes]
    more: bool
    count: int


_AUTHENTICATE = "/v3/auth/authenticate"


class EtcdGateway:
    """One etcd endpoint's HTTP side (``/version`` and the v3 JSON gateway) over one kept-alive
    connection. Raises SourceError naming the endpoint for every failure."""

    def __init__(
        self,
        endpoint: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = HTTP_TIMEOUT,
    ) -> None:
        parts = urlsplit(endpoint)
        self.endpoint = endpoint
        if parts.scheme == "https":
            self._connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.netloc, timeout=timeout, context=ssl_context or ssl.create_default_context()
            )
        else:
            self._connection = http.client.HTTPConnection(parts.netloc, timeout=timeout)
        self._user = user
        self._password = password
        self._token: str | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._connection.close()

    def version(self) -> str:
        """The server's version (``3.4.23``)."""
        self._send("GET", "/version")
        return str(self._receive("/version").get("etcdserver", "unknown"))

    def request_keys(self, start: bytes, *, revision: int = 0, limit: int = CENSUS_PAGE) -> None:
        """Ask for up to ``limit`` keys >= ``start`` in key order at ``revision`` (0: the current one);
        ``read_keys`` collects the answer, so the caller can work while etcd does."""
        body = {"key": _b64(start), "range_end": _b64(b"\0"), "keys_only": True, "limit": limit, "revision": revision}
        self._send("POST", "/v3/kv/range", body)

    def read_keys(self) -> KeyPage:
        answer = self._receive("/v3/kv/range")
        keys = [base64.b64decode(item["key"]) for item in answer.get("kvs", [])]
        return KeyPage(int(answer["header"]["revision"]), keys, bool(answer.get("more")), int(answer.get("count", 0)))

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        if self._user and self._token is None and path.startswith("/v3/") and path != _AUTHENTICATE:
            self._send("POST", _AUTHENTICATE, {"name": self._user, "password": self._password})
            self._token = str(self._receive(_AUTHENTICATE)["token"])
        headers = {"Content-Type": "application/json"} | ({"Authorization": self._token} if self._token else {})
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self._connection.request(method, path, body=payload, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            raise SourceError(f"etcd at {self.endpoint} is unreachable: {_reason(exc)}") from exc

    def _receive(self, path: str) -> dict[str, Any]:
        try:
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            raise SourceError(f"etcd at {self.endpoint} is unreachable: {_reason(exc)}") from exc
        try:
            doc: dict[str, Any] = json.loads(data)
        except ValueError:
            doc = {}
        if response.status != 200:
            message = doc.get("message") or doc.get("error") or data[:200].decode(errors="replace")
            raise SourceError(f"etcd at {self.endpoint} refused {path} (HTTP {response.status}): {message}")
        return doc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed ({exc.reason or exc}); check tls.ca / tls.cert / tls.key"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is etcd running and listening there?)"
    return str(exc) or type(exc).__name__


def ssl_context_for(tls: EtcdTls | None, where: str) -> ssl.SSLContext | None:
    """An SSL context from the configured files, proving they are usable before any connection.

    Raises SourceError naming the setting (``<where>.tls.ca``...) and what is wrong with the file."""
    if tls is None:
        return None
    for setting, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        if path is not None and not path.is_file():
            raise SourceError(f"{where}.tls.{setting}: {path} does not exist or is not a file")
    try:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    except ssl.SSLError as exc:
        raise SourceError(f"{where}.tls.ca: {tls.ca} holds no usable PEM CA certificate ({exc.reason or exc})") from None
    if tls.cert and tls.key:
        try:
            context.load_cert_chain(str(tls.cert), str(tls.key))
        except ssl.SSLError as exc:
            raise SourceError(
                f"{where}.tls.cert/key: {tls.cert} and {tls.key} are not a PEM certificate and its private key "
                f"({exc.reason or exc})"
            ) from None
    return context
