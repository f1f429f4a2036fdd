"""How bytes are sealed into repository objects: chunk ids, zstd, AES-256-GCM.

A stored object is one header byte and a body:

* ``0x00`` raw: the plaintext itself (data zstd cannot shrink, like already compressed models);
* ``0x01`` zstd: one zstd frame of the plaintext, with its content checksum (since repository format 2;
  frames written before carry none and still read). A frame must end exactly where the object ends:
  a truncated frame, trailing bytes or a checksum mismatch is a corrupt object, never garbage;
* ``0x02`` sealed: 12-byte nonce + AES-256-GCM(inner object) where the inner object is ``0x00`` or
  ``0x01`` as above. The associated data is the object's name (its chunk id), so a chunk copied
  under another name fails authentication.

A chunk's id is SHA-256 of its plaintext, or HMAC-SHA-256 with the repository's MAC key when the
repository is encrypted (so ids do not reveal which well-known files the repository holds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from policies.errors import ConfigError, ConfigIssue, IntegrityError

RAW, ZSTD, SEALED = 0, 1, 2
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_CHECK = b"lifeboat repository key check"


class CorruptObject(IntegrityError):
    """An object's bytes cannot be decoded or do not match its name; the caller says which object."""


@dataclass(frozen=True)
class Keys:
    """The two keys derived from a repository key file: one encrypts, one names chunks."""

    encryption: bytes
    mac: bytes

    @classmethod
    def derive(cls, master: bytes, salt: bytes) -> Keys:
        def expand(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(master)

        return cls(encryption=expand(b"lifeboat encryption"), mac=expand(b"lifeboat chunk ids"))

    def check_value(self) -> str:
        """A value stored in config.json that proves a key is the right one without revealing it."""
        return hmac.new(self.mac, _KEY_CHECK, hashlib.sha256).hexdigest()


def read_key_file(path: Path) -> bytes:
    """The 32-byte master key in ``path``: 64 hex characters or base64 (as ``new_key_file`` writes)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), [ConfigIssue("repository.encryption.key_file", f"cannot read the key: {exc}")]
        ) from None
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ConfigError(
        str(path),
        [ConfigIssue("repository.encryption.key_file", "not a repository key: expected 32 bytes as hex or base64")],
    )


def new_key_file(path: Path) -> None:
    """Create a fresh random key file, readable by its owner only; refuse to overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(os.urandom(KEY_BYTES).hex() + "\n")


class Codec:
    """Names, compresses, seals and opens objects. Safe to share between threads."""

    def __init__(self, keys: Keys | None, *, level: int = 3) -> None:
        self.keys = keys
        self.level = level
        self._aead = AESGCM(keys.encryption) if keys else None
        self._local = threading.local()  # zstd contexts are not thread-safe; one per thread

    def chunk_id(self, plaintext: bytes) -> str:
        if self.keys:
            return hmac.new(self.keys.mac, plaintext, hashlib.sha256).hexdigest()
        return hashlib.sha256(plaintext).hexdigest()

    def encode(self, plaintext: bytes, *, name: str) -> bytes:
        compressed = self._compressor().compress(plaintext)
        inner = bytes([ZSTD]) + compressed if len(compressed) < len(plaintext) else bytes([RAW]) + plaintext
        if self._aead is None:
            return inner
        nonce = os.urandom(NONCE_BYTES)
        return bytes([SEALED]) + nonce + self._aead.encrypt(nonce, inner, name.encode())

    def decode(self, stored: bytes, *, name: str) -> bytes:
        """The plaintext of ``stored``; raises CorruptObject (never returns garbage)."""
        if not stored:
            raise CorruptObject("empty object")
        kind = stored[0]
        if kind == SEALED:
            if self._aead is None:
                raise CorruptObject("object is encrypted but the repository has no key")
            nonce, body = stored[1 : 1 + NONCE_BYTES], stored[1 + NONCE_BYTES :]
            try:
                stored = self._aead.decrypt(nonce, body, name.encode())
            except InvalidTag:
                raise CorruptObject("authentication failed (bytes changed, or a wrong key)") from None
            kind = stored[0]
        elif self._aead is not None:
            raise CorruptObject("object is not encrypted in an encrypted repository")
        if kind == RAW:
            return stored[1:]
        if kind == ZSTD:
            try:
                # A stream decoder, not decompress(): it allocates as it goes (a damaged content size
                # in the frame header cannot ask for terabytes) and tells where the frame ended.
                reader = self._decompressor().decompressobj()
                plaintext = reader.decompress(stored[1:])
            except zstandard.ZstdError as exc:
                raise CorruptObject(f"zstd frame is damaged: {exc}") from None
            if not reader.eof:
                raise CorruptObject("zstd frame is truncated")
            if reader.unused_data:
                raise CorruptObject(f"{len(reader.unused_data)} bytes follow the zstd frame")
            return plaintext
        raise CorruptObject(f"unknown object type {kind}")

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        return compressor

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor()
        return decompressor
