"""One etcd endpoint's HTTP side: ``/version`` and the v3 JSON gateway (authentication, paged key
ranges with or without their values, leases, users and roles) over one kept-alive connection, and
the SSL context a source's TLS settings make.

Our gateway client only ever moves keys, leases and auth records (a census, a verification, a
version): snapshots go through etcdctl (``etcdctl.py``), as the gateway's snapshot stream would cost
a base64 + JSON decode of every byte.

What etcd 3.4's gateway offers (and 3.5's): ``/v3/lease/leases`` lists lease ids (no auth check),
``/v3/lease/timetolive`` gives each one's ``grantedTTL``; ``/v3/auth/user/list|get`` and
``/v3/auth/role/list|get`` answer anyone while auth is disabled and only root once it is enabled;
``/v3/auth/status`` exists from 3.5 only, so on 3.4 whether auth is enabled is read from how an
unauthenticated request is answered ("user name is empty" once it is enabled).
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from policies.errors import SourceError
from policies.model import EtcdTls

HTTP_TIMEOUT = 60.0
CENSUS_PAGE = 10_000  # keys per range request: ~1 MiB of JSON per page
VALUE_PAGE = 500  # keys per range request with their values (Kubernetes objects: a few KiB each)


@dataclass(frozen=True)
class KeyPage:
    revision: int
    keys: list[bytes]
    more: bool
    count: int
    # with values: (value, create_revision, mod_revision, version, lease) of each key, in order
    values: list[tuple[bytes, int, int, int, int]] = field(default_factory=list)


class GatewayRefused(SourceError):
    """etcd answered a gateway request with an error (``status``: HTTP status, ``reason``: etcd's words)."""

    def __init__(self, message: str, *, status: int, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class GatewayUnreachable(SourceError):
    """The endpoint could not be reached (refused, reset, TLS failed, timed out)."""


_AUTHENTICATE = "/v3/auth/authenticate"
_AUTH_NOT_ENABLED = "authentication is not enabled"
_AUTH_REQUIRED = ("user name is empty", "invalid auth token")


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

    def health(self) -> dict[str, Any]:
        """``/health``: ``{"health": "true"}`` on a member that has a leader and answers reads."""
        self._send("GET", "/health")
        return self._receive("/health")

    def status(self) -> dict[str, Any]:
        """The maintenance status call (``/v3/maintenance/status``): version, db size, leader, raft term."""
        return self._call("/v3/maintenance/status", {})

    def request_keys(self, start: bytes, *, revision: int = 0, limit: int = CENSUS_PAGE, values: bool = False) -> None:
        """Ask for up to ``limit`` keys >= ``start`` in key order at ``revision`` (0: the current one),
        with their values and revisions when ``values``; ``read_keys`` collects the answer, so the
        caller can work while etcd does."""
        body = {"key": _b64(start), "range_end": _b64(b"\0"), "keys_only": not values, "limit": limit, "revision": revision}
        self._send("POST", "/v3/kv/range", body)

    def read_keys(self) -> KeyPage:
        answer = self._receive("/v3/kv/range")
        try:
            return self._key_page(answer)
        except (KeyError, ValueError, TypeError) as exc:
            raise self._not_etcd("/v3/kv/range", json.dumps(answer).encode(), f" ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def _key_page(answer: dict[str, Any]) -> KeyPage:
        items = answer.get("kvs", [])
        keys = [base64.b64decode(item["key"]) for item in items]
        values = [
            (
                base64.b64decode(item.get("value", "")),
                int(item.get("create_revision", 0)),
                int(item.get("mod_revision", 0)),
                int(item.get("version", 0)),
                int(item.get("lease", 0)),
            )
            for item in items
            if "create_revision" in item  # keys_only answers carry no revisions
        ]
        return KeyPage(
            int(answer["header"]["revision"]), keys, bool(answer.get("more")), int(answer.get("count", 0)), values
        )

    def count(self, key: bytes, *, prefix: bool) -> int:
        """How many keys are ``key`` (0 or 1), or start with it when ``prefix``, now (no value is read)."""
        body: dict[str, Any] = {"key": _b64(key), "count_only": True}
        if prefix:
            body["range_end"] = _b64(prefix_end(key))
        return int(self._call("/v3/kv/range", body).get("count", 0))

    def leases(self) -> dict[int, int]:
        """Every lease: id -> TTL as granted. A lease that expires while it is read is left out."""
        ids = [int(item["ID"]) for item in self._call("/v3/lease/leases", {}).get("leases", [])]
        leases = {}
        for lease in ids:
            answer = self._call("/v3/lease/timetolive", {"ID": lease})
            if int(answer.get("TTL", -1)) >= 0:  # -1: expired, or revoked meanwhile
                leases[lease] = int(answer.get("grantedTTL", 0))
        return leases

    def auth_enabled(self) -> bool:
        """Whether auth is enabled: ``/v3/auth/status`` (3.5+), else how etcd answers an unauthenticated
        request that needs no permission while auth is off. Raises SourceError when neither says."""
        try:
            return bool(self._call("/v3/auth/status", {}).get("enabled", False))
        except GatewayRefused as exc:
            if exc.status != 404:
                raise
        self._send("POST", "/v3/auth/user/list", {}, anonymous=True)
        try:
            self._receive("/v3/auth/user/list")
        except GatewayRefused as exc:
            if any(words in exc.reason for words in _AUTH_REQUIRED):
                return True
            raise
        return False

    def users(self) -> dict[str, list[str]]:
        """Every user -> its roles (root only, once auth is enabled)."""
        names = self._call("/v3/auth/user/list", {}).get("users", [])
        return {name: list(self._call("/v3/auth/user/get", {"name": name}).get("roles", [])) for name in names}

    def roles(self) -> dict[str, list[tuple[int, bytes, bytes]]]:
        """Every role -> its permissions as (type: 0 read, 1 write, 2 readwrite, key, range_end)."""
        names = self._call("/v3/auth/role/list", {}).get("roles", [])
        roles = {}
        for name in names:
            permissions = self._call("/v3/auth/role/get", {"role": name}).get("perm", [])
            roles[name] = [
                (
                    _PERMISSION_TYPES.get(str(item.get("permType", "READ")), -1),
                    base64.b64decode(item.get("key", "")),
                    base64.b64decode(item.get("range_end", "")),
                )
                for item in permissions
            ]
        return roles

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self._send("POST", path, body)
        return self._receive(path)

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None, *, anonymous: bool = False) -> None:
        if self._user and self._token is None and path.startswith("/v3/") and path != _AUTHENTICATE and not anonymous:
            self._send("POST", _AUTHENTICATE, {"name": self._user, "password": self._password})
            try:
                self._token = str(self._receive(_AUTHENTICATE)["token"])
            except GatewayRefused as exc:
                if _AUTH_NOT_ENABLED not in exc.reason:
                    raise
                self._token = ""  # auth is off there: every request goes without a token
        token = None if anonymous else self._token
        headers = {"Content-Type": "application/json"} | ({"Authorization": token} if token else {})
        payload = json.dumps(body).encode() if body is not None else None
        try:
            self._connection.request(method, path, body=payload, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            raise GatewayUnreachable(f"etcd at {self.endpoint} is unreachable: {_reason(exc)}") from exc

    def _receive(self, path: str) -> dict[str, Any]:
        try:
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._connection.close()
            raise GatewayUnreachable(f"etcd at {self.endpoint} is unreachable: {_reason(exc)}") from exc
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        if response.status == 200 and path.startswith("/v3/") and "header" not in doc:
            raise self._not_etcd(path, data)
        if response.status != 200:
            message = str(doc.get("message") or doc.get("error") or data[:200].decode(errors="replace")).strip()
            raise GatewayRefused(
                f"etcd at {self.endpoint} refused {path} (HTTP {response.status}): {message}",
                status=response.status,
                reason=message,
            )
        return doc

    def _not_etcd(self, path: str, data: bytes, why: str = "") -> SourceError:
        return SourceError(
            f"{self.endpoint} answered {path} with what is not etcd's answer{why}: {data[:120]!r}; "
            "is it an etcd client URL (as in --advertise-client-urls)?"
        )


_PERMISSION_TYPES = {"READ": 0, "WRITE": 1, "READWRITE": 2}


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's ``range_end`` of a prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


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
