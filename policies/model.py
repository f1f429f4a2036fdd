"""The policy file as typed, frozen objects (DESIGN section 2).

Code below ``policies/`` never sees raw dicts: it gets a ``Policy``. Field-level rules live on the
models; rules that relate one part of the file to another live in ``policies.checks``.
"""

from __future__ import annotations

import contextlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    SecretStr,
    Tag,
    model_validator,
)

from policies.durations import format_duration, parse_duration
from policies.errors import ConfigError, ConfigIssue
from policies.schedule import expand_cron

FAULTS = ("corrupt-chunk", "missing-chunk", "flaky-storage", "kill-target", "disaster", "verifier-canary")
NOTIFY_EVENTS = (
    "drill",
    "drill-failure",
    "backup-failure",
    "check-failure",
    "suspicious",
    "state-damaged",
    "rto-forecast",
)
SNAPSHOT_ID = re.compile(r"^(?P<source>[a-z0-9][a-z0-9_-]*)-(?P<time>\d{8}T\d{6}Z)-(?P<suffix>[0-9a-f]{4})$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _duration(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value} has no unit: write {value}s, {value}m, {value}h or {value}d")
    if not isinstance(value, str):
        raise ValueError("write a duration like 30m, 26h, 7d or 2w")
    return parse_duration(value)


def _cron(value: str) -> str:
    expand_cron(value)
    return value


def _fraction(value: Any) -> Any:
    """``50%`` or ``0.5`` -> 0.5."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"'{value}' is not a percentage like 50%") from None
    return value


def _http_url(value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"'{value}' is not an http(s) URL like https://host:9000")
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"'{value}' has an invalid port") from None
    return value.rstrip("/")


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)]
Cron = Annotated[str, AfterValidator(_cron)]
Fraction = Annotated[float, BeforeValidator(_fraction), Field(gt=0, le=1)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(pattern=_NAME.pattern)]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class SecretFile(Frozen):
    """A secret kept in a file (a mounted Kubernetes Secret, a systemd credential): ``{file: PATH}``.

    Read when used, not when the policy is validated, so a file can be checked on another machine.
    """

    file: Path


# A secret is written inline (usually as ``${ENV_VAR}``) or as ``{file: PATH}``.
Secret = SecretStr | SecretFile


def reveal(secret: Secret | None) -> str | None:
    """The secret's value; raise ConfigError when its file cannot be read."""
    if secret is None:
        return None
    if isinstance(secret, SecretStr):
        return secret.get_secret_value()
    try:
        return secret.file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(str(secret.file), [ConfigIssue("", f"cannot read this secret file: {exc.strerror}")]) from None


# ---- repository -------------------------------------------------------------------------------


class S3Connection(Frozen):
    """How to reach an S3-compatible endpoint (MinIO, AWS, Ceph...)."""

    endpoint_url: HttpUrl | None = None
    region: str = "us-east-1"
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    addressing_style: Literal["path", "virtual", "auto"] = "path"

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> S3Connection:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (to use the AWS defaults)")
        return self


class RepositoryS3(S3Connection):
    part_size: Annotated[int, Field(ge=5 * 1024 * 1024)] = 64 * 1024 * 1024
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 6


class Encryption(Frozen):
    key_file: Path


class ObjectLock(Frozen):
    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    days: Annotated[int, Field(ge=1)]


class PruneSettings(Frozen):
    schedule: Cron | None = None
    grace: Duration = timedelta(hours=24)


class CheckSettings(Frozen):
    schedule: Cron | None = None
    read_data_subset: Fraction | None = None


class Repository(Frozen):
    url: str = "file:///var/lib/lifeboat/repo"
    s3: RepositoryS3 = RepositoryS3()
    encryption: Encryption | None = None
    object_lock: ObjectLock | None = None
    lock_stale_after: Duration = timedelta(minutes=30)
    prune: PruneSettings = PruneSettings()
    check: CheckSettings = CheckSettings()

    @model_validator(mode="after")
    def _url_shape(self) -> Repository:
        parsed = urlparse(self.url)
        if parsed.scheme == "file":
            if not parsed.path.startswith("/") or parsed.netloc:
                raise ValueError(f"'{self.url}' must be an absolute path like file:///var/lib/lifeboat/repo")
            if self.object_lock:
                raise ValueError("object_lock needs an s3:// repository; a local directory cannot lock objects")
        elif parsed.scheme == "s3":
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", parsed.netloc):
                raise ValueError(f"'{self.url}': '{parsed.netloc}' is not a valid bucket name (s3://bucket/prefix)")
        else:
            raise ValueError(f"'{self.url}' must start with file:// or s3://")
        return self

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme

    @property
    def bucket(self) -> str:
        return urlparse(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket (s3), or the directory (file)."""
        parsed = urlparse(self.url)
        return parsed.path if parsed.scheme == "file" else parsed.path.strip("/")


# ---- retention --------------------------------------------------------------------------------


class Retention(Frozen):
    """restic ``forget`` rules; they OR together. ``None`` means the rule is not used."""

    keep_last: Annotated[int, Field(ge=0)] | None = None
    keep_hourly: Annotated[int, Field(ge=0)] | None = None
    keep_daily: Annotated[int, Field(ge=0)] | None = None
    keep_weekly: Annotated[int, Field(ge=0)] | None = None
    keep_monthly: Annotated[int, Field(ge=0)] | None = None
    keep_yearly: Annotated[int, Field(ge=0)] | None = None
    keep_within: Duration | None = None

    @model_validator(mode="after")
    def _keeps_something(self) -> Retention:
        counts = (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)
        if not any(counts) and self.keep_within is None:
            raise ValueError(
                "this retention keeps nothing: set at least one of keep_last, keep_hourly, keep_daily, "
                "keep_weekly, keep_monthly, keep_yearly (above 0) or keep_within"
            )
        return self


class AnomalyGuard(Frozen):
    """When a new census shrank or changed this much against the previous one, flag it suspicious."""

    shrink: Fraction = 0.5
    changed: Fraction = 0.5


# ---- checks -----------------------------------------------------------------------------------
# What "works" means on a restored copy, in the team's own terms (README "Drill checks"). A source's
# checks are run by its kind's check runner (backup/sources/<kind>/checks.py); a drill's ``command``
# checks by drills/checks.py. Rules across the file (unique names, a timeout within the RTO): policies.checks.

EXPECTATIONS = ("equals", "min", "max", "rows_min", "min_bytes", "exists", "same_as_source")
SAME_AS_SOURCE = "same_as_source"


class Expect(Frozen):
    """``expect``: ``same_as_source``, or a mapping of bounds (``{min: 1}``, ``{equals: 42}``,
    ``{rows_min: 10}``, ``{exists: true}``, ``{min_bytes: N}``); bounds given together all apply."""

    equals: bool | int | float | str | None = None
    min: float | None = None
    max: float | None = None
    rows_min: Annotated[int, Field(ge=0)] | None = None
    min_bytes: Annotated[int, Field(ge=0)] | None = None
    exists: Literal[True] | None = None
    same_as_source: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if value == SAME_AS_SOURCE:
            return {SAME_AS_SOURCE: True}
        if isinstance(value, str):
            raise ValueError(f"'{value}' is not an expectation: write same_as_source or a mapping like {{min: 1}}")
        if isinstance(value, dict) and not value:
            raise ValueError(f"expect nothing? give one of {', '.join(EXPECTATIONS)}")
        return value

    @property
    def given(self) -> set[str]:
        """The expectations this one holds, by name."""
        given = {name for name in EXPECTATIONS if name in self.model_fields_set and getattr(self, name) is not None}
        return given - ({SAME_AS_SOURCE} if not self.same_as_source else set())


def _fits(expect: Expect, allowed: tuple[str, ...], what: str) -> Expect:
    wrong = sorted(expect.given - set(allowed))
    if wrong:
        raise ValueError(f"{', '.join(wrong)} does not fit {what}; it takes: {', '.join(allowed)}")
    return expect


class CheckBase(Frozen):
    name: Name  # unique within its source (or drill); the drill step is "check:<name>"
    tolerance: Annotated[float, Field(ge=0)] | None = None  # relative, for numbers: 0.01 is 1%
    at_backup: bool = False  # also run against the source at backup time; failing flags the snapshot suspicious

    def _tolerance_fits(self, expect: Expect) -> None:
        if self.tolerance is not None and not expect.given & {"same_as_source", "equals"}:
            raise ValueError("tolerance applies to same_as_source or equals only")


class ClickHouseCheck(CheckBase):
    """A query on the restored copy (names of the source's databases point at the copy), read-only."""

    sql: str
    expect: Expect

    @model_validator(mode="after")
    def _shape(self) -> ClickHouseCheck:
        if not self.sql.strip():
            raise ValueError("sql is empty: write the query whose result the copy must give")
        _fits(self.expect, ("equals", "min", "max", "rows_min", "same_as_source"), "a ClickHouse query")
        self._tolerance_fits(self.expect)
        return self


class KubernetesObjectRef(Frozen):
    resource: Annotated[str, Field(min_length=1)]
    namespace: str | None = None  # None: a cluster-scoped object (namespaces, nodes...)
    name: Annotated[str, Field(min_length=1)]


class EtcdCheck(CheckBase):
    """A key or a prefix (``{min: N}`` keys) that must exist, a Kubernetes object, or a prefix's key
    count the same as when the snapshot was taken."""

    key: Annotated[str, Field(min_length=1)] | None = None
    prefix: Annotated[str, Field(min_length=1)] | None = None
    kubernetes: KubernetesObjectRef | None = None
    expect: Expect = Expect(exists=True)

    @model_validator(mode="after")
    def _shape(self) -> EtcdCheck:
        named = [field for field in ("key", "prefix", "kubernetes") if getattr(self, field) is not None]
        if len(named) != 1:
            raise ValueError("give exactly one of key, prefix or kubernetes")
        if self.prefix is not None:
            _fits(self.expect, ("exists", "min", "same_as_source"), "a prefix (its key count)")
        else:
            _fits(self.expect, ("exists",), f"a {named[0]} (it exists or not)")
        self._tolerance_fits(self.expect)
        return self


class S3Check(CheckBase):
    """An object (``bucket/key``) that must exist or hold the bytes it held at backup time, or a
    prefix (``bucket/prefix``) with a minimum of objects or bytes."""

    object: str | None = None
    prefix: str | None = None
    expect: Expect = Expect(exists=True)

    @model_validator(mode="after")
    def _shape(self) -> S3Check:
        if (self.object is None) == (self.prefix is None):
            raise ValueError("give exactly one of object (bucket/key) or prefix (bucket/prefix)")
        path = self.object if self.object is not None else self.prefix
        bucket, _, rest = (path or "").partition("/")
        if not bucket or (self.object is not None and not rest):
            raise ValueError(f"'{path}' must start with a bucket: bucket/key, like models/resnet/weights.bin")
        if self.object is not None:
            _fits(self.expect, ("exists", "same_as_source"), "an object")
            if self.at_backup and self.expect.same_as_source:
                raise ValueError("an object's SHA-256 is taken with the snapshot itself: at_backup adds nothing")
        else:
            _fits(self.expect, ("exists", "min", "min_bytes"), "a prefix (its objects and bytes)")
        self._tolerance_fits(self.expect)
        return self

    @property
    def bucket(self) -> str:
        return (self.object or self.prefix or "").partition("/")[0]

    @property
    def key(self) -> str:
        """The object's key, or the prefix within the bucket."""
        return (self.object or self.prefix or "").partition("/")[2]


def _argv(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(f"command must be a list of arguments, not a string: write [{', '.join(value.split())}]")
    return value


class CommandCheck(Frozen):
    """A program the team writes, run against the drill's restored copies (README "Drill checks")."""

    name: Name
    command: Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_argv), Field(min_length=1)]
    timeout: Duration = timedelta(minutes=5)
    image: str | None = None  # Kubernetes scratch: the image the check's Job runs
    sources: list[str] | None = None  # the copies it needs (None: every source of the drill)

    @model_validator(mode="after")
    def _positive(self) -> CommandCheck:
        if self.timeout.total_seconds() <= 0:
            raise ValueError("timeout must be a positive duration like 2m")
        return self


SourceCheck = ClickHouseCheck | EtcdCheck | S3Check


class ReferenceFrom(Frozen):
    """Where a ``references`` check takes its values, in one restored copy of the drill: a ClickHouse
    query's first column (``sql``), the ``field`` (a dotted path) of the JSON or YAML values under an
    etcd ``prefix``, or an S3 listing (``prefix``: ``bucket/prefix``; values ``s3://bucket/key``).
    Which fits which kind: ``policies.checks``."""

    source: Name
    sql: str | None = None
    prefix: str | None = None
    field: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ReferenceFrom:
        if (self.sql is None) == (self.prefix is None):
            raise ValueError("give sql (a ClickHouse query) or prefix (an etcd prefix with field, or an S3 bucket/prefix)")
        if self.sql is not None and (not self.sql.strip() or self.field is not None):
            raise ValueError("sql takes the query's first column: write the query, and no field")
        return self


class ReferenceTo(Frozen):
    """The restored copy each value must exist in: an S3 member (``s3://bucket/key`` or ``bucket/key``:
    an object; a bare name: a bucket of its snapshot), an etcd member (a key), a ClickHouse member (a
    table, ``database.table`` or ``table``)."""

    source: Name


class References(Frozen):
    origin: Annotated[ReferenceFrom, Field(alias="from")]
    to: ReferenceTo


class ReferencesCheck(Frozen):
    """A cross-source check of a drill: every value ``from`` one restored copy must exist in the
    restored copy of another (``to``); the first 20 missing are named, all are counted."""

    name: Name
    references: References


# ---- sources ----------------------------------------------------------------------------------


class SourceSettingsBase(Frozen):
    schedule: Cron | None = None
    retention: Retention | None = None
    anomaly: AnomalyGuard = AnomalyGuard()


class EtcdTls(Frozen):
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> EtcdTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key for client authentication, or neither")
        return self


class EtcdSettings(SourceSettingsBase):
    kind: Literal["etcd"]
    endpoints: Annotated[list[HttpUrl], Field(min_length=1)]
    tls: EtcdTls | None = None
    user: str | None = None
    password: Secret | None = None
    etcdctl: str = "etcdctl"
    timeout: Duration = timedelta(minutes=5)
    checks: list[EtcdCheck] = []


class TableFilter(Frozen):
    include: list[str] = ["*"]
    exclude: list[str] = []


class ClickHouseSettings(SourceSettingsBase):
    kind: Literal["clickhouse"]
    host: str
    port: Port = 9000
    http_port: Port = 8123
    secure: bool = False
    user: str = "default"
    password: Secret = SecretStr("")
    databases: Annotated[list[str], Field(min_length=1)]
    tables: TableFilter = TableFilter()
    strategy: Literal["auto", "native", "logical"] = "auto"
    native_endpoint_url: HttpUrl | None = Field(
        default=None, description="the repository's S3 endpoint as the ClickHouse server reaches it (native only)"
    )
    parallel: Annotated[int, Field(ge=1, le=64)] = 4
    timeout: Duration = timedelta(hours=2)
    max_consistency_window: Duration | None = Field(
        default=None,
        description="fail a logical backup whose tables were read further apart than this (see the manifest's consistency)",
    )
    checks: list[ClickHouseCheck] = []


class S3Settings(SourceSettingsBase, S3Connection):
    kind: Literal["s3"]
    endpoint_url: HttpUrl | None = None
    buckets: Annotated[list[str], Field(min_length=1)]
    include: list[str] = []
    exclude: list[str] = []
    parallel: Annotated[int, Field(ge=1, le=256)] = 16
    tags: bool = Field(
        default=True,
        description="read every object's tags at every snapshot (one s3:GetObjectTagging each); false: tags are "
        "neither kept nor restored, and verification says they were not covered",
    )
    checks: list[S3Check] = []


SourceSettings = Annotated[EtcdSettings | ClickHouseSettings | S3Settings, Field(discriminator="kind")]


# ---- restore points ---------------------------------------------------------------------------


def _members(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("a restore point needs its member sources: list them, like [k8s-etcd, features, models]")
    return value


class RestorePoint(Frozen):
    """Sources snapshotted together, as one moment of the platform (README "Restore points").

    Which member sources exist, and that none is listed twice: ``policies.checks``."""

    sources: Annotated[list[Name], BeforeValidator(_members)]
    schedule: Cron | None = None
    retention: Retention | None = None  # of the restore points; None: every one is kept


# ---- scratch ----------------------------------------------------------------------------------


class ClickHouseEndpoint(Frozen):
    host: str
    port: Port = 9000
    http_port: Port = 8123
    secure: bool = False
    user: str = "default"
    password: Secret = SecretStr("")
    database_prefix: Name = "lifeboat_drill_"


class ScratchS3(S3Connection):
    bucket_prefix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,40}$")] = "lifeboat-drill-"


class LocalScratch(Frozen):
    workdir: Path = Path("/var/lib/lifeboat/scratch")
    etcd_bin: str = "etcd"
    clickhouse: ClickHouseEndpoint | None = None
    s3: ScratchS3 | None = None


class KubernetesImages(Frozen):
    etcd: str = "registry.k8s.io/etcd:3.5.15-0"
    clickhouse: str = "clickhouse/clickhouse-server:24.8"
    minio: str = "minio/minio:RELEASE.2024-10-13T13-34-11Z"


class KubernetesLimits(Frozen):
    """The LimitRange of a drill namespace: what a container gets when it asks for nothing."""

    default_cpu: str = "2"
    default_memory: str = "4Gi"
    default_request_cpu: str = "250m"
    default_request_memory: str = "512Mi"


class RestoreCredentials(Frozen):
    """An S3 key pair the etcd restore pods of a drill read the repository with (instead of the
    repository's own): grant it reads, and writes under ``locks/`` only (a restore holds a shared
    lock), so a drill namespace can never delete a backup (deploy/README.md has a MinIO policy)."""

    access_key_id: Secret
    secret_access_key: Secret


class KubernetesScratch(Frozen):
    namespace_prefix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}-$")] = "lifeboat-drill-"
    images: KubernetesImages = KubernetesImages()
    lifeboat_image: str = "ghcr.io/lifeboat/lifeboat:latest"  # the etcd restore init container's image
    restore_credentials: RestoreCredentials | None = None  # None: the repository's own key pair
    ttl: Duration = timedelta(hours=6)
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False  # use the pod's service account instead of a kubeconfig
    access: Literal["port-forward", "service-dns"] = "port-forward"
    # ResourceQuota ``spec.hard`` of a drill namespace, and its LimitRange defaults.
    quota: dict[str, str] = {
        "requests.cpu": "4",
        "requests.memory": "16Gi",
        "limits.cpu": "8",
        "limits.memory": "32Gi",
        "requests.storage": "200Gi",
        "persistentvolumeclaims": "10",
        "pods": "20",
    }
    limits: KubernetesLimits = KubernetesLimits()
    storage: str = "20Gi"  # each restored copy's PVC
    storage_class: str | None = None
    ready_timeout: Duration = timedelta(minutes=10)
    teardown_timeout: Duration = timedelta(minutes=5)
    # The janitor: namespaces where it deletes finished pods and Jobs older than ``finished_max_age``.
    janitor_namespaces: list[Name] = []
    finished_max_age: Duration = timedelta(hours=24)


class ScratchJanitor(Frozen):
    """When ``lifeboat serve`` runs the janitor (``lifeboat janitor``): leftovers of dead drill runs,
    expired drill namespaces, old finished pods and Jobs of ``kubernetes.janitor_namespaces``."""

    schedule: Cron | None = None


class Scratch(Frozen):
    kind: Literal["local", "kubernetes"] = "local"
    local: LocalScratch = LocalScratch()
    kubernetes: KubernetesScratch = KubernetesScratch()
    janitor: ScratchJanitor = ScratchJanitor()


# ---- executor ---------------------------------------------------------------------------------

_DNS_LABEL = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
DnsLabel = Annotated[str, Field(pattern=_DNS_LABEL)]
SHARDABLE_KINDS = ("s3", "clickhouse")  # by bucket, by table (backup/repository/parts.py)
MAX_SHARDS = 64
ShardCount = Annotated[int, Field(ge=1, le=MAX_SHARDS)]


class ExecutorResources(Frozen):
    """A backup Job container's ``resources``: like the scheduler's in deploy/kubernetes."""

    requests: dict[str, str] = {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"}
    limits: dict[str, str] = {"memory": "2Gi", "ephemeral-storage": "12Gi"}


class KubernetesExecutor(Frozen):
    """Where and how ``lifeboat serve`` runs a backup as a ``batch/v1`` Job (lifeboat.executor)."""

    namespace: DnsLabel = "lifeboat"
    image: str = "lifeboat:0.1.0"
    service_account: DnsLabel = "lifeboat-runner"  # no API rights, no token: it only moves data
    policy_configmap: DnsLabel = "lifeboat-policy"  # key lifeboat.yaml, mounted at /etc/lifeboat/lifeboat.yaml
    secret: DnsLabel = "lifeboat-secrets"  # every key mounted as /etc/lifeboat/secrets/<key>
    run_as_user: Annotated[int, Field(ge=1)] = 10001  # the image's `lifeboat` user (deploy/docker/Dockerfile)
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] = 86400
    backoff_limit: Annotated[int, Field(ge=0, le=10)] = 0  # a failed run is recorded; the next schedule retries
    active_deadline: Duration = timedelta(hours=6)
    poll_interval: Duration = timedelta(seconds=10)
    tmp_size: str = "10Gi"  # the emptyDir at /tmp where snapshots are staged
    resources: ExecutorResources = ExecutorResources()
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False  # use the pod's service account instead of a kubeconfig
    # {source: N}: the source's run is N Jobs in parallel (S3 by bucket, ClickHouse by table), merged
    # into one snapshot; 1 (or absent) is one Job. Rules across the file: policies.checks.
    shards: dict[Name, ShardCount] = {}

    @model_validator(mode="after")
    def _positive_times(self) -> KubernetesExecutor:
        if self.active_deadline.total_seconds() < 1 or self.poll_interval.total_seconds() <= 0:
            raise ValueError("active_deadline and poll_interval must be positive durations")
        return self


class Executor(Frozen):
    """Where a scheduled backup runs: in the service's process (``local``) or as a Kubernetes Job."""

    kind: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesExecutor = KubernetesExecutor()


# ---- drills -----------------------------------------------------------------------------------


class SnapshotSelector(Frozen):
    """Which snapshot a drill restores: the newest, a random one of a recent window, or one id."""

    latest: bool = False
    random_within: Duration | None = None
    snapshot_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"random-within"}:
            return {"random_within": value["random-within"]}
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text == "latest":
            return {"latest": True}
        kind, sep, rest = text.replace(":", " ", 1).partition(" ")
        if kind == "random-within" and sep:
            return {"random_within": rest.strip()}
        if SNAPSHOT_ID.match(text):
            return {"snapshot_id": text}
        raise ValueError(f"'{text}' is not 'latest', 'random-within: <duration>' or a snapshot id")

    def describe(self) -> str:
        if self.latest:
            return "latest"
        if self.random_within is not None:
            return f"random-within: {format_duration(self.random_within)}"
        return str(self.snapshot_id)


def _known_fault(value: str) -> str:
    if value not in FAULTS:
        raise ValueError(f"unknown fault '{value}'; known faults: {', '.join(FAULTS)}")
    return value


class Objectives(Frozen):
    rto: Duration
    rpo: Duration


class DriftThresholds(Frozen):
    """When a drill's ``drift`` step calls a snapshot short: it holds markedly less than BOTH the live
    source now and the previous good snapshot, in total or in one group (bucket, table, etcd
    resource / prefix / namespace). Markedly: short by more than ``max_missing_fraction`` of the
    smaller of the two AND by at least ``min_missing_items`` objects / rows / keys (``min_missing_bytes``
    for bytes), so that a handful of items in a small group is not an alarm. ``ignore``: group names
    (globs, e.g. ``events`` for Kubernetes events, which expire on their own) left out of the groups
    compared; totals are always compared."""

    max_missing_fraction: Annotated[float, BeforeValidator(_fraction), Field(gt=0, lt=1)] = 0.1
    min_missing_items: Annotated[int, Field(ge=1)] = 10
    min_missing_bytes: Annotated[int, Field(ge=1)] = 1024 * 1024
    ignore: list[str] = []


# A drill check is a command or a references check, told apart by its fields. The tags are no field
# names (the loader leaves them out of an error's path).
UNION_TAGS = ("command check", "references check")


def _drill_check_kind(value: Any) -> str:
    return UNION_TAGS[1] if isinstance(value, dict) and "references" in value else UNION_TAGS[0]


DrillCheck = Annotated[
    Annotated[CommandCheck, Tag(UNION_TAGS[0])] | Annotated[ReferencesCheck, Tag(UNION_TAGS[1])],
    Discriminator(_drill_check_kind),
]


class Drill(Frozen):
    """``sources``, or ``restore_point``: a restore point's members, restored from one restore point
    (its member list is filled in as ``sources`` when the policy is read)."""

    schedule: Cron | None = None
    sources: list[str] = []
    restore_point: Name | None = None
    snapshot: SnapshotSelector = SnapshotSelector(latest=True)
    objectives: Objectives
    faults: list[Annotated[str, AfterValidator(_known_fault)]] = []
    notify: list[str] = []
    drift: DriftThresholds = DriftThresholds()
    checks: list[DrillCheck] = []  # run after every source, against all the restored copies

    @model_validator(mode="after")
    def _something_to_restore(self) -> Drill:
        if not self.sources and self.restore_point is None:
            raise ValueError("give sources: [NAME, ...] or restore_point: NAME (what the drill restores)")
        return self


# ---- notify -----------------------------------------------------------------------------------


class Smtp(Frozen):
    host: str
    port: Port = 587
    starttls: bool = True
    ssl: bool = False
    user: str | None = None
    password: Secret | None = None
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _one_tls(self) -> Smtp:
        if self.ssl and self.starttls:
            raise ValueError("choose one of ssl (implicit TLS, port 465) and starttls (port 587)")
        return self


def _event(value: str) -> str:
    if value not in NOTIFY_EVENTS:
        raise ValueError(f"unknown event '{value}'; known events: {', '.join(NOTIFY_EVENTS)}")
    return value


Events = list[Annotated[str, AfterValidator(_event)]]
_ADDRESS = r"^[^@\s]+@[^@\s]+$"


class EmailNotifier(Frozen):
    kind: Literal["email"]
    smtp: Smtp
    sender: Annotated[str, Field(alias="from", pattern=_ADDRESS)]
    to: Annotated[list[Annotated[str, Field(pattern=_ADDRESS)]], Field(min_length=1)]
    on: Events = ["drill", "backup-failure"]


class WebhookNotifier(Frozen):
    kind: Literal["webhook"]
    url: HttpUrl
    headers: dict[str, Secret] = {}
    timeout: Duration = timedelta(seconds=10)
    on: Events = ["drill", "backup-failure"]


def _notification_url(value: Secret) -> Secret:
    """An apprise URL written inline must at least be ``scheme://...``; one in a file is read when used."""
    if isinstance(value, SecretStr) and not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", value.get_secret_value()):
        raise ValueError("not a notification URL like slack://..., msteams://..., ntfys://ntfy.sh/topic")
    return value


class AppriseNotifier(Frozen):
    """The team's chat and paging channels by URL (Slack, Teams, Telegram, ntfy, PagerDuty, Opsgenie...),
    sent through apprise; each URL is a secret (inline, ``${ENV}`` or ``{file: PATH}``), masked everywhere."""

    kind: Literal["apprise"]
    urls: Annotated[list[Annotated[Secret, AfterValidator(_notification_url)]], Field(min_length=1)]
    timeout: Duration = timedelta(seconds=10)
    on: Events = ["drill-failure", "backup-failure", "check-failure", "suspicious", "state-damaged"]


def _ping_url(value: Secret | None) -> Secret | None:
    if isinstance(value, SecretStr):
        _http_url(value.get_secret_value())
    return value


PingUrl = Annotated[Secret | None, AfterValidator(_ping_url)]


class PingNotifier(Frozen):
    """A dead man's switch (healthchecks.io style): each chosen job pings ``start`` when it begins and
    ``success`` or ``fail`` when it ends. ``url`` alone means ``url/start``, ``url``, ``url/fail``.
    ``jobs`` are job ids or patterns: ``backup:*``, ``backup:etcd``, ``prune``, ``check``, ``drill:*``."""

    kind: Literal["ping"]
    url: PingUrl = None
    start: PingUrl = None
    success: PingUrl = None
    fail: PingUrl = None
    jobs: Annotated[list[str], Field(min_length=1)] = ["*"]
    timeout: Duration = timedelta(seconds=10)

    @property
    def on(self) -> list[str]:
        """A ping follows jobs, not events: it receives no notification."""
        return []

    @model_validator(mode="after")
    def _somewhere(self) -> PingNotifier:
        if self.url is None and self.success is None:
            raise ValueError("give url (https://hc-ping.com/<uuid>) or at least success (and start, fail)")
        return self


Notifier = Annotated[EmailNotifier | WebhookNotifier | AppriseNotifier | PingNotifier, Field(discriminator="kind")]


# ---- the whole file ---------------------------------------------------------------------------


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{value}' is not host:port, like 127.0.0.1:9464")
    return value


class Service(Frozen):
    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:9464"
    misfire_grace: Duration = timedelta(minutes=10)
    stop_timeout: Duration = timedelta(minutes=2)


class Evidence(Frozen):
    """Signed, chained evidence records of drill runs (``drills.evidence``): ``signing_key`` is the
    Ed25519 private key (PEM) that ``lifeboat evidence keygen`` writes, a secret like the others.
    Without it no record is written (never an unsigned one)."""

    signing_key: Secret | None = None


class Policy(Frozen):
    repository: Repository = Repository()
    state: Path = Path("/var/lib/lifeboat/state.db")
    service: Service = Service()
    sources: dict[Name, SourceSettings] = Field(min_length=1)
    restore_points: dict[Name, RestorePoint] = {}
    scratch: Scratch = Scratch()
    executor: Executor = Executor()
    drills: dict[Name, Drill] = {}
    notify: dict[Name, Notifier] = {}
    evidence: Evidence = Evidence()

    @model_validator(mode="before")
    @classmethod
    def _restore_point_drills(cls, data: Any) -> Any:
        """A drill of a restore point restores its members: they become its ``sources`` (an undefined
        restore point, or ``sources`` given too, is reported by ``policies.checks``)."""
        if not isinstance(data, dict) or not isinstance(data.get("drills"), dict):
            return data
        points = data.get("restore_points")
        points = points if isinstance(points, dict) else {}
        drills = dict(data["drills"])
        for name, drill in drills.items():
            if not isinstance(drill, dict) or "sources" in drill:
                continue
            point = points.get(drill.get("restore_point"))
            members = point.get("sources") if isinstance(point, dict) else None
            if isinstance(members, list):
                drills[name] = {**drill, "sources": list(members)}
        return {**data, "drills": drills}

    def secret_values(self) -> list[str]:
        """Every secret the file holds, so that logs and errors can mask it wherever it appears."""
        found: list[str] = []
        _collect_secrets(self, found)
        return sorted({value for value in found if value})


def secrets_of(*nodes: Any) -> list[str]:
    """Every secret value held anywhere in ``nodes`` (parts of a policy)."""
    found: list[str] = []
    for node in nodes:
        _collect_secrets(node, found)
    return sorted({value for value in found if value})


def _collect_secrets(node: Any, found: list[str]) -> None:
    if isinstance(node, SecretStr):
        found.append(node.get_secret_value())
    elif isinstance(node, SecretFile):
        with contextlib.suppress(ConfigError):  # unreadable here: whoever reads it later says so
            found.append(reveal(node) or "")
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            _collect_secrets(getattr(node, name), found)
    elif isinstance(node, dict):
        for value in node.values():
            _collect_secrets(value, found)
    elif isinstance(node, list | tuple):
        for value in node:
            _collect_secrets(value, found)
