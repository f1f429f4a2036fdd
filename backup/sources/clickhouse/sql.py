"""Pure ClickHouse knowledge for the ClickHouse source: quoting, name filters, engines, row hashes.

Nothing here talks to a server; every function is a plain transformation with unit tests
(tests/unit/backup/test_clickhouse_*.py). The modules that do I/O build their SQL from these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from policies.errors import SourceError

SYSTEM_DATABASES = frozenset({"system", "INFORMATION_SCHEMA", "information_schema"})
"""Never backed up through a glob; only when named exactly (and then it is the user's choice)."""

BACKUP_SINCE = (22, 8)
"""The first release whose BACKUP .. TO S3 (with base_backup) we rely on."""

_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- quoting ------------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    """``name`` as a back-quoted identifier; safe for any characters (spaces, dashes, quotes, unicode)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_string(value: str) -> str:
    """``value`` as a single-quoted string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def qualified(database: str, table: str) -> str:
    """``db.table`` for SQL, both parts quoted."""
    return f"{quote_ident(database)}.{quote_ident(table)}"


def column_list(columns: Sequence[tuple[str, str]]) -> str:
    """The names of ``columns`` ((name, type) pairs) for a SELECT or INSERT column list, quoted."""
    return ", ".join(quote_ident(name) for name, _ in columns)


def display_name(database: str, table: str) -> str:
    """``db.table`` for people: quoted only where a part is not a plain identifier."""
    parts = (part if _SIMPLE_NAME.match(part) else quote_ident(part) for part in (database, table))
    return ".".join(parts)


# ---- name filters -------------------------------------------------------------------------------


def glob_matches(glob: str, database: str, table: str) -> bool:
    """Whether ``glob`` selects ``database.table``.

    A glob is matched against ``db.table`` (``features.*``, ``*.events_*``); a glob without a dot
    is also matched against the bare table name, so ``--tables events`` works without the database.
    """
    if fnmatchcase(f"{database}.{table}", glob):
        return True
    return "." not in glob and fnmatchcase(table, glob)


def database_selected(name: str, globs: Iterable[str]) -> bool:
    """Whether a database is backed up: a glob selects it; system databases only when named exactly."""
    globs = list(globs)
    if name in SYSTEM_DATABASES:
        return name in globs
    return any(fnmatchcase(name, glob) for glob in globs)


def table_selected(database: str, table: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """``include`` globs select, ``exclude`` globs then remove (both over ``db.table``)."""
    chosen = any(glob_matches(glob, database, table) for glob in include)
    return chosen and not any(glob_matches(glob, database, table) for glob in exclude)


# ---- engines ------------------------------------------------------------------------------------


class TableRole(StrEnum):
    """What Lifeboat does with a table."""

    DATA = "data"  # rows of its own: exported (per partition for the MergeTree family)
    SCHEMA = "schema"  # definition only: the engine holds no data of its own, or none a SELECT returns
    VIEW = "view"  # view, materialized view, dictionary: definition only, created after the tables


_DATA_ENGINES = re.compile(r"^(Replicated)?\w*MergeTree$|^(Log|TinyLog|StripeLog|Memory)$")
_VIEW_ENGINES = frozenset({"View", "MaterializedView", "LiveView", "WindowView", "Dictionary"})
_UNREADABLE = frozenset({"Set", "Join"})
# Engines that start pulling from (and acknowledging on) an external queue as soon as they exist: a
# restored copy would steal the source's messages, so a restore never creates them by itself.
_CONSUMING = frozenset({"Kafka", "RabbitMQ", "NATS", "S3Queue", "AzureQueue", "FileLog"})
_MERGING = re.compile(
    r"^(Replicated)?(Replacing|Summing|Aggregating|Collapsing|VersionedCollapsing|Graphite|Coalescing)MergeTree$"
)
_INNER_PREFIX = ".inner."
_INNER_ID_PREFIX = ".inner_id."
_INNER_TARGET_PREFIX = ".inner_id.target."  # newer servers name target tables of MVs like this


def classify(engine: str) -> tuple[TableRole, str]:
    """The role of a table of ``engine`` and, for definition-only tables, why (said in the manifest)."""
    if _DATA_ENGINES.match(engine):
        return TableRole.DATA, ""
    if engine in _VIEW_ENGINES:
        return TableRole.VIEW, f"{engine}: definition only, created after the tables it reads"
    if engine in _UNREADABLE:
        return TableRole.SCHEMA, f"engine {engine} cannot be read back by SELECT: definition only"
    return TableRole.SCHEMA, f"engine {engine} holds no data of its own: definition only"


def consumes_queue(engine: str) -> bool:
    """Whether a table of ``engine`` consumes an external queue once created (Kafka, RabbitMQ...)."""
    return engine in _CONSUMING


def partitioned(engine: str) -> bool:
    """Whether tables of ``engine`` have partitions (``_partition_id``, ``system.parts``)."""
    return engine.endswith("MergeTree")


def merging(engine: str) -> bool:
    """Whether background merges of ``engine`` change rows (collapse, sum, replace): such tables keep
    their merges stopped after a restore, so that verification compares the rows as backed up."""
    return bool(_MERGING.match(engine))


def inner_table_owner(name: str, views_by_uuid: dict[str, str]) -> str | None:
    """The materialized view whose storage ``name`` is (``.inner.mv`` or ``.inner_id.<uuid>``), else None."""
    if name.startswith(_INNER_PREFIX):
        return name[len(_INNER_PREFIX) :]
    for prefix in (_INNER_TARGET_PREFIX, _INNER_ID_PREFIX):
        if name.startswith(prefix):
            return views_by_uuid.get(name[len(prefix) :])
    return None


# ---- row hashes ---------------------------------------------------------------------------------

HASH_METHOD = "sum(cityHash64(typed columns)) v1"
"""Recorded with every fingerprint: a different method never compares as equal by accident."""

# Types cityHash64 takes directly on every server we know (18.16 refuses Nullable, Decimal, UUID,
# LowCardinality and Tuple-in-Array; newer ones return NULL for a NULL, which sum() skips).
_NATIVE_HASH = re.compile(
    r"^(U?Int(8|16|32|64)|Float(32|64)|String|FixedString\(\d+\)|Date|DateTime(\(.*\))?|Enum(8|16)\(.*\))$", re.S
)


def row_hash(columns: Sequence[tuple[str, str]]) -> str:
    """A per-row hash over every column, for ``sum(...)``: identical rows hash identically, any value
    change (NULL included) changes it. ``columns`` are (name, type) as system.columns gives them."""
    if not columns:
        raise ValueError("a table without columns has no row hash")
    args = [arg for name, column_type in columns for arg in column_hash_args(quote_ident(name), column_type)]
    return f"cityHash64({', '.join(args)})"


def column_hash_args(expression: str, column_type: str) -> list[str]:
    """cityHash64 arguments that stand for one column of ``column_type``."""
    if column_type.startswith("LowCardinality(") and column_type.endswith(")"):
        inner = column_type[len("LowCardinality(") : -1]
        if inner.startswith("Nullable("):
            return [f"isNull({expression})", f"ifNull(toString({expression}), '')"]
        return [f"toString({expression})"]
    if column_type.startswith("Nullable(") and column_type.endswith(")"):
        inner = column_type[len("Nullable(") : -1]
        return [f"isNull({expression})", _non_null_arg(f"assumeNotNull({expression})", inner)]
    return [_non_null_arg(expression, column_type)]


def _non_null_arg(expression: str, column_type: str) -> str:
    if _natively_hashable(column_type):
        return expression
    if column_type.startswith("AggregateFunction("):
        # The state's bytes can depend on insertion order; its final value does not.
        return f"ifNull(toString(finalizeAggregation({expression})), '')"
    # toString is a faithful text form of any value (Decimal, UUID, Tuple, Map, nested Nullable...).
    return f"toString({expression})"


def _natively_hashable(column_type: str) -> bool:
    if column_type.startswith("Array(") and column_type.endswith(")"):
        return _natively_hashable(column_type[len("Array(") : -1])
    return bool(_NATIVE_HASH.match(column_type))


# ---- versions and strategies ----------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, ...]:
    """``'18.16.1'`` -> ``(18, 16, 1)``; trailing non-numeric parts are ignored."""
    numbers = []
    for part in text.strip().split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
    if not numbers:
        raise ValueError(f"'{text}' is not a ClickHouse version")
    return tuple(numbers)


def supports_backup(version: tuple[int, ...]) -> bool:
    """Whether a server of ``version`` has ``BACKUP .. TO S3`` with ``base_backup``."""
    return version[:2] >= BACKUP_SINCE


@dataclass(frozen=True)
class StrategyChoice:
    strategy: str  # "logical" | "native"
    why: str


def choose_strategy(configured: str, version: tuple[int, ...], s3_repository: bool) -> StrategyChoice:
    """Which strategy a snapshot uses. ``auto`` picks native where the server has BACKUP and the
    repository is in S3 (the server writes there itself), logical otherwise. Raises SourceError when
    ``native`` is configured but impossible, saying why."""
    server = ".".join(map(str, version))
    can_backup = supports_backup(version)
    if configured == "logical":
        return StrategyChoice("logical", "configured")
    if configured == "native" and not can_backup:
        raise SourceError(
            f"strategy native needs BACKUP (ClickHouse >= {'.'.join(map(str, BACKUP_SINCE))}); this server is "
            f"{server}: set strategy: logical (or auto)"
        )
    if configured == "native" and not s3_repository:
        raise SourceError(
            "strategy native makes the server write the backup into the repository's S3 bucket, but this "
            "repository is not in S3: use an s3:// repository or set strategy: logical (or auto)"
        )
    if can_backup and s3_repository:
        return StrategyChoice("native", "configured" if configured == "native" else f"auto: server {server} has BACKUP")
    reason = f"server {server} has no BACKUP" if not can_backup else "the repository is not in S3"
    return StrategyChoice("logical", f"auto: {reason}")
