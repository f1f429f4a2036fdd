"""A small HTTP-level fake of the Kubernetes API server, for tests that drive the real ``kubernetes``
client (no kube-apiserver, kind or k3s can run on these machines: ENVIRONMENT.md).

What it does: an ``http.server`` in a thread on a free 127.0.0.1 port; objects in memory, keyed by
(group/version, resource, namespace, name); create (POST), get, list with an equality-based
``labelSelector`` and ``fieldSelector``, delete (the ``propagationPolicy`` is recorded with the
request), merge patch, and a pod's log. Every request is recorded (method, path, query, body).

Port-forward: ``GET .../pods/{pod}/portforward?ports=N`` with a websocket upgrade, as the client's
``kubernetes.stream.portforward`` sends it, is answered in the ``v4.channel.k8s.io`` protocol the API
server speaks: per port a data channel 2*i and an error channel 2*i+1, each opened by a frame holding
the port (2 bytes, little-endian), then binary frames ``channel byte + data``. One port per request.
The bytes go to a real TCP server: ``port_targets[(namespace, pod, port)] = (host, port)``. A pod
that does not exist gets a 404 instead of the upgrade; a target that refuses gets the message on
the error channel, as the kubelet sends it.

What it does not do: controllers, watches, admission, validation, resourceVersion conflicts. A
test adds the behaviour it needs with ``on_create`` hooks (``statefulset_pods`` makes the pod and
PVC of a StatefulSet, ``job_pods`` the pod of a Job, which ``finish_job`` then ends, ``job_runs`` a
Job run at once to the end a test gives for its command) and
``namespace_linger``: how many reads a deleted namespace stays Terminating; ``on_delete`` hooks see
every object as it goes (deleted itself, or with its namespace), as a kubelet would notice. Pod logs
are kept per pod, or per container: ``logs[(namespace, pod, container)]``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import itertools
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlparse

import kubernetes.client
from helpers import http_serving

Object = dict[str, Any]
Key = tuple[str, str, str, str]  # (group/version, resource, namespace or "", name)
Hook = Callable[["FakeKubernetes", Key, Object], None]

KINDS = {
    "namespaces": "Namespace",
    "pods": "Pod",
    "services": "Service",
    "events": "Event",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "resourcequotas": "ResourceQuota",
    "limitranges": "LimitRange",
    "persistentvolumeclaims": "PersistentVolumeClaim",
    "statefulsets": "StatefulSet",
    "jobs": "Job",
    "networkpolicies": "NetworkPolicy",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any

    @property
    def access(self) -> tuple[str, str, str, str | None]:
        """(verb, API group, resource or resource/subresource, namespace) as RBAC sees this request."""
        route = parse_path(self.path)
        verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(self.method, "get")
        if self.method == "GET" and not route.name:
            verb = "list"
        group = route.group_version.rpartition("/")[0]
        resource = f"{route.resource}/{route.sub}" if route.sub else route.resource
        return verb, group, resource, route.namespace or None


@dataclass(frozen=True)
class Route:
    group_version: str
    resource: str
    namespace: str
    name: str
    sub: str


def parse_path(path: str) -> Route:
    """``/api/v1/namespaces/x/pods/p/log`` -> Route("v1", "pods", "x", "p", "log")."""
    parts = [part for part in path.split("/") if part]
    if parts[0] == "api":
        group_version, rest = parts[1], parts[2:]
    else:
        group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    elif len(rest) == 2 and rest[0] == "namespaces":
        return Route(group_version, "namespaces", "", rest[1], "")
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = rest[2] if len(rest) > 2 else ""
    return Route(group_version, resource, namespace, name, sub)


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field(obj: Object, dotted: str) -> Any:
    node: Any = obj
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _merge(target: Object, patch: Object) -> Object:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class FakeKubernetes:
    """The in-memory API server; ``url`` once started."""

    objects: dict[Key, Object] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    logs: dict[tuple[str, ...], str] = field(default_factory=dict)  # (namespace, pod[, container]) -> log text
    port_targets: dict[tuple[str, str, int], tuple[str, int]] = field(default_factory=dict)
    on_create: list[Hook] = field(default_factory=list)
    on_delete: list[Hook] = field(default_factory=list)
    namespace_linger: int = 0  # reads a deleted namespace stays Terminating before it is gone
    url: str = ""
    _lingering: dict[str, int] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # ---- the store ------------------------------------------------------------------------

    def put(self, group_version: str, resource: str, obj: Object, namespace: str = "") -> Object:
        """Store ``obj`` as the API server would after a create: uid, resourceVersion, timestamp."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(next(self._versions))
        if namespace:
            meta["namespace"] = namespace
        obj.setdefault("apiVersion", group_version)
        obj.setdefault("kind", KINDS.get(resource, resource))
        if resource == "namespaces":
            obj.setdefault("status", {"phase": "Active"})
        self.objects[(group_version, resource, namespace, meta["name"])] = obj
        return obj

    def get(self, group_version: str, resource: str, name: str, namespace: str = "") -> Object | None:
        return self.objects.get((group_version, resource, namespace, name))

    def of(self, resource: str) -> list[Object]:
        return [obj for key, obj in self.objects.items() if key[1] == resource]

    def sent(self, method: str | None = None) -> list[Request]:
        return [request for request in self.requests if method is None or request.method == method]

    # ---- the verbs ------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(Request(method, path, query, body))
            route = parse_path(path)
            if route.sub == "log":
                container = (route.namespace, route.name, query.get("container", ""))
                return 200, self.logs.get(container, self.logs.get((route.namespace, route.name), ""))
            key = (route.group_version, route.resource, route.namespace, route.name)
            verbs: dict[str, Callable[[], tuple[int, Any]]] = {
                "POST": lambda: self._create(route, body),
                "GET": lambda: self._read(key) if route.name else self._list(route, query),
                "DELETE": lambda: self._delete(key, route),
                "PATCH": lambda: self._patch(key, body),
            }
            return verbs[method]()

    def _create(self, route: Route, body: Object) -> tuple[int, Any]:
        name = body.get("metadata", {}).get("name", "")
        key = (route.group_version, route.resource, route.namespace, name)
        if key in self.objects:
            return 409, _status(409, "AlreadyExists", f'{route.resource} "{name}" already exists')
        if route.namespace and not self.get("v1", "namespaces", route.namespace):
            return 404, _status(404, "NotFound", f'namespaces "{route.namespace}" not found')
        stored = self.put(route.group_version, route.resource, copy.deepcopy(body), route.namespace)
        for hook in list(self.on_create):
            hook(self, key, stored)
        return 201, stored

    def _read(self, key: Key) -> tuple[int, Any]:
        obj = self.objects.get(key)
        if obj is None:
            return 404, _status(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        if key[1] == "namespaces" and key[3] in self._lingering:
            self._lingering[key[3]] -= 1
            if self._lingering[key[3]] < 0:
                self._drop_namespace(key[3])
                return 404, _status(404, "NotFound", f'namespaces "{key[3]}" not found')
        return 200, obj

    def _list(self, route: Route, query: dict[str, str]) -> tuple[int, Any]:
        items = [
            obj
            for (gv, resource, namespace, _), obj in sorted(self.objects.items())
            if gv == route.group_version
            and resource == route.resource
            and (not route.namespace or namespace == route.namespace)
            and _selector_matches(query.get("labelSelector", ""), obj["metadata"].get("labels") or {})
            and all(
                str(_field(obj, term.split("=", 1)[0])) == term.split("=", 1)[1]
                for term in filter(None, query.get("fieldSelector", "").split(","))
            )
        ]
        kind = f"{KINDS.get(route.resource, route.resource)}List"
        return 200, {"apiVersion": route.group_version, "kind": kind, "metadata": {}, "items": items}

    def _delete(self, key: Key, route: Route) -> tuple[int, Any]:
        obj = self.objects.get(key)
        if obj is None:
            return 404, _status(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        if route.resource == "namespaces" and self.namespace_linger > 0:
            obj["metadata"]["deletionTimestamp"] = _now()
            obj["status"] = {"phase": "Terminating"}
            self._lingering[route.name] = self.namespace_linger
            return 200, obj
        if route.resource == "namespaces":
            self._drop_namespace(route.name)
        else:
            self._remove(key)
        return 200, obj  # as the API server does: the object, as it was when deletion began

    def _drop_namespace(self, name: str) -> None:
        for key in [key for key in self.objects if key[2] == name or key == ("v1", "namespaces", "", name)]:
            self._remove(key)
        self._lingering.pop(name, None)

    def _remove(self, key: Key) -> None:
        removed = self.objects.pop(key)
        for hook in list(self.on_delete):
            hook(self, key, removed)

    def _patch(self, key: Key, body: Object) -> tuple[int, Any]:
        obj = self.objects.get(key)
        if obj is None:
            return 404, _status(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        return 200, _merge(obj, body)


def _status(code: int, reason: str, message: str) -> Object:
    return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "message": message, "code": code}


# ---- controllers a test may add --------------------------------------------------------------


def statefulset_pods(*, ready: bool = True, events: tuple[str, ...] = (), init_statuses: list[Object] | None = None) -> Hook:
    """A StatefulSet gets its pod ``<name>-0``, Ready or not, and the PVC ``data-<name>-0`` of its claim
    template; an unready one gets ``events``; ``init_statuses``: the pod's ``initContainerStatuses``."""

    def hook(fake: FakeKubernetes, key: Key, obj: Object) -> None:
        if key[1] != "statefulsets":
            return
        pod_name = f"{key[3]}-0"
        labels = obj["spec"]["template"]["metadata"].get("labels", {})
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        pod = {
            "metadata": {"name": pod_name, "labels": labels},
            "spec": obj["spec"]["template"]["spec"],
            "status": {"phase": "Running" if ready else "Pending", "conditions": [condition]},
        }
        if init_statuses is not None:
            pod["status"]["initContainerStatuses"] = init_statuses
        fake.put("v1", "pods", pod, key[2])
        for template in obj["spec"].get("volumeClaimTemplates", []):
            claim = {"metadata": {"name": f"{template['metadata']['name']}-{pod_name}"}, "spec": template["spec"]}
            if not fake.get("v1", "persistentvolumeclaims", claim["metadata"]["name"], key[2]):
                fake.put("v1", "persistentvolumeclaims", claim, key[2])
        for number, message in enumerate(events):
            event = {
                "metadata": {"name": f"{pod_name}.{number}"},
                "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": key[2]},
                "reason": "Failed",
                "message": message,
                "type": "Warning",
            }
            fake.put("v1", "events", event, key[2])

    return hook


def job_pods() -> Hook:
    """A Job gets its pod ``<job>-<5 chars>``, labelled ``job-name`` as the Job controller does, in
    phase Pending; a test then finishes the Job with ``finish_job``."""

    def hook(fake: FakeKubernetes, key: Key, obj: Object) -> None:
        if key[1] != "jobs":
            return
        labels = {**obj["spec"]["template"]["metadata"].get("labels", {}), "job-name": key[3]}
        pod = {
            "metadata": {"name": f"{key[3]}-{uuid.uuid4().hex[:5]}", "labels": labels},
            "spec": obj["spec"]["template"]["spec"],
            "status": {"phase": "Pending"},
        }
        fake.put("v1", "pods", pod, key[2])
        obj["status"] = {"active": 1, "startTime": _now()}

    return hook


def finish_job(
    fake: FakeKubernetes,
    namespace: str,
    name: str,
    *,
    succeeded: bool,
    log: str = "",
    exit_code: int | None = None,
    reason: str = "BackoffLimitExceeded",
    start_error: str | None = None,
) -> None:
    """What the Job controller and kubelet would do at the end: the pod's phase and log (with
    ``exit_code``: its container's terminated state; ``start_error``: the runtime could not start its
    program, reason StartError with that message), the Job's counts and its Complete or Failed
    condition (``reason``: BackoffLimitExceeded, or DeadlineExceeded past activeDeadlineSeconds)."""
    with fake._lock:
        job = fake.get("batch/v1", "jobs", name, namespace)
        assert job is not None, f"no Job {namespace}/{name}"
        for pod in fake.of("pods"):
            if pod["metadata"]["namespace"] == namespace and pod["metadata"]["labels"].get("job-name") == name:
                pod["status"] = {"phase": "Succeeded" if succeeded else "Failed"}
                if exit_code is not None:
                    container = pod["spec"]["containers"][0]["name"]
                    terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
                    if start_error is not None:
                        terminated = {"exitCode": exit_code, "reason": "StartError", "message": start_error}
                    state = {"name": container, "image": "", "imageID": "", "ready": False, "restartCount": 0}
                    pod["status"]["containerStatuses"] = [{**state, "state": {"terminated": terminated}}]
                fake.logs[(namespace, pod["metadata"]["name"])] = log
        if succeeded:
            condition = {"type": "Complete", "status": "True"}
            job["status"] = {"succeeded": 1, "completionTime": _now(), "conditions": [condition]}
        else:
            messages = {"DeadlineExceeded": "Job was active longer than specified deadline"}
            message = messages.get(reason, "Job has reached the specified backoff limit")
            condition = {"type": "Failed", "status": "True", "reason": reason, "message": message}
            job["status"] = {"failed": 1, "conditions": [condition]}


@dataclass(frozen=True)
class JobEnd:
    """How a Job's one pod ends (``job_runs``): its container exits ``exit_code`` after printing
    ``log``; or it never starts (``waiting``: the container's waiting reason, e.g. ErrImagePull, and
    the Job stays active); or ``start_error``: its program cannot be started (exit code 128, reason
    StartError with this message); or ``deadline``: it runs past activeDeadlineSeconds (Failed,
    DeadlineExceeded)."""

    exit_code: int = 0
    log: str = ""
    waiting: str | None = None
    start_error: str | None = None
    deadline: bool = False


def job_runs(ends: dict[str, JobEnd]) -> Hook:
    """A Job whose container's ``command[0]`` is a key of ``ends`` gets its pod (``job_pods``) and runs
    to that end at once, as the Job controller and the kubelet would; other Jobs just get their pod."""
    make_pod = job_pods()

    def hook(fake: FakeKubernetes, key: Key, obj: Object) -> None:
        if key[1] != "jobs":
            return
        make_pod(fake, key, obj)
        container = obj["spec"]["template"]["spec"]["containers"][0]
        end = ends.get(container["command"][0])
        if end is None:
            return
        if end.waiting is not None:
            for pod in fake.of("pods"):
                if pod["metadata"]["namespace"] == key[2] and pod["metadata"]["labels"].get("job-name") == key[3]:
                    waiting = {"reason": end.waiting, "message": f'Back-off pulling image "{container["image"]}"'}
                    state = {"name": container["name"], "image": container["image"], "imageID": "", "ready": False}
                    status = {**state, "restartCount": 0, "state": {"waiting": waiting}}
                    pod["status"] = {"phase": "Pending", "containerStatuses": [status]}
            return
        if end.deadline:
            finish_job(fake, key[2], key[3], succeeded=False, log=end.log, reason="DeadlineExceeded")
        else:
            exit_code = 128 if end.start_error is not None else end.exit_code
            succeeded = exit_code == 0
            finish_job(
                fake, key[2], key[3], succeeded=succeeded, log=end.log, exit_code=exit_code, start_error=end.start_error
            )

    return hook


# ---- serving ---------------------------------------------------------------------------------


WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x2, 0x8, 0x9, 0xA


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (server to client)."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
    return head + payload


def read_ws_frame(stream: Any) -> tuple[int, bytes] | None:
    """(opcode, payload) of the next frame from the client (masked), None at the end of the stream."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, size = head[0] & 0x0F, head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(stream.read(2), "big")
    elif size == 127:
        size = int.from_bytes(stream.read(8), "big")
    mask = stream.read(4) if head[1] & 0x80 else b""
    payload = stream.read(size)
    if mask and payload:
        keystream = (mask * (size // 4 + 1))[:size]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")).to_bytes(size, "big")
    return opcode, payload


class PortForwardSession:
    """One upgraded port-forward request: relays channel 0 to a TCP connection to ``target``."""

    def __init__(self, handler: BaseHTTPRequestHandler, port: int, target: tuple[str, int] | None) -> None:
        self.handler = handler
        self.port = port
        self.target = target
        self._send_lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, opcode: int, payload: bytes) -> None:
        with self._send_lock:
            if self.closed.is_set() and opcode != OP_CLOSE:
                return
            try:
                self.handler.wfile.write(ws_frame(opcode, payload))
                self.handler.wfile.flush()
            except OSError:
                self.closed.set()

    def run(self) -> None:
        port_bytes = self.port.to_bytes(2, "little")
        self.send(OP_BINARY, b"\x00" + port_bytes)  # the data channel
        self.send(OP_BINARY, b"\x01" + port_bytes)  # the error channel
        upstream, error = None, f"error forwarding port {self.port}: nothing listens there"
        if self.target is not None:
            with contextlib.suppress(OSError):
                upstream = socket.create_connection(self.target, timeout=10)
        if upstream is None:
            self.send(OP_BINARY, b"\x01" + error.encode())
            self.send(OP_CLOSE, b"")
            return
        upstream.settimeout(None)
        back = threading.Thread(target=self._from_upstream, args=(upstream,), daemon=True)
        back.start()
        try:
            while (frame := read_ws_frame(self.handler.rfile)) is not None:
                opcode, payload = frame
                if opcode == OP_CLOSE:
                    break
                if opcode == OP_PING:
                    self.send(OP_PONG, payload)
                elif opcode == OP_BINARY and payload[:1] == b"\x00" and len(payload) > 1:
                    upstream.sendall(payload[1:])
        except OSError:
            pass
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_RDWR)
        upstream.close()
        back.join(timeout=5)
        self.send(OP_CLOSE, b"")
        self.closed.set()

    def _from_upstream(self, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(256 * 1024):
                self.send(OP_BINARY, b"\x00" + data)
        self.send(OP_CLOSE, b"")  # the pod's port closed: the client's socket ends
        self.closed.set()


def _handler(fake: FakeKubernetes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _port_forward(self, path: str, query: dict[str, str]) -> None:
            route = parse_path(path)
            with fake._lock:
                fake.requests.append(Request("GET", path, query, None))
                pod = fake.get("v1", "pods", route.name, route.namespace)
            if pod is None or not query.get("ports", "").isdigit():
                answer = json.dumps(_status(404, "NotFound", f'pods "{route.name}" not found')).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            port = int(query["ports"])
            accept = base64.b64encode(
                hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WEBSOCKET_GUID).encode()).digest()
            ).decode()
            self.wfile.write(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
                ).encode()
            )
            self.wfile.flush()
            self.close_connection = True
            PortForwardSession(self, port, fake.port_targets.get((route.namespace, route.name, port))).run()

        def _serve(self) -> None:
            parsed = urlparse(self.path)
            query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
            if self.headers.get("Upgrade", "").lower() == "websocket" and parsed.path.endswith("/portforward"):
                self._port_forward(parsed.path, query)
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            code, answer = fake.handle(self.command, parsed.path, query, body)
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: requests are recorded instead
            return

    return Handler


@contextmanager
def serve(fake: FakeKubernetes | None = None) -> Iterator[FakeKubernetes]:
    """Run ``fake`` (a new one by default) on a free loopback port until the block ends."""
    fake = fake or FakeKubernetes()
    with http_serving(_handler(fake)) as port:
        fake.url = f"http://127.0.0.1:{port}"
        yield fake


def api_client(fake: FakeKubernetes) -> kubernetes.client.ApiClient:
    """The real client, speaking HTTP to ``fake``."""
    configuration = kubernetes.client.Configuration(host=fake.url)
    return kubernetes.client.ApiClient(configuration)
