"""The Native row counter: blocks built by hand, fed in every slicing, cut streams refused."""

from __future__ import annotations

import struct

import pytest

from backup.sources.clickhouse.native_rows import NativeRowCounter, UncountableType, layout, split_arguments


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
