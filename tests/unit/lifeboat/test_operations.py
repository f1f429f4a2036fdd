"""The run bookkeeping every operation shares (``Operations.recorded_run``): a run is recorded from its
start to how it ended, a failure once with its secrets masked, an abort as interrupted and told to nobody."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drills.model import Status
from lifeboat.operations import Operations
from lifeboat.service.abort import JobAborted
from lifeboat.state.history import RunHistory
from lifeboat.state.records import RunKind, RunStatus
from lifeboat.state.source_locks import SourceLocks
from policies.errors import SourceError
from policies.loader import parse_policy

POLICY = """
sources:
  k8s-etcd: {kind: etcd, endpoints: ["http://127.0.0.1:2379"]}
"""


@pytest.fixture
def operations(tmp_path: Path) -> Iterator[Operations]:
    policy = parse_policy(POLICY, label="test.yaml", env={})
    with RunHistory.open(tmp_path / "state.db") as history:
        yield Operations(policy, history, SourceLocks(history.lock_dir), redact=lambda text: text.replace("hunter2", "***"))


def test_a_finished_run_is_recorded_as_the_block_says(operations: Operations) -> None:
    with operations.recorded_run(RunKind.DRILL, "nightly") as run:
        run.finish(Status.FAIL, figures={"rto_seconds": 1.5}, snapshot_id="k8s-etcd-x")
    [record] = operations.history.runs(RunKind.DRILL, "nightly")
    assert (record.status, record.figures, record.snapshot_id, record.origin) == (
        Status.FAIL,
        {"rto_seconds": 1.5},
        "k8s-etcd-x",
        "cli",
    )


def test_a_failure_is_recorded_masked_and_handed_to_its_hook_once(operations: Operations) -> None:
    told: list[tuple[int, str]] = []
    with pytest.raises(SourceError, match="hunter2"):
        with operations.recorded_run(RunKind.BACKUP, "k8s-etcd", on_failure=lambda *args: told.append(args)) as run:
            raise SourceError("etcd refused the password hunter2")
    record = operations.history.run(run.id)
    assert record.status is RunStatus.FAILED and record.error == "etcd refused the password ***"
    assert told == [(run.id, "etcd refused the password ***")] and "seconds" in record.figures


def test_a_drill_that_cannot_finish_is_an_error_not_a_failure(operations: Operations) -> None:
    with pytest.raises(RuntimeError):
        with operations.recorded_run(RunKind.DRILL, "nightly", failed=Status.ERROR) as run:
            raise RuntimeError("scratch gone")
    record = operations.history.run(run.id)
    assert record.status is Status.ERROR and record.error == "RuntimeError: scratch gone"


def test_an_abort_is_interrupted_and_told_to_nobody(operations: Operations) -> None:
    told: list[tuple[int, str]] = []
    with pytest.raises(JobAborted):
        with operations.recorded_run(RunKind.BACKUP, "k8s-etcd", on_failure=lambda *args: told.append(args)) as run:
            raise JobAborted("backup:k8s-etcd: the service is stopping")
    record = operations.history.run(run.id)
    assert record.status is RunStatus.INTERRUPTED and record.error == "aborted: the service stopped" and told == []


def test_what_fails_after_the_run_was_recorded_does_not_rewrite_it(operations: Operations) -> None:
    with pytest.raises(SourceError):
        with operations.recorded_run(RunKind.PRUNE, "repository") as run:
            run.finish(RunStatus.OK, figures={"chunks_deleted": 3})
            raise SourceError("a listing after the run")
    assert operations.history.run(run.id).status is RunStatus.OK


def test_a_block_that_forgets_to_finish_its_run_is_recorded_as_a_failure(operations: Operations) -> None:
    with pytest.raises(AssertionError, match="ended without recording how"):
        with operations.recorded_run(RunKind.JANITOR, "scratch") as run:
            pass
    assert operations.history.run(run.id).status is RunStatus.FAILED
