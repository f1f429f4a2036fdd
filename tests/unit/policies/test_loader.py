"""Policy loading: interpolation, every error at once with path and line, cross-references."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from policies.errors import ConfigError
from policies.loader import load_policy, parse_policy
from policies.model import EtcdSettings, SecretFile, reveal

ETCD = """
sources:
  k8s-etcd:
    kind: etcd
    endpoints: [http://127.0.0.1:2379]
    retention: {keep_last: 3}
"""


def parse(text: str, **env: str):
    return parse_policy(textwrap.dedent(text), label="lifeboat.yaml", env=env)


def issues(text: str, **env: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse(text, **env)
    return {issue.path: issue.message for issue in caught.value.issues}


def test_minimal_file_gets_the_embedded_defaults() -> None:
    policy = parse(ETCD)
    assert policy.repository.url == "file:///var/lib/lifeboat/repo"
    assert policy.repository.prune.grace == timedelta(hours=24)
    assert policy.service.listen == "127.0.0.1:9464"
    source = policy.sources["k8s-etcd"]
    assert isinstance(source, EtcdSettings)
    assert source.retention is not None and source.retention.keep_last == 3


def test_policy_objects_are_frozen() -> None:
    policy = parse(ETCD)
    with pytest.raises(ValueError, match="frozen"):
        policy.sources["k8s-etcd"].schedule = "* * * * *"  # type: ignore[misc]


def test_variables_and_defaults_are_interpolated() -> None:
    policy = parse(
        """
        repository: {url: "s3://backups/${ENV_NAME:-prod}", s3: {access_key_id: "${KEY}", secret_access_key: "$${x}"}}
        sources:
          ch:
            kind: clickhouse
            host: ${CH_HOST}
            port: ${CH_PORT}
            password: ${CH_PASSWORD}
            databases: [features]
        """,
        CH_HOST="ch-1",
        CH_PORT="9440",
        KEY="AKIA",
        CH_PASSWORD="s3cret-pw",
    )
    assert policy.repository.url == "s3://backups/prod"
    assert reveal(policy.repository.s3.secret_access_key) == "${x}"
    source = policy.sources["ch"]
    assert source.kind == "clickhouse" and source.host == "ch-1" and source.port == 9440
    assert "s3cret-pw" in policy.secret_values() and "AKIA" in policy.secret_values()
    assert "s3cret-pw" not in repr(policy)


def test_secret_from_file_is_read_when_used(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    policy = parse(
        f"""
        sources:
          ch: {{kind: clickhouse, host: ch, databases: [f], password: {{file: {secret}}}}}
        """
    )
    password = policy.sources["ch"].password  # type: ignore[union-attr]
    assert isinstance(password, SecretFile) and reveal(password) == "from-file"
    assert "from-file" in policy.secret_values()
    secret.unlink()
    with pytest.raises(ConfigError, match="cannot read this secret file"):
        reveal(password)


def test_every_mistake_is_reported_at_once_with_path_and_line() -> None:
    text = textwrap.dedent(
        """
        sources:
          k8s-etcd:
            kind: etcd
            endpoints: [http://127.0.0.1:2379]
            schedule: "61 * * * *"
            retention: {keep_last: 0}
          features:
            kind: clikhouse
            host: ch
          models:
            kind: s3
            access_key_id: ${MINIO_KEY}
            secret_access_key: ${MINIO_SECRET}
            buckets: [models]
        drills:
          nightly:
            sources: [k8s-etcd, featurez]
            objectives: {rto: 30m, rpo: 26h}
            faults: [meteor]
            notify: [team]
        """
    )
    with pytest.raises(ConfigError) as caught:
        parse_policy(text, label="prod.yaml", env={"MINIO_SECRET": "x"})
    found = {issue.path: (issue.line, issue.message) for issue in caught.value.issues}
    assert found == {
        "sources.k8s-etcd.schedule": (6, "minute field: 61 is out of range 0-59"),
        "sources.k8s-etcd.retention": (7, found["sources.k8s-etcd.retention"][1]),
        "sources.features.kind": (9, "unknown kind 'clikhouse'; known kinds: etcd, clickhouse, s3"),
        "sources.models.access_key_id": (
            13,
            "undefined environment variable ${MINIO_KEY}: export it, or write ${MINIO_KEY:-default}",
        ),
        "drills.nightly.sources[1]": (18, "undefined source 'featurez'; defined: features, k8s-etcd, models"),
        "drills.nightly.faults[0]": (20, found["drills.nightly.faults[0]"][1]),
        "drills.nightly.notify[0]": (21, "undefined notifier 'team'; defined: none"),
    }
    assert "keeps nothing" in found["sources.k8s-etcd.retention"][1]
    assert "unknown fault 'meteor'" in found["drills.nightly.faults[0]"][1]
    rendered = str(caught.value)
    assert rendered.startswith("prod.yaml: 7 errors")
    assert "prod.yaml:9: sources.features.kind: unknown kind 'clikhouse'" in rendered


@pytest.mark.parametrize(
    ("snippet", "path", "fragment"),
    [
        ("repository: {url: 'ftp://x/y'}", "repository", "must start with file:// or s3://"),
        ("repository: {url: 'file://relative/dir'}", "repository", "absolute path"),
        ("repository: {url: 'file:///r', object_lock: {mode: GOVERNANCE, days: 7}}", "repository", "needs an s3://"),
        ("repository: {url: 's3://B_AD/x'}", "repository", "not a valid bucket name"),
        ("repository: {url: 's3://ok-bucket', s3: {access_key_id: a}}", "repository.s3", "give both"),
        ("repository: {url: 's3://ok-bucket', object_lock: {mode: X, days: 7}}", "repository.object_lock.mode", "GOV"),
        ("service: {listen: '9464'}", "service.listen", "host:port"),
        ("state: [1]", "state", "path"),
        ("frobnicate: 1", "frobnicate", "unknown field 'frobnicate'"),
    ],
)
def test_field_errors_name_the_path(snippet: str, path: str, fragment: str) -> None:
    found = issues(ETCD + snippet)
    assert path in found, found
    assert fragment.lower() in found[path].lower()


def test_source_errors() -> None:
    found = issues(
        """
        sources:
          Bad Name: {kind: etcd, endpoints: [http://a:1]}
          e2: {kind: etcd, endpoints: []}
          e3: {kind: etcd, endpoints: ["tcp://x"], tls: {cert: /c}}
          e4: {endpoints: [http://a:1]}
          ch: {kind: clickhouse, host: h, databases: [d], strategy: fast, port: 70000}
          s3: {kind: s3, buckets: [b], anomaly: {shrink: 150%}}
        """
    )
    assert "lowercase" in found["sources.Bad Name"]
    assert "at least 1" in found["sources.e2.endpoints"]
    assert "not an http(s) URL" in found["sources.e3.endpoints[0]"]
    assert "give both cert and key" in found["sources.e3.tls"]
    assert "missing 'kind'" in found["sources.e4"]
    assert "'auto', 'native' or 'logical'" in found["sources.ch.strategy"]
    assert "65535" in found["sources.ch.port"]
    assert "1" in found["sources.s3.anomaly.shrink"]


def test_drill_snapshot_selectors() -> None:
    base = ETCD + "drills:\n  d:\n    sources: [k8s-etcd]\n    objectives: {rto: 30m, rpo: 26h}\n"
    assert parse(base).drills["d"].snapshot.latest
    picked = parse(base + "    snapshot: 'random-within: 7d'\n").drills["d"].snapshot
    assert picked.random_within == timedelta(days=7) and picked.describe() == "random-within: 1w"
    pinned = parse(base + "    snapshot: k8s-etcd-20261128T020000Z-ab12\n").drills["d"].snapshot
    assert pinned.snapshot_id == "k8s-etcd-20261128T020000Z-ab12"
    assert parse(base + "    snapshot: {random-within: 2d}\n").drills["d"].snapshot.random_within == timedelta(days=2)
    assert "not 'latest'" in issues(base + "    snapshot: newest\n")["drills.d.snapshot"]


def test_drill_drift_thresholds_have_defaults_and_are_validated_with_their_paths() -> None:
    base = ETCD + "drills:\n  d:\n    sources: [k8s-etcd]\n    objectives: {rto: 30m, rpo: 26h}\n"
    default = parse(base).drills["d"].drift
    assert (default.max_missing_fraction, default.min_missing_items, default.min_missing_bytes) == (0.1, 10, 1024 * 1024)
    assert default.ignore == []
    given = (
        parse(base + "    drift: {max_missing_fraction: 25%, min_missing_items: 1, ignore: [events]}\n").drills["d"].drift
    )
    assert (given.max_missing_fraction, given.min_missing_items, given.ignore) == (0.25, 1, ["events"])
    found = issues(base + "    drift: {max_missing_fraction: 1, min_missing_items: 0, min_missing: 3}\n")
    assert set(found) == {
        "drills.d.drift.max_missing_fraction",
        "drills.d.drift.min_missing_items",
        "drills.d.drift.min_missing",
    }, found


def test_yaml_on_key_is_not_a_boolean() -> None:
    policy = parse(
        ETCD
        + """
notify:
  team: {kind: email, smtp: {host: smtp, starttls: false}, from: a@b, to: [c@d], on: [suspicious]}
  hook: {kind: webhook, url: "https://hooks/x", on: [drill-failure]}
"""
    )
    assert policy.notify["team"].on == ["suspicious"]
    assert policy.notify["hook"].on == ["drill-failure"]


def test_notifier_errors() -> None:
    found = issues(
        ETCD
        + """
notify:
  team: {kind: email, smtp: {host: smtp, ssl: true}, from: nobody, to: [], on: [everything]}
  pager: {kind: pager}
"""
    )
    assert "choose one of ssl" in found["notify.team.smtp"]
    assert "pattern" in found["notify.team.from"] or "match" in found["notify.team.from"]
    assert "at least 1" in found["notify.team.to"]
    assert "unknown event 'everything'" in found["notify.team.on[0]"]
    assert found["notify.pager.kind"] == "unknown kind 'pager'; known kinds: email, webhook, apprise, ping"


SCRATCH_SOURCES = """
sources:
  features: {kind: clickhouse, host: localhost, port: 9000, databases: ["*"]}
  models: {kind: s3, endpoint_url: "http://minio:9000", buckets: [lifeboat-drill-x, models]}
"""


def test_scratch_target_inside_production_is_refused() -> None:
    found = issues(
        SCRATCH_SOURCES
        + """
scratch:
  local:
    clickhouse: {host: 127.0.0.1, port: 9000}
    s3: {endpoint_url: "http://minio:9000/"}
"""
    )
    assert "would be inside source 'features'" in found["scratch.local.clickhouse"]
    assert "collide with buckets of source 'models'" in found["scratch.local.s3"]


def test_scratch_on_same_server_is_fine_when_the_source_cannot_see_it() -> None:
    policy = parse(
        """
sources:
  features: {kind: clickhouse, host: localhost, databases: [features]}
scratch:
  local: {clickhouse: {host: 127.0.0.1}}
"""
    )
    assert policy.scratch.local.clickhouse is not None


def test_repository_inside_a_backed_up_bucket_is_refused() -> None:
    found = issues(
        SCRATCH_SOURCES.replace('databases: ["*"]', "databases: [f]")
        + "repository: {url: 's3://models/lifeboat', s3: {endpoint_url: 'http://minio:9000'}}\n"
    )
    assert "backs up" in found["repository.url"]


def test_local_drill_needs_a_scratch_server_for_each_kind() -> None:
    found = issues(
        SCRATCH_SOURCES.replace('databases: ["*"]', "databases: [f]")
        + "drills:\n  d: {sources: [features, models], objectives: {rto: 1h, rpo: 1d}}\n"
    )
    assert found == {
        "drills.d.sources[0]": "source 'features' is restored into scratch.local.clickhouse, which is not set",
        "drills.d.sources[1]": "source 'models' is restored into scratch.local.s3, which is not set",
    }


def test_broken_yaml_and_wrong_shapes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse("sources:\n  a: [\n")
    assert caught.value.issues[0].message.startswith("not valid YAML")
    assert caught.value.issues[0].line is not None
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        parse("- a\n- b\n")
    assert "required field is missing" in issues("repository: {}\n")["sources"]
    with pytest.raises(ConfigError, match="no such file"):
        load_policy(tmp_path / "missing.yaml")


def test_secret_fields_hold_secret_strings() -> None:
    policy = parse(ETCD + "notify:\n  h: {kind: webhook, url: 'https://x', headers: {Authorization: Bearer abcdef}}\n")
    header = policy.notify["h"].headers["Authorization"]  # type: ignore[union-attr]
    assert isinstance(header, SecretStr) and "abcdef" not in str(policy.notify)
    assert policy.secret_values() == ["Bearer abcdef"]


def test_a_clickhouse_source_may_require_a_maximum_consistency_window() -> None:
    policy = parse(
        """
        sources:
          ch: {kind: clickhouse, host: h, databases: [d], max_consistency_window: 30s, retention: {keep_last: 3}}
        """
    )
    assert policy.sources["ch"].max_consistency_window == timedelta(seconds=30)
    found = issues(
        """
        sources:
          ch: {kind: clickhouse, host: h, databases: [d], max_consistency_window: soon}
          e: {kind: etcd, endpoints: [http://a:1], max_consistency_window: 30s}
        """
    )
    assert "is not a duration" in found["sources.ch.max_consistency_window"]
    assert "unknown field" in found["sources.e.max_consistency_window"]
