"""``restore_points:`` in the policy: members are defined sources, each once; schedule and
retention validated like a source's; every mistake named with its path and line."""

from __future__ import annotations

import textwrap

import pytest

from policies.errors import ConfigError
from policies.loader import parse_policy
from policies.model import Policy

SOURCES = """
sources:
  k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"]}
  features: {kind: clickhouse, host: 127.0.0.1, databases: [features]}
  models: {kind: s3, buckets: [models]}
"""


def parse(text: str) -> Policy:
    return parse_policy(SOURCES + textwrap.dedent(text), label="lifeboat.yaml", env={})


def issues(text: str) -> dict[str, tuple[str, int | None]]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {issue.path: (issue.message, issue.line) for issue in caught.value.issues}


def test_a_restore_point_names_its_members_schedule_and_retention() -> None:
    policy = parse(
        """
        restore_points:
          platform:
            sources: [k8s-etcd, features, models]
            schedule: "0 3 * * *"
            retention: {keep_last: 7, keep_daily: 30}
        """
    )
    point = policy.restore_points["platform"]
    assert point.sources == ["k8s-etcd", "features", "models"]
    assert point.schedule == "0 3 * * *"
    assert point.retention is not None and point.retention.keep_last == 7 and point.retention.keep_daily == 30


def test_restore_points_are_optional() -> None:
    assert parse("").restore_points == {}


def test_an_undefined_member_is_named_with_the_sources_defined() -> None:
    found = issues(
        """
        restore_points:
          platform:
            sources: [k8s-etcd, feature]
        """
    )
    message, line = found["restore_points.platform.sources[1]"]
    assert "undefined source 'feature'" in message and "features, k8s-etcd, models" in message
    assert line == 9  # the line of its sources:


def test_an_empty_member_list_says_how_to_fix_it() -> None:
    message, _ = issues("restore_points: {platform: {sources: []}}")["restore_points.platform.sources"]
    assert "needs its member sources" in message and "[k8s-etcd, features, models]" in message


def test_a_member_listed_twice_is_refused() -> None:
    message, _ = issues("restore_points: {platform: {sources: [models, features, models]}}")[
        "restore_points.platform.sources[2]"
    ]
    assert "'models' is listed twice" in message


def test_schedule_retention_and_names_are_validated_like_a_sources() -> None:
    found = issues(
        """
        restore_points:
          platform:
            sources: [models]
            schedule: "0 25 * * *"
            retention: {keep_last: 0}
            keep: forever
          Bad Name:
            sources: [models]
        """
    )
    assert "hour" in found["restore_points.platform.schedule"][0]
    assert "keeps nothing" in found["restore_points.platform.retention"][0]
    assert "unknown field 'keep'" in found["restore_points.platform.keep"][0]
    assert "must be 1-63 lowercase" in found["restore_points.Bad Name"][0]


DRILL = """
scratch:
  local:
    clickhouse: {host: 10.0.0.9}
    s3: {endpoint_url: "http://10.0.0.9:9000"}
restore_points:
  platform: {sources: [k8s-etcd, features, models]}
drills:
  platform-nightly:
    restore_point: platform
    objectives: {rto: 30m, rpo: 26h}
"""


def test_a_drill_of_a_restore_point_restores_its_members() -> None:
    drill = parse(
        DRILL
        + """
    checks:
      - name: model-uris-resolve
        references:
          from: {source: features, sql: "SELECT DISTINCT model_uri FROM features.models"}
          to: {source: models}
      - name: buckets-exist
        references:
          from: {source: k8s-etcd, prefix: /registry/configmaps/ml/, field: data.bucket}
          to: {source: models}
      - {name: smoke, command: [/bin/true]}
"""
    ).drills["platform-nightly"]
    assert drill.restore_point == "platform" and drill.sources == ["k8s-etcd", "features", "models"]
    references = drill.checks[0].references  # type: ignore[union-attr]
    assert references.origin.source == "features" and references.to.source == "models"
    assert drill.checks[2].command == ["/bin/true"]  # type: ignore[union-attr]


def test_drill_restore_point_mistakes_are_named() -> None:
    found = issues(
        DRILL.replace("restore_point: platform", "restore_point: platfrom\n    sources: [models]")
        + """
    checks:
      - name: empty
        references:
          from: {source: features}
          to: {source: models}
"""
    )
    assert "undefined restore point 'platfrom'; defined: platform" in found["drills.platform-nightly.restore_point"][0]
    assert "not both" in found["drills.platform-nightly.sources"][0]
    assert "give sql" in found["drills.platform-nightly.checks[0].references.from"][0]


def test_references_must_join_members_of_the_drill_read_the_way_their_kind_can() -> None:
    found = issues(
        DRILL
        + """
    checks:
      - name: wrong
        references:
          from: {source: models, sql: "SELECT 1"}
          to: {source: billing}
      - name: no-field
        references:
          from: {source: k8s-etcd, prefix: /registry/configmaps/}
          to: {source: models}
"""
    )
    where = "drills.platform-nightly.checks"
    assert (
        "unknown source 'billing'; the drill restores: k8s-etcd, features, models"
        in found[f"{where}[0].references.to.source"][0]
    )
    assert "source 'models' is s3: its values are read with prefix" in found[f"{where}[0].references.from"][0]
    assert "source 'k8s-etcd' is etcd: its values are read with field and prefix" in found[f"{where}[1].references.from"][0]


def test_a_drill_needs_sources_or_a_restore_point() -> None:
    found = issues("drills: {nightly: {objectives: {rto: 30m, rpo: 26h}}}")
    assert "give sources: [NAME, ...] or restore_point: NAME" in found["drills.nightly"][0]
