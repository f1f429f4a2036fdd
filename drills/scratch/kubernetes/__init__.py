"""The ``kubernetes`` scratch environment (DESIGN section 5): one namespace per drill run, fenced by
a ResourceQuota, a LimitRange and a NetworkPolicy that lets nothing out but the namespace itself and
DNS; a StatefulSet + Service per restored copy; teardown deletes the namespace (foreground) and
waits until it is gone. Everything goes through the official ``kubernetes`` client (api.py).

- ``environment.py``: ``KubernetesScratchEnvironment``, one per drill run: the namespace, its fences,
  the servers' credentials, the waits and the teardown;
- ``slots.py``: one slot class per source kind, in the registry ``SLOTS``;
- ``manifests.py``: what it asks the API server to create (pure functions, no cluster);
- ``port_forward.py``: the relay of ``access: port-forward``;
- ``api.py``: the client and the calls (the backup executor, lifeboat/executor.py, uses it too);
- ``janitor.py``: expired drill namespaces, old finished pods and Jobs.

Reaching the targets (``access``): ``service-dns`` (``<svc>.<namespace>.svc``, Lifeboat runs inside
the cluster) or ``port-forward`` (Lifeboat outside the cluster): a ``PortForwardRelay`` per server
port listens on 127.0.0.1 and carries each connection over its own port-forward websocket of the
API server (``kubernetes.stream.portforward``) to the slot's pod; the slots then name 127.0.0.1 and
the relay's port. The restore, the verification and the faults all take the same path.
The ClickHouse and MinIO servers get a user and password made for the run, kept in a Secret of the
drill namespace (create-only RBAC: Lifeboat never reads it back, it keeps what it generated); the
restore, the verification and the faults reach the servers with them.

etcd is restored inside the cluster, by the StatefulSet pod's one init container in
``lifeboat_image``: ``lifeboat restore <source> --snapshot <id> --to-data-dir`` (policy from the
ConfigMap ``POLICY_CONFIGMAP``, repository secrets from the Secret ``CREDENTIALS_SECRET``, both
generated from the running policy into the drill namespace), Lifeboat's own data-dir restore
(backup/sources/etcd/restore.py): it writes the snapshot db next to the data dir on the PVC, proves it (the
repository's sha256, then etcd's trailer) and runs ``etcdctl snapshot restore`` (3.4) or ``etcdutl``
(3.5+, detected) from the Lifeboat image, which therefore carries them (deploy/docker/Dockerfile); the
etcd image only runs ``etcd`` (the default one is distroless: no shell, nothing else is asked of it).
With ``--yes`` a data dir already there (a restarted pod) is moved aside on the PVC and restored
afresh, never reused nor refused; the PVC holds the snapshot and the restored copy at once, and every
such moved-aside copy. Then etcd starts on the restored data dir, as the init container's uid.
The drill's timed restore of such a slot is a dry run in this process (it proves the snapshot's
manifest is readable; its plan is a ``--to-file`` one: ``DRY_RUN_FILE``); ``after_restore`` creates
the StatefulSet and waits for readiness, so the in-cluster restore is inside the RTO. A failing
init container ends the wait at once with its exit code and last log lines.
Choices and limits of that path:
- the repository must be ``s3://``: a local-path repository cannot be read from a pod (refused);
- the generated pod policy holds the repository and the etcd sources' names only, every repository
  secret as a file of the Secret (never in the ConfigMap); the credentials are the policy's own;
- egress: a second NetworkPolicy lets the etcd restore pods (label ``RESTORE_LABEL``) reach the
  repository endpoint's addresses, as resolved by Lifeboat when the namespace is provisioned, on
  its TCP port only; an endpoint whose addresses rotate (AWS S3) may be resolved differently in the
  pod and is then blocked: the restore fails closed, with its log in the drill report;
- one copy per etcd source and drill run: the fault scenarios that need a fresh copy restored
  through this process's store reads (corrupt-chunk, missing-chunk, flaky-storage) or timed by its
  progress (kill-target) cannot reach an init container; their slot is refused ("could not
  verify"), so they are ERROR, never PASS. disaster deletes the StatefulSet, its pod and PVC (the
  data dir) and recovers by recreating it; verifier-canary deletes one key through the endpoint.
A drill's command checks run as Jobs of the drill namespace (``environment.run_command``, the Job of
``manifests.check_job_manifest``), from the check's ``image``, reaching the copies by their
services' DNS names (``KubernetesSlot.in_cluster``) whatever ``access`` this process uses; teardown
deletes them before the namespace.
None of this has run against a real cluster: tests drive the real client against tests/k8s_fake.py.
"""
