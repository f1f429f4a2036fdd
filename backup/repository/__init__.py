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
    """Create the configured repository; an encryption key file that does not exist yet is generated.

    The store is asked first whether it can keep what the policy asks (an S3 bucket without Object
    Lock cannot); when creating fails, a key file generated here is removed again: nothing is left."""
    store = store or open_store(settings)
    if settings.object_lock is not None:
        from backup.repository.s3store import S3Store

        if isinstance(store, S3Store):
            store.require_object_lock()
    key_file = settings.encryption.key_file if settings.encryption else None
    generated = False
    if key_file and not key_file.exists():
        new_key_file(key_file)
        generated = True
    try:
        repository = Repository.init(store, key=read_key_file(key_file) if key_file else None)
    except BaseException:
        if generated and key_file:
            key_file.unlink(missing_ok=True)  # it encrypts nothing: a later init makes a new one
        raise
    if generated:
        log.warning("repository.key_created", key_file=str(key_file), advice="keep a copy outside this machine")
    return repository


__all__ = ["STORES", "Repository", "RepositoryNotFound", "init_repository", "open_repository", "open_store"]
