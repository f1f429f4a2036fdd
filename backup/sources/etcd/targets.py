"""Where an etcd snapshot can be restored to, parsed from ``lifeboat restore``'s options, and the
member options (``--name``, ``--initial-cluster``, ``--initial-advertise-peer-urls``) checked the
way ``snapshot restore`` and a joining member would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backup.sources.base import RestoreOptions, flag_of
from backup.sources.etcd.kind import KIND
from policies.errors import RestoreUsageError
from policies.model import EtcdTls

_MEMBER_OPTIONS = ("name", "initial_cluster", "initial_advertise_peer_urls")
TARGET_HELP = (
    "use --to-file PATH (the verified snapshot db), or --to-data-dir DIR --name NAME "
    "--initial-cluster NAME=PEER-URL,... --initial-advertise-peer-urls PEER-URL (a member data dir)"
)


@dataclass(frozen=True)
class EtcdFileTarget:
    """``--to-file PATH``: the verified snapshot db, for ``etcdctl``/``etcdutl snapshot restore`` elsewhere."""

    path: Path


@dataclass(frozen=True)
class EtcdDataDirTarget:
    """``--to-data-dir DIR``: a member data dir made by ``snapshot restore`` for member ``name``."""

    data_dir: Path
    name: str
    initial_cluster: str
    initial_advertise_peer_urls: str
    etcd_bin: str = "etcd"  # the server binary a verification starts on the restored dir

    @property
    def members(self) -> dict[str, list[str]]:
        return parse_initial_cluster(self.initial_cluster)


@dataclass(frozen=True)
class EtcdEndpointTarget:
    """A running etcd holding restored data (a drill's scratch member): verified over its client URL."""

    endpoint: str
    tls: EtcdTls | None = None


EtcdTarget = EtcdFileTarget | EtcdDataDirTarget | EtcdEndpointTarget


def parse_restore_target(options: RestoreOptions, *, source: str, etcd_bin: str) -> EtcdFileTarget | EtcdDataDirTarget:
    """``--to-file PATH`` or ``--to-data-dir DIR`` with the member options, for etcd source ``source``;
    ``etcd_bin`` is the server a verification of a data dir starts. Raises RestoreError for options
    of other source kinds, a missing or doubled target, or inconsistent membership."""
    foreign = options.foreign(KIND.target_options)
    if foreign:
        flags = ", ".join(flag_of(name) for name in foreign)
        verb = "does" if len(foreign) == 1 else "do"
        raise RestoreUsageError(f"{flags} {verb} not apply to etcd source '{source}'; {TARGET_HELP}")
    if bool(options.get("to_file")) == bool(options.get("to_data_dir")):
        both = "give only one of --to-file and --to-data-dir" if options.get("to_file") else "say where to restore"
        raise RestoreUsageError(f"{both}: {TARGET_HELP}")
    members = options.given(*_MEMBER_OPTIONS)
    if options.get("to_file"):
        if members:
            raise RestoreUsageError(f"{', '.join(map(flag_of, members))} apply only with --to-data-dir")
        return EtcdFileTarget(Path(options.get("to_file")).expanduser().absolute())
    missing = [flag_of(name) for name in _MEMBER_OPTIONS if name not in members]
    if missing:
        raise RestoreUsageError(f"--to-data-dir also needs {', '.join(missing)}: the member's identity in its cluster")
    name, cluster, peer_urls = (str(options.get(option)) for option in _MEMBER_OPTIONS)
    check_membership(name, cluster, peer_urls)
    data_dir = Path(options.get("to_data_dir")).expanduser().absolute()
    return EtcdDataDirTarget(data_dir, name, cluster, peer_urls, etcd_bin=etcd_bin)


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """``n1=https://a:2380,n2=https://b:2380`` -> ``{"n1": ["https://a:2380"], "n2": [...]}``.

    A member may appear more than once (several peer URLs). Raises ValueError saying what is wrong."""
    members: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"'{item}' is not NAME=PEER-URL")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
            raise ValueError(f"'{url}' (member {name}) is not a peer URL like https://10.0.0.11:2380")
        members.setdefault(name, []).append(url)
    if not members:
        raise ValueError("it names no member")
    return members


def check_membership(name: str, initial_cluster: str, advertise_urls: str) -> None:
    """Refuse member options that ``snapshot restore`` would reject or, worse, accept into a member
    that can never join its cluster. Raises RestoreError naming the option to fix."""
    try:
        members = parse_initial_cluster(initial_cluster)
    except ValueError as exc:
        raise RestoreUsageError(f"--initial-cluster '{initial_cluster}': {exc}") from None
    if name not in members:
        raise RestoreUsageError(f"--name {name} is not a member of --initial-cluster ({', '.join(members)})")
    urls = sorted(filter(None, (url.strip() for url in advertise_urls.split(","))))
    if urls != sorted(members[name]):
        raise RestoreUsageError(
            f"--initial-advertise-peer-urls {advertise_urls} must be member {name}'s URLs in --initial-cluster "
            f"({','.join(members[name])})"
        )
