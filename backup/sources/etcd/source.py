"""The etcd source (DESIGN section 4): verified snapshots, a key census pinned to the snapshot's
revision, restore to a file or to a member data dir, and verification on a scratch etcd.

Taking the snapshot: ``etcdctl snapshot save`` into a temporary file, not the JSON gateway's
``/v3/maintenance/snapshot`` stream. etcdctl speaks gRPC with the TLS client certificates and the
user/password auth operators already use for etcd, writes atomically (``.part``, fsync, rename) and
is the same tool the file is later restored with; the gateway stream would cost a base64 + JSON
decode of every byte in Python (our own gateway client only ever moves keys). Landing in a file
first is also what lets the whole snapshot be verified before it becomes a snapshot: etcd's sha256
trailer (the last 32 bytes are the sha256 of everything before them) and ``etcdctl snapshot
status`` (hash, revision, total keys, total size = file size - 32). The file's bytes are stored
while etcdctl writes them (``SnapshotDownload`` reads the growing ``.part``, which etcdctl only
appends to), so storing costs little wall time beyond the save; the checks run once the file is
whole, and the manifest that makes those chunks a snapshot is committed only after they passed. A
snapshot failing them is never uploaded as good: its chunks stay unreferenced, invisible to
restore, and prune removes them. The save is supervised (``_SaveWatch``): etcdctl would otherwise
wait minutes on a member that died mid-transfer.
The snapshot's revision is ``max(status revision, finishedCompactRev)``, as etcd computes it on
restore (see bolt.py for why status alone can understate it).

Counting keys: the census of a snapshot is read from the snapshot file itself (bolt.py: the
newest revision of every key in the ``key`` bucket says whether it is live), while ``snapshot
status`` and the trailer check run beside it. That describes exactly what the snapshot holds, costs
the cluster nothing (counting through the API made etcd read every value again at a past revision)
and cannot race a compaction. Our bbolt reader and etcd's must agree on the newest revision, or the
snapshot is refused.

Verifying a restore counts the keys of the restored member through its JSON gateway (``POST
/v3/kv/range`` with ``keys_only``, paged by key over one kept-alive connection, so memory stays at
one page of keys whatever the cluster size): an independent reading, compared with the census taken
from the file. etcdctl 3.4 has no ``--count-only``, and its ``-w json`` output of a whole key space
is one document.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, ClassVar, Self, cast
from urllib.parse import urlsplit

import structlog

from backup.execute import STDERR_TAIL_LINES, CommandError, ManagedProcess, mask_secrets, run, start
from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository, SnapshotWriter, StoredStream
from backup.servers import start_etcd
from backup.sources.base import (
    Progress,
    RestoreOptions,
    RestoreResult,
    SnapshotOutcome,
    Verdict,
    Verification,
)
from backup.sources.etcd.bolt import BoltFormatError, finished_compact_revision, snapshot_keys
from policies.errors import IntegrityError, LifeboatError, RestoreError, SourceError
from policies.model import EtcdSettings, EtcdTls, reveal

log = structlog.get_logger(__name__)

SNAPSHOT_ENTRY = "snapshot.db"
TRAILER_SIZE = 32  # etcd appends the sha256 of the db to every snapshot it sends
READ_BLOCK = 4 * 1024 * 1024
CENSUS_PAGE = 10_000  # keys per range request: ~1 MiB of JSON per page
MAX_GROUPS = 10_000  # distinct prefixes/resources/namespaces kept per census map; the rest count as OTHER
OTHER = "(other)"
TOP_LEVEL = "(top-level keys)"
REGISTRY = "/registry/"
# Kubernetes stores a few resources one level deeper: /registry/services/specs/<ns>/<name>.
NESTED_RESOURCES: Mapping[str, frozenset[str]] = {"services": frozenset({"specs", "endpoints"})}
DIAL_TIMEOUT = "5s"
HTTP_TIMEOUT = 60.0
QUICK_COMMAND_TIMEOUT = 30.0
SCRATCH_MEMBER = "lifeboat-verify"
SAVE_POLL = 0.02  # seconds between looks at a running snapshot save
LIVENESS_INTERVAL = 1.0  # seconds between connection probes of the member a snapshot comes from
LIVENESS_MISSES = 3  # refused probes in a row before the member counts as gone
STALL_TIMEOUT = 60.0  # seconds without a snapshot byte before the transfer counts as stuck
_VERSION = re.compile(r"etcdctl version:\s*(\d+)\.(\d+)")
_OTHER_KIND_OPTIONS = (
    "to_host",
    "to_port",
    "to_http_port",
    "to_database",
    "tables",
    "to_endpoint",
    "to_bucket",
    "to_prefix",
    "to_dir",
    "prefix",
    "in_place",
)
_MEMBER_OPTIONS = ("name", "initial_cluster", "initial_advertise_peer_urls")
_TARGET_HELP = (
    "use --to-file PATH (the verified snapshot db), or --to-data-dir DIR --name NAME "
    "--initial-cluster NAME=PEER-URL,... --initial-advertise-peer-urls PEER-URL (a member data dir)"
)


class CorruptSnapshotError(SourceError):
    """A snapshot file fails etcd's own checks (sha256 trailer, ``snapshot status``)."""


# ---- restore targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdFileTarget:
    """``--to-file PATH``: the verified snapshot db, for ``etcdctl``/``etcdutl snapshot restore`` elsewhere."""

    path: Path


@dataclass(frozen=True)
class EtcdDataDirTarget:
    """``--to-data-dir DIR``: a member data dir made by ``snapshot restore`` for member ``name``."""

    data_dir: Path
    name: str
    initial_cluster: str
    initial_advertise_peer_urls: str
    etcd_bin: str = "etcd"  # the server binary a verification starts on the restored dir

    @property
    def members(self) -> dict[str, list[str]]:
        return parse_initial_cluster(self.initial_cluster)


@dataclass(frozen=True)
class EtcdEndpointTarget:
    """A running etcd holding restored data (a drill's scratch member): verified over its client URL."""

    endpoint: str
    tls: EtcdTls | None = None


EtcdTarget = EtcdFileTarget | EtcdDataDirTarget | EtcdEndpointTarget


# ---- pure helpers: trailer, status, census, membership ---------------------------------------------


def verify_trailer(path: Path) -> str:
    """Check etcd's sha256 trailer of the snapshot file at ``path``; return the trailer (hex).

    Raises CorruptSnapshotError when the file is too short or its bytes do not match the trailer
    (a truncated or damaged transfer)."""
    size = path.stat().st_size
    if size <= TRAILER_SIZE:
        raise CorruptSnapshotError(f"{path} holds {size} bytes: too short to be an etcd snapshot")
    digest = hashlib.sha256()
    remaining = size - TRAILER_SIZE
    buffer = bytearray(min(READ_BLOCK, remaining))
    view = memoryview(buffer)
    with path.open("rb") as handle:
        while remaining:
            got = handle.readinto(view[: min(len(buffer), remaining)])
            if not got:
                raise CorruptSnapshotError(f"{path} shrank while it was being checked")
            digest.update(view[:got])
            remaining -= got
        trailer = handle.read(TRAILER_SIZE)
    if digest.digest() != trailer:
        raise CorruptSnapshotError(
            f"{path}: its sha256 trailer does not match its contents (a truncated or damaged snapshot)"
        )
    return trailer.hex()


@dataclass(frozen=True)
class SnapshotStatus:
    """What ``etcdctl snapshot status -w json`` says about a snapshot file."""

    hash: int
    revision: int
    total_keys: int
    total_size: int

    @classmethod
    def parse(cls, output: bytes, *, file_size: int) -> SnapshotStatus:
        """Parse and sanity-check the status output against the file it describes.

        Raises CorruptSnapshotError when the output is not a status, the revision is not positive
        or the db size it reports plus the 32-byte trailer is not the file's size."""
        try:
            doc = json.loads(output)
            status = cls(int(doc["hash"]), int(doc["revision"]), int(doc["totalKey"]), int(doc["totalSize"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptSnapshotError(f"snapshot status gave no usable answer ({exc}): {output[:200]!r}") from None
        if status.revision < 0 or status.total_keys < 0:
            raise CorruptSnapshotError(f"snapshot status reports impossible figures: {output[:200]!r}")
        if status.total_size + TRAILER_SIZE != file_size:
            raise CorruptSnapshotError(
                f"snapshot status reports a {status.total_size}-byte db, but the file holds {file_size} bytes "
                f"(expected db + {TRAILER_SIZE}-byte trailer)"
            )
        return status

    def as_dict(self) -> dict[str, int]:
        return {"hash": self.hash, "revision": self.revision, "total_keys": self.total_keys, "total_size": self.total_size}


@dataclass
class KeyCensus:
    """Key counts by prefix, accumulated one key at a time (memory bounded by MAX_GROUPS per map).

    * ``prefixes``: every key by its first path segment (``/registry/``, ``/calico/``...);
    * ``resources``: keys under ``/registry/`` by Kubernetes resource (``pods``, ``services/specs``,
      ``apiregistration.k8s.io/apiservices`` for API groups and custom resources);
    * ``namespaces``: those of them that live in a namespace (``/registry/<resource>/<ns>/<name>``).
    """

    keys: int = 0
    prefixes: Counter[str] = field(default_factory=Counter)
    resources: Counter[str] = field(default_factory=Counter)
    namespaces: Counter[str] = field(default_factory=Counter)
    # A key's groups depend only on its parent path (``/registry/pods/ns``), which thousands of keys
    # share: worked out once per parent. Bounded: a flat key space would make one per key.
    _groups: dict[bytes, tuple[str, str | None, str | None]] = field(default_factory=dict, repr=False)

    def add(self, key: bytes) -> None:
        self.keys += 1
        parent, slash, _name = key.rpartition(b"/")
        groups = self._groups.get(parent) if slash else None
        if groups is None:
            groups = _groups_of(key.decode("utf-8", errors="backslashreplace"))
            if slash and len(self._groups) < MAX_GROUPS:
                self._groups[parent] = groups
        prefix, resource, namespace = groups
        _count(self.prefixes, prefix)
        if resource is not None:
            _count(self.resources, resource)
        if namespace is not None:
            _count(self.namespaces, namespace)

    def as_dict(self, revision: int) -> dict[str, Any]:
        """The census stored in a manifest: ``totals`` is what the anomaly guard compares."""
        return {
            "revision": revision,
            "totals": {"keys": self.keys},
            "prefixes": dict(sorted(self.prefixes.items())),
            "resources": dict(sorted(self.resources.items())),
            "namespaces": dict(sorted(self.namespaces.items())),
        }


def _groups_of(key: str) -> tuple[str, str | None, str | None]:
    """(prefix, Kubernetes resource or None, namespace or None) of one key."""
    if not key.startswith(REGISTRY):
        return first_segment(key), None, None
    resource, namespace = kubernetes_resource(key)
    return first_segment(key), resource, namespace


def _count(counter: Counter[str], name: str) -> None:
    if name not in counter and len(counter) >= MAX_GROUPS:
        name = OTHER
    counter[name] += 1


def first_segment(key: str) -> str:
    """``/registry/pods/a/b`` -> ``/registry/``; ``app/x`` -> ``app/``; a key without any further ``/`` ->
    TOP_LEVEL (so that a flat key space does not make one group per key)."""
    lead = "/" if key.startswith("/") else ""
    head, sep, _ = key[len(lead) :].partition("/")
    return f"{lead}{head}/" if sep else TOP_LEVEL


def kubernetes_resource(key: str) -> tuple[str, str | None]:
    """``(resource, namespace or None)`` of a key under ``/registry/``.

    Built-in resources: ``/registry/<resource>/[<namespace>/]<name>``; API groups (always dotted) and
    custom resources: ``/registry/<group>/<resource>/[<namespace>/]<name>``; services and endpoints
    sit one level deeper, under ``/registry/services/{specs,endpoints}/``."""
    parts = key[len(REGISTRY) :].split("/")
    if len(parts) > 2 and (parts[1] in NESTED_RESOURCES.get(parts[0], ()) or "." in parts[0]):
        resource, rest = f"{parts[0]}/{parts[1]}", parts[2:]
    else:
        resource, rest = parts[0], parts[1:]
    namespace = rest[0] if len(rest) >= 2 else None
    return resource, namespace


def census_differences(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """What differs between two censuses (or fingerprints), most telling first:
    ``"/registry/pods/: 412 keys in snapshot, 411 restored"``. Empty when they are equal."""
    found = []
    for group, label in (("resources", _resource_label), ("namespaces", _namespace_label), ("prefixes", str)):
        before, after = expected.get(group) or {}, actual.get(group) or {}
        for name in sorted(set(before) | set(after)):
            if before.get(name, 0) != after.get(name, 0):
                found.append(f"{label(name)}: {before.get(name, 0)} keys in snapshot, {after.get(name, 0)} restored")
    for what in ("keys", "revision"):
        old, new = _figure(expected, what), _figure(actual, what)
        if old != new:
            found.append(f"{what}: {old} in snapshot, {new} restored")
    return found


def _resource_label(name: str) -> str:
    return f"{REGISTRY}{name}/"


def _namespace_label(name: str) -> str:
    return f"namespace {name}"


def _figure(census: Mapping[str, Any], what: str) -> Any:
    return census.get("totals", {}).get(what) if what == "keys" and "totals" in census else census.get(what)


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """``n1=https://a:2380,n2=https://b:2380`` -> ``{"n1": ["https://a:2380"], "n2": [...]}``.

    A member may appear more than once (several peer URLs). Raises ValueError saying what is wrong."""
    members: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"'{item}' is not NAME=PEER-URL")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"'{url}' (member {name}) is not a peer URL like https://10.0.0.11:2380")
        members.setdefault(name, []).append(url)
    if not members:
        raise ValueError("it names no member")
    return members


def check_membership(name: str, initial_cluster: str, advertise_urls: str) -> None:
    """Refuse member options that ``snapshot restore`` would reject or, worse, accept into a member
    that can never join its cluster. Raises RestoreError naming the option to fix."""
    try:
        members = parse_initial_cluster(initial_cluster)
    except ValueError as exc:
        raise RestoreError(f"--initial-cluster '{initial_cluster}': {exc}") from None
    if name not in members:
        raise RestoreError(f"--name {name} is not a member of --initial-cluster ({', '.join(members)})")
    urls = sorted(filter(None, (url.strip() for url in advertise_urls.split(","))))
    if urls != sorted(members[name]):
        raise RestoreError(
            f"--initial-advertise-peer-urls {advertise_urls} must be member {name}'s URLs in --initial-cluster "
            f"({','.join(members[name])})"
        )


def etcdctl_version(output: str) -> tuple[int, int]:
    """``etcdctl version`` output -> (major, minor); raises ValueError when it holds no version."""
    match = _VERSION.search(output)
    if not match:
        raise ValueError(f"no 'etcdctl version: X.Y' in {output[:200]!r}")
    return int(match[1]), int(match[2])


# ---- etcdctl / etcdutl ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Etcdctl:
    """etcdctl (and etcdutl on 3.5+) with one source's connection settings.

    Everything goes in through ``ETCDCTL_*`` variables, not flags: the password stays out of the
    process list, and an operator's own ``ETCDCTL_ENDPOINTS`` (etcdctl refuses a flag that shadows a
    set variable) can neither break the command nor redirect it: every such variable is blanked."""

    binary: str = "etcdctl"
    timeout: float = 300.0
    tls: EtcdTls | None = None
    user: str | None = None
    password: str | None = None

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        env = {name: "" for name in os.environ if name.startswith("ETCDCTL_")}
        env |= {"ETCDCTL_API": "3", "ETCDCTL_DIAL_TIMEOUT": DIAL_TIMEOUT, "ETCDCTL_COMMAND_TIMEOUT": f"{self.timeout:g}s"}
        optional = {
            "ETCDCTL_ENDPOINTS": endpoint,
            "ETCDCTL_CACERT": self.tls and self.tls.ca,
            "ETCDCTL_CERT": self.tls and self.tls.cert,
            "ETCDCTL_KEY": self.tls and self.tls.key,
            "ETCDCTL_USER": self.user,
            "ETCDCTL_PASSWORD": self.password,
        }
        env |= {name: str(value) for name, value in optional.items() if value}
        return env

    def run(self, argv: list[str], *, endpoint: str | None = None, timeout: float | None = None) -> bytes:
        """Run ``argv`` (its first item the binary) with this configuration; stdout. Raises CommandError."""
        completed = run(
            argv,
            timeout=timeout or QUICK_COMMAND_TIMEOUT,
            env=self.env(endpoint),
            secrets=[self.password] if self.password else (),
        )
        return completed.stdout

    @contextlib.contextmanager
    def snapshot_save(self, endpoint: str, path: Path) -> Iterator[SnapshotDownload]:
        """``etcdctl snapshot save`` from ``endpoint`` into ``path``, supervised, and the snapshot's
        bytes as etcdctl writes them (``SnapshotDownload``): the caller stores them meanwhile.

        etcdctl's gRPC client keeps retrying a member that died mid-transfer until its command
        timeout (minutes by default), so the save is watched: it is stopped as soon as the member
        refuses connections, or no byte arrived for STALL_TIMEOUT seconds. Reading raises SourceError
        (stopped) or CommandError (etcdctl failed; secrets masked); leaving the block stops etcdctl."""
        log_path = path.with_name(f"{path.name}.etcdctl.log")
        part = path.with_name(f"{path.name}.part")
        for leftover in (path, part):  # of an attempt that was stopped: never read as this one's bytes
            leftover.unlink(missing_ok=True)
        try:
            process = start([self.binary, "snapshot", "save", str(path)], log_path=log_path, env=self.env(endpoint))
        except CommandError as exc:
            raise SourceError(str(exc)) from exc
        with process:
            watch = _SaveWatch(endpoint, part, self.timeout)
            with SnapshotDownload(process, watch, self) as download:
                yield download

    def snapshot_status(self, path: Path) -> SnapshotStatus:
        """Raises CorruptSnapshotError when etcd cannot read the file as a snapshot."""
        tool = self._file_tool()
        try:
            output = self.run([*tool, "snapshot", "status", "-w", "json", str(path)], timeout=self.timeout)
        except CommandError as exc:
            raise CorruptSnapshotError(f"etcd cannot read {path} as a snapshot: {exc}") from exc
        return SnapshotStatus.parse(output, file_size=path.stat().st_size)

    def snapshot_restore(self, snapshot: Path, data_dir: Path, target: EtcdDataDirTarget) -> None:
        self.run(
            [
                *self._file_tool(),
                *("snapshot", "restore", str(snapshot)),
                *("--data-dir", str(data_dir)),
                *("--name", target.name),
                *("--initial-cluster", target.initial_cluster),
                *("--initial-advertise-peer-urls", target.initial_advertise_peer_urls),
            ],
            timeout=self.timeout,
        )

    def _file_tool(self) -> list[str]:
        """The binary for file-level work: etcdctl up to 3.4, etcdutl from 3.5 (which moved
        ``snapshot restore``/``status`` there). Raises SourceError when 3.5+ comes without etcdutl."""
        try:
            version = etcdctl_version(self.run([self.binary, "version"]).decode(errors="replace"))
        except (CommandError, ValueError) as exc:
            raise SourceError(f"cannot tell which etcd release {self.binary} belongs to: {exc}") from exc
        if version < (3, 5):
            return [self.binary]
        beside = Path(shutil.which(self.binary) or self.binary).with_name("etcdutl")
        etcdutl = str(beside) if beside.is_file() else shutil.which("etcdutl")
        if not etcdutl:
            raise SourceError(
                f"etcdctl {version[0]}.{version[1]} moved 'snapshot restore/status' to etcdutl, which is neither next "
                f"to {self.binary} nor on PATH: install etcdutl from the same etcd release"
            )
        return [etcdutl]


@dataclass
class _SaveWatch:
    """Watches one ``snapshot save``: the member's liveness, the download's progress, the deadline."""

    endpoint: str
    part: Path  # where etcdctl downloads to before renaming
    timeout: float
    started: float = field(default_factory=time.monotonic)
    _last_size: int = -1
    _last_change: float = field(default_factory=time.monotonic)
    _next_probe: float = 0.0
    _misses: int = 0

    def poll(self) -> str | None:
        """What went wrong so far, if the save has to be stopped; None while it may go on."""
        now = time.monotonic()
        if now - self.started > self.timeout:
            return f"the snapshot from {self.endpoint} took longer than the source's timeout ({self.timeout:g}s)"
        size = self.part.stat().st_size if self.part.exists() else -1
        if size != self._last_size:
            self._last_size, self._last_change = size, now
        elif now - self._last_change > STALL_TIMEOUT:
            return f"no snapshot bytes arrived from {self.endpoint} for {STALL_TIMEOUT:g}s"
        if now >= self._next_probe:
            self._misses = 0 if _accepts_connections(self.endpoint) else self._misses + 1
            self._next_probe = now + LIVENESS_INTERVAL
            if self._misses >= LIVENESS_MISSES:
                return f"etcd at {self.endpoint} stopped accepting connections during the snapshot"
        return None


class SnapshotDownload(io.RawIOBase):
    """The snapshot file while etcdctl writes it (``<path>.part``, append only, renamed when done):
    a read gives the bytes written so far, waits for more while the save goes on, and ends once
    etcdctl exited well and every byte was read. The open file stays valid across the rename."""

    def __init__(self, process: ManagedProcess, watch: _SaveWatch, etcdctl: Etcdctl) -> None:
        super().__init__()
        self._process = process
        self._watch = watch
        self._etcdctl = etcdctl
        self._file: io.FileIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while True:
            done = not self._process.alive()  # before reading: what was written by then is all there is
            if self._file is None:
                self._file = self._open(done)
            got = self._file.readinto(buffer) if self._file is not None else 0
            if done and not got:
                if self._process.returncode != 0:
                    tail = mask_secrets(self._process.log_tail(STDERR_TAIL_LINES), [self._etcdctl.password or ""])
                    raise CommandError(Path(self._etcdctl.binary).name, self._process.returncode or -1, tail)
                return 0
            problem = None if done else self._watch.poll()  # the deadline and the member, even while bytes flow
            if problem:
                raise SourceError(f"{problem}; the snapshot was abandoned")
            if got:
                return got
            time.sleep(SAVE_POLL)

    def _open(self, done: bool) -> io.FileIO | None:
        """The download, once etcdctl has created it; after a successful exit, the renamed file."""
        final = self._watch.part.with_name(self._watch.part.name.removesuffix(".part"))
        for candidate in (self._watch.part, final) if done and self._process.returncode == 0 else (self._watch.part,):
            with contextlib.suppress(FileNotFoundError):
                return io.FileIO(candidate, "r")
        return None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def _accepts_connections(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=LIVENESS_INTERVAL):
            return True
    except OSError:
        return False


# ---- the v3 JSON gateway: version, auth, paged key ranges -------------------------------------------


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


def read_census(gateway: EtcdGateway, revision: int = 0) -> dict[str, Any]:
    """Count every key at ``revision`` (0: the current revision, pinned at the first page so the scan
    is consistent while writes go on). Raises SourceError (e.g. the revision was compacted)."""
    census = KeyCensus()
    gateway.request_keys(b"\0", revision=revision)
    first = page = gateway.read_keys()
    pinned = revision or first.revision
    while True:
        following = page.more and bool(page.keys)
        if following:  # etcd looks up the next page while this one is counted
            gateway.request_keys(page.keys[-1] + b"\0", revision=pinned)  # the smallest key after the last
        for key in page.keys:
            census.add(key)
        if not following:
            break
        page = gateway.read_keys()
    if census.keys != first.count:
        raise SourceError(
            f"etcd at {gateway.endpoint} listed {census.keys} keys at revision {pinned} but counted {first.count}"
        )
    return census.as_dict(pinned)


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


# ---- verification on a live etcd --------------------------------------------------------------------


def verify_endpoint(
    fingerprint: Mapping[str, Any], endpoint: str, *, ssl_context: ssl.SSLContext | None = None
) -> Verification:
    """Compare the etcd at ``endpoint`` (its current revision and key census) with a snapshot's
    fingerprint: MATCH, MISMATCH with the differing prefixes, or UNVERIFIED when it cannot be read."""
    try:
        with EtcdGateway(endpoint, ssl_context=ssl_context) as gateway:
            actual = read_census(gateway)
    except SourceError as exc:
        return Verification(Verdict.UNVERIFIED, f"could not read the restored etcd: {exc}")
    differences = census_differences(fingerprint, actual)
    checked = {"revision": actual["revision"], "keys": actual["totals"]["keys"], "resources": len(actual["resources"])}
    if differences:
        return Verification(
            Verdict.MISMATCH,
            f"the restored etcd differs from the snapshot in {len(differences)} places",
            differences,
            checked,
        )
    prefixes = _plural(len(actual["prefixes"]), "prefix")
    message = f"revision {actual['revision']} and {actual['totals']['keys']} keys in {prefixes} match"
    return Verification(Verdict.MATCH, message, [], checked)


def verify_data_dir(fingerprint: Mapping[str, Any], data_dir: Path, *, name: str, etcd_bin: str = "etcd") -> Verification:
    """Start a scratch etcd on the restored member data dir (free loopback ports), compare it with the
    fingerprint, stop it. UNVERIFIED when there is no member data or etcd would not start."""
    if not (data_dir / "member" / "snap" / "db").is_file():
        # etcd would start an empty member there: a "mismatch" that says nothing about the snapshot
        return Verification(Verdict.UNVERIFIED, f"{data_dir} holds no etcd member data (no member/snap/db)")
    with tempfile.TemporaryDirectory(prefix="lifeboat-verify-") as logs:
        try:
            etcd = start_etcd(data_dir, etcd_bin=etcd_bin, name=name, log_path=Path(logs) / "etcd.log")
        except SourceError as exc:
            return Verification(Verdict.UNVERIFIED, f"the restored etcd would not start: {exc}")
        try:
            return verify_endpoint(fingerprint, etcd.endpoint)
        finally:
            etcd.stop()


# ---- the source -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedSnapshot:
    """A snapshot file that passed etcd's checks, and its census."""

    status: SnapshotStatus
    revision: int  # the snapshot's real revision, which ``status.revision`` can understate (bolt.py)
    trailer: str  # hex sha256 of the db
    census: dict[str, Any]


def check_snapshot_file(etcdctl: Etcdctl, path: Path) -> CheckedSnapshot:
    """etcd's sha256 trailer, ``snapshot status`` (which also runs bbolt's consistency check) and the
    key census read from the file, side by side (a hashing thread, a child process, this thread).
    Our bbolt reader and etcd's must agree on the newest revision. Raises CorruptSnapshotError /
    SourceError."""
    with ThreadPoolExecutor(2, thread_name_prefix="etcd-check") as helpers:
        pending_status = helpers.submit(etcdctl.snapshot_status, path)
        pending_trailer = helpers.submit(verify_trailer, path)
        try:
            compacted = finished_compact_revision(path)
            newest, keys = snapshot_keys(path)
        except BoltFormatError as exc:
            pending_status.result()  # etcd's own verdict on a damaged file comes first
            raise CorruptSnapshotError(f"{path}: {exc}") from None
        status, trailer = pending_status.result(), pending_trailer.result()
    if newest != status.revision:
        raise CorruptSnapshotError(
            f"{path}: etcd says its newest revision is {status.revision}, its key bucket reads {newest}"
        )
    # etcd's store starts at revision 1: an empty snapshot's key bucket says 0, its member says 1.
    revision = max(status.revision, compacted, 1)
    census = KeyCensus()
    for key in keys:
        census.add(key)
    return CheckedSnapshot(status, revision, trailer, census.as_dict(revision))


@dataclass(frozen=True)
class _Taken:
    """A snapshot file that passed verification, and where it came from."""

    path: Path
    endpoint: str
    server_version: str
    checked: CheckedSnapshot


class EtcdSource:
    """Snapshots one etcd cluster (any healthy member: the leader is not required)."""

    kind: ClassVar[str] = "etcd"

    def __init__(self, name: str, settings: EtcdSettings) -> None:
        self.name = name
        self.settings = settings

    # ---- snapshot --------------------------------------------------------------------------------

    def snapshot(
        self, writer: SnapshotWriter, previous: SnapshotHeader | None, *, progress: Progress | None = None
    ) -> SnapshotOutcome:
        """Save one snapshot db while storing its bytes, then verify and count it; see the module
        docstring for why this way.

        ``previous`` is not needed: a bbolt file changes in place, page by page, so the chunks of
        unchanged pages are found in the repository and not stored again (fixed 1 MiB chunks).

        Raises SourceError when no endpoint gives a snapshot that passes verification; nothing is
        committed then."""
        ssl_context = ssl_context_for(self.settings.tls, f"sources.{self.name}")
        with tempfile.TemporaryDirectory(prefix=f"lifeboat-{self.name}-") as workdir:
            taken, stored = self._take(Path(workdir) / SNAPSHOT_ENTRY, ssl_context, writer, progress)
        census = taken.checked.census
        revision = taken.checked.revision
        meta = {
            "revision": revision,
            "etcd_version": taken.server_version,
            "endpoint": taken.endpoint,
            "status": taken.checked.status.as_dict(),
            "trailer_sha256": taken.checked.trailer,
        }
        writer.add(Entry(SNAPSHOT_ENTRY, stored.size, stored.sha256, stored.chunks, meta))
        keys = census["totals"]["keys"]
        log.info("etcd.snapshot.stored", source=self.name, revision=revision, keys=keys, bytes=stored.size)
        fingerprint = {key: census[key] for key in ("revision", "prefixes", "resources", "namespaces")} | {"keys": keys}
        figures = {"revision": revision, "keys": keys, "endpoint": taken.endpoint}
        return SnapshotOutcome(fingerprint=fingerprint, census=census, meta=meta, figures=figures)

    def _take(
        self, path: Path, ssl_context: ssl.SSLContext | None, writer: SnapshotWriter, progress: Progress | None
    ) -> tuple[_Taken, StoredStream]:
        """Try each endpoint in turn until one gives a snapshot that passes verification; its bytes
        are stored by then, and become a snapshot only when the caller's manifest is committed."""
        etcdctl = self._etcdctl()
        failures = []
        for endpoint in self.settings.endpoints:
            started = time.monotonic()
            try:
                with self._gateway(endpoint, ssl_context) as gateway:
                    version = gateway.version()  # fails fast, and clearly, where etcdctl would wait its dial timeout
                with etcdctl.snapshot_save(endpoint, path) as download:
                    stored = writer.write_stream(cast(BinaryIO, download), progress=progress)
                saved = round(time.monotonic() - started, 3)
                log.info("etcd.snapshot.saved", source=self.name, endpoint=endpoint, seconds=saved)
                checked = check_snapshot_file(etcdctl, path)
            except (SourceError, CommandError) as exc:
                log.warning("etcd.snapshot.endpoint_failed", source=self.name, endpoint=endpoint, error=str(exc))
                failures.append(f"{endpoint}: {exc}")
                path.unlink(missing_ok=True)
                continue
            seconds = time.monotonic() - started
            log.info(
                "etcd.snapshot.verified",
                source=self.name,
                endpoint=endpoint,
                revision=checked.revision,
                seconds=round(seconds, 3),
            )
            return _Taken(path, endpoint, version, checked), stored
        raise SourceError(f"no verified snapshot of etcd source '{self.name}' from any endpoint:\n" + "\n".join(failures))

    def _etcdctl(self) -> Etcdctl:
        return Etcdctl(
            binary=self.settings.etcdctl,
            timeout=self.settings.timeout.total_seconds(),
            tls=self.settings.tls,
            user=self.settings.user,
            password=reveal(self.settings.password),
        )

    def _gateway(self, endpoint: str, ssl_context: ssl.SSLContext | None) -> EtcdGateway:
        return EtcdGateway(
            endpoint, ssl_context=ssl_context, user=self.settings.user, password=reveal(self.settings.password)
        )

    # ---- restore ---------------------------------------------------------------------------------

    def parse_target(self, options: RestoreOptions) -> EtcdFileTarget | EtcdDataDirTarget:
        """``--to-file PATH`` or ``--to-data-dir DIR`` with the member options; raises RestoreError
        for options of other source kinds, a missing or doubled target, or inconsistent membership."""
        foreign = options.given(*_OTHER_KIND_OPTIONS)
        if foreign:
            flags = ", ".join(_flag(name) for name in foreign)
            verb = "does" if len(foreign) == 1 else "do"
            raise RestoreError(f"{flags} {verb} not apply to etcd source '{self.name}'; {_TARGET_HELP}")
        if bool(options.to_file) == bool(options.to_data_dir):
            both = "give only one of --to-file and --to-data-dir" if options.to_file else "say where to restore"
            raise RestoreError(f"{both}: {_TARGET_HELP}")
        members = options.given(*_MEMBER_OPTIONS)
        if options.to_file:
            if members:
                raise RestoreError(f"{', '.join(map(_flag, members))} apply only with --to-data-dir")
            return EtcdFileTarget(Path(options.to_file).expanduser().absolute())
        missing = [_flag(name) for name in _MEMBER_OPTIONS if name not in members]
        if missing:
            raise RestoreError(f"--to-data-dir also needs {', '.join(missing)}: the member's identity in its cluster")
        assert options.name and options.initial_cluster and options.initial_advertise_peer_urls and options.to_data_dir
        check_membership(options.name, options.initial_cluster, options.initial_advertise_peer_urls)
        return EtcdDataDirTarget(
            Path(options.to_data_dir).expanduser().absolute(),
            options.name,
            options.initial_cluster,
            options.initial_advertise_peer_urls,
            etcd_bin=self._etcd_bin(),
        )

    def restore(
        self,
        repository: Repository,
        header: SnapshotHeader,
        target: Any,
        *,
        options: RestoreOptions,
        progress: Progress | None = None,
    ) -> RestoreResult:
        """Write the snapshot db to a file, or ``snapshot restore`` it into a member data dir.

        The db's bytes are proven twice before use: the repository's sha256 of the entry, then etcd's
        own trailer. Raises RestoreError (refused target, restore tool failed) or IntegrityError."""
        entry = _snapshot_entry(repository, header)
        started = time.monotonic()
        if isinstance(target, EtcdFileTarget):
            plan, next_steps = self._restore_file(repository, header, entry, target, options, progress)
            where = str(target.path)
        elif isinstance(target, EtcdDataDirTarget):
            plan, next_steps = self._restore_data_dir(repository, header, entry, target, options, progress)
            where = str(target.data_dir)
        else:
            raise RestoreError(f"etcd source '{self.name}' cannot restore into {target!r}; {_TARGET_HELP}")
        figures = {"revision": header.fingerprint.get("revision"), "keys": header.fingerprint.get("keys")}
        seconds = time.monotonic() - started
        written = 0 if options.dry_run else entry.size
        return RestoreResult(self.name, header.id, where, options.dry_run, seconds, written, figures, plan, next_steps)

    def _restore_file(
        self,
        repository: Repository,
        header: SnapshotHeader,
        entry: Entry,
        target: EtcdFileTarget,
        options: RestoreOptions,
        progress: Progress | None,
    ) -> tuple[list[str], list[str]]:
        path = target.path
        exists = path.exists()
        plan = [
            f"write {SNAPSHOT_ENTRY} ({entry.size} bytes, revision {entry.meta.get('revision')}) to {path}",
            "verify it: the snapshot's sha256, then etcd's own sha256 trailer",
        ]
        if exists:
            plan.append(f"replace the existing {path}" + ("" if options.yes else " (refused without --yes)"))
        next_steps = [
            f"check it where it is used: etcdctl snapshot status {path} -w table (revision {entry.meta.get('revision')})",
            f"restore each member from it: etcdctl (3.4) or etcdutl (3.5+) snapshot restore {path} --data-dir DIR "
            "--name NAME --initial-cluster ... --initial-advertise-peer-urls ... (or lifeboat restore --to-data-dir)",
        ]
        if options.dry_run:
            return plan, next_steps
        if path.is_dir():
            raise RestoreError(f"--to-file {path} is a directory; give a file path")
        if exists and not options.yes:
            raise RestoreError(f"{path} exists; add --yes to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.lifeboat-{os.getpid()}.part")
        try:
            write_verified_snapshot(repository, header, entry, partial, progress)
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        log.info("etcd.restore.file", source=self.name, snapshot=header.id, path=str(path), bytes=entry.size)
        return plan, next_steps

    def _restore_data_dir(
        self,
        repository: Repository,
        header: SnapshotHeader,
        entry: Entry,
        target: EtcdDataDirTarget,
        options: RestoreOptions,
        progress: Progress | None,
    ) -> tuple[list[str], list[str]]:
        data_dir = target.data_dir
        occupied = _non_empty(data_dir)
        aside = data_dir.with_name(f"{data_dir.name}.lifeboat-old-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
        plan = [
            f"write {SNAPSHOT_ENTRY} ({entry.size} bytes, revision {entry.meta.get('revision')}) next to {data_dir}",
            "verify it: the snapshot's sha256, then etcd's own sha256 trailer (snapshot restore checks it)",
            f"snapshot restore it as member {target.name} of {target.initial_cluster} into a fresh directory",
        ]
        if occupied:
            plan.append(
                f"move the current contents of {data_dir} to {aside}" + ("" if options.yes else " (refused without --yes)")
            )
        plan.append(f"put the restored member data in place at {data_dir}")
        next_steps = cluster_next_steps(self.name, header, target, moved_aside=aside if occupied else None)
        if options.dry_run:
            return plan, next_steps
        if occupied and not options.yes:
            raise RestoreError(
                f"{data_dir} is not empty; add --yes to move its contents aside to {aside.name} and restore in its place"
            )
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        # snapshot restore refuses an existing data dir: restore into a sibling (same filesystem), then rename.
        work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.lifeboat-restore-", dir=data_dir.parent))
        try:
            snapshot = work / SNAPSHOT_ENTRY
            # No trailer pass of ours here: snapshot restore checks etcd's sha256 trailer itself.
            write_snapshot_file(repository, header, entry, snapshot, progress, durable=False)
            try:
                self._etcdctl().snapshot_restore(snapshot, work / "data", target)
            except (CommandError, SourceError) as exc:
                raise RestoreError(f"snapshot restore into {data_dir} failed: {exc}") from exc
            _swap_in(work / "data", data_dir, aside if occupied else None)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("etcd.restore.data_dir", source=self.name, snapshot=header.id, data_dir=str(data_dir), member=target.name)
        return plan, next_steps

    def _etcd_bin(self) -> str:
        """The etcd server next to the configured etcdctl, else the one on PATH."""
        beside = Path(shutil.which(self.settings.etcdctl) or self.settings.etcdctl).with_name("etcd")
        return str(beside) if beside.is_file() else "etcd"

    # ---- verify ----------------------------------------------------------------------------------

    def verify(self, header: SnapshotHeader, target: Any, *, repository: Repository | None = None) -> Verification:
        """Compare a restored target with the snapshot's fingerprint (revision and key counts per
        prefix, resource and namespace). Never raises for a mismatch or an unreachable target."""
        fingerprint = header.fingerprint
        if "revision" not in fingerprint:
            return Verification(Verdict.UNVERIFIED, f"snapshot {header.id} carries no etcd fingerprint to compare with")
        if isinstance(target, EtcdEndpointTarget):
            try:
                context = ssl_context_for(target.tls, "target")
            except SourceError as exc:
                return Verification(Verdict.UNVERIFIED, str(exc))
            return verify_endpoint(fingerprint, target.endpoint, ssl_context=context)
        if isinstance(target, EtcdDataDirTarget):
            if len(target.members) > 1:
                return Verification(
                    Verdict.UNVERIFIED,
                    f"{target.data_dir} is one member of a {len(target.members)}-member cluster and cannot start alone; "
                    "verify the cluster's endpoint once every member runs",
                )
            return verify_data_dir(fingerprint, target.data_dir, name=target.name, etcd_bin=target.etcd_bin)
        if isinstance(target, EtcdFileTarget):
            return self._verify_file(fingerprint, target.path)
        return Verification(Verdict.UNVERIFIED, f"etcd source '{self.name}' cannot verify {target!r}")

    def _verify_file(self, fingerprint: Mapping[str, Any], path: Path) -> Verification:
        """A snapshot file: etcd's checks, then restored into a scratch member and compared."""
        member = EtcdDataDirTarget(
            Path(), SCRATCH_MEMBER, f"{SCRATCH_MEMBER}=http://127.0.0.1:2380", "http://127.0.0.1:2380"
        )
        with tempfile.TemporaryDirectory(prefix="lifeboat-verify-") as scratch:
            try:
                verify_trailer(path)
                self._etcdctl().snapshot_restore(path, Path(scratch) / "data", member)
            except (OSError, LifeboatError) as exc:
                return Verification(Verdict.UNVERIFIED, f"{path} could not be restored for verification: {exc}")
            return verify_data_dir(fingerprint, Path(scratch) / "data", name=SCRATCH_MEMBER, etcd_bin=self._etcd_bin())


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("x") else "s")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _snapshot_entry(repository: Repository, header: SnapshotHeader) -> Entry:
    for entry in repository.entries(header):
        if entry.name == SNAPSHOT_ENTRY:
            return entry
    raise IntegrityError(f"snapshot {header.id} holds no {SNAPSHOT_ENTRY} entry: it is not an etcd snapshot")


def write_verified_snapshot(
    repository: Repository, header: SnapshotHeader, entry: Entry, path: Path, progress: Progress | None = None
) -> None:
    """Write the snapshot db to ``path`` durably, proving it with the repository's sha256 (while
    writing) and etcd's trailer (after). Raises IntegrityError; the caller removes ``path`` on failure."""
    write_snapshot_file(repository, header, entry, path, progress, durable=True)
    try:
        verify_trailer(path)
    except CorruptSnapshotError as exc:
        raise IntegrityError(f"snapshot {header.id}: {exc}") from None


def write_snapshot_file(
    repository: Repository,
    header: SnapshotHeader,
    entry: Entry,
    path: Path,
    progress: Progress | None = None,
    *,
    durable: bool,
) -> None:
    """Write the snapshot db to ``path``; the repository proves its size and sha256 on the way.
    ``durable`` fsyncs it (not worth it for a file consumed at once). Raises IntegrityError."""
    with _ProgressFile(path, progress) as out:
        repository.restore_entry(entry, out, snapshot=header.id)
        if durable:
            os.fsync(out.fileno())


class _ProgressFile(io.FileIO):
    """A file opened for writing that reports every write to ``progress``."""

    def __init__(self, path: Path, progress: Callable[[int], None] | None) -> None:
        super().__init__(path, "wb")
        self._progress = progress

    def write(self, data: Any) -> int:
        written = super().write(data)
        if self._progress and written:
            self._progress(written)
        return written or 0


def _non_empty(path: Path) -> bool:
    if not path.exists():
        return False
    if not path.is_dir():
        raise RestoreError(f"--to-data-dir {path} is not a directory")
    return any(path.iterdir())


def _swap_in(restored: Path, data_dir: Path, aside: Path | None) -> None:
    """Put ``restored`` at ``data_dir``; an occupied one is moved to ``aside`` first (never deleted).

    Raises RestoreError saying where the old data is if a rename fails half way."""
    try:
        if aside is not None:
            data_dir.rename(aside)
        elif data_dir.exists():
            data_dir.rmdir()  # empty: checked before
    except OSError as exc:
        raise RestoreError(f"cannot clear {data_dir} for the restored member: {exc.strerror}; nothing was changed") from exc
    try:
        restored.rename(data_dir)
    except OSError as exc:
        where = f"; its previous contents are in {aside}" if aside else ""
        raise RestoreError(f"cannot move the restored member into {data_dir}: {exc.strerror}{where}") from exc


def cluster_next_steps(
    source: str, header: SnapshotHeader, target: EtcdDataDirTarget, *, moved_aside: Path | None
) -> list[str]:
    """What an operator does after restoring one member's data dir, for the whole cluster to come back."""
    members = target.members
    others = [name for name in members if name != target.name]
    revision = header.fingerprint.get("revision")
    steps = [
        f"stop the kube-apiservers, then etcd on every member ({', '.join(members)}), before any starts from restored data",
        "on every member, move its old data dir aside (e.g. mv /var/lib/etcd /var/lib/etcd.old): a member that keeps "
        "its old data brings the old state back"
        + (f"; for {target.name} Lifeboat moved it to {moved_aside}" if moved_aside else ""),
    ]
    steps += [
        f"restore member {name} from the same snapshot on its host: lifeboat restore {source} --snapshot {header.id} "
        f"--to-data-dir <its data dir> --name {name} --initial-cluster {target.initial_cluster} "
        f"--initial-advertise-peer-urls {','.join(members[name])}"
        for name in others
    ]
    steps += [
        f"start every member with its own --name and --initial-advertise-peer-urls, --initial-cluster "
        f"{target.initial_cluster} --initial-cluster-state new (member {target.name}: --data-dir {target.data_dir})",
        f"check: etcdctl endpoint status --cluster -w table shows every member at revision {revision}; then start "
        "the kube-apiservers",
    ]
    return steps


__all__ = [
    "CorruptSnapshotError",
    "EtcdDataDirTarget",
    "EtcdEndpointTarget",
    "EtcdFileTarget",
    "EtcdGateway",
    "EtcdSource",
    "Etcdctl",
    "KeyCensus",
    "SnapshotStatus",
    "census_differences",
    "check_membership",
    "first_segment",
    "kubernetes_resource",
    "parse_initial_cluster",
    "read_census",
    "verify_data_dir",
    "verify_endpoint",
    "verify_trailer",
    "write_snapshot_file",
    "write_verified_snapshot",
]
