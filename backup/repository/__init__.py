"""The backup repository: stores, chunks, manifests, locks, check and prune (DESIGN section 3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import structlog

from backup.repository.codec import new_key_file, read_key_file
from backup.repository.repository import Repository, RepositoryNotFound
from backup.repository.store import LocalStore, Store
from policies.model import Repository as RepositorySettings

log = structlog.get_logger(__name__)

# One store class per URL scheme of `repository.url`.
STORES: dict[str, Callable[[RepositorySettings], Store]] = {
    "file": lambda settings: LocalStore(Path(settings.prefix)),
    "s3": lambda settings: _s3_store(settings),
}


def _s3_store(settings: RepositorySettings) -> Store:
    from backup.repository.s3store import S3Store  # boto3 costs every start 0.1 s: only when used

    return S3Store.from_settings(settings)


def open_store(settings: RepositorySettings) -> Store:
    return STORES[settings.scheme](settings)


def open_repository(settings: RepositorySettings, *, create: bool = False, store: Store | None = None) -> Repository:
    """Open the configured repository; with ``create``, make it (and its key file) when absent.

    ``store`` replaces the configured store (the drills pass a fault-injecting wrapper)."""
    store = store or open_store(settings)
    key_file = settings.encryption.key_file if settings.encryption else None
    try:
        return Repository.open(store, key=read_key_file(key_file) if key_file else None)
    except RepositoryNotFound:
        if not create:
            raise
    return init_repository(settings, store=store)


def init_repository(settings: RepositorySettings, *, store: Store | None = None) -> Repository:
    """Create the configured repository; an encryption key file that does not exist yet is generated."""
    store = store or open_store(settings)
    key_file = settings.encryption.key_file if settings.encryption else None
    if key_file and not key_file.exists():
        new_key_file(key_file)
        log.warning("repository.key_created", key_file=str(key_file), advice="keep a copy outside this machine")
    return Repository.init(store, key=read_key_file(key_file) if key_file else None)


__all__ = ["STORES", "Repository", "RepositoryNotFound", "init_repository", "open_repository", "open_store"]
