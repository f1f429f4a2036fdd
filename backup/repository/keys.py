"""Repository keys: the data key wrapped by one or more key files, so it can be rotated (as restic).

The *data key* is the 32-byte master from which the chunk encryption key and the chunk-id MAC key
are derived (codec.Keys); it never changes, so rotating a key rewrites no data. A key file (the
policy's ``repository.encryption.key_file``) is a *key-encryption key*: ``keys/<id>.json`` holds the
data key sealed with it (AES-256-GCM under a key HKDF-derived from the key file, the repository id
and the key's id as associated data). A key's id is derived from the key file itself, so opening
reads exactly one key object, and a key file with no object (removed) is a wrong key.

``config.json``'s ``encryption.wrapped_keys`` says the repository works this way. Repositories made
before it have no such field: their key file *is* the data key, and they still open with it. The
first ``repo key add`` migrates one in place: it wraps the data key with the old key file and with
the new one, then marks ``config.json``; no chunk or manifest is rewritten. (On such a repository
the old key file stays the data key itself: removing its key object stops it from opening the
repository through Lifeboat, but whoever holds a copy of it can still decrypt the data. The same
holds for any key once unwrapped: rotation protects from a lost key file going forward, it does
not re-encrypt what was written.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backup.repository.codec import KEY_BYTES, NONCE_BYTES
from backup.repository.store import ObjectNotFound, Store, get_bytes, put_bytes
from policies.errors import IntegrityError, LifeboatError

KEYS_PREFIX = "keys/"
WRAPPED_KEYS = "keys/<id>.json: the data key sealed by each key file (repo key add|list|remove)"
_ID_CHARS = 16


class RepositoryKeyError(LifeboatError):
    """The key given does not open this repository (or one is missing)."""


@dataclass(frozen=True)
class WrappedKey:
    """One key object: the data key sealed with one key file."""

    id: str
    created: str
    nonce: bytes
    sealed: bytes

    @property
    def key(self) -> str:
        return key_object(self.id)

    def to_json(self) -> bytes:
        doc = {
            "id": self.id,
            "created": self.created,
            "cipher": "AES-256-GCM",
            "kdf": "HKDF-SHA256",
            "nonce": self.nonce.hex(),
            "data_key": self.sealed.hex(),
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> WrappedKey:
        try:
            doc = json.loads(data)
            return cls(doc["id"], doc["created"], bytes.fromhex(doc["nonce"]), bytes.fromhex(doc["data_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"key object {where} is damaged: {exc}") from None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "created": self.created}


def key_object(key_id: str) -> str:
    return f"{KEYS_PREFIX}{key_id}.json"


def key_id(key_file_key: bytes) -> str:
    """The id of a key file's key object: derived from the key file, revealing nothing of it."""
    return hmac.new(key_file_key, b"lifeboat key id", hashlib.sha256).hexdigest()[:_ID_CHARS]


def wrap(data_key: bytes, key_file_key: bytes, *, repository_id: str) -> WrappedKey:
    """The data key sealed with ``key_file_key`` for the repository ``repository_id``."""
    identity = key_id(key_file_key)
    nonce = os.urandom(NONCE_BYTES)
    sealed = _aead(key_file_key, repository_id).encrypt(nonce, data_key, _associated(repository_id, identity))
    return WrappedKey(identity, datetime.now(UTC).isoformat(), nonce, sealed)


def unwrap_data_key(store: Store, key_file_key: bytes, *, repository_id: str) -> tuple[bytes, str]:
    """(data key, key id) that the key file opens; raises RepositoryKeyError (no key object is this
    key file's, or it does not open) or IntegrityError (its object is damaged)."""
    identity = key_id(key_file_key)
    try:
        wrapped = read_key(store, identity)
    except ObjectNotFound:
        known = len(list_keys(store))
        raise RepositoryKeyError(
            f"wrong repository key: it does not open {store.url} (none of its {known} key(s) is this key file, "
            f"id {identity}; was it removed with `lifeboat repo key remove`?)"
        ) from None
    try:
        data_key = _aead(key_file_key, repository_id).decrypt(
            wrapped.nonce, wrapped.sealed, _associated(repository_id, identity)
        )
    except InvalidTag:
        raise RepositoryKeyError(
            f"wrong repository key: key {identity} of {store.url} does not open with it (its object was changed, "
            "or belongs to another repository)"
        ) from None
    if len(data_key) != KEY_BYTES:
        raise IntegrityError(f"key object {wrapped.key} of {store.url} holds no data key of {KEY_BYTES} bytes")
    return data_key, identity


def read_key(store: Store, identity: str) -> WrappedKey:
    """The key object ``identity``; raises ObjectNotFound or IntegrityError."""
    return WrappedKey.from_json(get_bytes(store, key_object(identity)), f"{store.url} {key_object(identity)}")


def write_key(store: Store, wrapped: WrappedKey) -> None:
    put_bytes(store, wrapped.key, wrapped.to_json())


def list_keys(store: Store) -> list[WrappedKey]:
    """Every key object, oldest first."""
    found = []
    for info in store.list(KEYS_PREFIX):
        name = info.key.rsplit("/", 1)[-1]
        if name.endswith(".json"):
            try:
                found.append(read_key(store, name.removesuffix(".json")))
            except ObjectNotFound:
                continue  # removed since the listing
    return sorted(found, key=lambda wrapped: (wrapped.created, wrapped.id))


def _aead(key_file_key: bytes, repository_id: str) -> AESGCM:
    wrapping = HKDF(
        algorithm=hashes.SHA256(), length=KEY_BYTES, salt=repository_id.encode(), info=b"lifeboat key wrapping"
    ).derive(key_file_key)
    return AESGCM(wrapping)


def _associated(repository_id: str, identity: str) -> bytes:
    return f"lifeboat key {repository_id} {identity}".encode()
