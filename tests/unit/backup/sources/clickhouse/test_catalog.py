"""Which tables are held back from a restore: queue consumers and what reads them (clickhouse.catalog, pure)."""

from __future__ import annotations

from backup.sources.clickhouse.catalog import held_back
from backup.sources.clickhouse.sql import TableRole

from .samples import table


def test_queue_consumers_and_what_reads_them_are_held_back() -> None:
    kafka = table("events_queue", "Kafka")
    mv = table(
        "events_mv",
        "MaterializedView",
        create="CREATE MATERIALIZED VIEW features.events_mv TO features.events AS SELECT * FROM features.events_queue",
    )
    daily = table("daily", "View", create="CREATE VIEW features.daily AS SELECT * FROM features.events")
    found = held_back([kafka, mv, daily, table("events")])
    assert set(found) == {("features", "events_queue"), ("features", "events_mv")}
    assert "consume" in found[("features", "events_queue")]
    assert table("x").role is TableRole.DATA
