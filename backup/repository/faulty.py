"""FaultyStore: a store wrapper that injects read-path faults, for tests and the drills' fault scenarios.

The drills prove that a restore survives flaky storage (``flaky-storage``) and refuses damaged or
missing data (``corrupt-chunk``, ``missing-chunk``); this wrapper stages those faults between the
repository and its store. It never modifies the inner store: corruption happens on the bytes
handed to the caller, a "missing" object is only hidden. Every injected fault is counted in
``injected`` so that a test or a drill can prove the faults really happened.
"""

from __future__ import annotations

import contextlib
import io
import random
import threading
from collections import Counter
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import BinaryIO, Literal

from backup.repository.manifest import ChunkRef
from backup.repository.store import ObjectInfo, ObjectNotFound, Store, TransientStoreError

Operation = Literal["put", "get", "exists", "list", "delete"]
FaultKind = Literal["transient", "corrupt", "missing"]
OPERATIONS: tuple[Operation, ...] = ("put", "get", "exists", "list", "delete")
READ_OPERATIONS: tuple[Operation, ...] = ("get", "exists", "list")


class FaultyStore:
    """Wraps ``inner``; the same Store shape.

    * ``fail_rate``: the share of calls of ``operations`` that raise TransientStoreError before
      reaching the inner store (``seed`` makes the sequence repeatable);
    * ``corrupt``: keys whose content comes back with one byte flipped;
    * ``missing``: keys that look absent: open raises ObjectNotFound, exists is False, list skips them;
    * ``fail_first``: the first N calls of ``operations`` fail whatever ``fail_rate`` draws, so that
      even a restore of a few chunks meets faults.

    ``injected`` counts the faults by kind, ``calls`` the calls by operation (retries included).
    """

    def __init__(
        self,
        inner: Store,
        *,
        fail_rate: float = 0.0,
        seed: int | None = None,
        operations: Collection[str] = READ_OPERATIONS,
        corrupt: Collection[str] = frozenset(),
        missing: Collection[str] = frozenset(),
        fail_first: int = 0,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, not {fail_rate}")
        unknown = set(operations) - set(OPERATIONS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {', '.join(OPERATIONS)}")
        self.inner = inner
        self.url = inner.url
        self.fail_rate = fail_rate
        self.operations: frozenset[str] = frozenset(operations)
        self.corrupt = frozenset(corrupt)
        self.missing = frozenset(missing)
        self.injected: Counter[FaultKind] = Counter()
        self.calls: Counter[Operation] = Counter()
        self._random = random.Random(seed)
        self._fail_first = fail_first
        self._lock = threading.Lock()  # restores read in parallel; keep the draws and counters exact

    def _enter(self, operation: Operation, key: str) -> None:
        """Count the call; raise TransientStoreError for the drawn share of the faulty operations."""
        with self._lock:
            self.calls[operation] += 1
            faulty = operation in self.operations
            fails = faulty and (self._fail_first > 0 or self._random.random() < self.fail_rate)
            if faulty and self._fail_first > 0:
                self._fail_first -= 1
            if fails:
                self.injected["transient"] += 1
        if fails:
            raise TransientStoreError(f"injected transient fault: {operation} {key} in {self.url}")

    def _hidden(self, key: str) -> bool:
        """Whether ``key`` is one of the missing ones (counted: hiding it is the fault)."""
        if key not in self.missing:
            return False
        with self._lock:
            self.injected["missing"] += 1
        return True

    def put(self, key: str, stream: BinaryIO) -> None:
        self._enter("put", key)
        self.inner.put(key, stream)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        self._enter("get", key)
        if self._hidden(key):
            raise ObjectNotFound(f"{key} not found in {self.url} (injected: missing)")
        with self.inner.open(key) as stream:
            if key not in self.corrupt:
                yield stream
                return
            data = stream.read()
        with self._lock:
            self.injected["corrupt"] += 1
        yield io.BytesIO(flip_one_byte(data))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """As ``open``, and a chunk in a pack can be the one damaged: ``<pack key>@<offset>`` (``target``)."""
        self._enter("get", key)
        if self._hidden(key) or self._hidden(f"{key}@{offset}"):
            raise ObjectNotFound(f"{key} not found in {self.url} (injected: missing)")
        data = self.inner.get_range(key, offset, length)
        if key not in self.corrupt and f"{key}@{offset}" not in self.corrupt:
            return data
        with self._lock:
            self.injected["corrupt"] += 1
        return flip_one_byte(data)

    def exists(self, key: str) -> bool:
        self._enter("exists", key)
        return not self._hidden(key) and self.inner.exists(key)

    def list(self, prefix: str = "", *, start_after: str = "") -> Iterator[ObjectInfo]:
        self._enter("list", prefix)  # at call time, not on the first next(): like a failed LIST request
        return (info for info in self.inner.list(prefix, start_after=start_after) if not self._hidden(info.key))

    def delete(self, key: str) -> None:
        self._enter("delete", key)
        self.inner.delete(key)

    def remove_incomplete(self, before: datetime) -> int:
        return self.inner.remove_incomplete(before)


def target(ref: ChunkRef) -> str:
    """What names one chunk in ``corrupt`` or ``missing``: its object's key, or in a pack, its place."""
    return f"{ref.key}@{ref.offset}" if ref.pack else ref.key


def flip_one_byte(data: bytes) -> bytes:
    """``data`` with its middle byte inverted (an empty object becomes one 0xFF byte: still wrong)."""
    if not data:
        return b"\xff"
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
