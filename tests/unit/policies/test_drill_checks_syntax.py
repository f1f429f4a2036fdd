"""The ``checks:`` syntax of sources and drills (README "Drill checks", a contract like the CLI's):
the issue's example loads as written, and every mistake is reported with its path and line."""

from __future__ import annotations

import textwrap
from datetime import timedelta

import pytest

from policies.errors import ConfigError
from policies.loader import parse_policy
from policies.model import ClickHouseCheck, ClickHouseSettings, EtcdCheck, EtcdSettings, Policy, S3Check, S3Settings

CONTRACT = """
sources:
  features:
    kind: clickhouse
    host: ch-1.ml.svc
    databases: [features]
    checks:
      - name: yesterday-has-rows
        sql: "SELECT count() FROM features.events WHERE d = yesterday()"
        expect: {min: 1}
      - name: same-users
        sql: "SELECT uniqExact(user) FROM features.events"
        expect: same_as_source
        tolerance: 0
        at_backup: true
  models:
    kind: s3
    buckets: [models]
    checks:
      - name: resnet-weights
        object: models/resnet/weights.bin
        expect: same_as_source
      - name: resnet-parts
        prefix: models/resnet/
        expect: {min: 3}
  k8s-etcd:
    kind: etcd
    endpoints: [https://10.0.0.11:2379]
    checks:
      - name: trainer-deployment
        kubernetes: {resource: deployments, namespace: ml, name: trainer}
scratch: {kind: local, local: {clickhouse: {host: ch-scratch}, s3: {endpoint_url: "http://scratch-minio:9000"}}}
drills:
  nightly:
    sources: [features, models, k8s-etcd]
    objectives: {rto: 30m, rpo: 26h}
    checks:
      - name: smoke
        command: [python3, /etc/lifeboat/smoke.py]
        timeout: 2m
        image: registry.corp/ml-smoke:1
"""


def parse(text: str) -> Policy:
    return parse_policy(textwrap.dedent(text), label="lifeboat.yaml", env={})


def issues(text: str) -> dict[str, tuple[str, int | None]]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return {issue.path: (issue.message, issue.line) for issue in caught.value.issues}


def test_the_documented_syntax_loads_as_written() -> None:
    policy = parse(CONTRACT)
    features = policy.sources["features"]
    assert isinstance(features, ClickHouseSettings)
    first, second = features.checks
    assert isinstance(first, ClickHouseCheck) and first.expect.given == {"min"} and first.expect.min == 1
    assert second.expect.same_as_source and second.at_backup and second.tolerance == 0
    models = policy.sources["models"]
    assert isinstance(models, S3Settings)
    weights, parts = models.checks
    assert isinstance(weights, S3Check) and (weights.bucket, weights.key) == ("models", "resnet/weights.bin")
    assert parts.expect.min == 3
    etcd = policy.sources["k8s-etcd"]
    assert isinstance(etcd, EtcdSettings)
    [trainer] = etcd.checks
    assert isinstance(trainer, EtcdCheck) and trainer.expect.given == {"exists"}  # the default expectation
    [smoke] = policy.drills["nightly"].checks
    assert smoke.command == ["python3", "/etc/lifeboat/smoke.py"] and smoke.timeout == timedelta(minutes=2)
    assert smoke.image == "registry.corp/ml-smoke:1"


def test_every_check_mistake_is_reported_with_its_path_and_line() -> None:
    found = issues(
        """
        sources:
          features:
            kind: clickhouse
            host: h
            databases: [features]
            checks:
              - name: empty
                sql: "   "
                expect: {min: 1}
              - name: no-fit
                sql: "SELECT 1"
                expect: {exists: true}
          models:
            kind: s3
            buckets: [models]
            checks:
              - name: no-bucket
                object: weights.bin
          k8s-etcd:
            kind: etcd
            endpoints: [http://x:2379]
            checks:
              - name: rows-of-keys
                prefix: /registry/pods/
                expect: {rows_min: 3}
        drills:
          nightly:
            sources: [features]
            objectives: {rto: 1m, rpo: 1h}
            checks:
              - name: smoke
                command: python3 /etc/smoke.py
        """
    )
    assert found["sources.features.checks[0]"] == (
        "sql is empty: write the query whose result the copy must give",
        8,
    )
    assert found["sources.features.checks[1]"][0].startswith("exists does not fit a ClickHouse query; it takes: equals")
    assert "must start with a bucket: bucket/key" in found["sources.models.checks[0]"][0]
    assert found["sources.k8s-etcd.checks[0]"][0].startswith("rows_min does not fit a prefix")
    assert found["drills.nightly.checks[0].command"] == (
        "command must be a list of arguments, not a string: write [python3, /etc/smoke.py]",
        33,
    )


def test_duplicate_names_a_timeout_over_the_rto_and_an_unknown_source_are_refused() -> None:
    found = issues(
        """
        sources:
          k8s-etcd:
            kind: etcd
            endpoints: [http://x:2379]
            checks:
              - {name: pods, prefix: /registry/pods/}
              - {name: pods, key: /registry/namespaces/ml}
        drills:
          nightly:
            sources: [k8s-etcd]
            objectives: {rto: 1m, rpo: 1h}
            checks:
              - {name: smoke, command: [python3, smoke.py], timeout: 2m, sources: [features]}
              - {name: smoke, command: ["true"]}
        """
    )
    assert (
        found["sources.k8s-etcd.checks[1].name"][0]
        == "duplicate check name 'pods': the drill step check:pods must be unique"
    )
    assert found["drills.nightly.checks[0].timeout"][0].startswith("2m exceeds the drill's RTO objective 1m")
    assert found["drills.nightly.checks[0].sources[0]"][0] == "unknown source 'features'; drill 'nightly' restores: k8s-etcd"
    assert found["drills.nightly.checks[1].name"][0].startswith("duplicate check name 'smoke'")


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"name": "x", "sql": "SELECT 1", "expect": "roughly"}, "'roughly' is not an expectation"),
        ({"name": "x", "sql": "SELECT 1", "expect": {}}, "expect nothing?"),
        ({"name": "x", "sql": "SELECT 1", "expect": {"min": 1}, "tolerance": 0.1}, "tolerance applies to same_as_source"),
        ({"name": "x", "sql": "SELECT 1"}, "required field is missing"),
    ],
)
def test_an_expectation_that_does_not_fit_is_refused(check: dict[str, object], message: str) -> None:
    import yaml

    text = yaml.safe_dump(
        {"sources": {"features": {"kind": "clickhouse", "host": "h", "databases": ["f"], "checks": [check]}}}
    )
    found = issues(text)
    assert any(message in text for text, _ in found.values()), found


def test_a_command_check_without_an_image_is_refused_on_kubernetes_scratch_only() -> None:
    drill = """
        sources:
          k8s-etcd: {kind: etcd, endpoints: ["http://x:2379"]}
        drills:
          nightly:
            sources: [k8s-etcd]
            objectives: {rto: 1h, rpo: 1h}
            checks:
              - {name: smoke, command: [python3, /etc/smoke.py]}
              - {name: listed, command: [kubectl, get, deployments], image: "registry.corp/ml-smoke:1"}
        """
    found = issues(drill.rstrip(" ") + "        scratch: {kind: kubernetes}\n")
    assert found["drills.nightly.checks[0]"][0] == (
        "a command check on kubernetes scratch runs as a Job in the drill namespace: add image: "
        "an image that has python3 (e.g. image: registry.corp/ml-smoke:1)"
    )
    assert list(found) == ["drills.nightly.checks[0]"]
    assert parse(drill).drills["nightly"].checks[0].image is None  # local scratch needs none
