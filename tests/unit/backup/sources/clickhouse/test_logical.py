"""Which partitions an incremental logical snapshot exports and which it reuses (clickhouse.logical, pure)."""

from __future__ import annotations

from dataclasses import replace

from backup.sources.clickhouse.catalog import Part
from backup.sources.clickhouse.plan import Batch, PartitionJob, TableGroup, batch_jobs, plan_exports
from backup.sources.clickhouse.sql import row_hash

from .samples import data_entry, parts, table


def test_unchanged_partitions_reuse_their_entries_and_changed_ones_are_exported() -> None:
    events, log = table("events"), table("audit", "Log")
    now = {
        events.key: {
            "202609": parts("202609_1_1_0"),
            "202610": parts("202610_2_2_0", "202610_5_5_0"),  # a part was added
            "202611": parts("202611_3_3_0"),
            "202612": parts("202612_6_6_0"),  # a new partition
        }
    }
    previous = {
        ("features", "events", "202609"): data_entry(events, "202609", parts("202609_1_1_0")),
        ("features", "events", "202610"): data_entry(events, "202610", parts("202610_2_2_0")),
        ("features", "events", "202611"): data_entry(events, "202611", parts("202611_3_3_0"), pinned=False),
    }
    plan = plan_exports([events, log, table("daily", "View")], now, previous)

    assert [entry.meta["partition"] for entry in plan.reused] == ["202609"]
    assert [(job.table.name, job.partition) for job in plan.jobs] == [
        ("events", "202610"),
        ("events", "202611"),  # its previous export was not pinned: never trusted again
        ("events", "202612"),
        ("audit", ""),  # a table without partitions is exported whole, every time
    ]


def test_a_changed_definition_or_recreated_parts_force_an_export() -> None:
    events = table("events")
    same_names = parts("202609_1_1_0")
    previous = {("features", "events", "202609"): data_entry(events, "202609", same_names, schema="before-alter")}
    assert plan_exports([events], {events.key: {"202609": same_names}}, previous).jobs

    recreated = (Part("202609_1_1_0", 100, 1_700_000_999),)  # same name, newer part: table dropped and created again
    previous = {("features", "events", "202609"): data_entry(events, "202609", same_names)}
    assert [job.partition for job in plan_exports([events], {events.key: {"202609": recreated}}, previous).jobs] == [
        "202609"
    ]


def test_partition_labels_name_table_and_partition() -> None:
    assert PartitionJob(table("events"), "202611").label == "features.events partition 202611"
    assert PartitionJob(table("odd name", "Log"), "").label == "features.`odd name`"


def test_small_partitions_are_batched_per_table_big_ones_and_whole_tables_stay_alone() -> None:
    events, other, log = table("events"), table("other"), table("audit", "Log")
    ids = [f"2026{month:02d}" for month in range(1, 11)]
    jobs = [PartitionJob(events, pid) for pid in ids] + [PartitionJob(other, "202601"), PartitionJob(log, "")]
    sizes = {events.key: dict.fromkeys(ids, 1000) | {"202605": 64 * 2**20}, other.key: {"202601": 10}}
    pinned = {events.key: {pid: parts(f"{pid}_1_1_0") for pid in ids}, other.key: {"202601": parts("202601_1_1_0")}}

    items = batch_jobs(jobs, sizes, pinned, parallel=2)

    singles = sorted((item.table.name, item.partition) for item in items if isinstance(item, PartitionJob))
    batches = [[job.partition for job in item.jobs] for item in items if isinstance(item, Batch)]
    assert singles == [("audit", ""), ("events", "202605"), ("other", "202601")]
    # Nine small partitions of events in batches of at most ceil(9 / 2), so that both workers have one.
    assert batches == [ids[:4] + ids[5:6], ids[6:]]


def test_a_table_whose_columns_cannot_be_split_is_never_batched() -> None:
    states = replace(table("states"), columns=(("day", "Date"), ("s", "AggregateFunction(uniq, UInt64)")))
    jobs = [PartitionJob(states, pid) for pid in ("202601", "202602")]
    sizes = {states.key: {"202601": 10, "202602": 10}}

    items = batch_jobs(jobs, sizes, {}, parallel=1)

    assert not any(isinstance(item, Batch) for item in items)
    # Its partitions are exported one query each (a group needs no split), fingerprinted together.
    assert [job for item in items for job in (item.jobs if isinstance(item, TableGroup) else [item])] == jobs


def test_the_small_partitions_of_many_tables_are_grouped_across_tables() -> None:
    tables = [table(f"t{number:03d}") for number in range(10)]
    jobs = [PartitionJob(each, "202601") for each in tables] + [PartitionJob(table("audit", "Log"), "")]
    sizes = {each.key: {"202601": 1000} for each in tables} | {("features", "big"): {"202601": 64 * 2**20}}
    jobs.append(PartitionJob(table("big"), "202601"))
    pinned = {each.key: {"202601": parts("202601_1_1_0")} for each in tables}

    items = batch_jobs(jobs, sizes, pinned, parallel=3)

    singles = sorted((item.table.name, item.partition) for item in items if isinstance(item, PartitionJob))
    groups = [[job.table.name for job in item.jobs] for item in items if isinstance(item, TableGroup)]
    assert singles == [("audit", ""), ("big", "202601")]
    # Ten tables' partitions in groups of at most ceil(10 / 3), so that every worker has one.
    assert groups == [["t000", "t001", "t002", "t003"], ["t004", "t005", "t006", "t007"], ["t008", "t009"]]


def test_a_group_keeps_its_fingerprint_query_under_the_servers_query_size() -> None:
    wide = [("day", "Date")] + [(f"column_{number:04d}", "UInt64") for number in range(2000)]
    tables = [replace(table(f"wide{number}"), columns=tuple(wide)) for number in range(8)]
    jobs = [PartitionJob(each, "202601") for each in tables]
    sizes = {each.key: {"202601": 1000} for each in tables}

    items = batch_jobs(jobs, sizes, {}, parallel=1)

    assert len(items) > 1
    for item in items:
        group = item.jobs if isinstance(item, TableGroup) else (item,)
        assert sum(len(row_hash(job.table.columns)) for job in group) < 256 * 1024
