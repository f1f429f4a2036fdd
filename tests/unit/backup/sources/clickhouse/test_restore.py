"""Which tables a restore plan takes, and the name clashes it refuses (clickhouse.restore, pure)."""

from __future__ import annotations

import pytest

from backup.sources.clickhouse.logical import table_entry
from backup.sources.clickhouse.restore import build_plan
from policies.errors import RestoreError

from .samples import data_entry, header, parts, table


def test_restore_plan_picks_tables_and_refuses_name_clashes() -> None:
    events, mv = table("events"), table("mv", "MaterializedView")
    storage = table(".inner.mv", "SummingMergeTree", owner="mv")
    entries = [table_entry(t) for t in (events, mv, storage)]
    entries.append(data_entry(events, "202611", parts("202611_1_1_0")))
    snapshot = header("features-20261101T000000Z-0000")

    plan = build_plan(snapshot, entries, ["mv"])
    assert [t.name for t in plan.tables] == ["mv", ".inner.mv"], "a view's storage goes with its view"
    assert [t.name for t in plan.view_storage] == [".inner.mv"]
    with pytest.raises(RestoreError, match=r"match no table.*features\.events"):
        build_plan(snapshot, entries, ["nothing*"])
    clash = [table_entry(table("events", database="other")), *entries]
    with pytest.raises(RestoreError, match=r"share a name.*events.*--tables 'db\.\*'"):
        build_plan(snapshot, clash, [])


def test_a_plan_wants_the_recorded_ddl_settings_and_low_cardinalitys_when_a_definition_uses_it() -> None:
    plain = table("plain")
    typed = table("typed", create="CREATE TABLE features.typed (day Date, tag LowCardinality(String)) ENGINE = Log")
    mentioned = table("mentioned", create="CREATE TABLE features.mentioned (s String DEFAULT 'LowCardinality') ENGINE = Log")
    snapshot = header("features-20261101T000000Z-0000")
    snapshot.meta["ddl_settings"] = {"allow_suspicious_codecs": "1"}
    entries = [table_entry(t) for t in (plain, typed, mentioned)]

    assert build_plan(snapshot, entries, ["plain", "mentioned"]).wanted_settings == {"allow_suspicious_codecs": "1"}
    assert build_plan(snapshot, entries, []).wanted_settings == {
        "allow_suspicious_codecs": "1",
        "allow_experimental_low_cardinality_type": "1",
    }
    snapshot.meta.pop("ddl_settings")  # a snapshot of an older Lifeboat records none
    assert build_plan(snapshot, entries, ["plain"]).wanted_settings == {}
