"""Object keys as relative file paths and back: how a restore into a directory names its files
without ever leaving the directory (``key_to_path``), and how verify reads them (``path_to_key``)."""

from __future__ import annotations

import re

_NAME_MAX = 255  # bytes in one file name (Linux file systems)
_PIECE_MAX = 240  # bytes of a too-long segment per path piece, leaving room for the mark
_CONTINUED = "%+"
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def key_to_path(key: str) -> str:
    """A relative path for ``key`` that stays inside any directory it is joined to, reversibly.

    Per '/'-separated segment: '%' becomes '%25' and NUL '%00'; an empty segment (from '//', a
    leading or a trailing '/') becomes '%'; '.' and '..' become '%2E' and '%2E%2E'; a segment
    longer than a file name may be is cut into pieces of at most 240 bytes, each but the last ending
    in '%+'. Every '%' of the key itself is escaped, so these marks cannot be key text: no path
    segment is ever empty, '.' or '..', and ``path_to_key`` gives the key back."""
    return "/".join(piece for segment in key.split("/") for piece in _encode_segment(segment))


def _encode_segment(segment: str) -> list[str]:
    if not segment:
        return ["%"]
    text = segment.replace("%", "%25").replace("\0", "%00")
    if len(text.encode("utf-8", "surrogatepass")) <= _NAME_MAX:
        return [_dots(text)]
    pieces = _cut(text)
    return [piece + _CONTINUED for piece in pieces[:-1]] + [_dots(pieces[-1])]


def _dots(text: str) -> str:
    return text.replace(".", "%2E") if text in (".", "..") else text


def _cut(text: str) -> list[str]:
    """``text`` in pieces of at most _PIECE_MAX bytes, never splitting a character or a %XX escape."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    index = 0
    while index < len(text):
        token = text[index : index + 3] if text[index] == "%" else text[index]
        width = len(token.encode("utf-8", "surrogatepass"))
        if size + width > _PIECE_MAX:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(token)
        size += width
        index += len(token)
    pieces.append("".join(current))
    return pieces


def path_to_key(path: str) -> str:
    """The key that ``key_to_path`` made ``path`` from; ValueError for a path it cannot have made."""
    segments: list[str] = []
    pending = ""
    for piece in path.split("/"):
        if piece.endswith(_CONTINUED):
            pending += piece[: -len(_CONTINUED)]
            continue
        segments.append(_decode_segment(pending + piece))
        pending = ""
    key = "/".join(segments)
    if pending or key_to_path(key) != path:
        raise ValueError(f"{path!r} is not a path Lifeboat writes for an object key")
    return key


def _decode_segment(text: str) -> str:
    if text == "%":
        return ""
    if "%" in _ESCAPE.sub("", text):
        raise ValueError(f"stray '%' in {text!r}")
    return _ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)
