"""Object keys as paths under a restore directory: never outside it, and reversible."""

from __future__ import annotations

import posixpath
import random
from pathlib import PurePosixPath

import pytest

from backup.sources.s3.keypath import key_to_path, path_to_key

ODD_KEYS = [
    "plain.txt",
    "with space/file name.txt",
    "ünïcødé/データ/файл.bin",
    "plus+sign",
    "percent%20encoded%2Flooking%",
    "%",
    "%+",
    "%2E%2E",
    "double//slash",
    "a/../../etc/passwd",
    "../escape",
    "..",
    ".",
    "./x",
    "/absolute/path",
    "/",
    "//",
    "trailing/",
    "...",
    ".hidden/..a/b..",
    "nul\0byte",
    "tab\tnew\nline",
    "L" * 1024,
    "deep/" + "ü" * 509 + "x",
    "x" * 239 + "%" + "y" * 300,
    "y" * 250 + "..",
]


def _assert_safe(key: str, path: str) -> None:
    segments = path.split("/")
    assert all(segment not in ("", ".", "..") for segment in segments), (key, path)
    assert all(len(segment.encode("utf-8", "surrogatepass")) <= 255 for segment in segments), key
    assert "\0" not in path
    root = "/restore/root"
    assert posixpath.normpath(f"{root}/{path}").startswith(root + "/"), (key, path)


@pytest.mark.parametrize("key", ODD_KEYS)
def test_odd_keys_map_inside_the_directory_and_back(key: str) -> None:
    path = key_to_path(key)
    _assert_safe(key, path)
    assert path_to_key(path) == key


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("a/../../etc/passwd", "a/%2E%2E/%2E%2E/etc/passwd"),
        ("/etc/passwd", "%/etc/passwd"),
        ("dir/", "dir/%"),
        ("a//b", "a/%/b"),
        ("100%", "100%25"),
        (".", "%2E"),
        ("...", "..."),
        ("models/v1/weights.bin", "models/v1/weights.bin"),
    ],
)
def test_the_mapping_is_readable_for_people(key: str, path: str) -> None:
    assert key_to_path(key) == path


def test_a_long_segment_is_cut_into_marked_pieces_without_splitting_characters() -> None:
    key = "ü" * 600  # 1,200 bytes in one segment
    pieces = key_to_path(key).split("/")
    assert len(pieces) == 5
    assert all(piece.endswith("%+") for piece in pieces[:-1]) and not pieces[-1].endswith("%+")
    assert "".join(piece.removesuffix("%+") for piece in pieces) == key


def test_random_keys_round_trip_and_stay_inside() -> None:
    alphabet = ["a", "b", "/", "/", ".", "..", "%", "+", "%+", "%2E", " ", "\0", "ü", "データ", "-", "_"]
    rng = random.Random(20261129)
    for _ in range(3_000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 400)))
        key = key.encode()[:1024].decode("utf-8", "ignore") or "k"
        path = key_to_path(key)
        _assert_safe(key, path)
        assert path_to_key(path) == key


def test_distinct_keys_get_distinct_paths() -> None:
    keys = ["a", "a/", "a//", "/a", "%", "", "%25", ".", "%2E", "..", "a/.", "a/%2E"]
    paths = [key_to_path(key) for key in keys]
    assert len(set(paths)) == len(keys)


@pytest.mark.parametrize(
    "path",
    ["a/%ZZ", "half%2", "dangling%+", "%2Ex", "a/%2e%2e", "x%2By", ".lifeboat-%"],
)
def test_paths_a_restore_never_writes_are_not_taken_for_keys(path: str) -> None:
    with pytest.raises(ValueError):
        path_to_key(path)


def test_files_of_a_restore_map_back_to_their_keys() -> None:
    for key in ODD_KEYS:
        relative = PurePosixPath(key_to_path(key)).as_posix()
        assert path_to_key(relative) == key
