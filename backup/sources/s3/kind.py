"""What the rest of Lifeboat knows of the S3 kind (the registry line names ``KIND``)."""

from backup.sources.base import RestoreFlag, SourceKind

KIND = SourceKind(
    name="s3",
    checks="backup.sources.s3.checks:S3Checks",
    source="backup.sources.s3.source:S3Source",
    restore_flags=(
        RestoreFlag("to_endpoint", "endpoint URL of the target."),
        RestoreFlag("to_bucket", "target bucket."),
        RestoreFlag("to_prefix", "key prefix in the target bucket."),
        RestoreFlag("to_dir", "write objects as files under this directory."),
        RestoreFlag("prefix", "only objects whose key starts with this."),
        RestoreFlag("in_place", "allow restoring into the source bucket itself (with --yes).", is_flag=True),
    ),
    target_credentials=("to_access_key_id", "to_secret_access_key"),
    part_merge="backup.sources.s3.merge:merge_parts",
    doctor="backup.sources.s3.doctor:doctor",
)
