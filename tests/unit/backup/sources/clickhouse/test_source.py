"""Which restore targets a ClickHouse source accepts and which it refuses (clickhouse.source, no server)."""

from __future__ import annotations

import pytest

from backup.sources.base import RestoreOptions
from backup.sources.clickhouse.source import ClickHouseSource
from policies.errors import RestoreError
from policies.model import ClickHouseSettings


def source() -> ClickHouseSource:
    settings = ClickHouseSettings.model_validate(
        {
            "kind": "clickhouse",
            "host": "ch-1.ml.svc",
            "port": 9000,
            "http_port": 8123,
            "databases": ["features"],
            "password": "pw",
        }
    )
    return ClickHouseSource("features", settings)


def test_target_options_are_parsed_with_the_source_credentials() -> None:
    target = source().parse_target(RestoreOptions.of(to_host="scratch-ch", to_database="drill", tables=("events",)))
    assert (target.endpoint.host, target.endpoint.port, target.endpoint.http_port) == ("scratch-ch", 9000, 8123)
    assert (target.database, target.tables, target.endpoint.password) == ("drill", ("events",), "pw")
    assert "pw" not in repr(target) and target.credentials == "user default with the source's password"
    drill = source().parse_target(
        RestoreOptions.of(to_host="scratch-ch", to_database="drill", to_user="drill", to_password="pw2")
    )
    assert (drill.endpoint.user, drill.endpoint.password) == ("drill", "pw2")
    assert drill.credentials == "user drill with the target's password"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            RestoreOptions.of(to_bucket="b", to_host="h", to_database="d"),
            "--to-bucket does not apply to a ClickHouse source; use --to-host",
        ),
        (RestoreOptions.of(to_data_dir="/x", in_place=True), "--to-data-dir, --in-place do not apply"),
        (RestoreOptions.of(to_host="h"), "needs --to-host and --to-database"),
        (RestoreOptions.of(to_database="d"), "needs --to-host and --to-database"),
    ],
)
def test_options_of_other_kinds_or_missing_ones_are_refused(options: RestoreOptions, message: str) -> None:
    with pytest.raises(RestoreError, match=message.replace("(", r"\(")):
        source().parse_target(options)


@pytest.mark.parametrize(
    ("host", "port", "database", "refused"),
    [
        ("ch-1.ml.svc", None, "features", True),
        ("CH-1.ml.svc", 9000, "features", True),
        ("ch-1.ml.svc", None, "scratch", False),
        ("scratch-ch", None, "features", False),
        ("ch-1.ml.svc", 19000, "features", False),  # another server on the same host (its HTTP port differs too)
    ],
)
def test_the_source_itself_is_never_a_target(host: str, port: int | None, database: str, refused: bool) -> None:
    options = RestoreOptions.of(to_host=host, to_port=port, to_http_port=18123 if port else None, to_database=database)
    if refused:
        with pytest.raises(RestoreError, match="that is the source itself"):
            source().parse_target(options)
    else:
        assert source().parse_target(options).database == database
