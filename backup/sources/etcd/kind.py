"""What the rest of Lifeboat knows of the etcd kind (the registry line names ``KIND``)."""

from backup.sources.base import RestoreFlag, SourceKind

KIND = SourceKind(
    name="etcd",
    checks="backup.sources.etcd.checks:EtcdChecks",
    source="backup.sources.etcd.source:EtcdSource",
    restore_flags=(
        RestoreFlag("to_file", "write the verified snapshot db to this file."),
        RestoreFlag("to_data_dir", "restore into this member data dir (etcdctl/etcdutl snapshot restore)."),
        RestoreFlag("name", "member name for --to-data-dir."),
        RestoreFlag("initial_cluster", "e.g. n1=https://10.0.0.11:2380,n2=..."),
        RestoreFlag("initial_advertise_peer_urls", "this member's peer URLs."),
    ),
    doctor="backup.sources.etcd.doctor:doctor",
)
