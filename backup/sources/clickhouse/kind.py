"""What the rest of Lifeboat knows of the ClickHouse kind (the registry line names ``KIND``)."""

from backup.sources.base import RestoreFlag, SourceKind

KIND = SourceKind(
    name="clickhouse",
    checks="backup.sources.clickhouse.checks:ClickHouseChecks",
    source="backup.sources.clickhouse.source:ClickHouseSource",
    restore_flags=(
        RestoreFlag("to_host", "server to restore into."),
        RestoreFlag("to_port", "native port (default 9000).", type=int),
        RestoreFlag("to_http_port", "HTTP port (default 8123).", type=int),
        RestoreFlag("to_database", "database to create the tables in."),
        RestoreFlag("tables", "only these tables (repeatable).", multiple=True, metavar="GLOB"),
    ),
    target_credentials=("to_user", "to_password"),
    part_merge="backup.sources.clickhouse.merge:merge_parts",
    prune_hook="backup.sources.clickhouse.chain:NativeBackupPruning",
    doctor="backup.sources.clickhouse.doctor:doctor",
)
