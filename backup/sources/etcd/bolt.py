"""Just enough of the bbolt file format to read an etcd snapshot's ``meta`` and ``key`` buckets.

The ``key`` bucket gives the census of a snapshot straight from the file (``snapshot_keys``): every
revision of every key not yet compacted, keyed by revision, the value an ``mvccpb.KeyValue`` whose
first field is the user key; a deletion is a tombstone revision (a ``t`` after the 17 bytes). The
newest revision of each key says whether it is live. This reads exactly what the snapshot holds,
costs the cluster nothing, and cannot race a compaction.

Why the ``meta`` bucket: ``etcdctl snapshot status`` reports as "revision" the newest revision still present in the
``key`` bucket. When the newest writes were deletions and a compaction reached them (an idle
cluster under periodic auto-compaction, an operator's ``etcdctl compact``), their tombstones are
gone and that number is *older* than the snapshot's real revision, which etcd itself (on restore)
takes as ``max(newest key revision, finishedCompactRev)``. A census read at the older revision is
refused as compacted, and a restored member reports the newer one. So we read
``finishedCompactRev`` here, the way etcd's mvcc restore does.

Format (go.etcd.io/bbolt, little-endian): pages of ``page_size`` bytes, each with a 16-byte header
(id u64, flags u16, count u16, overflow u32). Pages 0 and 1 hold the meta (magic, version,
page size, flags, root bucket {root pgid, sequence}, freelist, high-water pgid, txid, FNV-1a
checksum); the valid one with the higher txid wins. Branch pages hold (pos, ksize, child pgid)
elements, leaf pages (flags, pos, ksize, vsize); ``pos`` counts from the element itself. A bucket's
value is {root pgid, sequence}; root 0 means the bucket's single page follows inline in the value.
Memory stays at the pages visited, plus (for the census) one entry per distinct key.

A snapshot can be read while it arrives (``read_snapshot`` with ``holds``): the tree's root and
branch pages are written last by bbolt's copy-on-write commits, so a walk from the root would wait
for the whole file; instead every page shaped like a ``key`` leaf is read in file order as it comes
(``BoltFile.key_leaves_so_far``), and once the file is whole the walk takes the leaves it names
from there. A leaf's records depend only on its bytes, so the result is the walk's own.

The values: ``snapshot_key_digests`` decodes each revision's ``mvccpb.KeyValue`` (key 1, create_revision
2, mod_revision 3, version 4, value 5, lease 6) with a small protobuf reader and keeps one 64-bit
digest per key (fingerprint.py) where the census kept a flag. ``snapshot_leases_and_auth`` reads the
``lease`` bucket (8-byte big-endian id -> ``leasepb.Lease`` {ID 1, TTL 2 as granted}), ``auth``
(``authEnabled`` = 1 byte), ``authUsers`` (name -> ``authpb.User`` {name 1, password 2, roles 3})
and ``authRoles`` (name -> ``authpb.Role`` {name 1, keyPermission 2 = {permType 1, key 2,
range_end 3}}); etcd 3.4 keeps no record of the built-in ``root`` role.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from backup.sources.etcd.fingerprint import auth_fingerprint, key_digest, leases_fingerprint, permission_text

MAGIC = 0xED0CDAED
_PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid
_CHECKSUM = struct.Struct("<Q")
_BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, child pgid
_LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BUCKET = struct.Struct("<QQ")  # root pgid, sequence
_BRANCH_PAGE, _LEAF_PAGE = 0x01, 0x02
_BUCKET_LEAF = 0x01
_KEY_FIELD = 0x0A  # mvccpb.KeyValue: field 1 (key), length-delimited
_REVISION_SIZE = 17  # 8-byte main, '_', 8-byte sub; a tombstone adds b"t"
_MAX_DEPTH = 64  # a B+tree of a multi-TiB db is far shallower; deeper means a loop in a broken file


class BoltFormatError(ValueError):
    """The file is not a bbolt database this reader understands."""


META_END = _PAGE_HEADER.size + _META.size + _CHECKSUM.size  # a meta page's bytes that hold its meta


@dataclass(frozen=True)
class _Meta:
    page_size: int
    root: int  # the root bucket's page
    pages: int  # the high-water page id: the db's size is pages * page_size
    txid: int


def _meta(page: bytes) -> _Meta | None:
    """The meta of a meta page's first META_END bytes, None if they are not a valid one."""
    if len(page) < META_END:
        return None
    raw = page[_PAGE_HEADER.size : META_END]
    magic, version, page_size, _flags, root, _seq, _freelist, pages, txid = _META.unpack_from(raw)
    (checksum,) = _CHECKSUM.unpack_from(raw, _META.size)
    if magic != MAGIC or version != 2 or _fnv64a(raw[: _META.size]) != checksum or page_size < 512:
        return None
    return _Meta(page_size, root, pages, txid)


def db_size(head: bytes) -> int | None:
    """The size of the bbolt db whose first META_END bytes are ``head``: its high-water page id
    times its page size; None when ``head`` is not a valid meta page. bbolt writes a copy of a db
    (``Tx.WriteTo``, which is what etcd sends as a snapshot) meta pages first, then every page up
    to that size: the first page says how long the copy will be."""
    meta = _meta(head)
    return None if meta is None else meta.pages * meta.page_size


def _fnv64a(data: bytes) -> int:
    value = 0xCBF29CE484222325
    for byte in data:
        value = ((value ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return value


class BoltFile:
    """Read-only access to the buckets of a bbolt file (an etcd snapshot or db).

    ``holds(end)`` says whether the file reaches ``end`` bytes; for a file still being written (a
    snapshot being saved) it waits until the bytes are there or the file is known to end before
    them, so the buckets can be read while the file arrives. By default: the file's size now."""

    def __init__(self, handle: BinaryIO, *, holds: Callable[[int], bool] | None = None) -> None:
        self._handle = handle
        if holds is None:
            size = handle.seek(0, 2)
            holds = size.__ge__
        self._holds = holds
        first = self._meta(0)
        # Page 1 sits one page in; if page 0 is damaged, assume the usual 4 KiB page.
        second = self._meta(first.page_size if first else 4096)
        metas = [meta for meta in (first, second) if meta is not None]
        if not metas:
            raise BoltFormatError("no valid bbolt meta page (not an etcd snapshot, or a damaged one)")
        newest = max(metas, key=lambda meta: meta.txid)
        self.page_size, self.root, self.txid = newest.page_size, newest.root, newest.txid

    def _meta(self, offset: int) -> _Meta | None:
        """The meta page at ``offset``, None if it is not valid."""
        if not self._holds(offset + META_END):
            return None
        self._handle.seek(offset)
        return _meta(self._handle.read(META_END))

    def _page(self, pgid: int) -> bytes:
        """Page ``pgid`` with its overflow pages: one read for a page without any (most of them)."""
        if not self._holds((pgid + 1) * self.page_size):
            raise BoltFormatError(f"page {pgid} lies beyond the end of the file")
        self._handle.seek(pgid * self.page_size)
        page = self._handle.read(self.page_size)
        if len(page) < self.page_size:
            raise BoltFormatError(f"page {pgid} lies beyond the end of the file")
        overflow = _PAGE_HEADER.unpack_from(page)[3]
        if not overflow:
            return page
        if not self._holds((pgid + overflow + 1) * self.page_size):
            raise BoltFormatError(f"page {pgid} claims {overflow} overflow pages past the end: the file is damaged")
        return page + self._handle.read(overflow * self.page_size)

    def _leaves(
        self, page: bytes, pgid: int | None = None, *, known: Container[int] = ()
    ) -> Iterator[tuple[int | None, bytes]]:
        """(page id, page) of every leaf page under ``page`` (id ``pgid``; None for a bucket inlined
        in its parent), in key order, one read at a time (iterative: no generator chain per level,
        and only page ids wait on the stack). ``known``: ids of pages already read as leaves
        (``key_leaves_so_far``), given as (id, b"") without reading them again: a leaf holding a
        large value spans hundreds of pages."""
        pending: list[tuple[int, int]] = []
        seen: set[int] = set()
        depth = 0
        while True:
            _id, flags, count, _overflow = _PAGE_HEADER.unpack_from(page)
            if flags & _LEAF_PAGE:
                yield pgid, page
            elif flags & _BRANCH_PAGE:
                elements = (
                    _BRANCH_ELEMENT.unpack_from(page, _PAGE_HEADER.size + i * _BRANCH_ELEMENT.size) for i in range(count)
                )
                pending.extend(reversed([(element[2], depth + 1) for element in elements]))
            else:
                raise BoltFormatError(f"page of type {flags:#x} inside a B+tree: the file is damaged")
            while True:
                if not pending:
                    return
                pgid, depth = pending.pop()
                if depth > _MAX_DEPTH or pgid in seen:
                    raise BoltFormatError(f"page {pgid} makes the B+tree loop: the file is damaged")
                seen.add(pgid)
                if pgid not in known:
                    break
                yield pgid, b""
            page = self._page(pgid)

    def _items(self, page: bytes) -> Iterator[tuple[int, memoryview, memoryview]]:
        """(flags, key, value) of every leaf element under ``page``, in key order; views into the page."""
        for _pgid, leaf in self._leaves(page):
            yield from _leaf_items(leaf)

    def leaves(self, name: bytes, *, known: Container[int] = ()) -> Iterator[tuple[int | None, bytes]]:
        """(page id or None when inlined, page) of every leaf page of top-level bucket ``name``, in
        key order; ``_leaf_items`` gives their items. A page in ``known`` comes as (id, b""): see
        ``_leaves``.

        Raises KeyError when there is no such bucket, BoltFormatError when the file is damaged."""
        for flags, key, value in self._items(self._page(self.root)):
            if key == name and flags & _BUCKET_LEAF:
                root, _sequence = _BUCKET.unpack_from(value)
                if root == 0:
                    return self._leaves(bytes(value[_BUCKET.size :]))
                return self._leaves(self._page(root), root, known=known)
        raise KeyError(name.decode(errors="replace"))

    def items(self, name: bytes) -> Iterator[tuple[memoryview, memoryview]]:
        """(key, value) of every item of top-level bucket ``name``, in key order, one page in memory
        at a time; the views are valid until the next item.

        Raises KeyError when there is no such bucket, BoltFormatError when the file is damaged."""
        return (
            (item_key, item_value) for _pgid, leaf in self.leaves(name) for _flags, item_key, item_value in _leaf_items(leaf)
        )

    def key_leaves_so_far(self, where: object) -> dict[int, KeyLeaf]:
        """Every page that reads as a leaf of etcd's ``key`` bucket, by page id, read in file order
        while the file arrives (``holds`` waits for its bytes) until it ends. Which pages are in the
        bucket is only known from the tree, whose root a snapshot sends last; a page's records
        depend on its bytes alone, so ``_key_digests`` takes them from here for the pages the tree
        names (the rest, free pages with old records, are never used). A page that does not read
        as one is left out (read again, and judged, if the tree names it)."""
        found: dict[int, KeyLeaf] = {}
        ahead = _ReadAhead(self._handle, self._holds)
        pgid = 2  # after the two meta pages
        while (page := ahead.read(pgid * self.page_size, self.page_size)) is not None:
            _id, flags, count, overflow = _PAGE_HEADER.unpack_from(page)
            if not flags & (_LEAF_PAGE | _BRANCH_PAGE):
                pgid += 1  # meta, freelist or garbage: its overflow count is not to be trusted
                continue
            if flags & _LEAF_PAGE and count and _looks_like_key_leaf(page):
                if overflow and (page := ahead.read(pgid * self.page_size, (overflow + 1) * self.page_size)) is None:
                    break
                with contextlib.suppress(struct.error, IndexError, ValueError):
                    found[pgid] = _key_leaf(page, where)
            pgid += overflow + 1
        return found

    def bucket(self, name: bytes) -> dict[bytes, bytes]:
        """Every key and value of top-level bucket ``name`` (meant for small buckets like ``meta``)."""
        return {bytes(key): bytes(value) for key, value in self.items(name)}


class _ReadAhead:
    """Reads a file forward in blocks of at least ``BLOCK`` bytes (one wait and one read where a page
    at a time would take hundreds), for ``key_leaves_so_far``; ``holds`` as in BoltFile."""

    BLOCK = 1024 * 1024

    def __init__(self, handle: BinaryIO, holds: Callable[[int], bool]) -> None:
        self._handle = handle
        self._holds = holds
        self._start = 0  # file offset of self._buffer[0]
        self._buffer = b""

    def read(self, offset: int, size: int) -> bytes | None:
        """``size`` bytes at ``offset`` (not before the last read's offset), None when the file ends
        before them."""
        end = offset + size
        if end > self._start + len(self._buffer):
            if not self._holds(end):
                return None
            kept = self._buffer[offset - self._start :] if offset < self._start + len(self._buffer) else b""
            start = offset + len(kept)
            ahead = max(end, start + self.BLOCK)
            self._handle.seek(start)
            more = self._handle.read((ahead if self._holds(ahead) else end) - start)
            self._start, self._buffer = offset, kept + more
            if len(self._buffer) < size:
                return None
        at = offset - self._start
        return self._buffer[at : at + size]


def _leaf_items(leaf: bytes) -> Iterator[tuple[int, memoryview, memoryview]]:
    """(flags, key, value) of every element of one leaf page; views into the page."""
    view = memoryview(leaf)
    for index in range(_PAGE_HEADER.unpack_from(leaf)[2]):
        at = _PAGE_HEADER.size + index * _LEAF_ELEMENT.size
        element_flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(leaf, at)
        start = at + pos
        yield element_flags, view[start : start + ksize], view[start + ksize : start + ksize + vsize]


def _looks_like_key_leaf(page: bytes) -> bool:
    """Whether a leaf page's first element is shaped like a revision of etcd's ``key`` bucket."""
    at = _PAGE_HEADER.size
    _flags, pos, ksize, vsize = _LEAF_ELEMENT.unpack_from(page, at)
    start = at + pos + ksize
    return ksize in (_REVISION_SIZE, _REVISION_SIZE + 1) and vsize > 0 and start < len(page) and page[start] == _KEY_FIELD


def revision_main(raw: bytes) -> int:
    """etcd's 17-byte revision key (8-byte big-endian main, ``_``, 8-byte sub) -> main revision."""
    if len(raw) < 8:
        raise BoltFormatError(f"{raw.hex()} is not an etcd revision")
    return int.from_bytes(raw[:8], "big")


def snapshot_keys(path: Path) -> tuple[int, list[bytes]]:
    """(newest revision in the ``key`` bucket, every key live at it) of an etcd snapshot or db.

    Raises BoltFormatError when the file is not a readable etcd db."""
    live: dict[bytes, bool] = {}
    newest = 0
    try:
        with path.open("rb") as handle:
            for revision, value in BoltFile(handle).items(b"key"):  # in revision order: the last word wins
                if len(revision) < _REVISION_SIZE or not value or value[0] != _KEY_FIELD:
                    raise BoltFormatError(f"{path}: an entry of the 'key' bucket is not an etcd key revision")
                live[_user_key(value)] = len(revision) == _REVISION_SIZE
                newest = revision_main(bytes(revision[:8]))
    except KeyError:
        raise BoltFormatError(f"{path} has no 'key' bucket: not an etcd snapshot") from None
    except (struct.error, IndexError, ValueError) as exc:
        raise BoltFormatError(f"{path} is damaged: {exc}") from None
    return newest, [key for key, alive in live.items() if alive]


def _user_key(value: memoryview) -> bytes:
    """The key field of an ``mvccpb.KeyValue`` (tag 0x0a, varint length, bytes)."""
    length = shift = 0
    at = 1
    while True:
        byte = value[at]
        at += 1
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift > 35:
            raise ValueError("a key length that no etcd key has")
    if at + length > len(value):
        raise ValueError("a key longer than its entry")
    return bytes(value[at : at + length])


def finished_compact_revision(path: Path) -> int:
    """The revision etcd had compacted up to when the snapshot was taken (0: never compacted).

    Raises BoltFormatError when the file is not a readable bbolt db with etcd's ``meta`` bucket."""
    with path.open("rb") as handle:
        return _compact_revision(BoltFile(handle), path)


def _compact_revision(bolt: BoltFile, where: object) -> int:
    try:
        meta = bolt.bucket(b"meta")
    except KeyError:
        raise BoltFormatError(f"{where} has no 'meta' bucket: not an etcd snapshot") from None
    except struct.error as exc:
        raise BoltFormatError(f"{where} is damaged: {exc}") from None
    raw = meta.get(b"finishedCompactRev")
    return revision_main(raw) if raw else 0


# ---- values, leases and auth ----------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotContents:
    """What a snapshot's buckets say, read in one pass (``read_snapshot``)."""

    compacted: int  # finishedCompactRev (0: never compacted)
    newest: int  # the newest revision in the ``key`` bucket
    keys: dict[bytes, int]  # every key live at it -> its digest (fingerprint.key_digest)
    leases: dict[str, Any]  # fingerprint.leases_fingerprint
    auth: dict[str, Any]  # fingerprint.auth_fingerprint


def read_snapshot(handle: BinaryIO, where: object, *, holds: Callable[[int], bool] | None = None) -> SnapshotContents:
    """The compaction revision, live keys with their digests, leases and auth of an etcd snapshot,
    opened once (``holds``: see BoltFile; a snapshot can be read while it arrives). ``where`` names
    the file in errors. Raises BoltFormatError when it is not a readable etcd db."""
    bolt = BoltFile(handle, holds=holds)
    known = bolt.key_leaves_so_far(where) if holds is not None else None
    compacted = _compact_revision(bolt, where)
    newest, keys = _key_digests(bolt, where, known=known)
    leases, auth = _leases_and_auth(bolt, where)
    return SnapshotContents(compacted, newest, keys, leases, auth)


def snapshot_key_digests(path: Path) -> tuple[int, dict[bytes, int]]:
    """(newest revision in the ``key`` bucket, every key live at it -> its digest, fingerprint.key_digest).

    Raises BoltFormatError when the file is not a readable etcd db."""
    with path.open("rb") as handle:
        return _key_digests(BoltFile(handle), path)


def _key_digests(bolt: BoltFile, where: object, *, known: dict[int, KeyLeaf] | None = None) -> tuple[int, dict[bytes, int]]:
    """``known``: leaf pages already read (``BoltFile.key_leaves_so_far``), by page id."""
    live: dict[bytes, int | None] = {}
    newest = 0
    known = known if known is not None else {}
    try:
        for pgid, leaf in bolt.leaves(b"key", known=known):  # in revision order: the last word wins
            keys, last = known.pop(pgid) if pgid in known else _key_leaf(leaf, where)
            live.update(keys)
            newest = last if last is not None else newest
    except KeyError:
        raise BoltFormatError(f"{where} has no 'key' bucket: not an etcd snapshot") from None
    except (struct.error, IndexError, ValueError) as exc:
        if isinstance(exc, BoltFormatError):
            raise
        raise BoltFormatError(f"{where} is damaged: {exc}") from None
    return newest, {key: digest for key, digest in live.items() if digest is not None}


# One leaf page of the ``key`` bucket: (key, its digest or None for a tombstone) of each revision in
# order, and the newest revision on the page (None: no element).
KeyLeaf = tuple[list[tuple[bytes, int | None]], int | None]


def _key_leaf(leaf: bytes, where: object) -> KeyLeaf:
    """The records of one leaf page of the ``key`` bucket. Raises BoltFormatError (not a key
    revision), ValueError / IndexError / struct.error (damaged)."""
    records: list[tuple[bytes, int | None]] = []
    revision: bytes | memoryview = b""
    for _flags, revision, value in _leaf_items(leaf):
        if len(revision) < _REVISION_SIZE or not value or value[0] != _KEY_FIELD:
            raise BoltFormatError(f"{where}: an entry of the 'key' bucket is not an etcd key revision")
        if len(revision) == _REVISION_SIZE:
            key, content, create, mod, version, lease = _key_value(value)
            records.append((key, key_digest(key, content, create, mod, version, lease)))
        else:
            records.append((_user_key(value), None))  # a tombstone
    return records, revision_main(bytes(revision[:8])) if revision else None  # the last is the newest


def snapshot_leases_and_auth(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(leases, auth) of an etcd snapshot or db, as fingerprint.leases_fingerprint / auth_fingerprint
    shape them. Raises BoltFormatError when the file is damaged."""
    with path.open("rb") as handle:
        return _leases_and_auth(BoltFile(handle), path)


def _leases_and_auth(bolt: BoltFile, where: object) -> tuple[dict[str, Any], dict[str, Any]]:
    leases: dict[int, int] = {}
    users: dict[str, list[str]] = {}
    roles: dict[str, list[str]] = {}
    try:
        for _id, value in _bucket_items(bolt, b"lease"):
            fields = _fields(value)
            leases[_signed(fields.get(1, [0])[0])] = _signed(fields.get(2, [0])[0])
        enabled = _bucket(bolt, b"auth").get(b"authEnabled", b"\0") == b"\x01"
        for name, value in _bucket_items(bolt, b"authUsers"):
            users[_text(name)] = [_text(role) for role in _fields(value).get(3, [])]
        for name, value in _bucket_items(bolt, b"authRoles"):
            permissions = []
            for raw in _fields(value).get(2, []):
                permission = _fields(raw)
                permissions.append(
                    permission_text(
                        permission.get(1, [0])[0], bytes(permission.get(2, [b""])[0]), bytes(permission.get(3, [b""])[0])
                    )
                )
            roles[_text(name)] = permissions
    except (struct.error, IndexError, ValueError, TypeError) as exc:
        if isinstance(exc, BoltFormatError):
            raise
        raise BoltFormatError(f"{where} is damaged: {exc}") from None
    return leases_fingerprint(leases), auth_fingerprint(enabled, users, roles)


def _bucket_items(bolt: BoltFile, name: bytes) -> Iterator[tuple[memoryview, memoryview]]:
    try:
        return bolt.items(name)
    except KeyError:  # etcd creates every bucket at start-up; a db without one has nothing in it
        return iter(())


def _bucket(bolt: BoltFile, name: bytes) -> dict[bytes, bytes]:
    try:
        return bolt.bucket(name)
    except KeyError:
        return {}


def _text(raw: Any) -> str:
    return bytes(raw).decode("utf-8", errors="backslashreplace")


def _key_value(raw: memoryview) -> tuple[bytes, bytes | memoryview, int, int, int, int]:
    """(key, value, create_revision, mod_revision, version, lease) of an ``mvccpb.KeyValue``; the value
    is a view into ``raw``. etcd writes fields 1 to 6 in order, leaving out the zero ones: that layout
    is read straight through (a snapshot holds a record per revision); any other as ``_fields`` reads
    it (the first occurrence of a field counts). Raises ValueError for a wire type no etcd message
    uses, or a field longer than its message."""
    end = len(raw)
    length, at = _varint(raw, 1)  # raw[0] is the key's tag
    key, at = bytes(raw[at : at + length]), at + length
    create = mod = version = lease = 0
    value: bytes | memoryview = b""
    tag = raw[at] if at < end else 0
    if tag == 0x10:
        create, at = _varint(raw, at + 1)
        tag = raw[at] if at < end else 0
    if tag == 0x18:
        mod, at = _varint(raw, at + 1)
        tag = raw[at] if at < end else 0
    if tag == 0x20:
        version, at = _varint(raw, at + 1)
        tag = raw[at] if at < end else 0
    if tag == 0x2A:
        length, at = _varint(raw, at + 1)
        value, at = raw[at : at + length], at + length
        tag = raw[at] if at < end else 0
    if tag == 0x30:
        lease, at = _varint(raw, at + 1)
    if at != end:  # another layout, or damaged
        return _key_value_of(_fields(raw))
    return key, value, _signed(create), _signed(mod), _signed(version), _signed(lease)


def _key_value_of(fields: dict[int, list[Any]]) -> tuple[bytes, bytes, int, int, int, int]:
    key, value = bytes(fields.get(1, [b""])[0]), bytes(fields.get(5, [b""])[0])
    create, mod, version, lease = (_signed(fields.get(number, [0])[0]) for number in (2, 3, 4, 6))
    return key, value, create, mod, version, lease


def _fields(raw: Any) -> dict[int, list[Any]]:
    """Every field of a protobuf message by number: varints as ints, length-delimited as views
    (repeated fields in order). Raises ValueError for a wire type no etcd message uses."""
    data = memoryview(raw)
    fields: dict[int, list[Any]] = {}
    at = 0
    while at < len(data):
        tag, at = _varint(data, at)
        wire = tag & 0x07
        value: int | memoryview
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            if at + length > len(data):
                raise ValueError("a protobuf field longer than its message")
            value, at = data[at : at + length], at + length
        else:
            raise ValueError(f"protobuf wire type {wire} in an etcd record")
        fields.setdefault(tag >> 3, []).append(value)
    return fields


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    if data[at] < 0x80:  # most lengths and versions
        return data[at], at + 1
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("a protobuf varint longer than 10 bytes")


def _signed(value: int) -> int:
    """A protobuf int64 read as an unsigned varint -> its signed value."""
    return value - (1 << 64) if value >= 1 << 63 else value
