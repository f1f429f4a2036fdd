"""The ``local`` scratch slots, one class per source kind, in the registry ``SLOTS``: an etcd
process started from the restored data dir under the run's workdir, a database on the configured
scratch ClickHouse server, a bucket on the configured scratch S3 endpoint. Every name carries the
run id, and is recorded in the run's marker before anything is made (leftovers.py finds it).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from clickhouse_driver import Client

from backup.repository.s3store import make_client
from backup.servers import EtcdProcess, start_etcd
from backup.sources.base import RestoreOptions
from backup.sources.etcd.targets import EtcdEndpointTarget
from drills.scratch.base import Slot
from drills.scratch.common import (
    ScratchError,
    add_etcd_user,
    add_one_column,
    add_one_object,
    change_materialized_value,
    change_one_tag,
    change_user_metadata,
    clickhouse_views,
    delete_bucket,
    delete_first_etcd_key,
    drop_largest_table,
    duplicate_one_row,
    first_etcd_value,
    grant_etcd_lease,
    materialized_columns,
    overwrite_one_object,
    patch_etcd_value,
    redefine_one_view,
    wipe_bucket,
)
from drills.scratch.local.relay import CuttableRelay
from policies.model import ClickHouseEndpoint, ScratchS3, reveal

if TYPE_CHECKING:
    from drills.scratch.local.environment import LocalScratchEnvironment


class LocalSlotKind(Protocol):
    """A slot class of the registry: makes the empty target of one restore."""

    def provision(self, env: LocalScratchEnvironment, *, source: str, number: int, killable: bool) -> Slot:
        """Slot ``number`` of ``env``'s run, for a restore of ``source``; ``killable``: one that
        ``interrupt`` can kill mid-restore. Raises ScratchError (or the client's error) when its
        scratch server is not configured or not there."""
        ...


def scratch_suffix(run_id: str, number: int) -> str:
    """What ends the name of slot ``number`` of run ``run_id`` (leftovers.py reads the run back from it)."""
    return f"{run_id.lower()}-{number}"


def required(value: Any, kind: str) -> Any:
    if value is None:
        raise ScratchError(f"scratch.local.{kind} is not configured: set it to a scratch server (never a production one)")
    return value


# ---- etcd -------------------------------------------------------------------------------------


class EtcdSlot:
    kind = "etcd"

    def __init__(self, env: LocalScratchEnvironment, directory: Path) -> None:
        self.env = env
        self.directory = directory
        self.data_dir = directory / "member"
        self.process: EtcdProcess | None = None
        self._kill_on_start = False
        self.label = f"scratch etcd data dir {self.data_dir}"

    @classmethod
    def provision(cls, env: LocalScratchEnvironment, *, source: str, number: int, killable: bool) -> EtcdSlot:
        return cls(env, env.workdir / f"{source}-{number}")

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        peer = "http://127.0.0.1:2380"  # rewritten by start_etcd's own flags; only needs to be consistent
        return RestoreOptions.of(
            to_data_dir=str(self.data_dir),
            name="drill",
            initial_cluster=f"drill={peer}",
            initial_advertise_peer_urls=peer,
            yes=yes,
        )

    def after_restore(self) -> None:
        self.process = start_etcd(self.data_dir, etcd_bin=self.env.settings.etcd_bin, name="drill")
        self.env.record_pid(self.process.process.pid)
        self.label = f"scratch etcd {self.process.endpoint} on {self.data_dir}"
        if self._kill_on_start:
            self._kill_on_start = False
            pid = self.process.process.pid
            self.process.process.kill()
            self.process = start_etcd(self.data_dir, etcd_bin=self.env.settings.etcd_bin, name="drill")
            self.env.record_pid(self.process.process.pid)
            self.label = f"scratch etcd {self.process.endpoint} (restarted after SIGKILL of pid {pid})"

    def verify_target(self) -> Any:
        if self.process is None or not self.process.process.alive():
            return EtcdEndpointTarget("http://127.0.0.1:1")  # nothing listens: verification says so
        return EtcdEndpointTarget(self.process.endpoint)

    def interrupt(self) -> str:
        if self.process is not None and self.process.process.alive():
            self.process.process.kill()
            return f"SIGKILLed the scratch etcd (pid {self.process.process.pid})"
        self._kill_on_start = True  # the restore writes a data dir first; the server comes up after it
        return "SIGKILL of the scratch etcd as it comes up from the restored data dir"

    def stage_disaster(self) -> str:
        if self.process is not None:
            self.process.stop()
            self.process = None
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return "stopped the scratch etcd and wiped its data dir"

    def tampers(self) -> dict[str, Callable[[], str]]:
        return {
            "delete-key": lambda: delete_first_etcd_key(self.verify_target().endpoint),
            "value-without-revision": self._change_value_in_place,
            "lease": lambda: grant_etcd_lease(self.verify_target().endpoint),
            "auth-user": lambda: add_etcd_user(self.verify_target().endpoint),
        }

    def _change_value_in_place(self) -> str:
        """Stop the scratch etcd, change one value's bytes in its bbolt file (no new revision), start it again."""
        if self.process is None:
            raise ScratchError("the scratch etcd is not running: nothing to tamper with")
        kv = first_etcd_value(self.process.endpoint)
        self.process.stop()
        self.process = None
        said = patch_etcd_value(self.data_dir / "member" / "snap" / "db", kv)
        self.process = start_etcd(self.data_dir, etcd_bin=self.env.settings.etcd_bin, name="drill")
        self.env.record_pid(self.process.process.pid)
        self.label = f"scratch etcd {self.process.endpoint} on {self.data_dir}"
        return said

    def release(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


# ---- ClickHouse -------------------------------------------------------------------------------


class ClickHouseSlot:
    kind = "clickhouse"

    def __init__(self, env: LocalScratchEnvironment, settings: ClickHouseEndpoint, database: str, *, killable: bool) -> None:
        self.settings = settings
        self.database = database
        self.password = reveal(settings.password) or ""
        self.relays = (
            [CuttableRelay(settings.host, settings.port), CuttableRelay(settings.host, settings.http_port)]
            if killable
            else []
        )
        self.label = f"scratch database {database} on {settings.host}:{settings.port}"
        self._client().execute(f"DROP DATABASE IF EXISTS `{database}`")  # a fresh, empty target
        env.record_name("clickhouse", database)

    @classmethod
    def provision(cls, env: LocalScratchEnvironment, *, source: str, number: int, killable: bool) -> ClickHouseSlot:
        settings: ClickHouseEndpoint = required(env.settings.clickhouse, "clickhouse")
        database = f"{settings.database_prefix}{scratch_suffix(env.run_id, number).replace('-', '_')}"
        return cls(env, settings, database, killable=killable)

    def _client(self) -> Client:
        return Client(
            self.settings.host,
            port=self.settings.port,
            user=self.settings.user,
            password=self.password,
            connect_timeout=10,
            send_receive_timeout=120,
        )

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        via_relay = bool(self.relays) and not direct
        return RestoreOptions.of(
            to_host="127.0.0.1" if via_relay else self.settings.host,
            to_port=self.relays[0].port if via_relay else self.settings.port,
            to_http_port=self.relays[1].port if via_relay else self.settings.http_port,
            to_database=self.database,
            to_user=self.settings.user,
            to_password=self.password,
            yes=yes,
        )

    def after_restore(self) -> None:
        return None

    def verify_target(self) -> Any:
        return None

    def interrupt(self) -> str:
        cut = sum(relay.cut() for relay in self.relays)
        return f"cut {cut} open connection(s) to the scratch ClickHouse server mid-restore"

    def stage_disaster(self) -> str:
        return drop_largest_table(self._client(), self.database)

    def tampers(self) -> dict[str, Callable[[], str]]:
        """A row, the schema, and, when the copy has them, a view and a stored MATERIALIZED value."""
        found = {
            "duplicate-row": lambda: duplicate_one_row(self._client(), self.database),
            "add-column": lambda: add_one_column(self._client(), self.database),
        }
        if clickhouse_views(self._client(), self.database):
            found["view-redefinition"] = lambda: redefine_one_view(self._client(), self.database)
        if materialized_columns(self._client(), self.database):
            found["materialized-value"] = lambda: change_materialized_value(self._client(), self.database)
        return found

    def release(self) -> None:
        for relay in self.relays:
            relay.close()
        with contextlib.suppress(Exception):
            self._client().execute(f"DROP DATABASE IF EXISTS `{self.database}`")


# ---- S3 ---------------------------------------------------------------------------------------


class S3Slot:
    kind = "s3"

    def __init__(self, env: LocalScratchEnvironment, settings: ScratchS3, bucket: str, *, killable: bool) -> None:
        self.settings = settings
        self.bucket = bucket
        self.client = s3_client(settings)
        self.endpoint = settings.endpoint_url or "https://s3.amazonaws.com"
        self.relay: CuttableRelay | None = None
        if killable:
            host, port = _host_port(self.endpoint)
            self.relay = CuttableRelay(host, port)
        self.label = f"scratch bucket {bucket} at {self.endpoint}"
        env.record_name("s3", bucket)
        self.client.create_bucket(Bucket=bucket)

    @classmethod
    def provision(cls, env: LocalScratchEnvironment, *, source: str, number: int, killable: bool) -> S3Slot:
        settings: ScratchS3 = required(env.settings.s3, "s3")
        return cls(env, settings, f"{settings.bucket_prefix}{scratch_suffix(env.run_id, number)}", killable=killable)

    def restore_options(self, *, yes: bool = False, direct: bool = False) -> RestoreOptions:
        endpoint = f"http://127.0.0.1:{self.relay.port}" if self.relay and not direct else self.endpoint
        return RestoreOptions.of(
            to_endpoint=endpoint,
            to_bucket=self.bucket,
            to_access_key_id=reveal(self.settings.access_key_id),
            to_secret_access_key=reveal(self.settings.secret_access_key),
            yes=yes,
        )

    def after_restore(self) -> None:
        return None

    def verify_target(self) -> Any:
        return None

    def interrupt(self) -> str:
        cut = self.relay.cut() if self.relay else 0
        return f"cut {cut} open connection(s) to the scratch S3 endpoint mid-restore"

    def stage_disaster(self) -> str:
        return wipe_bucket(self.client, self.bucket)

    def tampers(self) -> dict[str, Callable[[], str]]:
        return {
            "object-bytes": lambda: overwrite_one_object(self.client, self.bucket),
            "metadata-only": lambda: change_user_metadata(self.client, self.bucket),
            "tags-only": lambda: change_one_tag(self.client, self.bucket),
            "extra-object": lambda: add_one_object(self.client, self.bucket),
        }

    def release(self) -> None:
        if self.relay:
            self.relay.close()
        delete_bucket(self.client, self.bucket)


def s3_client(settings: ScratchS3) -> Any:
    """A boto3 client of the scratch S3 endpoint."""
    return make_client(
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        access_key_id=reveal(settings.access_key_id),
        secret_access_key=reveal(settings.secret_access_key),
        addressing_style=settings.addressing_style,
    )


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    return parsed.hostname or "127.0.0.1", parsed.port or (443 if parsed.scheme == "https" else 80)


SLOTS: dict[str, LocalSlotKind] = {"etcd": EtcdSlot, "clickhouse": ClickHouseSlot, "s3": S3Slot}
