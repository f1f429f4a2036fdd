"""What Lifeboat keeps beside its state DB (DESIGN section 8), one module per concern:

- ``records``: what the run history holds: run kinds and statuses (a drill run's status is its
  ``drills.model.Status``), runs, incidents, the snapshot inventory.
- ``schema``: the SQLite schema of the state DB, and the migrations from older versions.
- ``history``: ``RunHistory``, the state DB itself.
- ``source_locks``: ``SourceLocks``, the per-source file locks kept in ``locks/`` beside it.
- ``damage``: a damaged state DB found on opening, moved aside for a fresh one.
"""

from __future__ import annotations

from policies.errors import LifeboatError


class StateError(LifeboatError):
    """The state DB (or the lock directory next to it) cannot be used."""
