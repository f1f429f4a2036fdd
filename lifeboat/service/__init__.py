"""``lifeboat serve``: the scheduler service (DESIGN section 8), one module per concern.

- ``serve``: ``LifeboatService``, the scheduler, its HTTP endpoints and the signal handling.
- ``jobs``: the job table, what the policy schedules and which operation each kind of job runs.
- ``cron``: crontab expressions as APScheduler triggers that fire when crontab would.
- ``abort``: how a running job is aborted at shutdown (``JobAborted``).
- ``instance_lock``: one ``lifeboat serve`` per state DB on a machine.

APScheduler 3.x is used in this package only.
"""

from __future__ import annotations

from policies.errors import LifeboatError


class ServiceError(LifeboatError):
    """The service cannot start or be reached."""
