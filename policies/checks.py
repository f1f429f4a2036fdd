"""Rules that relate one part of the policy file to another.

``reference_issues`` works on the raw (interpolated) data, so a drill naming an undefined source is
reported even when some other part of the file does not validate. ``semantic_issues`` needs the
validated ``Policy``: it refuses scratch targets and repository locations that overlap production,
and backup shards (``executor.kubernetes.shards``) that cannot work.
"""

from __future__ import annotations

from collections.abc import Iterator
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlparse

from policies.durations import format_duration
from policies.model import SHARDABLE_KINDS, ClickHouseSettings, Drill, Policy, ReferencesCheck, S3Settings

Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


def reference_issues(data: dict[str, Any]) -> list[Issue]:
    """Drills that name sources or notifiers the file does not define; restore points that name
    undefined sources, or one source twice."""
    sources = _names(data.get("sources"))
    notifiers = _names(data.get("notify"))
    issues: list[Issue] = list(_restore_point_issues(data.get("restore_points"), sources))
    drills = data.get("drills")
    if not isinstance(drills, dict):
        return issues
    for drill_name, drill in drills.items():
        if not isinstance(drill, dict):
            continue
        if "restore_point" in drill:
            points = _names(data.get("restore_points"))
            if drill["restore_point"] not in points:
                known = ", ".join(sorted(points)) or "none"
                where: Loc = ("drills", drill_name, "restore_point")
                issues.append((where, f"undefined restore point '{drill['restore_point']}'; defined: {known}"))
            if "sources" in drill:
                issues.append(
                    (
                        ("drills", drill_name, "sources"),
                        "give sources or restore_point, not both: a drill of a restore point restores its members",
                    )
                )
        for field, defined, what in (("sources", sources, "source"), ("notify", notifiers, "notifier")):
            for i, name in _listed(drill.get(field)):
                if name not in defined:
                    known = ", ".join(sorted(defined)) or "none"
                    issues.append(((("drills", drill_name, field, i)), f"undefined {what} '{name}'; defined: {known}"))
    return issues


def _restore_point_issues(points: Any, sources: set[str]) -> Iterator[Issue]:
    if not isinstance(points, dict):
        return
    for point_name, point in points.items():
        if not isinstance(point, dict):
            continue
        seen: set[str] = set()
        for i, name in _listed(point.get("sources")):
            where: Loc = ("restore_points", point_name, "sources", i)
            if name not in sources:
                known = ", ".join(sorted(sources)) or "none"
                yield where, f"undefined source '{name}'; defined: {known} (a restore point's members are sources)"
            elif name in seen:
                yield where, f"source '{name}' is listed twice: a restore point takes one snapshot of each member"
            seen.add(name)


def semantic_issues(policy: Policy) -> list[Issue]:
    """Overlaps between scratch targets, the repository and production sources; impossible shards."""
    return [
        *_scratch_overlaps(policy),
        *_repository_overlaps(policy),
        *_missing_scratch(policy),
        *_shard_issues(policy),
        *_check_issues(policy),
    ]


def _check_issues(policy: Policy) -> Iterator[Issue]:
    """Drill checks: names unique within a source (and within a drill, whose step names they become),
    a command's timeout within the drill's RTO objective, the sources a command names restored by its drill,
    and on kubernetes scratch the image a command's Job runs."""
    for name, source in policy.sources.items():
        yield from _duplicates(("sources", name, "checks"), [check.name for check in source.checks])
    for drill_name, drill in policy.drills.items():
        where: Loc = ("drills", drill_name, "checks")
        yield from _duplicates(where, [check.name for check in drill.checks])
        rto = drill.objectives.rto
        for i, check in enumerate(drill.checks):
            if isinstance(check, ReferencesCheck):
                yield from _reference_check_issues(policy, drill, (*where, i, "references"), check)
                continue
            if check.timeout > rto:
                yield (
                    (*where, i, "timeout"),
                    f"{format_duration(check.timeout)} exceeds the drill's RTO objective {format_duration(rto)}: "
                    "a check that may run longer than the whole restore is allowed to cannot prove the RTO",
                )
            if policy.scratch.kind == "kubernetes" and check.image is None:
                yield (
                    (*where, i),
                    "a command check on kubernetes scratch runs as a Job in the drill namespace: add image: "
                    f"an image that has {check.command[0]} (e.g. image: registry.corp/ml-smoke:1)",
                )
            for j, needed in enumerate(check.sources or []):
                if needed not in drill.sources:
                    restored = ", ".join(drill.sources)
                    yield (*where, i, "sources", j), f"unknown source '{needed}'; drill '{drill_name}' restores: {restored}"


# What a ``references`` check's ``from`` may say for each kind of member.
_REFERENCE_FROM = {"clickhouse": ("sql",), "etcd": ("prefix", "field"), "s3": ("prefix",)}


def _reference_check_issues(policy: Policy, drill: Drill, where: Loc, check: ReferencesCheck) -> Iterator[Issue]:
    """Both ends are sources the drill restores; ``from`` reads its member the way its kind can."""
    ends = (("from", check.references.origin.source), ("to", check.references.to.source))
    for end, name in ends:
        if name not in drill.sources:
            yield (*where, end, "source"), f"unknown source '{name}'; the drill restores: {', '.join(drill.sources)}"
    origin = check.references.origin
    settings = policy.sources.get(origin.source)
    if settings is None or origin.source not in drill.sources:
        return
    given = {name for name in ("sql", "prefix", "field") if getattr(origin, name) is not None}
    fits = set(_REFERENCE_FROM.get(settings.kind, ()))
    if given != fits:
        wanted = " and ".join(sorted(fits))
        yield (*where, "from"), f"source '{origin.source}' is {settings.kind}: its values are read with {wanted}"


def _duplicates(where: Loc, names: list[str]) -> Iterator[Issue]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            yield (*where, i, "name"), f"duplicate check name '{name}': the drill step check:{name} must be unique"
        seen.add(name)


def _scratch_overlaps(policy: Policy) -> Iterator[Issue]:
    local = policy.scratch.local
    for name, source in policy.sources.items():
        if isinstance(source, ClickHouseSettings) and local.clickhouse is not None:
            scratch = local.clickhouse
            sample = f"{scratch.database_prefix}20260101t000000z_0000"
            same_server = (_host(scratch.host), scratch.port) == (_host(source.host), source.port)
            if same_server and any(fnmatchcase(sample, pattern) for pattern in source.databases):
                yield (
                    ("scratch", "local", "clickhouse"),
                    f"scratch databases '{scratch.database_prefix}*' on {scratch.host}:{scratch.port} would be "
                    f"inside source '{name}' (databases {source.databases}): use another scratch server "
                    "or a database_prefix the source does not match",
                )
        if isinstance(source, S3Settings) and local.s3 is not None:
            scratch_s3 = local.s3
            if _endpoint(scratch_s3.endpoint_url) == _endpoint(source.endpoint_url) and any(
                bucket.startswith(scratch_s3.bucket_prefix) for bucket in source.buckets
            ):
                yield (
                    ("scratch", "local", "s3"),
                    f"scratch buckets '{scratch_s3.bucket_prefix}*' would collide with buckets of source '{name}' "
                    "on the same endpoint: use another scratch endpoint or bucket_prefix",
                )


def _repository_overlaps(policy: Policy) -> Iterator[Issue]:
    repository = policy.repository
    if repository.scheme != "s3":
        return
    for name, source in policy.sources.items():
        if (
            isinstance(source, S3Settings)
            and repository.bucket in source.buckets
            and _endpoint(repository.s3.endpoint_url) == _endpoint(source.endpoint_url)
        ):
            yield (
                ("repository", "url"),
                f"the repository lives in bucket '{repository.bucket}', which source '{name}' backs up: "
                "backups must live outside the system they protect",
            )


def _missing_scratch(policy: Policy) -> Iterator[Issue]:
    """A local drill over a ClickHouse or S3 source needs a scratch server to restore into."""
    if policy.scratch.kind != "local":
        return
    local = policy.scratch.local
    for drill_name, drill in policy.drills.items():
        for i, source_name in enumerate(drill.sources):
            source = policy.sources.get(source_name)
            missing = (isinstance(source, ClickHouseSettings) and local.clickhouse is None and "clickhouse") or (
                isinstance(source, S3Settings) and local.s3 is None and "s3"
            )
            if missing:
                yield (
                    ("drills", drill_name, "sources", i),
                    f"source '{source_name}' is restored into scratch.local.{missing}, which is not set",
                )


def _shard_issues(policy: Policy) -> Iterator[Issue]:
    """Shards need a source that splits (S3 by bucket, ClickHouse logical by table), no more shards
    than an S3 source has buckets, and a prune grace that outlives a run (prune deletes older parts)."""
    executor = policy.executor.kubernetes
    for name, count in executor.shards.items():
        where: Loc = ("executor", "kubernetes", "shards", name)
        source = policy.sources.get(name)
        if source is None:
            yield where, f"undefined source '{name}'; defined: {', '.join(sorted(policy.sources))}"
        elif source.kind not in SHARDABLE_KINDS:
            yield where, f"source '{name}' is {source.kind}: only s3 (by bucket) and clickhouse (by table) sources shard"
        elif isinstance(source, ClickHouseSettings) and source.strategy != "logical":
            yield (
                where,
                f"source '{name}' has strategy {source.strategy}: only logical backups shard (a native backup is one "
                f"server-side BACKUP); set sources.{name}.strategy: logical",
            )
        elif isinstance(source, S3Settings) and count > len(set(source.buckets)):
            yield where, f"{count} shards for {len(set(source.buckets))} bucket(s): a shard takes whole buckets"
    grace = policy.repository.prune.grace
    if any(count > 1 for count in executor.shards.values()) and grace < executor.active_deadline:
        yield (
            ("repository", "prune", "grace"),
            f"{format_duration(grace)} is shorter than executor.kubernetes.active_deadline "
            f"({format_duration(executor.active_deadline)}): prune deletes the parts of a sharded run older than "
            "the grace period as abandoned, and a run may take that long",
        )


def _names(section: Any) -> set[str]:
    return {str(key) for key in section} if isinstance(section, dict) else set()


def _listed(value: Any) -> Iterator[tuple[int, str]]:
    if isinstance(value, list):
        yield from ((i, item) for i, item in enumerate(value) if isinstance(item, str))


def _host(host: str) -> str:
    return "loopback" if host.lower() in _LOOPBACK else host.lower()


def _endpoint(url: str | None) -> tuple[str, int | None] | None:
    if url is None:
        return None  # the AWS default endpoint
    parsed = urlparse(url)
    default = 443 if parsed.scheme == "https" else 80
    return _host(parsed.hostname or ""), parsed.port or default
