"""The ``local`` scratch environment: scratch etcd processes on free loopback ports under a workdir,
a scratch database on the configured scratch ClickHouse server, a scratch bucket on the configured
scratch S3 endpoint (DESIGN section 5).

- ``environment.py``: ``LocalScratchEnvironment``, one per drill run, and its marker file;
- ``slots.py``: one slot class per source kind, in the registry ``SLOTS``;
- ``relay.py``: the loopback relay a kill-target fault cuts;
- ``leftovers.py``: the janitor, which removes what dead drill runs left behind.
"""
