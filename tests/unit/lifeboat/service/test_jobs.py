"""The jobs a policy makes."""

from __future__ import annotations

from lifeboat.notify.ping import job_id
from lifeboat.service.jobs import JOB_RUNNERS, job_specs
from lifeboat.state.records import RunKind
from policies.loader import parse_policy


def test_a_policy_makes_one_job_per_schedule() -> None:
    policy = parse_policy(
        """
        repository: {prune: {schedule: "30 5 * * *"}}
        sources:
          k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], schedule: "*/30 * * * *"}
          unscheduled: {kind: etcd, endpoints: ["http://127.0.0.1:2379"]}
        drills:
          nightly: {schedule: "0 4 * * *", sources: [k8s-etcd], objectives: {rto: 30m, rpo: 26h}}
        scratch: {janitor: {schedule: "15 * * * *"}}
        """,
        label="test.yaml",
        env={},
    )
    assert [(spec.id, spec.kind, spec.name, spec.schedule) for spec in job_specs(policy)] == [
        ("backup:k8s-etcd", RunKind.BACKUP, "k8s-etcd", "*/30 * * * *"),
        ("prune", RunKind.PRUNE, "repository", "30 5 * * *"),
        ("drill:nightly", RunKind.DRILL, "nightly", "0 4 * * *"),
        ("janitor", RunKind.JANITOR, "scratch", "15 * * * *"),
    ]


def test_a_scheduled_restore_point_is_a_job_on_its_schedule_and_an_unscheduled_one_is_not() -> None:
    policy = parse_policy(
        """
        sources:
          k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], schedule: "*/30 * * * *"}
        restore_points:
          platform: {sources: [k8s-etcd], schedule: "0 3 * * *"}
          adhoc: {sources: [k8s-etcd]}
        """,
        label="test.yaml",
        env={},
    )
    assert [(spec.id, spec.kind, spec.name, spec.schedule) for spec in job_specs(policy)] == [
        ("backup:k8s-etcd", RunKind.BACKUP, "k8s-etcd", "*/30 * * * *"),
        ("restore-point:platform", RunKind.RESTORE_POINT, "platform", "0 3 * * *"),
    ]
    assert set(JOB_RUNNERS) == set(RunKind)  # every kind of job has something to run


def test_a_ping_follows_each_job_by_the_id_the_service_gives_it() -> None:
    """A ping notifier's ``jobs: [restore-point:platform]`` must match the restore point's runs."""
    policy = parse_policy(
        """
        repository: {prune: {schedule: "30 5 * * *"}, check: {schedule: "0 6 * * 0"}}
        sources:
          k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"], schedule: "*/30 * * * *"}
        restore_points:
          platform: {sources: [k8s-etcd], schedule: "0 3 * * *"}
        drills:
          nightly: {schedule: "0 4 * * *", sources: [k8s-etcd], objectives: {rto: 30m, rpo: 26h}}
        scratch: {janitor: {schedule: "15 * * * *"}}
        """,
        label="test.yaml",
        env={},
    )
    specs = job_specs(policy)
    assert {spec.kind for spec in specs} == set(RunKind)
    assert [job_id(spec.kind.value, spec.name) for spec in specs] == [spec.id for spec in specs]
