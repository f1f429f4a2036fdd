"""The drill runner with a fake source and a fake scratch environment (no servers): which steps it
records, with which verdicts, and that the scratch targets are released whatever happens."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from policy_builder import PolicyBuilder

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.sources.base import RestoreOptions, RestoreResult, Verdict, Verification
from drills.model import DrillRun, Status
from drills.runner import run_drill
from drills.scratch.base import CommandRun
from drills.scratch.local.environment import run_here
from policies.errors import IntegrityError, RestoreError
from policies.loader import parse_policy
from policies.model import CommandCheck, Policy

SOURCE = "k8s-etcd"
SOURCE_STEPS = [
    "select-snapshot",
    "rpo",
    "provision",
    "restore",
    "rto",
    "verify",
    "drift",
    "fault:verifier-canary",
    "teardown",
]


@dataclass
class FakeSlot:
    """A scratch target that only remembers what was done to it."""

    label: str
    kind: str = "etcd"
    tampered: bool = False
    released: bool = False

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        return RestoreOptions.of(yes=yes)

    def after_restore(self) -> None:
        pass

    def verify_target(self) -> Any | None:
        return self

    def interrupt(self) -> str:
        return "nothing to kill"

    def stage_disaster(self) -> str:
        return "nothing to destroy"

    def tampers(self) -> dict[str, Callable[[], str]]:
        return {"change-key": self._tamper}

    def _tamper(self) -> str:
        self.tampered = True
        return f"changed one key of {self.label}"

    def release(self) -> None:
        self.released = True


@dataclass
class FakeScratch:
    run_id: str = "20261128t120000z-beef"
    slots: list[FakeSlot] = field(default_factory=list)
    torn_down: bool = False

    def command_view(self, slot: Any) -> Any:
        return slot

    def run_command(self, check: CommandCheck, env: dict[str, str]) -> CommandRun:
        return run_here(check, env)

    def slot(self, source: str, kind: str, header: SnapshotHeader, *, killable: bool = False) -> FakeSlot:
        made = FakeSlot(f"scratch slot {len(self.slots)} for {source}", kind)
        self.slots.append(made)
        return made

    def teardown(self) -> list[str]:
        self.torn_down = True
        return [slot.label for slot in self.slots]


class FakeSource:
    """An etcd source whose restore and verification say what the test wants: ``restore_error`` is
    raised by the restore; ``verdict`` is what verification finds on an untouched copy (a tampered
    one is a mismatch unless ``blind``)."""

    kind: ClassVar[str] = "etcd"

    def __init__(
        self, name: str, *, verdict: Verdict = Verdict.MATCH, restore_error: Exception | None = None, blind: bool = False
    ) -> None:
        self.name = name
        self.verdict = verdict
        self.restore_error = restore_error
        self.blind = blind
        self.restored: list[FakeSlot] = []

    def snapshot(self, writer: Any, previous: Any, *, progress: Any = None) -> Any:
        raise AssertionError("a drill never snapshots")

    def parse_target(self, options: RestoreOptions) -> RestoreOptions:
        return options

    def restore(
        self, repository: Repository, header: SnapshotHeader, target: Any, *, options: RestoreOptions, progress: Any = None
    ) -> RestoreResult:
        if self.restore_error is not None:
            raise self.restore_error
        return RestoreResult(self.name, header.id, "scratch", False, 0.01, 1234, {"keys": 3})

    def census(self) -> dict[str, Any]:
        return {"totals": {"keys": 3}}  # the live source holds what the snapshot holds

    def verify(self, header: SnapshotHeader, target: Any, *, repository: Repository | None = None) -> Verification:
        if isinstance(target, FakeSlot) and target.tampered and not self.blind:
            return Verification(Verdict.MISMATCH, "1 key differs", ["/registry/pods/default/a"])
        return Verification(self.verdict, f"verification says {self.verdict.value}")


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Repository]:
    """A local repository holding one good snapshot of the source, taken just now."""
    with Repository.init(LocalStore(tmp_path / "repo")) as repository:
        with repository.begin_snapshot(SOURCE, "etcd") as writer:
            stored = writer.write_stream(io.BytesIO(b"etcd snapshot bytes" * 100))
            writer.add(Entry("snapshot.db", stored.size, stored.sha256, stored.chunks))
            writer.commit(status="good", fingerprint={"revision": 7}, census={"totals": {"keys": 3}})
        yield repository


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    built = PolicyBuilder(tmp_path / "repo", state=tmp_path / "state.db")
    built.source(SOURCE, "etcd", endpoints=["http://127.0.0.1:1"])
    objectives = {"rto": "30m", "rpo": "1h"}
    built.drill("nightly", sources=[SOURCE], objectives=objectives, faults=["verifier-canary"])
    return parse_policy(built.text(), label="test.yaml", env={})


def drill(policy: Policy, repository: Repository, source: FakeSource, scratch: FakeScratch) -> DrillRun:
    return run_drill(policy, "nightly", repository=repository, scratch=scratch, make_source=lambda name, settings: source)


def verdicts(run: DrillRun) -> dict[str, Status]:
    [source] = run.sources
    return {step.name: step.verdict for step in source.steps}


def message(run: DrillRun, name: str) -> str:
    return next(step.message for step in run.sources[0].steps if step.name == name)


def assert_cleaned_up(run: DrillRun, scratch: FakeScratch) -> None:
    """Every slot released, the environment torn down, and both recorded as passing steps."""
    assert scratch.slots and all(slot.released for slot in scratch.slots) and scratch.torn_down
    assert [(step.name, step.verdict) for step in run.steps] == [
        ("lock-repository", Status.PASS),
        ("teardown", Status.PASS),
    ]
    assert verdicts(run)["teardown"] is Status.PASS


def test_a_verified_restore_and_a_caught_canary_pass(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    run = drill(policy, repository, FakeSource(SOURCE), scratch)

    assert run.verdict is Status.PASS and run.sources[0].verdict is Status.PASS
    assert list(verdicts(run)) == SOURCE_STEPS
    assert set(verdicts(run).values()) == {Status.PASS}
    [source] = run.sources
    assert source.snapshot == repository.find_snapshot(SOURCE).id and source.census == {"keys": 3}
    assert source.rto_seconds is not None and source.rpo_seconds is not None and source.rpo_seconds < 3600
    assert "restored 1234 bytes into scratch slot 0" in message(run, "restore")
    assert "change-key: changed one key of scratch slot 0 for k8s-etcd; caught: 1 key differs" in message(
        run, "fault:verifier-canary"
    )
    assert run.finished is not None and all(step.finished >= step.started for step in source.steps)
    assert_cleaned_up(run, scratch)


def test_a_mismatch_fails_the_verify_step_and_the_faults_are_not_run(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    run = drill(policy, repository, FakeSource(SOURCE, verdict=Verdict.MISMATCH), scratch)

    assert run.verdict is Status.FAIL and run.sources[0].verdict is Status.FAIL
    steps = verdicts(run)
    assert list(steps) == SOURCE_STEPS
    assert steps["restore"] is Status.PASS and steps["verify"] is Status.FAIL
    assert "restored data differs from the snapshot: verification says mismatch" in message(run, "verify")
    assert steps["fault:verifier-canary"] is Status.ERROR
    assert "not run" in message(run, "fault:verifier-canary")
    assert [step.name for step in run.sources[0].steps if not step.ran] == ["fault:verifier-canary"]
    assert not scratch.slots[0].tampered
    assert_cleaned_up(run, scratch)


def test_a_restore_that_raises_is_an_error_never_a_pass(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    source = FakeSource(SOURCE, restore_error=RestoreError("the scratch etcd refused the data dir"))
    run = drill(policy, repository, source, scratch)

    assert run.verdict is Status.ERROR and run.sources[0].verdict is Status.ERROR
    steps = verdicts(run)
    assert list(steps) == SOURCE_STEPS  # what never ran is recorded as not run, in its place
    assert steps["restore"] is Status.ERROR and "the scratch etcd refused the data dir" in message(run, "restore")
    not_run = [step for step in run.sources[0].steps if not step.ran]
    assert [step.name for step in not_run] == ["rto", "verify", "fault:verifier-canary"]
    assert all(step.verdict is Status.ERROR and step.message.startswith("not run: ") for step in not_run)
    assert message(run, "rto") == "not run: restore ended in ERROR"
    assert run.sources[0].rto_seconds is None and run.rto_seconds is None
    assert_cleaned_up(run, scratch)


def test_a_damaged_backup_fails_the_restore(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    source = FakeSource(SOURCE, restore_error=IntegrityError("chunk ab12 does not match its hash"))
    run = drill(policy, repository, source, scratch)

    assert run.verdict is Status.FAIL
    assert verdicts(run)["restore"] is Status.FAIL
    assert "the backup itself is damaged: chunk ab12 does not match its hash" in message(run, "restore")
    assert_cleaned_up(run, scratch)


def test_a_blind_verifier_fails_the_canary(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    run = drill(policy, repository, FakeSource(SOURCE, blind=True), scratch)

    assert run.verdict is Status.FAIL
    steps = verdicts(run)
    assert steps["verify"] is Status.PASS and steps["fault:verifier-canary"] is Status.FAIL
    assert "verifier blind" in message(run, "fault:verifier-canary")
    assert_cleaned_up(run, scratch)


def test_an_unverifiable_copy_is_an_error(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    run = drill(policy, repository, FakeSource(SOURCE, verdict=Verdict.UNVERIFIED), scratch)

    assert run.verdict is Status.ERROR
    assert verdicts(run)["verify"] is Status.ERROR and "could not verify" in message(run, "verify")
    assert_cleaned_up(run, scratch)


def test_a_source_whose_scratch_cannot_be_provisioned_lists_what_never_ran(policy: Policy, repository: Repository) -> None:
    scratch = FakeScratch()
    scratch.slot = lambda *args, **kwargs: (_ for _ in ()).throw(OSError("no space left on device"))  # type: ignore[method-assign]
    run = drill(policy, repository, FakeSource(SOURCE), scratch)

    assert run.verdict is Status.ERROR
    steps = run.sources[0].steps
    assert [(step.name, step.ran) for step in steps] == [
        ("select-snapshot", True),
        ("rpo", True),
        ("provision", True),
        ("restore", False),
        ("rto", False),
        ("verify", False),
        ("drift", True),  # needs no scratch copy: the snapshot is still compared with the live source
        ("fault:verifier-canary", False),
    ]
    assert message(run, "verify") == "not run: provision ended in ERROR"
    assert run.sources[0].rto_seconds is None


def test_a_drill_that_cannot_lock_the_repository_shows_every_source_as_not_run(
    policy: Policy, repository: Repository
) -> None:
    with repository.lock("exclusive", "prune (test)", stale_after=3600):
        run = drill(policy, repository, FakeSource(SOURCE), FakeScratch())

    assert run.verdict is Status.ERROR
    [source] = run.sources
    assert source.source == SOURCE and source.kind == "etcd"
    assert [step.name for step in source.steps] == SOURCE_STEPS[:-1]
    assert not any(step.ran for step in source.steps)
    assert all(step.message == "not run: lock-repository ended in ERROR" for step in source.steps)
