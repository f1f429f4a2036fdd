"""The Native row counter: blocks built by hand, fed in every slicing, cut streams refused."""

from __future__ import annotations

import struct

import pytest

from backup.sources.clickhouse.native_rows import (
    NativeBlockSplitter,
    NativeRowCounter,
    UncountableType,
    layout,
    split_arguments,
)


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def string(data: bytes) -> bytes:
    return varint(len(data)) + data


def block(rows: int, *columns: tuple[str, bytes]) -> bytes:
    body = varint(len(columns)) + varint(rows)
    for type_name, data in columns:
        body += string(b"c") + string(type_name.encode()) + data
    return body


def sample() -> bytes:
    strings = [b"", b"x" * 200, b"abc"]  # 200 needs a two-byte length
    arrays = [[b"a", b"b"], [], [b"c"]]
    offsets = b"".join(struct.pack("<Q", total) for total in (2, 2, 3))
    return b"".join(
        [
            block(
                3,
                ("UInt32", struct.pack("<3I", 1, 2, 3)),
                ("String", b"".join(string(s) for s in strings)),
                ("Nullable(Int8)", b"\x00\x01\x00" + b"\x05\x00\x07"),
                ("Array(String)", offsets + b"".join(string(s) for a in arrays for s in a)),
                ("Tuple(a UInt8, b FixedString(2))", b"\x01\x02\x03" + b"aabbcc"),
                ("Decimal(20, 3)", b"\x00" * 48),
            ),
            block(2, ("UInt32", struct.pack("<2I", 4, 5)), ("String", string(b"q") + string(b""))),
            block(0, ("UInt32", b"")),
        ]
    )


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_rows_are_counted_whatever_the_slices(step: int) -> None:
    data = sample()
    counter = NativeRowCounter()
    for start in range(0, len(data), step):
        counter.feed(data[start : start + step])
    assert (counter.finish(), counter.blocks) == (5, 3)


def test_an_empty_stream_has_no_rows_and_a_cut_one_is_refused() -> None:
    assert NativeRowCounter().finish() == 0
    counter = NativeRowCounter()
    counter.feed(sample()[:-5])
    with pytest.raises(ValueError, match="ends inside a block"):
        counter.finish()


def test_an_unknown_type_makes_the_stream_uncountable_not_wrong() -> None:
    counter = NativeRowCounter()
    counter.feed(block(1, ("AggregateFunction(uniq, UInt64)", b"\x01\x02")))
    assert counter.finish() is None and "AggregateFunction" in (counter.uncountable or "")
    with pytest.raises(UncountableType):
        layout("JSON")


def test_type_arguments_split_at_the_top_level_only() -> None:
    assert split_arguments("'a, b' = 1, 'c' = 2") == ["'a, b' = 1", "'c' = 2"]
    assert split_arguments("UInt8, Tuple(String, Array(UInt8))") == ["UInt8", "Tuple(String, Array(UInt8))"]
    assert layout("LowCardinality(Nullable(String))").inner[0].kind == "string"
    assert layout("Map(String, UInt64)").kind == "array"


def keyed_block(rows: int, key: bytes | list[bytes], values: bytes) -> bytes:
    keys = key if isinstance(key, list) else [key] * rows
    body = varint(2) + varint(rows)
    body += string(b"v") + string(b"UInt32") + values
    return body + string(b"_partition_id") + string(b"String") + b"".join(string(k) for k in keys)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_batched_export_splits_into_the_blocks_a_per_partition_export_sends(step: int) -> None:
    data = keyed_block(2, b"202609", struct.pack("<2I", 1, 2)) + keyed_block(1, b"202610", struct.pack("<I", 3))
    data += keyed_block(0, [], b"")
    splitter = NativeBlockSplitter("_partition_id")
    split = []
    for start in range(0, len(data), step):
        splitter.feed(data[start : start + step])
        split += splitter.take()

    assert splitter.finish() == 3 and splitter.mixed is None
    assert split == [
        ("202609", 2, block(2, ("UInt32", struct.pack("<2I", 1, 2))).replace(b"\x01c", b"\x01v")),
        ("202610", 1, block(1, ("UInt32", struct.pack("<I", 3))).replace(b"\x01c", b"\x01v")),
    ]
    counter = NativeRowCounter()
    counter.feed(split[0][2])
    assert counter.finish() == 2


def test_a_block_of_two_partitions_or_without_the_key_stops_the_splitting() -> None:
    mixed = NativeBlockSplitter("_partition_id")
    mixed.feed(keyed_block(2, [b"202609", b"202610"], struct.pack("<2I", 1, 2)))
    assert mixed.mixed and not mixed.take()

    keyless = NativeBlockSplitter("_partition_id")
    keyless.feed(block(1, ("UInt32", struct.pack("<I", 3))))
    assert keyless.mixed and not keyless.take()


def many_strings(rows: int) -> bytes:
    """A block of ``rows`` strings of every length class: empty, one-byte and two-byte lengths, and
    a few longer than the slices the tests feed."""
    values = [b"v" * (index % 300) for index in range(rows)]
    values[rows // 2] = b"L" * 70_000
    offsets = b"".join(struct.pack("<Q", 2 * (index + 1)) for index in range(rows))
    nested = b"".join(string(b"n%d" % index) + string(b"") for index in range(rows))
    return block(rows, ("String", b"".join(string(value) for value in values)), ("Array(String)", offsets + nested))


@pytest.mark.parametrize("step", [1000, 4097, 65_536, 1 << 20])
def test_long_string_columns_are_counted_whatever_the_slices(step: int) -> None:
    data = many_strings(20_000) + many_strings(5_000) + block(0, ("String", b""))
    counter = NativeRowCounter()
    for start in range(0, len(data), step):
        counter.feed(data[start : start + step])
    assert (counter.finish(), counter.blocks) == (25_000, 3)
    cut = NativeRowCounter()
    cut.feed(data[: len(data) // 2])
    with pytest.raises(ValueError, match="ends inside a block"):
        cut.finish()


def test_a_string_length_past_any_sense_is_a_cut_stream_not_a_crash() -> None:
    absurd = b"\xff" * 9 + b"\x7f"  # a ten-byte varint: no String is that long
    data = block(5000, ("String", absurd + b"x" * 10_000))
    counter = NativeRowCounter()
    counter.feed(data)
    with pytest.raises(ValueError):
        counter.finish()


@pytest.mark.parametrize("step", [4097, 1 << 20])
def test_a_batch_of_long_blocks_splits_like_short_ones(step: int) -> None:
    rows = 10_000
    values = b"".join(string(b"s" * (index % 200)) for index in range(rows))
    keyed = varint(2) + varint(rows) + string(b"v") + string(b"String") + values
    data = keyed + string(b"_partition_id") + string(b"String") + string(b"202609") * rows
    splitter = NativeBlockSplitter("_partition_id")
    split = []
    for start in range(0, len(data), step):
        splitter.feed(data[start : start + step])
        split += splitter.take()
    assert splitter.finish() == rows
    assert split == [("202609", rows, varint(1) + varint(rows) + string(b"v") + string(b"String") + values)]
