"""``access: port-forward``: the real ``kubernetes`` client's websocket port-forward
(``kubernetes.stream.portforward``) against the fake API server of tests/k8s_fake.py, which speaks the
API server's ``v4.channel.k8s.io`` framing and relays to real TCP servers: a local echo server, the
ClickHouse fixture, a scratch etcd. What a real API server and kubelet add (authentication, the
SPDY/websocket negotiation of a given version, the kubelet's own relay) is not exercised here."""

from __future__ import annotations

import base64
import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from k8s_fake import FakeKubernetes, api_client, serve, statefulset_pods
from test_kubernetes_scratch import ALL_REQUESTS, NS, RUN_ID, FakeClock, Tokens, settings

from backup.servers import start_etcd
from drills.scratch.kubernetes.api import KubernetesApi
from drills.scratch.kubernetes.environment import KubernetesScratchEnvironment
from drills.scratch.kubernetes.port_forward import PortForwardRelay, pod_port_opener
from policies.model import Policy

pytestmark = pytest.mark.integration
HEADER: Any = SimpleNamespace(id="etcd-main-20270115T010000Z-abcd")


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with serve() as running:
        yield running
        ALL_REQUESTS.extend(running.requests)  # the RBAC test of test_kubernetes_scratch checks them too


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """Sends back every byte it receives."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one(connection: socket.socket) -> None:
        with connection:
            while data := connection.recv(65536):
                connection.sendall(data)

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()
    listener.close()


def _pod(fake: FakeKubernetes, name: str) -> None:
    fake.put("v1", "namespaces", {"metadata": {"name": NS}})
    fake.put("v1", "pods", {"metadata": {"name": name}, "spec": {"containers": []}}, NS)


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(payload)
        received = b""
        while len(received) < len(payload):
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break  # closed with our bytes unread: a reset, to the client the same end
            if not chunk:
                break
            received += chunk
        return received


def test_bytes_flow_both_ways_through_the_clients_port_forward_one_stream_per_connection(
    fake: FakeKubernetes, echo_server: tuple[str, int]
) -> None:
    _pod(fake, "clickhouse-1-0")
    fake.port_targets[(NS, "clickhouse-1-0", 9000)] = echo_server
    relay = PortForwardRelay(
        pod_port_opener(KubernetesApi(api_client(fake)), NS, "clickhouse-1-0", 9000), label="clickhouse-1-0:9000"
    )
    try:
        big = bytes(range(256)) * 4096  # 1 MiB: many websocket frames each way
        results: dict[int, bytes] = {}

        def talk(number: int) -> None:
            results[number] = _exchange(relay.port, b"%d:" % number + big)

        threads = [threading.Thread(target=talk, args=(number,)) for number in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        for number in range(3):
            assert results[number] == b"%d:" % number + big
    finally:
        relay.close()
    forwards = [request for request in fake.requests if request.path.endswith("/portforward")]
    assert [(request.method, request.path, request.query) for request in forwards] == [
        ("GET", f"/api/v1/namespaces/{NS}/pods/clickhouse-1-0/portforward", {"ports": "9000"})
    ] * 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=2)


def test_a_port_forward_the_api_server_refuses_closes_the_local_connection(fake: FakeKubernetes) -> None:
    fake.put("v1", "namespaces", {"metadata": {"name": NS}})  # no pod: the API server answers 404
    relay = PortForwardRelay(pod_port_opener(KubernetesApi(api_client(fake)), NS, "gone-0", 9000), label="gone-0")
    try:
        assert _exchange(relay.port, b"hello") == b""
    finally:
        relay.close()


def environment(fake: FakeKubernetes, **overrides: Any) -> KubernetesScratchEnvironment:
    policy = Policy.model_validate(
        {
            "repository": {
                "url": "s3://backups/prod",
                "s3": {"endpoint_url": "http://10.1.2.3:9000", "access_key_id": "AK", "secret_access_key": "SK"},
            },
            "sources": {"etcd-main": {"kind": "etcd", "endpoints": ["http://10.0.0.1:2379"]}},
        }
    )
    return KubernetesScratchEnvironment(
        settings(access="port-forward", **overrides),
        RUN_ID,
        drill="nightly",
        policy=policy,
        api_client=api_client(fake),
        clock=FakeClock(),
        sleep=lambda _: None,
        token=Tokens(),
        resolve=lambda host, port: [host],
    )


def test_clickhouse_slot_is_reached_on_loopback_through_port_forward(fake: FakeKubernetes, clickhouse_server: Any) -> None:
    """The restore options name 127.0.0.1 and the relay's ports; a real ClickHouse answers through them."""
    from clickhouse_driver import Client

    fake.on_create.append(statefulset_pods(ready=True))
    fake.port_targets[(NS, "clickhouse-1-0", 9000)] = ("127.0.0.1", clickhouse_server.tcp_port)
    fake.port_targets[(NS, "clickhouse-1-0", 8123)] = ("127.0.0.1", clickhouse_server.http_port)
    scratch = environment(fake)
    slot = scratch.slot("warehouse", "clickhouse", HEADER)
    try:
        options = slot.restore_options()
        assert options.get("to_host") == "127.0.0.1"
        assert {options.get("to_port"), options.get("to_http_port")}.isdisjoint({9000, 8123, None})
        native = Client("127.0.0.1", port=options.get("to_port"), connect_timeout=10)
        assert native.execute("SELECT 40 + 2") == [(42,)]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{options.get('to_http_port')}/?query=SELECT%201", timeout=10
        ) as answer:
            assert answer.read().strip() == b"1"
    finally:
        scratch.teardown()
    forwarded = {
        (request.path, request.query["ports"]) for request in fake.requests if request.path.endswith("/portforward")
    }
    assert forwarded == {
        (f"/api/v1/namespaces/{NS}/pods/clickhouse-1-0/portforward", "9000"),
        (f"/api/v1/namespaces/{NS}/pods/clickhouse-1-0/portforward", "8123"),
    }


def _etcd_put(endpoint: str, key: bytes, value: bytes) -> None:
    body = {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
    request = urllib.request.Request(f"{endpoint}/v3/kv/put", data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def _etcd_keys(endpoint: str) -> list[str]:
    everything = base64.b64encode(b"\0").decode()
    body = {"key": everything, "range_end": everything, "keys_only": True}
    request = urllib.request.Request(f"{endpoint}/v3/kv/range", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return [base64.b64decode(kv["key"]).decode() for kv in json.loads(answer.read()).get("kvs", [])]


def test_etcd_canary_and_verification_target_go_through_port_forward(fake: FakeKubernetes, tmp_path: Path) -> None:
    """The canary deletes one key of the scratch etcd (a real etcd behind the fake's port-forward);
    after the disaster the copy is gone, and what verification reaches closes instead of answering."""
    fake.on_create.append(statefulset_pods(ready=True))
    with start_etcd(tmp_path / "etcd") as etcd:
        for key in ("/registry/pods/a", "/registry/pods/b"):
            _etcd_put(etcd.endpoint, key.encode(), b"v")
        scratch = environment(fake)
        slot = scratch.slot("etcd-main", "etcd", HEADER)
        fake.port_targets[(NS, "etcd-1-0", 2379)] = ("127.0.0.1", int(etcd.endpoint.rsplit(":", 1)[1]))
        try:
            slot.after_restore()
            target = slot.verify_target()
            assert target.endpoint.startswith("http://127.0.0.1:") and not target.endpoint.endswith(":2379")
            assert _etcd_keys(target.endpoint) == ["/registry/pods/a", "/registry/pods/b"]
            assert slot.tamper() == "deleted key /registry/pods/a from the scratch etcd"
            assert _etcd_keys(etcd.endpoint) == ["/registry/pods/b"]
            slot.stage_disaster()
            with pytest.raises(OSError):
                _etcd_keys(slot.verify_target().endpoint)  # the pod is gone: the port-forward is refused
        finally:
            scratch.teardown()


def test_every_request_made_in_this_module_is_allowed_by_the_rbac_in_deploy() -> None:
    from unit.deploy.test_manifests import Access, rbac_allows

    mine = [request for request in ALL_REQUESTS if request.path.endswith("/portforward")]
    assert mine, "no port-forward was requested"
    refused = {str(access) for request in ALL_REQUESTS if not rbac_allows(access := Access(*request.access))}
    assert refused == set()
    assert Access(*mine[0].access) == Access("get", "", "pods/portforward", NS)
