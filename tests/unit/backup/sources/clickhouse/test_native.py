"""Which native backup builds on which: incrementals until MAX_CHAIN, then a full one (clickhouse.native, pure)."""

from __future__ import annotations

from backup.sources.clickhouse.chain import MAX_CHAIN, NativeBackupInfo
from backup.sources.clickhouse.native import S3Destination, plan_native_backup

from .samples import DESTINATION, chain_of, header


def test_incrementals_chain_until_max_chain_then_a_full_backup() -> None:
    headers = chain_of(MAX_CHAIN + 1)
    infos = [info for h in headers if (info := NativeBackupInfo.of(h))]
    assert len(infos) == MAX_CHAIN + 1
    assert infos[0].base is None
    assert infos[0].url == "http://minio:9000/backups/prod/native/features/features-20261101T000000Z-0000"
    assert infos[2].base == infos[1].location and infos[2].base_snapshot == headers[1].id
    assert infos[2].chain == (infos[1].location, infos[0].location)
    assert [len(info.chain) for info in infos] == [*range(MAX_CHAIN), 0], "a full backup after MAX_CHAIN"


def test_a_base_that_is_gone_or_elsewhere_means_a_full_backup() -> None:
    first = chain_of(1)[0]
    assert (
        plan_native_backup("features", "features-20261102T000000Z-aaaa", first, DESTINATION, base_exists=False).base is None
    )
    moved = S3Destination("http://minio:9000", "other-bucket", "prod")
    assert plan_native_backup("features", "features-20261102T000000Z-aaaa", first, moved, base_exists=True).base is None
    assert (
        plan_native_backup(
            "features", "features-20261102T000000Z-aaaa", header("x-20261101T000000Z-0000"), DESTINATION, base_exists=True
        ).base
        is None
    )
