"""The ClickHouse source kind: ``source.py`` holds the class the registry names (``ClickHouseSource``).

The modules beside it: ``sql`` (quoting, filters, engines, row hashes: pure), ``ddl`` (CREATE rewriting:
pure), ``fingerprint`` (prints and comparison: pure), ``catalog`` (what a server holds), ``client`` (SQL
and HTTP I/O), ``logical`` and ``native`` (the two snapshot strategies), ``chain`` (native backup chains
and their prune hook), ``restore`` (plans, loading, verification), ``merge`` (the shard merge).

Nothing is imported here: a backup of another kind does not pay for clickhouse-driver."""
