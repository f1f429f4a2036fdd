"""What every scratch environment's slots share: the error they raise, the byte pump of their
loopback relays, and the damage the ``disaster`` and ``verifier-canary`` faults do to a restored
ClickHouse database, S3 bucket or etcd, through the same network path the restore used (a
clickhouse-driver client, a boto3 client, etcd's JSON gateway), or, for an etcd value changed
without a new revision, in the stopped scratch member's bbolt file.
"""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Protocol

from policies.errors import LifeboatError

RELAY_BUFFER = 256 * 1024


class ScratchError(LifeboatError):
    """A scratch target could not be provisioned or reached."""


def pump(source: Any, sink: Any) -> None:
    """Copy bytes from ``source`` to ``sink`` (sockets, or a port-forward's socket wrapper) until
    ``source`` ends or either side is closed, then half-close ``sink``."""
    with contextlib.suppress(OSError, ValueError):
        while data := source.recv(RELAY_BUFFER):
            sink.sendall(data)
    with contextlib.suppress(OSError, ValueError):
        sink.shutdown(socket.SHUT_WR)


class SqlClient(Protocol):
    """The part of ``clickhouse_driver.Client`` used here."""

    def execute(self, query: str, params: Any = None, *, settings: dict[str, Any] | None = None) -> Any: ...


# ---- ClickHouse -------------------------------------------------------------------------------


def clickhouse_tables(client: SqlClient, database: str) -> list[tuple[str, int]]:
    """The tables of ``database`` holding rows, largest first: (name, rows)."""
    rows = client.execute(
        "SELECT table, total_rows FROM (SELECT table, toUInt64(sum(rows)) AS total_rows FROM system.parts "
        "WHERE database = %(db)s AND active GROUP BY table) ORDER BY total_rows DESC, table",
        {"db": database},
    )
    return [(name, count) for name, count in rows if count > 0]


def drop_largest_table(client: SqlClient, database: str) -> str:
    """The ClickHouse disaster: DROP the largest table of ``database``; says which. Raises
    ScratchError when no table holds rows."""
    tables = clickhouse_tables(client, database)
    if not tables:
        raise ScratchError(f"{database} holds no table with rows to drop")
    table, count = tables[0]
    client.execute(f"DROP TABLE `{database}`.`{table}`")
    return f"dropped table {database}.{table} ({count} rows)"


def duplicate_one_row(client: SqlClient, database: str) -> str:
    """The ClickHouse canary: INSERT one duplicate row into the largest table; says where. Raises
    ScratchError when no table holds rows."""
    tables = clickhouse_tables(client, database)
    if not tables:
        raise ScratchError(f"{database} holds no table with rows to tamper with")
    table = f"`{database}`.`{tables[0][0]}`"
    client.execute(f"INSERT INTO {table} SELECT * FROM {table} LIMIT 1")
    return f"inserted one duplicate row into {database}.{tables[0][0]}"


def add_one_column(client: SqlClient, database: str) -> str:
    """A ClickHouse schema tamper: one column added to the largest table (its data untouched); says
    where. Raises ScratchError when no table holds rows."""
    tables = clickhouse_tables(client, database)
    if not tables:
        raise ScratchError(f"{database} holds no table with rows to tamper with")
    client.execute(f"ALTER TABLE `{database}`.`{tables[0][0]}` ADD COLUMN lifeboat_canary UInt8")
    return f"added column lifeboat_canary to {database}.{tables[0][0]}"


def clickhouse_views(client: SqlClient, database: str) -> list[str]:
    """The plain views of ``database`` (not materialized ones), by name."""
    rows = client.execute(
        "SELECT name FROM system.tables WHERE database = %(db)s AND engine = 'View' ORDER BY name", {"db": database}
    )
    return [name for (name,) in rows]


def redefine_one_view(client: SqlClient, database: str) -> str:
    """A ClickHouse view tamper: the first view of ``database`` dropped and created again with another
    query under the same name; says which. Raises ScratchError when there is no view."""
    views = clickhouse_views(client, database)
    if not views:
        raise ScratchError(f"{database} holds no view to redefine")
    view = f"`{database}`.`{views[0]}`"
    client.execute(f"DROP TABLE {view}")
    client.execute(f"CREATE VIEW {view} AS SELECT 1 AS lifeboat_canary")
    return f"redefined view {database}.{views[0]} as SELECT 1"


def materialized_columns(client: SqlClient, database: str) -> list[tuple[str, str]]:
    """(table, column) of every MATERIALIZED column of a table holding rows in ``database``."""
    with_rows = {name for name, _ in clickhouse_tables(client, database)}
    rows = client.execute(
        "SELECT table, name FROM system.columns WHERE database = %(db)s AND default_kind = 'MATERIALIZED' "
        "ORDER BY table, name",
        {"db": database},
    )
    return [(table, column) for table, column in rows if table in with_rows]


def change_materialized_value(client: SqlClient, database: str) -> str:
    """A ClickHouse tamper of a stored MATERIALIZED value: one partition of the first table with such
    a column is reloaded with that column's value changed in one row (rows, count and every other
    column unchanged); says where. Raises ScratchError when there is no such column."""
    found = materialized_columns(client, database)
    if not found:
        raise ScratchError(f"{database} holds no MATERIALIZED column to tamper with")
    table, column = found[0]
    source, aside = f"`{database}`.`{table}`", f"`{database}`.`lifeboat_canary_{table}`"
    [(partition, partition_id)] = client.execute(
        "SELECT partition, partition_id FROM system.parts WHERE database = %(db)s AND table = %(t)s AND active "
        "ORDER BY partition_id LIMIT 1",
        {"db": database, "t": table},
    )
    described = client.execute(f"DESCRIBE TABLE {source}")  # name, type, default kind, expression: in order
    stored = [row[0] for row in described if row[2] != "ALIAS"]
    columns = ", ".join(f"`{name}`" for name in stored)
    changed = ", ".join(
        f"if(rowNumberInAllBlocks() = 0, `{name}` + 1, `{name}`)" if name == column else f"`{name}`" for name in stored
    )
    allow = {"insert_allow_materialized_columns": 1}
    client.execute(f"CREATE TABLE {aside} AS {source}")
    try:
        client.execute(
            f"INSERT INTO {aside} ({columns}) SELECT {columns} FROM {source} WHERE _partition_id = %(p)s",
            {"p": partition_id},
            settings=allow,
        )
        client.execute(f"ALTER TABLE {source} DROP PARTITION {partition}")
        client.execute(f"INSERT INTO {source} ({columns}) SELECT {changed} FROM {aside}", settings=allow)
    finally:
        client.execute(f"DROP TABLE IF EXISTS {aside}")
    return f"changed the stored {column} of one row of {database}.{table} partition {partition_id}"


# ---- S3 ---------------------------------------------------------------------------------------


def empty_bucket(client: Any, bucket: str) -> int:
    """Delete every object version and delete marker of ``bucket``; returns how many went."""
    removed = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
        for item in items:
            client.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])
        removed += len(items)
    return removed


def delete_bucket(client: Any, bucket: str) -> None:
    """Empty and delete ``bucket``, quietly: already gone, or the endpoint is down (the janitor retries)."""
    with contextlib.suppress(Exception):
        empty_bucket(client, bucket)
        client.delete_bucket(Bucket=bucket)


def wipe_bucket(client: Any, bucket: str) -> str:
    """The S3 disaster: delete every object of ``bucket``; says how many."""
    removed = empty_bucket(client, bucket)
    return f"emptied scratch bucket {bucket} ({removed} objects deleted)"


def overwrite_one_object(client: Any, bucket: str) -> str:
    """An S3 canary: overwrite the first object of ``bucket`` with changed bytes; says which.
    Raises ScratchError on an empty bucket."""
    key = _first_key(client, bucket)
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body + b"tampered")
    return f"appended bytes to object {key!r} in the scratch bucket"


def _first_key(client: Any, bucket: str) -> str:
    listed = client.list_objects_v2(Bucket=bucket, MaxKeys=1).get("Contents", [])
    if not listed:
        raise ScratchError(f"scratch bucket {bucket} holds no object to tamper with")
    return str(listed[0]["Key"])


# What a CopyObject with MetadataDirective=REPLACE must say again to change nothing but user metadata.
_KEPT_ON_COPY = (
    "ContentType",
    "ContentEncoding",
    "CacheControl",
    "ContentDisposition",
    "ContentLanguage",
    "Expires",
    "WebsiteRedirectLocation",
    "StorageClass",
)


def change_user_metadata(client: Any, bucket: str) -> str:
    """An S3 canary: copy the first object of ``bucket`` onto itself with one user metadata value
    changed (MetadataDirective=REPLACE; bytes, tags and every other attribute kept); says which."""
    key = _first_key(client, bucket)
    head = client.head_object(Bucket=bucket, Key=key)
    kept = {name: head[name] for name in _KEPT_ON_COPY if head.get(name)}
    metadata = {**head.get("Metadata", {}), "lifeboat-canary": "tampered"}
    client.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        MetadataDirective="REPLACE",
        Metadata=metadata,
        **kept,
    )
    return f"changed the user metadata of object {key!r} in place (bytes unchanged)"


def change_one_tag(client: Any, bucket: str) -> str:
    """An S3 canary: change one tag of the first object of ``bucket`` (PutObjectTagging: bytes, ETag
    and metadata unchanged), or give it one if it has none; says which."""
    key = _first_key(client, bucket)
    tags = {tag["Key"]: tag["Value"] for tag in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    name = next(iter(sorted(tags)), "lifeboat-canary")
    tags[name] = tags.get(name, "") + "-tampered"
    tag_set = [{"Key": tag, "Value": value} for tag, value in tags.items()]
    client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": tag_set})
    return f"changed tag {name!r} of object {key!r} to {tags[name]!r} (bytes and metadata unchanged)"


def add_one_object(client: Any, bucket: str) -> str:
    """An S3 canary: put one object into ``bucket`` that the snapshot does not hold; says which."""
    key = f"lifeboat-canary/extra-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket=bucket, Key=key, Body=b"not in the snapshot")
    return f"added object {key!r} to the scratch bucket"


def delete_first_etcd_key(endpoint: str) -> str:
    """The etcd canary: delete the first key of the etcd at ``endpoint`` (its JSON gateway, a scratch
    server of this drill); says which. Raises ScratchError when it holds none."""
    everything = base64.b64encode(b"\0").decode()
    found = _etcd_call(endpoint, "range", {"key": everything, "range_end": everything, "limit": 1, "keys_only": True})
    keys = found.get("kvs") or []
    if not keys:
        raise ScratchError("the scratch etcd holds no key to tamper with")
    key = keys[0]["key"]
    _etcd_call(endpoint, "deleterange", {"key": key})
    return f"deleted key {base64.b64decode(key).decode(errors='replace')} from the scratch etcd"


def first_etcd_value(endpoint: str) -> dict[str, Any]:
    """The first key of the etcd at ``endpoint`` that holds a non-empty value, as its gateway gives it
    (``key``, ``value`` base64, revisions as strings). Raises ScratchError when there is none."""
    start = base64.b64encode(b"\0").decode()
    while True:
        found = _etcd_call(endpoint, "range", {"key": start, "range_end": base64.b64encode(b"\0").decode(), "limit": 100})
        for kv in found.get("kvs") or []:
            if kv.get("value"):
                return kv
        if not found.get("more"):
            raise ScratchError("the scratch etcd holds no key with a value to tamper with")
        start = base64.b64encode(base64.b64decode(found["kvs"][-1]["key"]) + b"\0").decode()


def patch_etcd_value(db: Path, kv: dict[str, Any]) -> str:
    """The etcd value canary: change the last byte of the value of ``kv`` (as ``first_etcd_value``
    gives it) in the bbolt file ``db`` of a stopped member, in place: every copy of that revision's
    ``mvccpb.KeyValue`` record, at the same length, so no revision, version or size changes; says
    which key. Raises ScratchError when the record is not in the file."""
    key, value = base64.b64decode(kv["key"]), base64.b64decode(kv["value"])
    numbers = [int(kv.get(name, 0)) for name in ("create_revision", "mod_revision", "version")]
    record = b"\x0a" + _varint(len(key)) + key
    record += b"".join(
        bytes([tag]) + _varint(number) for tag, number in zip((0x10, 0x18, 0x20), numbers, strict=True) if number
    )
    record += b"\x2a" + _varint(len(value)) + value
    last_value_byte = len(record) - 1
    lease = int(kv.get("lease", 0))
    record += b"\x30" + _varint(lease) if lease else b""
    data = bytearray(db.read_bytes())
    copies, at = 0, data.find(record)
    while at >= 0:
        data[at + last_value_byte] ^= 0x01
        copies += 1
        at = data.find(record, at + 1)
    if not copies:
        raise ScratchError(f"the record of key {key.decode(errors='replace')} is not in {db}")
    with db.open("r+b") as handle:
        handle.write(data)
    return f"changed the value of key {key.decode(errors='replace')} in place in the data dir, with no new revision"


def _varint(number: int) -> bytes:
    number &= (1 << 64) - 1
    out = bytearray()
    while number >= 0x80:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    return bytes(out + bytes([number]))


def grant_etcd_lease(endpoint: str) -> str:
    """The etcd lease canary: grant one more lease (an hour) on the etcd at ``endpoint``; says which."""
    granted = _etcd_call(endpoint, "/v3/lease/grant", {"TTL": 3600})
    return f"granted an extra lease {int(granted['ID']):016x} (TTL 3600s) on the scratch etcd"


def add_etcd_user(endpoint: str) -> str:
    """The etcd auth canary: add a user to the etcd at ``endpoint``; says which."""
    _etcd_call(endpoint, "/v3/auth/user/add", {"name": "lifeboat-canary", "password": "canary"})
    return "added user lifeboat-canary to the scratch etcd"


def _etcd_call(endpoint: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    path = method if method.startswith("/") else f"/v3/kv/{method}"
    request = urllib.request.Request(f"{endpoint}{path}", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result
