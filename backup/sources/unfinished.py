"""What every restore into a file system shares: the mark of a restore that is writing a target, and
one wording for a target the file system refuses to write (a full disk, a read-only mount).

A restore into a directory, a file or a member data dir puts a small JSON file (``RestoreMark``) in
or beside its target before its first byte and removes it after its last. A mark found by the next
restore means an earlier one did not finish (SIGKILL, power loss): that restore says so in its
refusal and as a warning, and removes the part files the earlier one left once it has finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from policies.errors import RestoreError

MARK_SUFFIX = "lifeboat-restore-unfinished"
UNFINISHED = "an earlier restore into this target did not finish"


def cannot_write(path: Path | str, exc: OSError) -> RestoreError:
    """``cannot write PATH: No space left on device`` for an OSError met while writing ``path``."""
    return RestoreError(f"cannot write {path}: {exc.strerror or exc}")


@dataclass(frozen=True)
class RestoreMark:
    """The mark file at ``path``: who restored what into the target, and since when."""

    path: Path

    def earlier(self) -> str | None:
        """A sentence about the earlier restore that left this mark, or None when there is none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RestoreError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            found = json.loads(text)
        except ValueError:
            found = {}
        details = found if isinstance(found, dict) else {}
        said = [
            f"snapshot {details['snapshot']}" if details.get("snapshot") else "",
            f"started {details['started']}" if details.get("started") else "",
            f"by process {details['pid']} on {details.get('host', '?')}" if details.get("pid") else "",
        ]
        sentence = f"{UNFINISHED} ({', '.join(filter(None, said)) or 'its mark ' + str(self.path) + ' says no more'})"
        if details.get("aside"):
            sentence += f"; it had moved the target's previous contents to {details['aside']}"
        return sentence

    @contextlib.contextmanager
    def held(self, *, snapshot: str, keep_on_failure: bool, aside: Path | None = None) -> Iterator[None]:
        """The mark is on the target while the block writes it; removed when the block ends, or only
        when it succeeds with ``keep_on_failure`` (a failed restore that leaves half a target). ``aside``:
        where the target's previous contents go, should the next restore need to tell."""
        self._write(snapshot=snapshot, aside=aside)
        try:
            yield
        except BaseException:
            if not keep_on_failure:
                self._remove()
            raise
        self._remove()

    def _write(self, *, snapshot: str, aside: Path | None) -> None:
        details = {
            "snapshot": snapshot,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "aside": str(aside) if aside else None,
        }
        try:
            with self.path.open("w", encoding="utf-8") as out:
                out.write(json.dumps(details))
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            self.path.unlink(missing_ok=True)
            raise cannot_write(self.path, exc) from exc

    def _remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise RestoreError(f"cannot remove {self.path} (the mark of this restore): {exc.strerror}") from exc


def remove_leftovers(paths: Iterator[Path]) -> int:
    """Remove the part files (or directories) earlier restores left; returns how many."""
    removed = 0
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise RestoreError(f"cannot remove {path}, left by an earlier restore: {exc.strerror}") from exc
        removed += 1
    return removed
