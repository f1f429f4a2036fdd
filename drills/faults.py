"""Fault scenarios (DESIGN section 6): each states what must happen for it to PASS.

A scenario raises ``StepFailed`` when Lifeboat misbehaved under the fault (corrupt data restored,
a blind verifier) and ``StepUnverified`` when the scenario could not prove anything (no fault was
actually injected); otherwise it returns, and the step passes. Faults on the read path go through
``FaultyStore`` between the retries and the real store: the repository itself is never modified.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from backup.repository.faulty import FaultyStore, target
from backup.repository.manifest import ChunkRef, SnapshotHeader
from backup.repository.repository import Repository
from backup.repository.retry import RetryPolicy
from backup.sources.base import Progress, RestoreResult, Source, Verdict, Verification
from drills.scratch.base import ScratchEnvironment, Slot
from drills.steps import StepFailed, StepOutcome, StepUnverified
from policies.durations import human_duration
from policies.errors import IntegrityError, LifeboatError

FLAKY_SHARE = 0.2
FLAKY_RETRY = RetryPolicy(attempts=10, base_delay=0.02, max_delay=0.5, expected_failures=True)


@dataclass
class DrillContext:
    """What a fault scenario works with for one source."""

    source: Source
    repository: Repository
    header: SnapshotHeader
    scratch: ScratchEnvironment
    main: Slot  # restored and verified before any fault runs

    def fresh_slot(self, *, killable: bool = False) -> Slot:
        return self.scratch.slot(self.source.name, self.source.kind, self.header, killable=killable)

    def restore(
        self, slot: Slot, *, repository: Repository | None = None, yes: bool = False, progress: Progress | None = None
    ) -> RestoreResult:
        """Lifeboat's own restore path into ``slot``, then bring it up."""
        options = slot.restore_options(yes=yes)
        target = self.source.parse_target(options)
        result = self.source.restore(repository or self.repository, self.header, target, options=options, progress=progress)
        slot.after_restore()
        return result

    def verify(self, slot: Slot) -> Verification:
        """Compare the slot's data with the snapshot, on the slot's ``verify_target`` (local scratch:
        the server itself, not the relay that kill-target cuts; kubernetes: what the slot's access
        mode reaches, a port-forward or the service's DNS name)."""
        target = slot.verify_target()
        if target is None:
            target = self.source.parse_target(slot.restore_options(direct=True))
        return self.source.verify(self.header, target, repository=self.repository)


class Fault(Protocol):
    name: ClassVar[str]
    expectation: ClassVar[str]
    leaves_copy_tampered: ClassVar[bool]  # it changes the main restored copy (others see it changed)

    def run(self, ctx: DrillContext, outcome: StepOutcome) -> None: ...


def data_chunk(ctx: DrillContext) -> ChunkRef:
    """One chunk of the snapshot's data (from the middle of its largest entry)."""
    largest = max(ctx.repository.entries(ctx.header), key=lambda entry: entry.size, default=None)
    if largest is None or not largest.chunks:
        raise StepUnverified("the snapshot holds no data chunk to damage")
    return largest.chunks[len(largest.chunks) // 2]


class _DamagedChunk:
    """A chunk is damaged on the read path: the restore must fail, naming the chunk."""

    name: ClassVar[str]
    leaves_copy_tampered: ClassVar[bool] = False
    expectation: ClassVar[str]
    damage: ClassVar[str]  # FaultyStore keyword: corrupt | missing

    def run(self, ctx: DrillContext, outcome: StepOutcome) -> None:
        ref = data_chunk(ctx)
        chunk = ref.id
        faulty: dict[str, FaultyStore] = {}

        def wrap(store: Any) -> FaultyStore:
            key = {target(ref)}
            faulty["store"] = FaultyStore(
                store, corrupt=key if self.damage == "corrupt" else (), missing=key if self.damage == "missing" else ()
            )
            return faulty["store"]

        slot = ctx.fresh_slot()
        damaged = ctx.repository.with_store(wrap)
        try:
            ctx.restore(slot, repository=damaged)
        except IntegrityError as exc:
            if chunk not in str(exc):
                raise StepFailed(f"the restore failed, but its error does not name chunk {chunk}: {exc}") from exc
            outcome.message = f"restore refused: {exc}"
            outcome.details = {"chunk": chunk}
            return
        finally:
            damaged.close()
            slot.release()
        if not faulty["store"].injected:
            raise StepUnverified(f"chunk {chunk} was never read, so the fault proved nothing")
        raise StepFailed(f"the restore succeeded although chunk {chunk} was {self.damage}: damage would go unnoticed")


class CorruptChunk(_DamagedChunk):
    name: ClassVar[str] = "corrupt-chunk"
    expectation: ClassVar[str] = (
        "a chunk's bytes flipped on the read path: the restore fails with an integrity error naming it"
    )
    damage: ClassVar[str] = "corrupt"


class MissingChunk(_DamagedChunk):
    name: ClassVar[str] = "missing-chunk"
    expectation: ClassVar[str] = "a chunk is unreadable: the restore fails clearly, naming it"
    damage: ClassVar[str] = "missing"


class FlakyStorage:
    name: ClassVar[str] = "flaky-storage"
    leaves_copy_tampered: ClassVar[bool] = False
    expectation: ClassVar[str] = (
        f"{FLAKY_SHARE:.0%} of store reads fail transiently: the restore retries, succeeds and verifies"
    )

    def run(self, ctx: DrillContext, outcome: StepOutcome) -> None:
        faulty: dict[str, FaultyStore] = {}

        def wrap(store: Any) -> FaultyStore:
            faulty["store"] = FaultyStore(store, fail_rate=FLAKY_SHARE, seed=random.randrange(2**32), fail_first=2)
            return faulty["store"]

        slot = ctx.fresh_slot()
        flaky = ctx.repository.with_store(wrap, retry=FLAKY_RETRY)
        try:
            try:
                ctx.restore(slot, repository=flaky)
            except LifeboatError as exc:
                raise StepFailed(f"transient store faults broke the restore: {exc}") from exc
            injected = faulty["store"].injected["transient"]
            if injected == 0:
                raise StepUnverified("no read failed, so the retries were never exercised")
            _require_match(ctx.verify(slot), "after the flaky restore")
            outcome.message = f"restored and verified through {injected} injected read failures"
            outcome.details = {"injected": injected}
        finally:
            flaky.close()
            slot.release()


class KillTarget:
    name: ClassVar[str] = "kill-target"
    leaves_copy_tampered: ClassVar[bool] = False
    expectation: ClassVar[str] = (
        "the scratch server is killed mid-restore: a clear failure or a verified success, never partial data"
    )

    def run(self, ctx: DrillContext, outcome: StepOutcome) -> None:
        slot = ctx.fresh_slot(killable=True)
        killed: list[str] = []
        once = threading.Lock()

        def kill_once(_: int) -> None:
            if not killed and once.acquire(blocking=False):
                killed.append(slot.interrupt())

        try:
            try:
                ctx.restore(slot, progress=kill_once)
            except LifeboatError as exc:
                if not killed:
                    raise StepUnverified(f"the restore failed before the kill: {exc}") from exc
                outcome.message = f"{killed[0]}; the restore failed clearly: {exc}"
                return
            if not killed:
                raise StepUnverified("the restore reported no progress, so the kill could not be timed")
            verification = ctx.verify(slot)
            if verification.verdict is Verdict.MISMATCH:
                raise StepFailed(f"{killed[0]}; the restore reported success with partial data: {verification.message}")
            _require_match(verification, "after the kill")
            outcome.message = f"{killed[0]}; the restore still completed and verified"
        finally:
            slot.release()


class Disaster:
    name: ClassVar[str] = "disaster"
    leaves_copy_tampered: ClassVar[bool] = False
    expectation: ClassVar[str] = (
        "the source's disaster is staged on the scratch copy and recovered by Lifeboat's restore, verified, timed"
    )

    def run(self, ctx: DrillContext, outcome: StepOutcome) -> None:
        what = ctx.main.stage_disaster()
        noticed = ctx.verify(ctx.main).verdict is not Verdict.MATCH
        started = time.monotonic()
        try:
            ctx.restore(ctx.main, yes=True)  # recover even when unnoticed: later scenarios need the copy
        except LifeboatError as exc:
            raise StepFailed(f"{what}; recovery failed: {exc}") from exc
        seconds = time.monotonic() - started
        _require_match(ctx.verify(ctx.main), "after recovery")
        if not noticed:
            raise StepFailed(f"{what}, yet verification matched before recovery: the verifier is blind")
        outcome.message = f"{what}; recovered and verified in {human_duration(seconds)}"
        outcome.details = {"rto_seconds": round(seconds, 3), "disaster": what}


class VerifierCanary:
    name: ClassVar[str] = "verifier-canary"
    leaves_copy_tampered: ClassVar[bool] = True
    expectation: ClassVar[str] = (
        "each tamper kind of the source (a value, a row, an object, a schema, tags...) changes a restored copy: "
        "verification must catch every one"
    )

    def run(self, ctx: DrillContext, outcome: StepOutcome) -> None:
        """Apply each tamper kind of the source to its own verified copy (the first to the main copy,
        which this leaves tampered: the canary runs last), and verify after each. Any tamper that
        verification does not catch makes the step FAIL as "verifier blind", naming the tamper."""
        caught: dict[str, str] = {}
        blind: list[str] = []
        unverified: list[str] = []
        for number, name in enumerate(ctx.main.tampers()):
            slot = ctx.main if number == 0 else self._fresh_copy(ctx, name)
            try:
                what = slot.tampers()[name]()
                verification = ctx.verify(slot)
            finally:
                if slot is not ctx.main:
                    slot.release()
            if verification.verdict is Verdict.MATCH:
                blind.append(f"{name} ({what}), yet verification matched")
            elif verification.verdict is Verdict.UNVERIFIED:
                unverified.append(f"{name} ({what}): verification could not run: {verification.message}")
            else:
                caught[name] = f"{what}; caught: {verification.message}"
        outcome.details = {"tampers": caught, "blind": blind, "unverified": unverified}
        if blind:
            raise StepFailed("verifier blind: " + "; ".join(blind), caught=sorted(caught))
        if unverified:
            raise StepUnverified("; ".join(unverified))
        outcome.message = "verification caught every tamper kind: " + " | ".join(
            f"{name}: {said}" for name, said in caught.items()
        )

    @staticmethod
    def _fresh_copy(ctx: DrillContext, tamper: str) -> Slot:
        """A newly restored copy that verifies, for one more tamper kind."""
        slot = ctx.fresh_slot()
        try:
            ctx.restore(slot)
            _require_match(ctx.verify(slot), f"of the fresh copy for tamper {tamper}")
        except BaseException:
            slot.release()
            raise
        return slot


def _require_match(verification: Verification, when: str) -> None:
    if verification.verdict is Verdict.MISMATCH:
        raise StepFailed(f"verification failed {when}: {verification.message}", differences=verification.differences[:10])
    if verification.verdict is Verdict.UNVERIFIED:
        raise StepUnverified(f"could not verify {when}: {verification.message}")


FaultFactory = Callable[[], Fault]
# Run in this order: the ones that restore into fresh slots first, then the two that change the
# main restored copy (the canary last, since it leaves the copy tampered with).
FAULTS: dict[str, FaultFactory] = {
    "corrupt-chunk": CorruptChunk,
    "missing-chunk": MissingChunk,
    "flaky-storage": FlakyStorage,
    "kill-target": KillTarget,
    "disaster": Disaster,
    "verifier-canary": VerifierCanary,
}
