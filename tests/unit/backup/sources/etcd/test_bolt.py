"""Reading ``finishedCompactRev`` (``meta`` bucket) and the live keys (``key`` bucket) of an etcd
snapshot's bbolt file, on files built page by page.

The integration tests read real etcd snapshots; these pin the format details: which meta page
wins, checksums, inline and paged buckets, branch pages, and damaged files.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from backup.sources.etcd import bolt
from backup.sources.etcd.bolt import (
    MAGIC,
    BoltFormatError,
    finished_compact_revision,
    read_snapshot,
    snapshot_key_digests,
    snapshot_keys,
    snapshot_leases_and_auth,
)
from backup.sources.etcd.fingerprint import key_digest

PAGE = 4096
LEAF, BRANCH, META = 0x02, 0x01, 0x04
BUCKET = 0x01


def fnv64a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


def meta_page(pgid: int, *, root: int, txid: int, broken: bool = False) -> bytes:
    body = struct.pack("<IIIIQQQQQ", MAGIC, 2, PAGE, 0, root, 0, 2, 16, txid)
    checksum = fnv64a(body) ^ (1 if broken else 0)
    return (struct.pack("<QHHI", pgid, META, 0, 0) + body + struct.pack("<Q", checksum)).ljust(PAGE, b"\0")


def leaf_page(pgid: int, items: list[tuple[int, bytes, bytes]], *, pad: bool = True) -> bytes:
    elements, data = b"", b""
    data_start = 16 + 16 * len(items)
    for index, (flags, key, value) in enumerate(items):
        pos = data_start + len(data) - (16 + 16 * index)  # counted from the element itself
        elements += struct.pack("<IIII", flags, pos, len(key), len(value))
        data += key + value
    page = struct.pack("<QHHI", pgid, LEAF, len(items), 0) + elements + data
    return page.ljust(PAGE, b"\0") if pad else page


def branch_page(pgid: int, children: list[tuple[bytes, int]]) -> bytes:
    elements, data = b"", b""
    data_start = 16 + 16 * len(children)
    for index, (key, child) in enumerate(children):
        pos = data_start + len(data) - (16 + 16 * index)
        elements += struct.pack("<IIQ", pos, len(key), child)
        data += key
    return (struct.pack("<QHHI", pgid, BRANCH, len(children), 0) + elements + data).ljust(PAGE, b"\0")


def revision(main: int) -> bytes:
    return main.to_bytes(8, "big") + b"_" + (0).to_bytes(8, "big")


def inline_bucket(items: list[tuple[int, bytes, bytes]]) -> bytes:
    return struct.pack("<QQ", 0, 0) + leaf_page(0, items, pad=False)


META_ITEMS = [(0, b"consistent_index", (9).to_bytes(8, "big")), (0, b"finishedCompactRev", revision(412))]


def write(path: Path, *pages: bytes) -> Path:
    path.write_bytes(b"".join(pages))
    return path


def test_an_inline_meta_bucket(tmp_path: Path) -> None:
    root = leaf_page(2, [(BUCKET, b"key", struct.pack("<QQ", 3, 0)), (BUCKET, b"meta", inline_bucket(META_ITEMS))])
    path = write(tmp_path / "s.db", meta_page(0, root=2, txid=5), meta_page(1, root=2, txid=4), root, leaf_page(3, []))
    assert finished_compact_revision(path) == 412


def test_a_paged_meta_bucket_under_a_branch_root(tmp_path: Path) -> None:
    pages = [
        meta_page(0, root=2, txid=7),
        meta_page(1, root=9, txid=6),  # an older transaction's root: must not be used
        branch_page(2, [(b"alarm", 3), (b"lease", 4)]),
        leaf_page(3, [(BUCKET, b"alarm", inline_bucket([])), (BUCKET, b"key", struct.pack("<QQ", 5, 0))]),
        leaf_page(4, [(BUCKET, b"lease", inline_bucket([])), (BUCKET, b"meta", struct.pack("<QQ", 6, 0))]),
        leaf_page(5, []),
        leaf_page(6, META_ITEMS),
    ]
    assert finished_compact_revision(write(tmp_path / "s.db", *pages)) == 412


def test_a_damaged_meta_page_falls_back_to_the_other(tmp_path: Path) -> None:
    good_root = leaf_page(2, [(BUCKET, b"meta", inline_bucket(META_ITEMS))])
    path = write(tmp_path / "s.db", meta_page(0, root=3, txid=9, broken=True), meta_page(1, root=2, txid=8), good_root)
    assert finished_compact_revision(path) == 412


def test_a_db_copy_says_how_long_it_is_on_its_first_page() -> None:
    """bbolt writes a copy of a db meta page first; its high-water page id times its page size is the
    copy's length (an etcd snapshot adds a 32-byte trailer). A page that is not a valid meta says
    nothing."""
    head = meta_page(0, root=2, txid=7)[: bolt.META_END]
    assert bolt.db_size(head) == 16 * PAGE  # meta_page's high-water page id is 16
    assert bolt.db_size(meta_page(0, root=2, txid=7, broken=True)) is None
    assert bolt.db_size(head[:-1]) is None
    assert bolt.db_size(b"\0" * PAGE) is None


def test_a_never_compacted_snapshot_says_zero(tmp_path: Path) -> None:
    root = leaf_page(2, [(BUCKET, b"meta", inline_bucket(META_ITEMS[:1]))])
    assert (
        finished_compact_revision(write(tmp_path / "s.db", meta_page(0, root=2, txid=1), meta_page(1, root=2, txid=1), root))
        == 0
    )


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        pytest.param([b"SQLite format 3\0".ljust(2 * PAGE, b"\0")], "no valid bbolt meta page", id="not-bbolt"),
        pytest.param(
            [
                meta_page(0, root=2, txid=1),
                meta_page(1, root=2, txid=1),
                leaf_page(2, [(BUCKET, b"key", inline_bucket([]))]),
            ],
            "no 'meta' bucket",
            id="no-meta-bucket",
        ),
        pytest.param([meta_page(0, root=7, txid=1), meta_page(1, root=7, txid=1)], "beyond the end", id="truncated"),
        pytest.param(
            [meta_page(0, root=2, txid=1), meta_page(1, root=2, txid=1), meta_page(2, root=2, txid=1)],
            "type 0x4 inside a B\\+tree",
            id="meta-page-as-root",
        ),
    ],
)
def test_damaged_files_are_refused(tmp_path: Path, pages: list[bytes], message: str) -> None:
    with pytest.raises(BoltFormatError, match=message):
        finished_compact_revision(write(tmp_path / "s.db", *pages))


def test_a_branch_that_loops_is_refused(tmp_path: Path) -> None:
    pages = [meta_page(0, root=2, txid=1), meta_page(1, root=2, txid=1), branch_page(2, [(b"a", 2)])]
    with pytest.raises(BoltFormatError, match="makes the B\\+tree loop"):
        finished_compact_revision(write(tmp_path / "s.db", *pages))


def key_value(key: bytes, value: bytes = b"") -> bytes:
    """An ``mvccpb.KeyValue`` with its key (field 1) and value (field 5), as etcd stores a revision."""
    return b"\x0a" + varint(len(key)) + key + (b"\x2a" + varint(len(value)) + value if value else b"")


def varint(number: int) -> bytes:
    out = b""
    while number >= 0x80:
        out += bytes([number & 0x7F | 0x80])
        number >>= 7
    return out + bytes([number])


def test_the_live_keys_are_the_newest_revision_of_each_key(tmp_path: Path) -> None:
    long_key = b"/registry/configmaps/big/" + b"k" * 300  # a two-byte key length
    revisions = [
        (0, revision(2), key_value(b"/registry/pods/a/p1", b"v1")),
        (0, revision(3), key_value(b"/registry/pods/a/p2", b"v1")),
        (0, revision(4), key_value(long_key, b"x" * 5000)),  # spills into an overflow page
        (0, revision(5), key_value(b"/registry/pods/a/p1", b"v2")),  # overwritten: still one key
        (0, revision(6) + b"t", key_value(b"/registry/pods/a/p2")),  # deleted
        (0, revision(7), key_value(b"/registry/pods/a/p3", b"v1")),
    ]
    first = leaf_page(4, revisions[:3], pad=False)
    first = first[:8] + struct.pack("<HHI", LEAF, 3, 1) + first[16:]  # one overflow page
    pages = [
        meta_page(0, root=2, txid=3),
        meta_page(1, root=2, txid=2),
        leaf_page(2, [(BUCKET, b"key", struct.pack("<QQ", 3, 0)), (BUCKET, b"meta", inline_bucket(META_ITEMS))]),
        branch_page(3, [(revision(2), 4), (revision(5), 6)]),
        first.ljust(2 * PAGE, b"\0"),
        leaf_page(6, revisions[3:]),
    ]
    newest, keys = snapshot_keys(write(tmp_path / "s.db", *pages))
    assert newest == 7
    assert sorted(keys) == [long_key, b"/registry/pods/a/p1", b"/registry/pods/a/p3"]


def test_a_key_bucket_entry_that_is_no_revision_is_refused(tmp_path: Path) -> None:
    root = leaf_page(2, [(BUCKET, b"key", inline_bucket([(0, revision(2), b"not a KeyValue")]))])
    with pytest.raises(BoltFormatError, match="not an etcd key revision"):
        snapshot_keys(write(tmp_path / "s.db", meta_page(0, root=2, txid=1), meta_page(1, root=2, txid=1), root))


def full_key_value(key: bytes, value: bytes, create: int, mod: int, version: int, lease: int = 0) -> bytes:
    """An ``mvccpb.KeyValue`` with every field etcd writes (zero fields left out, as gogo-proto does)."""
    out = b"\x0a" + varint(len(key)) + key
    for tag, number in ((0x10, create), (0x18, mod), (0x20, version)):
        out += bytes([tag]) + varint(number) if number else b""
    out += b"\x2a" + varint(len(value)) + value if value else b""
    return out + (b"\x30" + varint(lease) if lease else b"")


def test_every_live_key_is_digested_with_its_value_and_revisions(tmp_path: Path) -> None:
    lease = 0x390DA2425483FA06
    revisions = [
        (0, revision(2), full_key_value(b"/registry/pods/a/p1", b"v1", 2, 2, 1)),
        (0, revision(3), full_key_value(b"/registry/pods/a/p2", b"v1", 3, 3, 1)),
        (0, revision(4), full_key_value(b"/registry/pods/a/p1", b"v2", 2, 4, 2, lease)),
        (0, revision(5) + b"t", full_key_value(b"/registry/pods/a/p2", b"", 0, 5, 0)),
    ]
    root = leaf_page(2, [(BUCKET, b"key", inline_bucket(revisions))])
    newest, digests = snapshot_key_digests(
        write(tmp_path / "s.db", meta_page(0, root=2, txid=1), meta_page(1, root=2, txid=1), root)
    )
    assert newest == 5
    assert digests == {b"/registry/pods/a/p1": key_digest(b"/registry/pods/a/p1", b"v2", 2, 4, 2, lease)}
    assert key_digest(b"/registry/pods/a/p1", b"v2", 2, 4, 2, 0) != digests[b"/registry/pods/a/p1"]


def test_records_in_any_field_order_are_digested_as_protobuf_reads_them(tmp_path: Path) -> None:
    """Fields after the key out of order, repeated (the first counts, as before), multi-byte varints, a negative
    lease and a value above the size digested in one buffer: the same digest as the plain fields."""
    big = bytes(range(256)) * 400  # 100 KiB
    negative = (1 << 64) - 5  # int64 -5 on the wire
    odd = b"\x0a" + varint(5) + b"/x/k1" + b"\x30" + varint(negative) + b"\x2a" + varint(2) + b"v1"
    odd += b"\x2a" + varint(2) + b"v2" + b"\x20" + varint(300) + b"\x18" + varint(70000) + b"\x10" + varint(3)
    odd += b"\x0a" + varint(5) + b"/x/k9"  # the key field again: the first one counts
    revisions = [
        (0, revision(70000), odd),
        (0, revision(70001), full_key_value(b"/x/k2", big, 70001, 70001, 1)),
    ]
    leaf = leaf_page(3, revisions, pad=False)
    overflow = -(-len(leaf) // PAGE) - 1
    leaf = leaf[:8] + struct.pack("<HHI", LEAF, 2, overflow) + leaf[16:]
    pages = [
        meta_page(0, root=2, txid=1),
        meta_page(1, root=2, txid=1),
        leaf_page(2, [(BUCKET, b"key", struct.pack("<QQ", 3, 0))]),
        leaf.ljust((overflow + 1) * PAGE, b"\0"),
    ]
    newest, digests = snapshot_key_digests(write(tmp_path / "s.db", *pages))
    assert newest == 70001
    assert digests == {
        b"/x/k1": key_digest(b"/x/k1", b"v1", 3, 70000, 300, -5),
        b"/x/k2": key_digest(b"/x/k2", big, 70001, 70001, 1, 0),
    }


def test_a_record_in_any_layout_reads_as_protobuf_reads_it() -> None:
    """etcd's own layout is read straight through, any other the general way: both must give the
    same fields, or fail alike. Random records: etcd's layout (long keys and values, large and
    negative numbers, zero fields left out), and the same shuffled, repeated, extended, cut short."""
    rng = random.Random(22)

    def general(raw: bytes) -> object:
        try:
            key, value, *numbers = bolt._key_value_of(bolt._fields(raw))
        except (ValueError, IndexError) as exc:
            return type(exc)
        return key, bytes(value), *numbers

    def fast(raw: bytes) -> object:
        try:
            key, value, *numbers = bolt._key_value(memoryview(raw))
        except (ValueError, IndexError) as exc:
            return type(exc)
        return key, bytes(value), *numbers

    def number() -> int:
        return rng.choice([0, 1, 127, 128, 300, 70_000, 2**40, 2**63 - 1, 2**64 - 5, rng.randrange(2**64)])

    layouts = {"etcd": 0, "other": 0}
    for _ in range(3000):
        key = b"/registry/" + bytes(rng.randrange(32, 127) for _ in range(rng.choice([1, 20, 118, 200])))
        value = rng.randbytes(rng.choice([0, 1, 127, 128, 5000]))
        raw = full_key_value(key, value, number(), number(), number(), number())
        mutation = rng.choice(["none", "none", "shuffle", "repeat", "extra", "cut", "wire"])
        fields = _split(raw)
        if mutation == "shuffle":
            rng.shuffle(fields)
        elif mutation == "repeat":
            fields.insert(rng.randrange(len(fields) + 1), rng.choice(fields))
        elif mutation == "extra":
            fields.insert(rng.randrange(1, len(fields) + 1), b"\x38" + varint(number()))  # field 7
        elif mutation == "wire":
            fields.insert(rng.randrange(1, len(fields) + 1), b"\x2b")  # field 5, wire type 3
        raw = b"".join(fields)
        if mutation == "cut":
            raw = raw[: rng.randrange(1, len(raw))]
        layouts["etcd" if mutation == "none" else "other"] += 1
        assert fast(raw) == general(raw), (mutation, raw[:80])
    assert min(layouts.values()) > 500


def _split(raw: bytes) -> list[bytes]:
    """The fields of a protobuf message, each with its tag, in order."""
    fields, at = [], 0
    while at < len(raw):
        start = at
        tag, at = bolt._varint(memoryview(raw), at)
        number_or_length, at = bolt._varint(memoryview(raw), at)
        at += number_or_length if tag & 0x07 == 2 else 0
        fields.append(raw[start:at])
    return fields


def test_a_snapshot_read_while_it_arrives_counts_only_the_pages_its_tree_names(tmp_path: Path) -> None:
    """Read while the file arrives (the tree's root comes last, as etcd sends it), every leaf is read
    as it comes; a free page still holding old revisions is read too, but never counted."""
    live = [
        (0, revision(5), full_key_value(b"/registry/pods/a/p1", b"v1", 5, 5, 1)),
        (0, revision(6), full_key_value(b"/registry/pods/a/p2", b"v1", 6, 6, 1)),
    ]
    ghost = [(0, revision(3), full_key_value(b"/registry/pods/a/ghost", b"old", 3, 3, 1))]
    pages = [
        meta_page(0, root=5, txid=3),
        meta_page(1, root=5, txid=2),
        leaf_page(2, ghost),  # freed by a later transaction: the tree no longer names it
        leaf_page(3, live[:1]),
        leaf_page(4, live[1:]),
        branch_page(6, [(revision(5), 3), (revision(6), 4)]),
    ]
    root = leaf_page(5, [(BUCKET, b"key", struct.pack("<QQ", 6, 0)), (BUCKET, b"meta", inline_bucket(META_ITEMS))])
    path = write(tmp_path / "s.db", *pages[:5], root, pages[5], b"\1" * 32)  # root, then branch, then a trailer
    arrived: list[int] = []

    def holds(end: int) -> bool:  # the bytes arrive as they are asked for, up to the file's end
        arrived.append(end)
        return end <= path.stat().st_size

    with path.open("rb") as handle:
        contents = read_snapshot(handle, path, holds=holds)
    with path.open("rb") as handle:
        assert read_snapshot(handle, path) == contents
    assert (contents.compacted, contents.newest) == (412, 6)
    assert contents.keys == {
        b"/registry/pods/a/p1": key_digest(b"/registry/pods/a/p1", b"v1", 5, 5, 1, 0),
        b"/registry/pods/a/p2": key_digest(b"/registry/pods/a/p2", b"v1", 6, 6, 1, 0),
    }
    assert arrived.index(3 * PAGE) < arrived.index(6 * PAGE)  # the first leaves before the root


def overflowing_leaf(pgid: int, items: list[tuple[int, bytes, bytes]]) -> bytes:
    """A leaf page with as many overflow pages as its items need, padded to whole pages."""
    leaf = leaf_page(pgid, items, pad=False)
    overflow = -(-len(leaf) // PAGE) - 1
    return (leaf[:8] + struct.pack("<HHI", LEAF, len(items), overflow) + leaf[16:]).ljust((overflow + 1) * PAGE, b"\0")


@pytest.mark.parametrize("block", [PAGE, PAGE + 1, 3 * PAGE - 7, 1024 * 1024])
def test_leaves_read_while_the_file_arrives_are_whole_across_any_read_ahead_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """The arriving read takes blocks of the file at a time: a leaf (with overflow pages) cut by a
    block's end is read whole, and every leaf is found as it comes, at any block size."""
    monkeypatch.setattr(bolt._ReadAhead, "BLOCK", block)
    values = [bytes([n]) * size for n, size in enumerate([10, 9000, 20, 13000])]
    leaves = [
        overflowing_leaf(2, [(0, revision(5), full_key_value(b"/k/a", values[0], 5, 5, 1))]),
        overflowing_leaf(3, [(0, revision(6), full_key_value(b"/k/b", values[1], 6, 6, 1))]),  # pages 3-5
        overflowing_leaf(6, [(0, revision(7), full_key_value(b"/k/c", values[2], 7, 7, 1))]),
        overflowing_leaf(7, [(0, revision(8), full_key_value(b"/k/d", values[3], 8, 8, 1))]),  # pages 7-10
    ]
    branch = branch_page(12, [(revision(5), 2), (revision(6), 3), (revision(7), 6), (revision(8), 7)])
    root = leaf_page(11, [(BUCKET, b"key", struct.pack("<QQ", 12, 0)), (BUCKET, b"meta", inline_bucket(META_ITEMS))])
    path = write(tmp_path / "s.db", meta_page(0, root=11, txid=3), meta_page(1, root=11, txid=2), *leaves, root, branch)
    size = path.stat().st_size
    with path.open("rb") as handle:
        found = bolt.BoltFile(handle, holds=size.__ge__).key_leaves_so_far(path)
    assert sorted(found) == [2, 3, 6, 7]
    with path.open("rb") as handle:
        assert read_snapshot(handle, path, holds=size.__ge__) == read_snapshot(handle, path)
    assert found[7][0] == [(b"/k/d", key_digest(b"/k/d", values[3], 8, 8, 1, 0))]


class CountingReader:
    """A file's reads, counted in bytes."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.read_bytes = 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def read(self, size: int) -> bytes:
        data = self.handle.read(size)
        self.read_bytes += len(data)
        return data


def test_a_snapshot_read_while_it_arrives_is_read_once(tmp_path: Path) -> None:
    """Leaves read as they arrived are not read again when the tree, which comes last, names them:
    a leaf holding a large value spans hundreds of pages (most of a Kubernetes snapshot's bytes)."""
    values = [bytes([n]) * 200_000 for n in range(4)]
    pgid, leaves, children = 2, [], []
    for number, value in enumerate(values):
        key = b"/registry/configmaps/big/cm-%d" % number
        leaf = overflowing_leaf(pgid, [(0, revision(5 + number), full_key_value(key, value, 5 + number, 5 + number, 1))])
        leaves.append(leaf)
        children.append((revision(5 + number), pgid))
        pgid += len(leaf) // PAGE
    root = leaf_page(pgid, [(BUCKET, b"key", struct.pack("<QQ", pgid + 1, 0)), (BUCKET, b"meta", inline_bucket(META_ITEMS))])
    branch = branch_page(pgid + 1, children)
    path = write(tmp_path / "s.db", meta_page(0, root=pgid, txid=3), meta_page(1, root=pgid, txid=2), *leaves, root, branch)
    size = path.stat().st_size
    with path.open("rb") as handle:
        reader = CountingReader(handle)
        contents = read_snapshot(cast(BinaryIO, reader), path, holds=size.__ge__)
    with path.open("rb") as handle:
        assert contents == read_snapshot(handle, path)
    assert len(contents.keys) == 4
    assert reader.read_bytes <= size + 8 * PAGE, f"read {reader.read_bytes} bytes of a {size}-byte file"


def test_leases_users_roles_and_auth_state_are_read_from_their_buckets(tmp_path: Path) -> None:
    lease_id = 0x390DA2425483FA06
    leases = [(0, lease_id.to_bytes(8, "big"), b"\x08" + varint(lease_id) + b"\x10" + varint(3600))]
    users = [
        (0, b"alice", b"\x0a\x05alice\x12\x04hash\x1a\x06reader\x1a\x06writer"),
        (0, b"root", b"\x0a\x04root\x12\x04hash\x1a\x04root"),
    ]
    permission = b"\x12\x0a/registry/\x1a\x0a/registry0"  # read (0, left out), a prefix range
    roles = [(0, b"reader", b"\x0a\x06reader\x12" + varint(len(permission)) + permission)]
    auth = [(0, b"authEnabled", b"\x01"), (0, b"authRevision", (7).to_bytes(8, "big"))]
    root = leaf_page(
        2,
        [
            (BUCKET, b"auth", inline_bucket(auth)),
            (BUCKET, b"authRoles", inline_bucket(roles)),
            (BUCKET, b"authUsers", inline_bucket(users)),
            (BUCKET, b"lease", inline_bucket(leases)),
        ],
    )
    found_leases, found_auth = snapshot_leases_and_auth(
        write(tmp_path / "s.db", meta_page(0, root=2, txid=1), meta_page(1, root=2, txid=1), root)
    )
    assert found_leases["count"] == 1 and found_leases["ttls"] == {"390da2425483fa06": 3600}
    assert found_auth == {
        "enabled": True,
        "users": {"alice": ["reader", "writer"], "root": ["root"]},
        "roles": {"reader": ["read /registry/ .. /registry0"]},
    }
