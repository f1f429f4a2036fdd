"""The S3 / MinIO source (DESIGN section 4, issue 6): bucket snapshots, restore, verification.

Modules: ``source`` (the ``S3Source`` the registry names), ``calls`` (retries, error wording),
``listing`` (bucket listings merged with the previous snapshot), ``digest`` (census, fingerprint),
``keypath`` (keys as paths), ``targets`` (restore targets), ``verify``, ``merge`` (sharded runs).

Snapshot
    Each configured bucket (buckets by name) is listed page by page, in the UTF-8 binary key order
    the S3 API guarantees, and merged with the previous snapshot's entries, which this source wrote
    in that same order. An object whose size, ETag and last-modified equal its previous entry's
    reuses that entry and its chunks: not a byte is read, but its tags are (GetObjectTagging, on the
    same workers: S3 changes neither ETag nor time when tags change), and an entry written before
    attributes were kept gets them from a HEAD. New and changed objects are streamed from
    GET into the repository by a bounded pool of ``parallel`` transfers; the entry's SHA-256 is
    computed while streaming. Entries are added in key order through a bounded window, so the merge
    holds one window of transfers in memory, never the previous snapshot's million entries.
    An object that vanishes between listing and reading is skipped and counted; a read that keeps
    failing after bounded retries (``SOURCE_RETRY``) fails the snapshot: nothing is committed.

Entries
    name ``<bucket>/<key>``; meta: bucket, key, etag (unquoted), last_modified (UTC, whole seconds:
    a listing says milliseconds where a GET says seconds), content_type, content_encoding,
    cache_control, content_disposition, content_language, metadata (user metadata), expires (UTC,
    ISO) and website_redirect_location when set: the values of the GET that read the bytes; then
    storage_class (from the listing) and tags (GetObjectTagging; left out where the endpoint has no
    tagging, NotImplemented, and not read at all with the source's ``tags: false``). Not kept: ACLs,
    Object Lock settings, encryption settings, versions.

Census and fingerprint
    census: ``totals`` (objects, bytes), per bucket counts, and ``changed_fraction``: the share of
    the previous snapshot's objects whose content (ETag or size) changed, which the anomaly guard
    reads as the ransomware signature. fingerprint: objects, bytes and, per bucket, digests over
    (key, SHA-256), (key, metadata), (key, tags) and (key, storage class); each a sum of per-object
    hashes, so any listing order gives the same value. A snapshot taken before tags and storage
    classes were kept has no digest of them (and Expires and the redirect enter the metadata
    digest only when set, so its metadata digest is what it was).

Restore
    Into a bucket (``--to-bucket B [--to-endpoint URL] [--to-prefix P]``): a snapshot of one bucket
    keeps its keys (after ``P``); a snapshot of several buckets puts each object under
    ``<bucket>/``. Objects are PUT (multipart above ``PART_SIZE``) with their metadata and tags
    (and their storage class at the source's own endpoint only: another may not know it), in parallel,
    and only after their bytes matched the snapshot's SHA-256, so a corrupt object never appears.
    Into a directory (``--to-dir DIR``): keys become paths through ``key_to_path``, which can never
    leave DIR (and ``path_to_key`` reverses). The target's credentials: keys given with the options
    (drills' scratch servers), else AWS_ACCESS_KEY_ID / AWS_PROFILE when set, else the source's.

Verify
    With the repository: per key (missing, extra, size; SHA-256 read back, metadata, tags and, at
    the source's endpoint, the storage class for all or a sampled share). Without it (the ``Source``
    protocol passes none): every object read back and compared per bucket with the fingerprint's
    counts and digests, which names buckets, not keys. What the snapshot does not hold (tags of an
    older snapshot) is not compared, and the result says so ("tags not covered").
"""
