"""Talking to ClickHouse: SQL through one small interface, bulk data as bytes over HTTP.

Control and metadata go through ``SqlExecutor`` (``execute(sql) -> rows``), implemented by
clickhouse-driver (native protocol, production) and by chdb (the modern engine in-process, which the
tests use for BACKUP/RESTORE). Table data never passes through Python rows: it streams as
``FORMAT Native`` bytes over the HTTP interface, in and out, untouched.

Every failure leaves this module as ``ClickHouseError`` (a SourceError) carrying the server's error
code when there is one, with a message that says where and what to check.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, cast

from backup.sources.clickhouse.sql import quote_string
from policies.errors import SourceError

# clickhouse-driver fills a table of every date from 1900 to 2299 when it is imported (0.1 s of each
# start); its lazy table (the variable's name is misspelt upstream) gives the same dates on demand.
os.environ.setdefault("CLICKHOUSE_DRIVER_LASY_DATE_LUT", ":")

CONNECT_TIMEOUT = 10.0
ERROR_BODY_LIMIT = 64 * 1024
EXPORT_TAIL = 16 * 1024  # how much of an export's end is kept to spot an error the server appended
READ_AHEAD = 1 << 20  # bytes asked of the connection at once when decoding a chunked export
CHUNK_LINE_LIMIT = 4096  # bytes of a chunk size line at most

UNKNOWN_TABLE = 60
UNKNOWN_DATABASE = 81
AUTHENTICATION_CODES = frozenset({192, 193, 194, 516})

# A server that fails mid-stream has already sent "200 OK": it appends the error text to the body.
# 18.16: "Code: 395, e.displayText() = DB::Exception: ..., e.what() = DB::Exception\n"
# 22+:   "Code: 395. DB::Exception: ... (version 23.8.1.1)\n"; 24.11+: "__exception__" blocks.
_APPENDED_ERROR = re.compile(
    rb"(?:Code: (\d+)[.,] (?:e\.displayText\(\) = )?DB::Exception: (.{0,4000}?)\n?|__exception__\r?\n(.{0,4000}?))\Z", re.S
)
_ERROR_CODE = re.compile(r"Code: (\d+)")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class Endpoint:
    """One ClickHouse server as Lifeboat reaches it."""

    host: str
    port: int
    http_port: int
    user: str = "default"
    password: str = field(default="", repr=False)
    secure: bool = False
    database: str = "default"
    timeout: float = 600.0

    def describe(self) -> str:
        return f"{self.host}:{self.port}"

    def using(self, database: str) -> Endpoint:
        """The same server with ``database`` as the current database (unqualified names resolve there)."""
        return replace(self, database=database)


class ClickHouseError(SourceError):
    """A ClickHouse server refused or failed a request (``code`` is its error code, when known)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SqlExecutor(Protocol):
    """Runs one SQL statement (with query ``settings``, if any) and returns its rows (an empty list for DDL)."""

    def execute(self, sql: str, settings: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]: ...

    def close(self) -> None: ...


Connector = Callable[[Endpoint], SqlExecutor]


def server_error(endpoint: Endpoint, message: str, code: int | None) -> ClickHouseError:
    """A ClickHouseError whose message tells the operator what to check for well-known codes."""
    first = message.strip().splitlines()[0] if message.strip() else "no message"
    first = first[:500]
    where = f"ClickHouse at {endpoint.describe()}"
    if code in AUTHENTICATION_CODES:
        return ClickHouseError(f"{where} refused user '{endpoint.user}': {first}; check the user and password", code)
    return ClickHouseError(f"{where}: {first}", code)


# ---- SQL: clickhouse-driver ---------------------------------------------------------------------


class DriverExecutor:
    """SQL over the native protocol (clickhouse-driver). Not thread-safe: one per thread."""

    def __init__(self, endpoint: Endpoint) -> None:
        from clickhouse_driver import Client  # imported when used: it costs every CLI start 0.1 s

        self._endpoint = endpoint
        self._client = Client(
            host=endpoint.host,
            port=endpoint.port,
            user=endpoint.user,
            password=endpoint.password,
            database=endpoint.database,
            secure=endpoint.secure,
            connect_timeout=CONNECT_TIMEOUT,
            send_receive_timeout=endpoint.timeout,
            sync_request_timeout=CONNECT_TIMEOUT,
            client_name="lifeboat",
        )

    def execute(self, sql: str, settings: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]:
        from clickhouse_driver import errors as driver_errors

        try:
            return list(self._client.execute(sql, settings=dict(settings) if settings else None))
        except driver_errors.ServerException as exc:
            raise server_error(self._endpoint, exc.message, exc.code) from None
        except (driver_errors.Error, OSError, EOFError) as exc:
            raise ClickHouseError(
                f"cannot reach ClickHouse at {self._endpoint.describe()} (native protocol): {exc}; "
                "is the server running and is the port right?"
            ) from None

    def close(self) -> None:
        self._client.disconnect()


def driver_connector(endpoint: Endpoint) -> SqlExecutor:
    """The production connector: a clickhouse-driver connection (made on the first statement)."""
    return DriverExecutor(endpoint)


def set_statement(name: str, value: str) -> str:
    """``SET name = value``: a number as it is, anything else as a string."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ClickHouseError(f"not a setting name: {name!r}")
    return f"SET {name} = {value if re.fullmatch(r'-?[0-9]+(?:[.][0-9]+)?', value) else quote_string(value)}"


# ---- SQL: chdb ----------------------------------------------------------------------------------


class ChdbExecutor:
    """SQL on an open chdb session: the modern engine in-process, for the native strategy's tests.

    chdb allows one data path per process, so the session is the caller's (tests: the chdb_session
    fixture); this object only borrows it, serializing statements, and never closes it."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._lock = threading.Lock()

    def execute(self, sql: str, settings: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]:
        """``settings`` are SET on the session first (chdb takes no per-query settings): they stay."""
        import chdb  # a test dependency only: imported where it is used

        with self._lock:
            try:
                for name, value in (settings or {}).items():
                    self._session.query(set_statement(name, value))
                text = str(self._session.query(sql, "JSONCompactEachRow"))
            except (chdb.ChdbError, RuntimeError) as exc:
                message = str(exc)
                code = _ERROR_CODE.search(message)
                raise ClickHouseError(f"chdb: {message.strip()[:500]}", int(code.group(1)) if code else None) from None
        return [tuple(json.loads(line)) for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        """Nothing to do: the session belongs to whoever opened it."""


class Connections:
    """One executor per thread for one endpoint (a driver connection is not thread-safe); all closed
    together. Use as a context manager."""

    def __init__(self, connect: Connector, endpoint: Endpoint) -> None:
        self._connect = connect
        self.endpoint = endpoint
        self._local = threading.local()
        self._opened: list[SqlExecutor] = []
        self._lock = threading.Lock()

    def get(self) -> SqlExecutor:
        executor: SqlExecutor | None = getattr(self._local, "executor", None)
        if executor is None:
            executor = self._connect(self.endpoint)
            self._local.executor = executor
            with self._lock:
                self._opened.append(executor)
        return executor

    def execute(self, sql: str, settings: Mapping[str, str] | None = None) -> list[tuple[Any, ...]]:
        """Run ``sql`` (with query ``settings``) on this thread's connection."""
        return self.get().execute(sql, settings)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for executor in opened:
            executor.close()

    def __enter__(self) -> Connections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- data: HTTP ---------------------------------------------------------------------------------


class ChunkedBody:
    """A chunked HTTP body (RFC 9112 section 7.1) decoded from large reads of the connection.

    ClickHouse 18.16 sends chunks of 4 KiB: http.client decodes each with several Python calls, which
    for 25,000 chunks per 100 MiB costs as much CPU as receiving the bytes. Here a run of chunks of
    one size is checked and cut in a few slicing operations per read: every chunk's CRLF, size line and
    next CRLF are compared byte for byte with the size line before (the framing is checked as fully as
    chunk by chunk), anything else goes chunk by chunk. A body that ends before its last (empty) chunk
    raises http.client.IncompleteRead, framing that is not chunked raises http.client.HTTPException."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self._raw = raw  # the connection's buffered reader, just after the response's headers
        self._buffer = b""
        self._pos = 0
        self._left = 0  # bytes of the current chunk not read yet
        self._crlf_due = False  # the CRLF that ends a chunk's data comes next (once _left is 0)
        self._done = False
        self._unit = b""  # CRLF + the last size line + CRLF: what precedes each chunk of the same size
        self._size = 0  # that size

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the body (all that is left when ``size`` is negative); b"" at its end."""
        pieces: list[memoryview] = []
        wanted = size if size >= 0 else sys.maxsize
        while wanted > 0 and not self._done:
            if not self._left:
                if self._crlf_due and self._unit and (taken := self._take_run(pieces, wanted)):
                    wanted -= taken
                else:
                    self._next_chunk()
                continue
            if self._pos >= len(self._buffer):
                self._fill()
            take = min(self._left, wanted, len(self._buffer) - self._pos)
            pieces.append(memoryview(self._buffer)[self._pos : self._pos + take])
            self._pos += take
            self._left -= take
            wanted -= take
        return b"".join(pieces)

    def _take_run(self, pieces: list[memoryview], wanted: int) -> int:
        """Take the whole chunks of the last chunk's size that follow in the buffer (at least two, at
        most ``wanted`` bytes of them); their bytes taken, 0 when there is no such run."""
        unit, size = self._unit, self._size
        period = len(unit) + size
        buffer, pos = self._buffer, self._pos
        count = min((len(buffer) - pos) // period, wanted // size)
        if count < 2:
            return 0
        end = pos + count * period
        for offset, byte in enumerate(unit):  # the framing bytes of every chunk of the run, at once
            if buffer[pos + offset : end : period] != bytes((byte,)) * count:
                return 0
        view = memoryview(buffer)
        pieces.extend([view[start : start + size] for start in range(pos + len(unit), end, period)])
        self._pos = end
        return count * size

    def _next_chunk(self) -> None:
        if self._crlf_due and self._line():
            raise http.client.HTTPException("a chunk of the body does not end where its size line says")
        line = self._line()
        try:
            size = int(line.split(b";", 1)[0], 16)
        except ValueError:
            size = -1
        if size < 0:
            raise http.client.HTTPException(f"not a chunk size line: {line[:40]!r}")
        self._crlf_due = True
        self._left = size
        self._unit, self._size = (b"\r\n" + line + b"\r\n", size) if size else (b"", 0)
        self._done = not size  # the last chunk: trailers, if any, are never read (the connection is closed)

    def _line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n", self._pos)
            if end >= 0:
                line = self._buffer[self._pos : end]
                self._pos = end + 2
                return line
            if len(self._buffer) - self._pos > CHUNK_LINE_LIMIT:
                raise http.client.LineTooLong("chunk size")
            self._fill()

    def _fill(self) -> None:
        data = self._raw.read1(READ_AHEAD)
        if not data:
            raise http.client.IncompleteRead(b"")
        self._buffer = self._buffer[self._pos :] + data if self._pos < len(self._buffer) else data
        self._pos = 0


class ExportStream:
    """The body of an export, read as is; at its end, proves the server did not append an error."""

    def __init__(self, response: http.client.HTTPResponse, endpoint: Endpoint, what: str) -> None:
        self._response = response
        self._endpoint = endpoint
        self._what = what
        self._tail = b""
        fp = cast(io.BufferedIOBase | None, response.fp)
        self._body: ChunkedBody | http.client.HTTPResponse = ChunkedBody(fp) if response.chunked and fp else response

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._body.read(size)
        except (http.client.HTTPException, OSError) as exc:
            raise lost_connection(self._endpoint, self._what, exc) from None
        if data:
            self._tail = (self._tail + data)[-EXPORT_TAIL:] if len(data) < EXPORT_TAIL else data[-EXPORT_TAIL:]
        else:
            self._check_length()
            self._check_tail()
        return data

    def _check_length(self) -> None:
        # http.client ends a Content-Length body that the connection cut short without an error.
        missing = self._response.length if self._body is self._response else None
        if missing:
            raise lost_connection(self._endpoint, self._what, f"the body ended {missing} bytes short of its length")

    def _check_tail(self) -> None:
        match = _APPENDED_ERROR.search(self._tail)
        if match:
            code = int(match.group(1)) if match.group(1) else None
            text = (match.group(2) or match.group(3) or b"").decode("utf-8", "replace")
            raise server_error(self._endpoint, f"{self._what} failed while streaming: {text}", code)


class HttpChannel:
    """Bulk data through ClickHouse's HTTP interface: exports stream out, inserts stream in."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def _connection(self) -> http.client.HTTPConnection:
        """A connected HTTP(S) connection: connecting may take CONNECT_TIMEOUT, each read the
        endpoint's (longer) timeout. Raises ClickHouseError when the server cannot be reached."""
        endpoint = self.endpoint
        connection: http.client.HTTPConnection
        if endpoint.secure:
            context = ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                endpoint.host, endpoint.http_port, timeout=CONNECT_TIMEOUT, context=context
            )
        else:
            connection = http.client.HTTPConnection(endpoint.host, endpoint.http_port, timeout=CONNECT_TIMEOUT)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise self._unreachable(exc) from None
        if connection.sock is not None:
            connection.sock.settimeout(endpoint.timeout)
        return connection

    def _headers(self) -> dict[str, str]:
        # Credentials in headers, never in the URL (URLs end up in server and proxy logs).
        return {"X-ClickHouse-User": self.endpoint.user, "X-ClickHouse-Key": self.endpoint.password}

    def _path(self, parameters: Mapping[str, str]) -> str:
        return "/?" + urllib.parse.urlencode({"database": self.endpoint.database, **parameters})

    @contextmanager
    def export(self, sql: str, *, what: str, settings: Mapping[str, str] | None = None) -> Iterator[ExportStream]:
        """POST ``sql`` (with query ``settings``) and yield its response body as a stream; raises
        ClickHouseError."""
        connection = self._connection()
        try:
            try:
                connection.request("POST", self._path(settings or {}), body=sql.encode(), headers=self._headers())
                response = connection.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                raise self._unreachable(exc) from None
            if response.status != 200:
                raise self._refused(response, what)
            yield ExportStream(response, self.endpoint, what)
        finally:
            connection.close()

    def insert(self, sql: str, body: Iterable[bytes], *, what: str, settings: Mapping[str, str] | None = None) -> None:
        """POST ``body`` (chunked) as the data of ``sql`` (an ``INSERT .. FORMAT ..``); raises
        ClickHouseError; an error raised by ``body`` itself (IntegrityError) passes through."""
        connection = self._connection()
        try:
            try:
                connection.request(
                    "POST",
                    self._path({"query": sql, **(settings or {})}),
                    body=body,
                    headers=self._headers(),
                    encode_chunked=True,
                )
                response = connection.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                raise self._lost_during(connection, what, exc) from None
            if response.status != 200:
                raise self._refused(response, what)
            try:
                response.read()
            except (http.client.HTTPException, OSError) as exc:
                raise lost_connection(self.endpoint, what, exc) from None
        finally:
            connection.close()

    def _unreachable(self, exc: BaseException) -> ClickHouseError:
        return ClickHouseError(
            f"cannot reach ClickHouse's HTTP interface at {self.endpoint.host}:{self.endpoint.http_port}: {exc}; "
            "is the server running and is http_port right?"
        )

    def _refused(self, response: http.client.HTTPResponse, what: str) -> ClickHouseError:
        try:
            text = response.read(ERROR_BODY_LIMIT).decode("utf-8", "replace")
        except (http.client.HTTPException, OSError) as exc:
            return lost_connection(self.endpoint, what, f"it answered HTTP {response.status}, then {exc}")
        code = _ERROR_CODE.search(text)
        return server_error(
            self.endpoint, f"{what}: {text or f'HTTP {response.status}'}", int(code.group(1)) if code else None
        )

    def _lost_during(self, connection: http.client.HTTPConnection, what: str, exc: BaseException) -> ClickHouseError:
        """The connection broke while sending: the server may have refused early and said why."""
        try:
            response = connection.getresponse()
        except (http.client.HTTPException, OSError):
            return lost_connection(self.endpoint, what, exc)
        return self._refused(response, what)


def lost_connection(endpoint: Endpoint, what: str, exc: BaseException | str) -> ClickHouseError:
    """The server went away mid-request (killed, restarted, a proxy timed out)."""
    return ClickHouseError(f"lost the connection to {endpoint.host}:{endpoint.http_port} during the {what}: {exc}")


def run_parallel(function: Callable[[_Item], _Result], items: Sequence[_Item], *, workers: int) -> list[_Result]:
    """``function`` over ``items`` on up to ``workers`` threads; results in item order. The first
    error is raised once the running calls end; calls not started yet are cancelled."""
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="lifeboat-clickhouse") as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]
