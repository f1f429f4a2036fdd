"""RetryingStore over a FaultyStore(LocalStore): transient faults are ridden out with bounded,
growing backoff; permanent errors fail at once; exhausted retries say what and how often.

No real sleeping: RetryingStore gets a recording ``sleep``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backup.repository.faulty import FaultyStore, flip_one_byte
from backup.repository.retry import RetryingStore, RetryPolicy
from backup.repository.store import LocalStore, ObjectNotFound, TransientStoreError, get_bytes, put_bytes
from policies.errors import StoreError

SEED = 20240611
KEYS = [f"chunks/{n:02x}/{n:064x}" for n in range(150)]


class RecordingSleep:
    """Stands in for time.sleep: remembers every wait, never waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


def test_puts_and_gets_all_succeed_over_a_flaky_store(tmp_path: Path, sleep: RecordingSleep) -> None:
    faulty = FaultyStore(LocalStore(tmp_path), fail_rate=0.3, seed=SEED, operations=("put", "get"))
    # 8 attempts: the chance that one call meets 8 faults in a row is 0.3**8, about 1 in 15,000.
    store = RetryingStore(faulty, RetryPolicy(attempts=8, base_delay=0.5, max_delay=4.0), sleep=sleep)
    blobs = {key: os.urandom(100 + n) for n, key in enumerate(KEYS)}

    started = time.monotonic()
    for key, data in blobs.items():
        put_bytes(store, key, data)
    read_back = {key: get_bytes(store, key) for key in blobs}
    elapsed = time.monotonic() - started

    assert read_back == blobs
    assert faulty.injected["transient"] > 0.2 * 2 * len(KEYS)  # faults really happened, about 30 %
    assert faulty.calls["put"] + faulty.calls["get"] == 2 * len(KEYS) + faulty.injected["transient"]
    assert len(sleep.waits) == faulty.injected["transient"]  # one backoff per retried fault
    assert elapsed < sum(sleep.waits)  # the backoff was asked for, not slept


def test_backoff_is_bounded_by_max_delay_and_grows(tmp_path: Path, sleep: RecordingSleep) -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.1, max_delay=0.5)
    faulty = FaultyStore(LocalStore(tmp_path), fail_rate=1.0, seed=SEED)
    store = RetryingStore(faulty, policy, sleep=sleep)

    for key in KEYS:
        with pytest.raises(TransientStoreError):
            get_bytes(store, key)

    # Waits come in runs of attempts-1 per call: the k-th of a run follows the k-th failure.
    by_attempt = [sleep.waits[k :: policy.attempts - 1] for k in range(policy.attempts - 1)]
    bounds = [min(policy.max_delay, policy.base_delay * 2**k) for k in range(policy.attempts - 1)]
    assert bounds == [0.1, 0.2, 0.4, 0.5, 0.5]
    for waits, bound in zip(by_attempt, bounds, strict=True):
        assert len(waits) == len(KEYS)
        assert all(0 <= wait <= bound <= policy.max_delay for wait in waits)
    # Full jitter draws below the bound, so growth shows as later waits passing earlier bounds
    # and as rising means (0.05, 0.1, 0.2 expected; 150 draws each keep them well apart).
    assert max(by_attempt[1]) > bounds[0] and max(by_attempt[2]) > bounds[1]
    means = [sum(waits) / len(waits) for waits in by_attempt[:3]]
    assert means[0] < means[1] < means[2]


def test_exhausted_retries_name_the_key_and_the_attempts(tmp_path: Path, sleep: RecordingSleep) -> None:
    faulty = FaultyStore(LocalStore(tmp_path), fail_rate=1.0, seed=SEED, operations=("put",))
    store = RetryingStore(faulty, RetryPolicy(attempts=4, base_delay=0.01), sleep=sleep)

    with pytest.raises(TransientStoreError, match=r"^put chunks/ab/abc: still failing after 4 attempts: injected"):
        put_bytes(store, "chunks/ab/abc", b"data")

    assert faulty.calls["put"] == 4
    assert len(sleep.waits) == 3
    assert not LocalStore(tmp_path).exists("chunks/ab/abc")


def test_a_permanent_error_is_not_retried(tmp_path: Path, sleep: RecordingSleep) -> None:
    faulty = FaultyStore(LocalStore(tmp_path), operations=("put",))
    store = RetryingStore(faulty, sleep=sleep)

    with pytest.raises(StoreError, match="invalid object key") as raised:
        put_bytes(store, "../outside", b"data")

    assert not isinstance(raised.value, TransientStoreError)
    assert faulty.calls["put"] == 1
    assert sleep.waits == []


def test_a_missing_object_is_not_retried(tmp_path: Path, sleep: RecordingSleep) -> None:
    faulty = FaultyStore(LocalStore(tmp_path))
    store = RetryingStore(faulty, sleep=sleep)

    with pytest.raises(ObjectNotFound):
        get_bytes(store, "chunks/ab/never-written")

    assert faulty.calls["get"] == 1
    assert sleep.waits == []


# --- FaultyStore itself: what the drills' fault scenarios rely on ------------------------------------


def test_faulty_store_corrupts_and_hides_only_on_the_read_path(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path)
    put_bytes(inner, "chunks/ab/bad", b"0123456789")
    put_bytes(inner, "chunks/ab/gone", b"abc")
    put_bytes(inner, "chunks/ab/good", b"fine")
    faulty = FaultyStore(inner, corrupt={"chunks/ab/bad"}, missing={"chunks/ab/gone"})

    corrupted = get_bytes(faulty, "chunks/ab/bad")
    assert len(corrupted) == 10
    assert sum(a != b for a, b in zip(corrupted, b"0123456789", strict=True)) == 1
    with pytest.raises(ObjectNotFound, match="chunks/ab/gone"):
        get_bytes(faulty, "chunks/ab/gone")
    assert not faulty.exists("chunks/ab/gone")
    assert {info.key for info in faulty.list("chunks/")} == {"chunks/ab/bad", "chunks/ab/good"}
    assert get_bytes(faulty, "chunks/ab/good") == b"fine"

    assert faulty.injected["corrupt"] == 1
    assert faulty.injected["missing"] >= 1
    # The inner store is untouched: the fault is only in what the caller gets.
    assert get_bytes(inner, "chunks/ab/bad") == b"0123456789"
    assert get_bytes(inner, "chunks/ab/gone") == b"abc"


def test_faulty_store_faults_only_the_chosen_operations(tmp_path: Path) -> None:
    faulty = FaultyStore(LocalStore(tmp_path), fail_rate=1.0, operations=("get",))

    put_bytes(faulty, "chunks/ab/x", b"x")  # put is not a chosen operation
    assert faulty.exists("chunks/ab/x")
    with pytest.raises(TransientStoreError, match="injected transient fault: get chunks/ab/x"):
        get_bytes(faulty, "chunks/ab/x")
    assert faulty.injected == {"transient": 1}


def test_faulty_store_is_repeatable_with_a_seed(tmp_path: Path) -> None:
    def fault_pattern() -> list[bool]:
        faulty = FaultyStore(LocalStore(tmp_path), fail_rate=0.5, seed=SEED, operations=("exists",))
        pattern = []
        for _ in range(50):
            try:
                faulty.exists("chunks/ab/x")
            except TransientStoreError:
                pattern.append(True)
            else:
                pattern.append(False)
        return pattern

    assert fault_pattern() == fault_pattern()
    assert any(fault_pattern()) and not all(fault_pattern())


@pytest.mark.parametrize("options", [{"fail_rate": 1.5}, {"fail_rate": -0.1}, {"operations": ("read",)}])
def test_faulty_store_refuses_nonsense_settings(tmp_path: Path, options: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FaultyStore(LocalStore(tmp_path), **options)  # type: ignore[arg-type]


def test_flip_one_byte_always_changes_the_data() -> None:
    assert flip_one_byte(b"") != b""
    assert flip_one_byte(b"\x00") == b"\xff"
    assert flip_one_byte(b"abc") == b"a\x9dc"
