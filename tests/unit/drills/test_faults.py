"""The verifier canary: every tamper kind of a source runs on its own verified copy, and one that
verification misses makes the step FAIL as "verifier blind", naming it. A damaged chunk passes only
when the restore refuses it, naming the chunk. Flaky storage passes only when the restore met
failures, retried and verified; a killed target only when the restore failed clearly or verified."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from backup.repository.manifest import Entry, SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.store import LocalStore
from backup.sources.base import Verdict, Verification
from drills.faults import CorruptChunk, FlakyStorage, KillTarget, MissingChunk, VerifierCanary
from drills.model import Status
from drills.steps import Step, step
from policies.errors import IntegrityError, RestoreError


class Copy:
    """A restored copy: ``tampered`` holds what was done to it; ``blind_to`` the tampers the
    verifier of this test cannot see."""

    copies: ClassVar[list[Copy]] = []

    def __init__(self, blind_to: set[str]) -> None:
        self.blind_to = blind_to
        self.tampered: list[str] = []
        self.released = False
        Copy.copies.append(self)

    def tampers(self) -> dict[str, Callable[[], str]]:
        return {name: self._tamper(name) for name in ("value", "schema", "tags")}

    def _tamper(self, name: str) -> Callable[[], str]:
        def apply() -> str:
            self.tampered.append(name)
            return f"changed the {name}"

        return apply

    def release(self) -> None:
        self.released = True


class Context:
    """The part of DrillContext the canary uses."""

    def __init__(self, blind_to: set[str]) -> None:
        self.blind_to = blind_to
        self.main = Copy(blind_to)

    def fresh_slot(self) -> Copy:
        return Copy(self.blind_to)

    def restore(self, slot: Copy) -> None:
        slot.tampered.clear()

    def verify(self, slot: Copy) -> Verification:
        seen = [name for name in slot.tampered if name not in self.blind_to]
        if seen:
            return Verification(Verdict.MISMATCH, f"{', '.join(seen)} differs")
        return Verification(Verdict.MATCH, "match")


def run_canary(blind_to: set[str]) -> tuple[Step, Context]:
    Copy.copies = []
    ctx = Context(blind_to)
    steps: list[Step] = []
    with step(steps, "fault:verifier-canary") as outcome:
        VerifierCanary().run(ctx, outcome)  # type: ignore[arg-type]
    return steps[0], ctx


def test_every_tamper_kind_runs_on_its_own_copy_and_all_caught_pass() -> None:
    record, ctx = run_canary(blind_to=set())
    assert record.verdict is Status.PASS
    assert record.message == (
        "verification caught every tamper kind: value: changed the value; caught: value differs"
        " | schema: changed the schema; caught: schema differs | tags: changed the tags; caught: tags differs"
    )
    assert [copy.tampered for copy in Copy.copies] == [["value"], ["schema"], ["tags"]]
    assert ctx.main.tampered == ["value"] and not ctx.main.released  # the main copy is the drill's to release
    assert all(copy.released for copy in Copy.copies[1:])


@pytest.mark.parametrize("blind", ["value", "tags"])
def test_a_tamper_verification_misses_fails_the_step_naming_it(blind: str) -> None:
    record, _ = run_canary(blind_to={blind})
    assert record.verdict is Status.FAIL
    assert record.message.startswith("verifier blind: ")
    assert f"{blind} (changed the {blind}), yet verification matched" in record.message
    others = {"value", "schema", "tags"} - {blind}
    assert all(other not in record.message for other in others)


def test_a_tamper_that_cannot_be_verified_is_an_error_not_a_pass() -> None:
    class Unverifiable(Context):
        def verify(self, slot: Any) -> Verification:
            if slot.tampered == ["schema"]:
                return Verification(Verdict.UNVERIFIED, "copy unreachable")
            return super().verify(slot)

    Copy.copies = []
    steps: list[Step] = []
    with step(steps, "fault:verifier-canary") as outcome:
        VerifierCanary().run(Unverifiable(set()), outcome)  # type: ignore[arg-type]
    assert steps[0].verdict is Status.ERROR
    assert "schema (changed the schema): verification could not run: copy unreachable" in steps[0].message


# ---- a damaged chunk: the drill's proof can fail -------------------------------------------------


class ChunkContext:
    """The part of DrillContext the damaged-chunk faults use, over a real repository. Its restore reads
    every entry as Lifeboat's restore does (``honest``), swallows what it reads wrong (``blind``), or
    reads nothing (``idle``)."""

    def __init__(self, repository: Repository, header: SnapshotHeader, how: str, verdict: Verdict = Verdict.MATCH) -> None:
        self.repository, self.header, self.how, self.verdict = repository, header, how, verdict

    def fresh_slot(self) -> Copy:
        return Copy(set())

    def restore(self, slot: Copy, *, repository: Repository | None = None) -> None:
        source = repository or self.repository
        if self.how == "idle":
            return
        for entry in source.entries(self.header):
            try:
                source.restore_entry(entry, io.BytesIO(), snapshot=self.header.id)
            except IntegrityError:
                if self.how == "honest":
                    raise

    def verify(self, slot: Copy) -> Verification:
        return Verification(self.verdict, f"the copy: {self.verdict.value}")


def _one_snapshot(tmp_path: Path) -> tuple[Repository, SnapshotHeader, list[Any]]:
    """A repository holding one snapshot of 3 MiB (three chunks); its header and chunks."""
    repository = Repository.init(LocalStore(tmp_path / "repo"))
    with repository.begin_snapshot("src", "test") as writer:
        stored = writer.write_stream(io.BytesIO(os.urandom(3 * 1024 * 1024)))
        writer.add(Entry("blob", stored.size, stored.sha256, stored.chunks))
        header = writer.commit()
    return repository, header, stored.chunks


@pytest.mark.parametrize("fault", [CorruptChunk, MissingChunk])
@pytest.mark.parametrize(
    ("how", "verdict", "message"),
    [
        ("honest", Status.PASS, "restore refused: chunk {chunk}"),
        ("blind", Status.FAIL, "the restore succeeded although chunk {chunk} was"),
        ("idle", Status.ERROR, "chunk {chunk} was never read, so the fault proved nothing"),
    ],
)
def test_a_damaged_chunk_passes_only_when_the_restore_refuses_it_naming_the_chunk(
    tmp_path: Path, fault: type[CorruptChunk | MissingChunk], how: str, verdict: Status, message: str
) -> None:
    repository, header, chunks = _one_snapshot(tmp_path)
    try:
        steps: list[Step] = []
        with step(steps, f"fault:{fault.name}") as outcome:
            fault().run(ChunkContext(repository, header, how), outcome)  # type: ignore[arg-type]
    finally:
        repository.close()
    chunk = chunks[len(chunks) // 2].id
    assert steps[0].verdict is verdict, steps[0].message
    assert message.format(chunk=chunk) in steps[0].message


# ---- flaky storage: retried reads, then a verified copy ------------------------------------------


@pytest.mark.parametrize(
    ("how", "verdict", "status", "message"),
    [
        ("honest", Verdict.MATCH, Status.PASS, "restored and verified through "),
        ("honest", Verdict.MISMATCH, Status.FAIL, "verification failed after the flaky restore: the copy: mismatch"),
        ("honest", Verdict.UNVERIFIED, Status.ERROR, "could not verify after the flaky restore"),
        ("idle", Verdict.MATCH, Status.ERROR, "no read failed, so the retries were never exercised"),
    ],
)
def test_flaky_storage_passes_only_when_reads_failed_were_retried_and_the_copy_verifies(
    tmp_path: Path, how: str, verdict: Verdict, status: Status, message: str
) -> None:
    """Over a real repository whose reads fail (the first two and a share of the rest): a restore
    that reads through them and a copy that verifies is a PASS; a copy that differs, a FAIL; one
    that cannot be verified, or a restore that read nothing, an ERROR."""
    repository, header, _ = _one_snapshot(tmp_path)
    try:
        steps: list[Step] = []
        with step(steps, "fault:flaky-storage") as outcome:
            FlakyStorage().run(ChunkContext(repository, header, how, verdict), outcome)  # type: ignore[arg-type]
    finally:
        repository.close()
    assert steps[0].verdict is status, steps[0].message
    assert message in steps[0].message


# ---- a killed target: a clear failure or a verified copy, never partial data ---------------------


class KillContext:
    """The part of DrillContext kill-target uses. Its restore reports progress ``progress`` times
    and then ends as ``ends``: "ok", or "fails" (a clear RestoreError); ``verdict`` is what
    verifying the copy says."""

    def __init__(self, *, progress: int, ends: str, verdict: Verdict = Verdict.MATCH) -> None:
        self.progress, self.ends, self.verdict = progress, ends, verdict
        self.slot = Copy(set())

    def fresh_slot(self, *, killable: bool = False) -> Any:
        assert killable
        slot = self.slot
        slot.interrupt = lambda: "killed the scratch server"  # type: ignore[attr-defined]
        return slot

    def restore(self, slot: Copy, *, progress: Callable[[int], None]) -> None:
        for _ in range(self.progress):
            progress(1024)
        if self.ends == "fails":
            raise RestoreError("the server went away mid-restore")

    def verify(self, slot: Copy) -> Verification:
        return Verification(self.verdict, f"the copy: {self.verdict.value}")


@pytest.mark.parametrize(
    ("progress", "ends", "verdict", "status", "message"),
    [
        (3, "fails", Verdict.MATCH, Status.PASS, "killed the scratch server; the restore failed clearly: the server"),
        (3, "ok", Verdict.MATCH, Status.PASS, "killed the scratch server; the restore still completed and verified"),
        (3, "ok", Verdict.MISMATCH, Status.FAIL, "the restore reported success with partial data: the copy: mismatch"),
        (3, "ok", Verdict.UNVERIFIED, Status.ERROR, "could not verify after the kill: the copy: unverified"),
        (0, "fails", Verdict.MATCH, Status.ERROR, "the restore failed before the kill: the server went away"),
        (0, "ok", Verdict.MATCH, Status.ERROR, "the restore reported no progress, so the kill could not be timed"),
    ],
)
def test_a_killed_target_passes_only_as_a_clear_failure_or_a_verified_copy(
    progress: int, ends: str, verdict: Verdict, status: Status, message: str
) -> None:
    ctx = KillContext(progress=progress, ends=ends, verdict=verdict)
    steps: list[Step] = []
    with step(steps, "fault:kill-target") as outcome:
        KillTarget().run(ctx, outcome)  # type: ignore[arg-type]
    assert steps[0].verdict is status, steps[0].message
    assert message in steps[0].message
    assert ctx.slot.released
