"""Counting the rows of a ``FORMAT Native`` stream as it passes (pure, no I/O).

An export's row count in the manifest must be the count of the bytes actually stored, not of a
separate ``count()``: a user profile that limits results (``max_result_rows`` with
``result_overflow_mode = 'break'``) cuts an export short without an error. Native over HTTP is a
sequence of blocks: ``varint columns, varint rows``, then per column its name, its type and, when
``rows > 0``, the column's data. The data is skipped by its type (fixed widths, String lengths,
Array offsets, Nullable maps, Tuple elements, LowCardinality dictionaries), never decoded.

Strings are skipped in batches by clickhouse-driver's compiled reader (``read_strings``, C speed)
where a batch lies wholly in the bytes at hand, and one by one in Python at a slice's edge.

A type whose layout is not known here (AggregateFunction states, JSON...) makes the stream
uncountable: ``NativeRowCounter.uncountable`` says why and ``finish`` gives None. A stream that is
not Native or ends inside a block is broken: ``finish`` raises ValueError.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Generator
from dataclasses import dataclass
from functools import cache
from typing import Any, BinaryIO

_COMPACT_AT = 1 << 20  # consumed bytes dropped from the buffer once this many piled up
_STRING_BATCH = 4096  # strings skipped by one call of the compiled reader

_FIXED = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Nothing"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Date"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "DateTime", "Date32", "IPv4"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6"), 16),
    **dict.fromkeys(("UInt256", "Int256"), 32),
}
_FIXED_PREFIXES = {
    "Enum8": 1,
    "Enum16": 2,
    "DateTime": 4,
    "Decimal32": 4,
    "DateTime64": 8,
    "Decimal64": 8,
    "Decimal128": 16,
    "Decimal256": 32,
}
_GEO = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "MultiLineString": "Array(Ring)",
    "Polygon": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}
_CALL = re.compile(r"^(\w+)\((.*)\)$", re.S)
_ELEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s+(?=\S)")

# LowCardinality index flags (ClickHouse SerializationLowCardinality)
_NEED_GLOBAL_DICTIONARY = 1 << 8
_HAS_ADDITIONAL_KEYS = 1 << 9


class UncountableType(ValueError):
    """A column type whose Native layout this module cannot skip."""


@dataclass(frozen=True)
class Layout:
    """How a column of one type is laid out: ``kind`` is fixed, string, nullable, array, tuple or
    lowcardinality; ``width`` for fixed; ``inner`` the nested layouts."""

    kind: str
    width: int = 0
    inner: tuple[Layout, ...] = ()


def layout(type_name: str) -> Layout:
    """The layout of ``type_name`` as Native writes it; raises UncountableType."""
    name = type_name.strip()
    if name in _FIXED:
        return Layout("fixed", _FIXED[name])
    if name == "String":
        return Layout("string")
    if name in _GEO:
        return layout(_GEO[name])
    if name.startswith("Interval"):
        return Layout("fixed", 8)
    call = _CALL.match(name)
    if call is None:
        raise UncountableType(f"type {type_name} is not known to the row counter")
    head, args = call.group(1), call.group(2)
    if head in _FIXED_PREFIXES:
        return Layout("fixed", _FIXED_PREFIXES[head])
    if head == "FixedString":
        return Layout("fixed", int(args))
    if head == "Decimal":
        precision = int(split_arguments(args)[0])
        return Layout("fixed", 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32)
    if head == "Nullable":
        return Layout("nullable", inner=(layout(args),))
    if head == "Array":
        return Layout("array", inner=(layout(args),))
    if head == "Tuple":
        return Layout("tuple", inner=tuple(layout(_ELEMENT_NAME.sub("", arg, count=1)) for arg in split_arguments(args)))
    if head == "Map":
        key, value = split_arguments(args)
        return Layout("array", inner=(Layout("tuple", inner=(layout(key), layout(value))),))
    if head == "LowCardinality":
        inner = args.strip()
        if inner.startswith("Nullable(") and inner.endswith(")"):
            inner = inner[len("Nullable(") : -1]
        return Layout("lowcardinality", inner=(layout(inner),))
    if head == "SimpleAggregateFunction":
        return layout(split_arguments(args)[-1])
    raise UncountableType(f"type {type_name} is not known to the row counter")


def split_arguments(text: str) -> list[str]:
    """Top-level comma-separated arguments of a type (parentheses and quotes respected)."""
    parts: list[str] = []
    depth = 0
    quote = ""
    current: list[str] = []
    escaped = False
    for char in text:
        if quote:
            current.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
            continue
        if char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append("".join(current).strip())
    return parts


_Parse = Generator[None, None, int]


class NativeRowCounter:
    """Fed the bytes of a Native stream in any slices, counts its rows and blocks.

    ``feed`` never raises: a stream it cannot follow stops the counting (``uncountable`` or a
    broken stream); ``finish`` says which."""

    def __init__(self) -> None:
        self.rows = 0
        self.blocks = 0
        self.uncountable: str | None = None  # a column type the counter cannot skip
        self.broken: str | None = None  # not a Native stream
        self._buffer = bytearray()
        self._pos = 0
        self._at_boundary = True
        self._reader: Any = None  # the compiled string reader, made when first needed
        self._parser = self._parse_blocks()
        next(self._parser)

    @classmethod
    def counted(cls, rows: int, blocks: int) -> NativeRowCounter:
        """A finished counter of a whole stream of ``blocks`` blocks holding ``rows`` rows that were
        counted as they passed elsewhere (NativeBlockSplitter: a partition's share of a batch)."""
        counter = cls()
        counter.rows, counter.blocks = rows, blocks
        return counter

    def feed(self, data: bytes) -> None:
        if self._halted() or not data:
            return
        self._drop_consumed()
        self._buffer += data
        try:
            self._parser.send(None)
        except (ValueError, IndexError, struct.error, StopIteration) as exc:
            self._halt(exc)
            self._buffer = bytearray()

    def _halted(self) -> bool:
        return self.uncountable is not None or self.broken is not None

    def _halt(self, exc: Exception) -> None:
        """Stop following the stream: a type the parser cannot skip, or not Native at all."""
        if isinstance(exc, UncountableType):
            self.uncountable = str(exc)
        else:
            self.broken = f"not a Native stream after {self.blocks} blocks: {exc or type(exc).__name__}"

    def _drop_consumed(self) -> None:
        if self._pos >= _COMPACT_AT or self._pos == len(self._buffer):
            del self._buffer[: self._pos]
            self._pos = 0

    def finish(self) -> int | None:
        """The stream's row count; None when a column type is not known (``uncountable`` says
        which). Raises ValueError when the stream is not Native or ends inside a block."""
        if self.broken is not None:
            raise ValueError(self.broken)
        if self.uncountable is not None:
            return None
        if not (self._at_boundary and self._pos == len(self._buffer)):
            raise ValueError(f"the stream ends inside a block (after {self.blocks} whole blocks, {self.rows} rows)")
        return self.rows

    # ---- the parser: a generator that yields whenever it needs more bytes ----

    def _parse_blocks(self) -> Generator[None, None, None]:
        while True:
            self._at_boundary = True
            while self._pos >= len(self._buffer):
                yield
            self._at_boundary = False
            columns = yield from self._varint()
            rows = yield from self._varint()
            yield from self._block(columns, rows)
            self.rows += rows
            self.blocks += 1

    def _block(self, columns: int, rows: int) -> Generator[None, None, None]:
        """The columns of a block of ``rows`` rows, after its two counts."""
        for _ in range(columns):
            yield from self._skip((yield from self._varint()))  # the column's name
            type_name = (yield from self._read((yield from self._varint()))).decode("utf-8", "replace")
            if rows:
                yield from self._column(layout(type_name), rows)

    def _column(self, shape: Layout, rows: int) -> Generator[None, None, None]:
        kind = shape.kind
        if kind == "fixed":
            yield from self._skip(shape.width * rows)
        elif kind == "string":
            yield from self._strings(rows)
        elif kind == "nullable":
            yield from self._skip(rows)
            yield from self._column(shape.inner[0], rows)
        elif kind == "array":
            yield from self._skip(8 * (rows - 1))
            (total,) = struct.unpack("<Q", (yield from self._read(8)))
            if total:
                yield from self._column(shape.inner[0], total)
        elif kind == "tuple":
            for element in shape.inner:
                yield from self._column(element, rows)
        else:  # lowcardinality
            yield from self._low_cardinality(shape.inner[0], rows)

    def _low_cardinality(self, keys: Layout, rows: int) -> Generator[None, None, None]:
        yield from self._skip(8)  # the key serialization version
        done = 0
        while done < rows:
            (flags,) = struct.unpack("<Q", (yield from self._read(8)))
            if flags & _NEED_GLOBAL_DICTIONARY:
                raise UncountableType("LowCardinality with a global dictionary is not known to the row counter")
            if flags & _HAS_ADDITIONAL_KEYS:
                (count,) = struct.unpack("<Q", (yield from self._read(8)))
                if count:
                    yield from self._column(keys, count)
            (indexes,) = struct.unpack("<Q", (yield from self._read(8)))
            yield from self._skip(indexes * (1 << (flags & 0xFF)))
            done += indexes
            if not indexes:
                raise ValueError("LowCardinality granule without rows")

    def _need(self, size: int) -> Generator[None, None, None]:
        while len(self._buffer) - self._pos < size:
            yield

    def _read(self, size: int) -> Generator[None, None, bytes]:
        yield from self._need(size)
        data = bytes(self._buffer[self._pos : self._pos + size])
        self._pos += size
        return data

    def _skip(self, size: int) -> Generator[None, None, None]:
        while True:
            available = len(self._buffer) - self._pos
            if available >= size:
                self._pos += size
                return
            self._pos += available
            size -= available
            yield

    def _varint(self) -> _Parse:
        value = shift = 0
        while True:
            yield from self._need(1)
            byte = self._buffer[self._pos]
            self._pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("a varint longer than 9 bytes: not a Native stream")

    def _strings(self, count: int) -> Generator[None, None, None]:
        """Skip ``count`` length-prefixed strings; the hot loop of the counter."""
        while count:
            batch = min(count, _STRING_BATCH)
            if len(self._buffer) - self._pos >= batch and self._skip_batch(batch):
                count -= batch
                continue
            buffer, pos, end = self._buffer, self._pos, len(self._buffer)
            while count and pos < end:
                byte = buffer[pos]
                if byte < 0x80:
                    if pos + 1 + byte > end:
                        break
                    pos += 1 + byte
                    count -= 1
                    continue
                break  # a long string: read its length the slow way
            self._pos = pos
            if not count:
                return
            if pos < end and buffer[pos] >= 0x80:
                length = yield from self._varint()
                count -= 1
                yield from self._skip(length)
                continue
            if pos < end:  # a short string not wholly here yet
                self._pos += 1
                count -= 1
                yield from self._skip(byte)
                continue
            yield

    def _skip_batch(self, count: int) -> bool:
        """Skip ``count`` strings in one call of the compiled reader when they all lie in the buffer;
        False (nothing skipped) when they do not, or their lengths make no sense (the Python loop then
        waits for more bytes, or finds the stream broken)."""
        if self._reader is None:
            self._reader = _batch_reader()
        reader = self._reader
        reader.buffer, reader.position, reader.current_buffer_size = self._buffer, self._pos, len(self._buffer)
        try:
            reader.read_strings(count)
        except (_BufferEnd, SystemError, MemoryError, OverflowError):
            return False
        finally:
            reader.buffer = _NO_BYTES
        self._pos = reader.position
        return True


class _BufferEnd(Exception):
    """The compiled reader ran past the bytes at hand."""


@cache
def _batch_reader_class() -> type:
    """clickhouse-driver's reader, made to read the counter's buffer and never further (imported when
    first used: importing clickhouse-driver costs a tenth of a second, which a CLI start never pays)."""
    from clickhouse_driver.bufferedreader import BufferedReader

    class BatchReader(BufferedReader):
        def read_into_buffer(self) -> None:
            raise _BufferEnd

    return BatchReader


def _batch_reader() -> Any:
    return _batch_reader_class()(0)


_NO_BYTES = bytearray()


class CountingReader:
    """A binary stream passed through as is, its bytes fed to a ``NativeRowCounter`` on the way."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.counter = NativeRowCounter()

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.counter.feed(data)
        return data


class NativeBlockSplitter(NativeRowCounter):
    """Fed a Native stream whose last column is the String ``key``, gives its blocks one by one in
    ``blocks`` as (key value, rows, the block without the key column), for blocks that hold a single
    key value: a batched export (``SELECT <columns>, _partition_id ...``) split into per-partition
    streams that are byte for byte what a per-partition export sends (the same columns, whole blocks).

    A block whose rows hold several key values, or whose last column is not the key, stops the
    splitting: ``mixed`` says why (the caller exports the partitions one by one instead)."""

    def __init__(self, key: str) -> None:
        self.key = key.encode()
        self.blocks_out: list[tuple[str, int, bytes]] = []
        self.mixed: str | None = None
        super().__init__()

    def _halted(self) -> bool:
        return self.mixed is not None or super()._halted()

    def _halt(self, exc: Exception) -> None:
        if isinstance(exc, _MixedBlock):
            self.mixed = str(exc)
        else:
            super()._halt(exc)

    def _drop_consumed(self) -> None:
        if self._at_boundary and self._pos:  # never mid-block: a block's start must stay where it is
            del self._buffer[: self._pos]
            self._pos = 0

    def take(self) -> list[tuple[str, int, bytes]]:
        """The whole blocks split since the last call."""
        taken, self.blocks_out = self.blocks_out, []
        return taken

    def _block(self, columns: int, rows: int) -> Generator[None, None, None]:
        body = key_at = self._pos
        name, type_name, value = b"", "", ""
        for index in range(columns):
            key_at = self._pos
            name = yield from self._read((yield from self._varint()))
            type_name = (yield from self._read((yield from self._varint()))).decode("utf-8", "replace")
            if rows and index == columns - 1 and name == self.key and type_name == "String":
                value = yield from self._single_value(rows)
            elif rows:
                yield from self._column(layout(type_name), rows)
        if not columns or name != self.key or type_name != "String":
            shown = name.decode("utf-8", "replace")
            raise _MixedBlock(f"the last column of a block is {shown!r} ({type_name}), not {self.key.decode()!r}")
        if rows:
            block = _varint_bytes(columns - 1) + _varint_bytes(rows) + bytes(self._buffer[body:key_at])
            self.blocks_out.append((value, rows, block))

    def _single_value(self, rows: int) -> Generator[None, None, str]:
        """The one value of a String column of ``rows`` values; _MixedBlock when they differ."""
        length = yield from self._varint()
        first = yield from self._read(length)
        one = _varint_bytes(length) + first
        rest = len(one) * (rows - 1)
        yield from self._need(rest)
        if self._buffer[self._pos : self._pos + rest] != one * (rows - 1):
            raise _MixedBlock(f"a block of {rows} rows holds more than one value of the key column")
        self._pos += rest
        return first.decode("utf-8", "replace")


class _MixedBlock(ValueError):
    pass


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
