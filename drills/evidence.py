"""Evidence records of drill runs: signed, chained, kept in the repository (issue 17).

Every drill run, once its report is stored, writes one record to ``evidence/<drill>/<time>-<run id>.json``:
the policy's hash, the drill and its objectives, each snapshot restored with the SHA-256 of its stored
manifest object, the scratch environment's identity (and whether it shares a server with a source),
every step's verdict, time and message, RTO and RPO against the objectives, Lifeboat's version and
the host. A record is canonical JSON (sorted keys, no spaces, UTF-8) signed with Ed25519 over the
record without its ``signature``; it holds its ``sequence`` in the drill's chain and the SHA-256 of
the previous record's stored bytes (``previous``), so an edited record fails its signature, a record
deleted from the middle leaves a gap in the sequence and a chain hash that matches nothing, and a
record signed with another key says so. Records are stored as they are (not encrypted, not
compressed), so an auditor needs only read access to ``evidence/`` and the public key to check them;
on an S3 repository with Object Lock every record gets the repository's retention (``S3Store.put``).

What the chain cannot show by itself: the deletion of the newest records (nothing after them points
at them). Object Lock is what prevents that; ``evidence report`` also lists drill runs without records.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from backup.repository.manifest import manifest_key
from backup.repository.repository import Repository
from backup.repository.store import get_bytes, put_bytes
from drills.model import DrillRun, Step
from policies.errors import ConfigError, ConfigIssue, LifeboatError
from policies.model import Policy

EVIDENCE_SCHEMA = "lifeboat.evidence/v1"
EVIDENCE_PREFIX = "evidence/"
KEY_ID_LENGTH = 16  # hex digits of the public key's SHA-256 that name it


class EvidenceError(LifeboatError):
    """An evidence record cannot be written or read (a bad key, an unreadable record store)."""


# ---- canonical form, keys, signatures ---------------------------------------------------------------


def canonical(document: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8: the bytes that are signed and hashed."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair: (private key PEM, PKCS#8 unencrypted; public key PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_signing_key(text: str, *, where: str = "evidence.signing_key") -> Ed25519PrivateKey:
    """The Ed25519 private key in ``text`` (PEM); raises ConfigError saying how to make one."""
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("", [ConfigIssue(where, f"not an unencrypted PEM private key ({exc}); {_KEYGEN}")]) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("", [ConfigIssue(where, f"not an Ed25519 key ({type(key).__name__}); {_KEYGEN}")])
    return key


def load_public_key(data: bytes, *, where: str) -> Ed25519PublicKey:
    """The Ed25519 public key in ``data`` (PEM); raises EvidenceError naming ``where``."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"{where}: not a PEM public key ({exc}); {_KEYGEN}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"{where}: not an Ed25519 public key ({type(key).__name__}); {_KEYGEN}")
    return key


_KEYGEN = "make a key pair with `lifeboat evidence keygen --out PATH`"


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of a public key: the first hex digits of the SHA-256 of its raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256(raw)[:KEY_ID_LENGTH]


def sign(record: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The stored bytes of ``record``: its canonical JSON with ``key_id`` and ``signature`` added."""
    body = {**record, "key_id": key_id(key.public_key())}
    body.pop("signature", None)
    signature = base64.b64encode(key.sign(canonical(body))).decode()
    return canonical({**body, "signature": signature})


# ---- what a record holds ----------------------------------------------------------------------------


def policy_sha256(policy: Policy) -> str:
    """The SHA-256 of the validated policy as canonical JSON (inline secrets masked by pydantic)."""
    return sha256(canonical(policy.model_dump(mode="json", by_alias=True)))


def scratch_identity(policy: Policy, run_id: str) -> dict[str, Any]:
    """Where a drill run restored: the scratch kind, its cluster and context or hosts, the namespace or
    database and bucket names of this run, and whether a scratch server is also a source's server
    (``shares_server_with_source``; ``segregated`` is its opposite)."""
    identity = SCRATCH_IDENTITIES[policy.scratch.kind](policy, run_id)
    identity["shares_server_with_source"] = bool(identity["shared_servers"])
    return identity


def _kubernetes_identity(policy: Policy, run_id: str) -> dict[str, Any]:
    k8s = policy.scratch.kubernetes
    return {
        "kind": "kubernetes",
        "cluster": "in-cluster" if k8s.in_cluster else str(k8s.kubeconfig or "~/.kube/config"),
        "context": k8s.context,
        "namespace": f"{k8s.namespace_prefix}{run_id}",
        "shared_servers": [],  # every copy runs in the drill's own namespace, on its own StatefulSets
    }


def _local_identity(policy: Policy, run_id: str) -> dict[str, Any]:
    local = policy.scratch.local
    hosts = ["127.0.0.1 (etcd processes started for the run)"]
    shared = []
    source_servers = _source_servers(policy)
    if local.clickhouse is not None:
        server = f"{local.clickhouse.host}:{local.clickhouse.port}"
        hosts.append(f"clickhouse {server}")
        shared += [f"clickhouse {server} (source {name})" for name in source_servers.get(("clickhouse", server), [])]
    if local.s3 is not None and local.s3.endpoint_url:
        server = _netloc(local.s3.endpoint_url)
        hosts.append(f"s3 {server}")
        shared += [f"s3 {server} (source {name})" for name in source_servers.get(("s3", server), [])]
    return {
        "kind": "local",
        "hosts": hosts,
        "database": f"{local.clickhouse.database_prefix}{run_id}" if local.clickhouse else None,
        "bucket": f"{local.s3.bucket_prefix}{run_id}" if local.s3 else None,
        "shared_servers": shared,
    }


SCRATCH_IDENTITIES: dict[str, Callable[[Policy, str], dict[str, Any]]] = {
    "local": _local_identity,
    "kubernetes": _kubernetes_identity,
}
# The server a source of each kind lives on, as a scratch server of that kind would be named; kinds
# whose copies never share a server with the source (etcd: processes of the run) are absent.
SOURCE_SERVERS: dict[str, Callable[[Any], str | None]] = {
    "clickhouse": lambda source: f"{source.host}:{source.port}",
    "s3": lambda source: _netloc(source.endpoint_url) if source.endpoint_url else None,
}


def _source_servers(policy: Policy) -> dict[tuple[str, str], list[str]]:
    servers: dict[tuple[str, str], list[str]] = {}
    for name, source in policy.sources.items():
        where = SOURCE_SERVERS.get(source.kind)
        server = where(source) if where else None
        if server is not None:
            servers.setdefault((source.kind, server), []).append(name)
    return servers


def _netloc(url: str) -> str:
    return urlparse(url).netloc


def manifest_digests(repository: Repository, run: DrillRun) -> dict[str, dict[str, Any]]:
    """Per source restored: its snapshot's stored manifest object's SHA-256 and the snapshot's size.
    A manifest that cannot be read is recorded as such (``error``), never left out silently."""
    digests: dict[str, dict[str, Any]] = {}
    for source in run.sources:
        if source.snapshot is None:
            continue
        try:
            data = get_bytes(repository.store, manifest_key(source.source, source.snapshot))
            size = repository.read_header(source.snapshot).size
        except LifeboatError as exc:
            digests[source.source] = {"manifest_sha256": None, "bytes": None, "error": str(exc)}
            continue
        digests[source.source] = {"manifest_sha256": sha256(data), "bytes": size}
    return digests


def build_record(
    run: DrillRun,
    *,
    policy_hash: str,
    manifests: dict[str, dict[str, Any]],
    scratch: dict[str, Any],
    version: str,
    host: str | None = None,
) -> dict[str, Any]:
    """The unsigned, unchained record of ``run`` (``write_record`` adds sequence, previous, signature)."""
    rto_objective, rpo_objective = run.objectives.rto_seconds, run.objectives.rpo_seconds
    sources = []
    for source in run.sources:
        sources.append(
            {
                "source": source.source,
                "kind": source.kind,
                "snapshot": source.snapshot,
                **manifests.get(source.source, {"manifest_sha256": None, "bytes": None}),
                "verdict": source.verdict.value,
                "rto_seconds": _round(source.rto_seconds),
                "rpo_seconds": _round(source.rpo_seconds),
                "rpo_met": None if source.rpo_seconds is None else source.rpo_seconds <= rpo_objective,
                "steps": [_step(step) for step in source.steps],
            }
        )
    total = run.rto_seconds
    return {
        "schema": EVIDENCE_SCHEMA,
        "drill": run.drill,
        "run_id": run.run_id,
        "policy_sha256": policy_hash,
        "objectives": {"rto_seconds": rto_objective, "rpo_seconds": rpo_objective},
        "started": run.started.isoformat(),
        "finished": (run.finished or datetime.now(UTC)).isoformat(),
        "verdict": run.verdict.value,
        "rto_seconds": _round(total),
        "rto_met": None if total is None else total <= rto_objective,
        "sources": sources,
        "steps": [_step(step) for step in run.steps],
        "scratch": scratch,
        "lifeboat": {"version": version, "host": host or socket.gethostname()},
    }


def _step(step: Step) -> dict[str, Any]:
    return {
        "name": step.name,
        "verdict": step.verdict.value,
        "started": step.started.isoformat(),
        "finished": step.finished.isoformat(),
        "message": step.message,
        "ran": step.ran,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- the repository -------------------------------------------------------------------------------


def record_key(drill: str, started: datetime, run_id: str) -> str:
    return f"{EVIDENCE_PREFIX}{drill}/{started.astimezone(UTC):%Y%m%dT%H%M%SZ}-{run_id}.json"


def list_records(repository: Repository, drill: str | None = None) -> dict[str, list[tuple[str, bytes]]]:
    """``{drill: [(key, stored bytes), ...]}`` in chain order (their keys start with the run's time)."""
    prefix = f"{EVIDENCE_PREFIX}{drill}/" if drill else EVIDENCE_PREFIX
    found: dict[str, list[tuple[str, bytes]]] = {}
    for key in sorted(info.key for info in repository.store.list(prefix) if info.key.endswith(".json")):
        found.setdefault(key[len(EVIDENCE_PREFIX) :].split("/", 1)[0], []).append((key, get_bytes(repository.store, key)))
    return found


def write_record(repository: Repository, record: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """Chain ``record`` to the newest stored record of its drill, sign it, store it; return its key.
    Raises StoreError."""
    drill = record["drill"]
    chain = list_records(repository, drill).get(drill, [])
    previous = sha256(chain[-1][1]) if chain else None
    sequence = _sequence(chain[-1][1], default=len(chain)) + 1 if chain else 1
    stored_key = record_key(drill, datetime.fromisoformat(record["started"]), record["run_id"])
    put_bytes(repository.store, stored_key, sign({**record, "sequence": sequence, "previous": previous}, key))
    return stored_key


def _sequence(data: bytes, *, default: int) -> int:
    try:
        value = json.loads(data).get("sequence")
    except (ValueError, AttributeError):
        return default
    return value if isinstance(value, int) else default


# ---- verification -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    """A broken link: the record (its key) and what is wrong with it."""

    drill: str
    key: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"drill": self.drill, "key": self.key, "problem": self.problem}


@dataclass(frozen=True)
class Verification:
    key_id: str
    records: int  # records checked (in the period)
    drills: list[str]
    breaks: list[Break]

    @property
    def ok(self) -> bool:
        return not self.breaks

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "key_id": self.key_id,
            "records": self.records,
            "drills": self.drills,
            "breaks": [item.as_dict() for item in self.breaks],
        }


def verify_chains(
    chains: dict[str, list[tuple[str, bytes]]], public: Ed25519PublicKey, *, since: datetime | None = None
) -> Verification:
    """Check every record's signature and every link of each drill's chain with ``public`` alone.

    The whole chain is always followed (a link needs the record before it); ``since`` keeps the records
    (and breaks) of runs that started then or later."""
    breaks: list[Break] = []
    checked = 0
    for drill, chain in sorted(chains.items()):
        for index, (key, data) in enumerate(chain):
            started = _key_time(key)
            if since is not None and started is not None and started < since:
                continue
            checked += 1
            previous = chain[index - 1] if index else None
            breaks += [Break(drill, key, problem) for problem in _problems(data, previous, public, first=index == 0)]
    return Verification(key_id(public), checked, sorted(chains), breaks)


def _problems(data: bytes, previous: tuple[str, bytes] | None, public: Ed25519PublicKey, *, first: bool) -> list[str]:
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except ValueError:
        return ["not a readable record: its bytes are no longer the JSON that was signed (edited)"]
    problems = []
    if canonical(record) != data:
        problems.append("its bytes are not the canonical form it was written in: the record was edited")
    expected = key_id(public)
    if record.get("key_id") != expected:
        problems.append(f"signed with another key (key id {record.get('key_id')}; the public key given is {expected})")
    else:
        problems += _signature_problems(record, public)
    sequence = record.get("sequence")
    if first:
        if record.get("previous") is not None or sequence != 1:
            problems.append(f"it is record {sequence} of the chain but no record before it is stored (deleted)")
        return problems
    assert previous is not None
    before_key, before_data = previous
    before = _sequence(before_data, default=-1)
    if record.get("previous") != sha256(before_data):
        if isinstance(sequence, int) and before >= 0 and sequence > before + 1:
            gone = f"record {before + 1}" if sequence == before + 2 else f"records {before + 1}-{sequence - 1}"
            problems.append(f"{gone} of the chain, between {before_key} and this one, is missing (deleted)")
        else:
            problems.append(f"the record before it, {before_key}, is not the one it was chained to (edited or replaced)")
    return problems


def _signature_problems(record: dict[str, Any], public: Ed25519PublicKey) -> list[str]:
    body = {key: value for key, value in record.items() if key != "signature"}
    try:
        public.verify(base64.b64decode(str(record.get("signature", "")), validate=True), canonical(body))
    except (InvalidSignature, ValueError):
        return ["the signature does not match: the record was edited after it was signed"]
    return []


def _key_time(key: str) -> datetime | None:
    stamp = key.rsplit("/", 1)[-1][:16]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def read_records(chains: dict[str, list[tuple[str, bytes]]]) -> Iterable[dict[str, Any]]:
    """The readable records of ``chains`` (for reports; ``verify_chains`` says which can be trusted)."""
    for chain in chains.values():
        for _key, data in chain:
            try:
                record = json.loads(data)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("schema") == EVIDENCE_SCHEMA:
                yield record
