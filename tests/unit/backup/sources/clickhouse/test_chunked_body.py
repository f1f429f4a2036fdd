"""The chunked HTTP body of an export, decoded in large reads: the bytes the server framed, in every
slicing of the connection and of the reads; a body cut short or framed wrongly is an error, never a
shorter export."""

from __future__ import annotations

import http.client
import io
import random
from collections.abc import Callable

import pytest

from backup.sources.clickhouse.client import ChunkedBody


class Connection(io.BytesIO):
    """The connection's bytes, handed out in pieces of the lengths ``pieces`` gives (as a socket does)."""

    def __init__(self, data: bytes, pieces: random.Random | None = None) -> None:
        super().__init__(data)
        self._pieces = pieces

    def read1(self, size: int = -1) -> bytes:
        if self._pieces is not None:
            size = min(size, self._pieces.randint(1, 9000))
        return super().read1(size)


def framed(chunks: list[bytes], *, line: str = "{:x}", trailer: bytes = b"") -> bytes:
    """``chunks`` as a chunked body: size line, data, CRLF each, then the last (empty) chunk."""
    body = b"".join(line.format(len(chunk)).encode() + b"\r\n" + chunk + b"\r\n" for chunk in chunks)
    return body + b"0\r\n" + trailer + b"\r\n"


def read_all(body: ChunkedBody, sizes: random.Random) -> bytes:
    out = []
    while data := body.read(sizes.choice([1, 7, 4096, 5000, 65536, 1 << 20])):
        out.append(data)
    return b"".join(out)


def payloads(seed: int) -> list[bytes]:
    """Runs of 4 KiB chunks (as ClickHouse 18.16 sends), single odd ones, runs of another size."""
    rng = random.Random(seed)
    chunks: list[bytes] = []
    for _ in range(20):
        size = rng.choice([4096, 4096, 1, 320, 65536])
        chunks += [rng.randbytes(size) for _ in range(rng.choice([1, 2, 3, 50]))]
    return chunks


@pytest.mark.parametrize("seed", range(12))
def test_every_slicing_gives_the_bytes_the_server_framed(seed: int) -> None:
    chunks = payloads(seed)
    rng = random.Random(seed)
    for line in ("{:x}", "{:X}", "{:x};name=value"):
        connection = Connection(framed(chunks, line=line, trailer=b"X-Trailer: 1\r\n"), rng)
        assert read_all(ChunkedBody(connection), rng) == b"".join(chunks)


def test_a_read_of_all_gives_the_whole_body_and_then_nothing() -> None:
    chunks = payloads(1)
    body = ChunkedBody(Connection(framed(chunks)))
    assert body.read() == b"".join(chunks)
    assert body.read(10) == b""


def test_a_body_cut_anywhere_before_its_last_chunk_is_an_error() -> None:
    data = framed([b"a" * 4096] * 3 + [b"tail"])
    for cut in range(len(data) - len(b"0\r\n\r\n") + 1):
        body = ChunkedBody(Connection(data[:cut], random.Random(cut)))
        with pytest.raises(http.client.IncompleteRead):
            read_all(body, random.Random(cut))


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data.replace(b"\r\n1000\r\n", b"\r\n1001\r\n", 2),  # one chunk says it is longer
        lambda data: data.replace(b"\r\n1000\r\n", b"\r\n0fff\r\n", 2),  # or shorter than it is
        lambda data: data.replace(b"\r\n1000\r\n", b"\r\nzz\r\n", 3),  # a size line that is no size
        lambda data: data.replace(b"\r\n1000\r\n", b"\n\n1000\r\n", 4),  # a chunk not ended by CRLF
    ],
)
def test_framing_that_is_not_chunked_is_an_error(damage: Callable[[bytes], bytes]) -> None:
    data = framed([bytes([index]) * 4096 for index in range(8)])
    damaged = damage(data)
    assert damaged != data
    with pytest.raises(http.client.HTTPException):
        read_all(ChunkedBody(Connection(damaged, random.Random(3))), random.Random(4))
