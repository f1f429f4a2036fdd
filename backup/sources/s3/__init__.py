"""The S3 / MinIO source: ``source`` holds the ``S3Source`` the registry names."""
