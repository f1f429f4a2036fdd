"""``repo key add|list|remove``: rotate a repository's key files without rewriting data (keys.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import structlog

from backup.repository.keys import WRAPPED_KEYS, WrappedKey, key_id, list_keys, read_key, wrap, write_key
from backup.repository.repository import CONFIG_KEY, Repository
from backup.repository.store import ObjectNotFound, get_bytes, put_bytes
from policies.errors import UsageError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class KeyListing:
    """The key objects of a repository, and which one the configured key file is (``in_use``);
    ``wrapped`` False: a repository from before key objects, whose key file is its data key."""

    wrapped: bool
    keys: list[WrappedKey]
    in_use: str | None


def repository_keys(repository: Repository) -> KeyListing:
    """The repository's keys; raises UsageError for an unencrypted repository."""
    _encrypted(repository)
    wrapped = bool(repository.config.encryption and repository.config.encryption.get("wrapped_keys"))
    return KeyListing(wrapped, list_keys(repository.store) if wrapped else [], repository.key_id)


def add_key(repository: Repository, new_key: bytes) -> tuple[WrappedKey, bool]:
    """Wrap the data key with ``new_key`` (a key file's); returns its key object and whether the
    repository was migrated to key objects on the way (its own key file wrapped too, then config.json
    marked: no data rewritten). Raises UsageError (unencrypted; the key is one of its keys already)."""
    data_key = _encrypted(repository)
    identity = key_id(new_key)
    if repository.key_id == identity or _has_key(repository, identity):
        raise UsageError(f"that key file is a key of {repository.url} already (key {identity})")
    migrated = repository.key_id is None
    if migrated:  # the configured key file is the data key itself: it becomes a key like any other
        if identity == key_id(data_key):
            raise UsageError(f"that key file is the one in use for {repository.url}: give a new key file")
        own = wrap(data_key, data_key, repository_id=repository.config.id)
        write_key(repository.store, own)
        repository.key_id = own.id
    added = wrap(data_key, new_key, repository_id=repository.config.id)
    write_key(repository.store, added)
    if migrated:
        _mark_wrapped(repository)  # last: until then the repository opens as before
        log.info("repository.keys_migrated", url=repository.url, key=repository.key_id)
    log.info("repository.key_added", url=repository.url, key=added.id)
    return added, migrated


def remove_key(repository: Repository, identity: str) -> WrappedKey:
    """Remove the key object ``identity`` (or a unique start of one); refuses the one the configured
    key file opened and the last one. Raises UsageError."""
    listing = repository_keys(repository)
    if not listing.wrapped:
        raise UsageError(
            f"{repository.url} has no key objects yet: its key file is its data key; `lifeboat repo key add` first"
        )
    matches = [wrapped for wrapped in listing.keys if wrapped.id.startswith(identity)] if identity else []
    if not matches:
        known = ", ".join(wrapped.id for wrapped in listing.keys)
        raise UsageError(f"no key {identity} in {repository.url}; its keys: {known}")
    if len(matches) > 1:
        raise UsageError(f"'{identity}' is the start of {len(matches)} key ids: give more of it")
    [doomed] = matches
    if len(listing.keys) == 1:
        raise UsageError(f"key {doomed.id} is the last key of {repository.url}: without it nothing opens the repository")
    if doomed.id == listing.in_use:
        raise UsageError(
            f"key {doomed.id} is the one the policy's repository.encryption.key_file is: point key_file at another "
            "key first (`lifeboat repo key list` shows them), then remove this one"
        )
    repository.store.delete(doomed.key)
    log.info("repository.key_removed", url=repository.url, key=doomed.id)
    return doomed


def _encrypted(repository: Repository) -> bytes:
    if repository.data_key is None:
        raise UsageError(f"{repository.url} is not encrypted: it has no key to rotate")
    return repository.data_key


def _has_key(repository: Repository, identity: str) -> bool:
    try:
        read_key(repository.store, identity)
    except ObjectNotFound:
        return False
    return True


def _mark_wrapped(repository: Repository) -> None:
    """Add ``encryption.wrapped_keys`` to config.json, keeping every other field as it is (its format)."""
    document = json.loads(get_bytes(repository.store, CONFIG_KEY))
    document["encryption"]["wrapped_keys"] = WRAPPED_KEYS
    put_bytes(repository.store, CONFIG_KEY, json.dumps(document, indent=2).encode() + b"\n")
    encryption = {**(repository.config.encryption or {}), "wrapped_keys": WRAPPED_KEYS}
    repository.config = replace(repository.config, encryption=encryption)
