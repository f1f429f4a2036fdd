"""The deploy files (deploy/): what an operator applies must be what the API server accepts, and must
keep the promises the files make in their comments.

Kubernetes manifests are checked against the official ``kubernetes`` client's models. The client's
deserializer silently drops fields it does not know (``replica: 1`` comes back as no replicas at
all), so ``manifest_problems`` deserializes each document and compares the re-serialized object
with the input: a key that did not survive is a field the API server would drop or refuse, a value
that changed is a wrong type. ``test_the_validator_catches_a_broken_manifest`` proves it does.

No API server runs here: RBAC is checked by a small authorizer over the Role/ClusterRole rules
(``rbac_allows``), not by a live cluster; kustomize is run through ``kubectl kustomize`` (client
side only); the systemd unit through ``systemd-analyze verify``. The Dockerfile is built and run by
tests/integration/test_image.py (podman, a debootstrap base); here only what it reads is checked.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from helpers import missing_requirement  # tests/ is on sys.path (rootdir conftest)

from policies.durations import parse_duration
from policies.loader import parse_policy
from policies.model import Policy
from policies.schedule import expand_cron

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
VARIANTS = ("base", "cronjob", "monitoring")  # monitoring: optional, for the prometheus-operator
EXAMPLE_SUFFIX = ".example.yaml"
LIFEBOAT_SA = ("lifeboat", "lifeboat")  # (namespace, name) of the identity `lifeboat serve` runs as
RUNNER_SA = ("lifeboat", "lifeboat-runner")
DRILL_NAMESPACE = "lifeboat-drill-20260101t000000z-0a1b"
MANAGED_BY = "app.kubernetes.io/managed-by"
Document = dict[str, Any]


# ---- loading ------------------------------------------------------------------------------------


def load_documents(path: Path) -> list[Document]:
    """Every non-empty YAML document of ``path``."""
    with path.open(encoding="utf-8") as stream:
        return [document for document in yaml.safe_load_all(stream) if document is not None]


def manifest_files() -> list[Path]:
    """Every YAML file under deploy/kubernetes but the kustomization.yaml files."""
    return sorted(path for path in KUBERNETES.rglob("*.yaml") if path.name != "kustomization.yaml")


@functools.cache
def manifests() -> tuple[tuple[Path, Document], ...]:
    """(file, document) for every manifest, parsed once per test session: tests must not change them."""
    return tuple((path, document) for path in manifest_files() for document in load_documents(path))


def manifest_id(item: tuple[Path, Document]) -> str:
    path, document = item
    return f"{path.relative_to(KUBERNETES)}:{document.get('kind')}/{document.get('metadata', {}).get('name')}"


def find(kind: str, name: str, *, variant: str = "base", examples: bool = False) -> Document:
    """The one manifest of ``kind`` and ``name`` among the files of ``variant``."""
    found = [
        document
        for path, document in manifests()
        if path.parent.name == variant
        and (examples or not path.name.endswith(EXAMPLE_SUFFIX))
        and document["kind"] == kind
        and document["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/kubernetes/{variant}, found {len(found)}"
    return found[0]


def of_kind(kind: str, *, examples: bool = True) -> list[Document]:
    return [
        document
        for path, document in manifests()
        if document["kind"] == kind and (examples or not path.name.endswith(EXAMPLE_SUFFIX))
    ]


@functools.cache
def cluster_policy_text() -> str:
    return str(find("ConfigMap", "lifeboat-policy")["data"]["lifeboat.yaml"])


@functools.cache
def cluster_policy() -> Policy:
    """The policy of the in-cluster deployment, through Lifeboat's own loader, with no environment."""
    return parse_policy(cluster_policy_text(), label="deploy/kubernetes/base/configmap.yaml", env={})


@functools.cache
def example_policy() -> Policy:
    """policies/examples/production.yaml: what the systemd unit and the crontab are written for."""
    text = (ROOT / "policies" / "examples" / "production.yaml").read_text(encoding="utf-8")
    return parse_policy(text, label="production.yaml", env={})


# ---- validating against the kubernetes client's models ------------------------------------------


@functools.cache
def _api_client() -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient()


def model_name(document: Document) -> str:
    """``apps/v1`` + ``Deployment`` -> ``V1Deployment`` (the client's class name)."""
    version = str(document.get("apiVersion", "")).rpartition("/")[2]
    return f"{version[:1].upper()}{version[1:]}{document.get('kind', '')}"


def is_namespaced(document: Document) -> bool | None:
    """Whether the API group and version of ``document`` serve its kind in namespaces (True), at the
    cluster level (False), or not at all (None), by the client's API classes: ``apps/v1`` ->
    ``AppsV1Api``, which has ``create_namespaced_deployment``."""
    group, _, version = str(document.get("apiVersion", "")).rpartition("/")
    words = group.removesuffix(".k8s.io").split(".") if group else ["core"]
    api = getattr(kubernetes.client, f"{''.join(word.capitalize() for word in words)}{version.capitalize()}Api", None)
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", str(document.get("kind", ""))).lower()
    if api is not None and hasattr(api, f"create_namespaced_{kind}"):
        return True
    if api is not None and hasattr(api, f"create_{kind}"):
        return False
    return None


# Custom resources of the prometheus-operator (deploy/kubernetes/monitoring/, an optional kustomization).
# The kubernetes client has no model for a CRD's object, so only their envelope is checked here (the
# top-level keys, metadata against V1ObjectMeta, the namespace); their specs are checked by
# test_alert_rules.py: the rules by promtool and against the plain rules file, the ServiceMonitor's
# selector and port against the Service. (apiVersion, kind) -> namespaced.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): True,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): True,
}


def manifest_problems(document: Document) -> list[str]:
    """Every field of ``document`` that the API server would refuse, drop or read differently.

    Deserializes into the client's model (which raises on wrong types and missing required fields),
    then compares the re-serialized object with the input, key by key: the deserializer drops
    unknown fields without a word, and that comparison is what catches them. A custom resource of
    ``CUSTOM_RESOURCES`` has no model: only its envelope is checked (``custom_resource_problems``).
    """
    if (document.get("apiVersion"), document.get("kind")) in CUSTOM_RESOURCES:
        return custom_resource_problems(document)
    name = model_name(document)
    if not hasattr(kubernetes.client, name):
        return [f"apiVersion {document.get('apiVersion')!r} kind {document.get('kind')!r}: no such model ({name})"]
    namespaced = is_namespaced(document)
    if namespaced is None:
        return [f"kind {document['kind']} is not served under apiVersion {document['apiVersion']!r}"]
    if namespaced != ("namespace" in document.get("metadata", {})):
        # No kustomization sets `namespace:`: without one, `kubectl apply` would use the current context's.
        return [
            f"{name}: metadata.namespace must be {'set' if namespaced else 'absent'} ({document['kind']} is "
            f"{'namespaced' if namespaced else 'cluster-scoped'})"
        ]
    client = _api_client()
    try:
        # The public ApiClient.deserialize takes an HTTP response, and its signature changed between
        # client releases; the name-mangled method under it takes the parsed JSON in all of them.
        model = client._ApiClient__deserialize(copy.deepcopy(document), name)  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        return [f"{name}: {exc}"]
    return _differences(document, client.sanitize_for_serialization(model), name)


def custom_resource_problems(document: Document) -> list[str]:
    """The envelope of a custom resource: only apiVersion, kind, metadata and spec; metadata a valid
    ObjectMeta; a namespace when the kind is namespaced. Its spec is left to tests that know it."""
    kind = str(document["kind"])
    unknown = sorted(set(document) - {"apiVersion", "kind", "metadata", "spec"})
    if unknown:
        return [f"{kind}: unknown top-level fields {unknown}"]
    if "spec" not in document:
        return [f"{kind}: no spec"]
    metadata = document.get("metadata", {})
    if CUSTOM_RESOURCES[(document["apiVersion"], kind)] != ("namespace" in metadata):
        return [f"{kind}: metadata.namespace must be set ({kind} is namespaced)"]
    client = _api_client()
    try:
        model = client._ApiClient__deserialize(copy.deepcopy(metadata), "V1ObjectMeta")  # type: ignore[attr-defined]
    except (ValueError, TypeError) as exc:
        return [f"{kind}.metadata: {exc}"]
    return _differences(metadata, client.sanitize_for_serialization(model), f"{kind}.metadata")


def _differences(sent: Any, kept: Any, path: str) -> list[str]:
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [f"{path}: an object was read as {kept!r}"]
        found: list[str] = []
        for key, value in sent.items():
            if key not in kept:
                found.append(f"{path}.{key}: unknown field (or null): the API server would drop or refuse it")
            else:
                found += _differences(value, kept[key], f"{path}.{key}")
        return found
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [f"{path}: a list of {len(sent)} was read as {kept!r}"]
        return [
            problem for i, pair in enumerate(zip(sent, kept, strict=True)) for problem in _differences(*pair, f"{path}[{i}]")
        ]
    if type(sent) is not type(kept) or sent != kept:
        return [f"{path}: {sent!r} was read as {kept!r}"]
    return []


@pytest.mark.parametrize("item", manifests(), ids=manifest_id)
def test_every_manifest_is_a_valid_kubernetes_object(item: tuple[Path, Document]) -> None:
    _, document = item
    assert manifest_problems(document) == []


def _broken(mutate: str) -> Document:
    document = copy.deepcopy(find("Deployment", "lifeboat"))
    spec = document["spec"]
    container = spec["template"]["spec"]["containers"][0]
    if mutate == "misspelled-field":
        spec["replica"] = spec.pop("replicas")
    elif mutate == "snake-case-field":
        spec["revision_history_limit"] = spec.pop("revisionHistoryLimit")
    elif mutate == "number-as-text":
        spec["replicas"] = "1"
    elif mutate == "missing-required-field":
        del container["name"]
    elif mutate == "nested-typo":
        container["securityContext"]["readOnlyRootFileSystem"] = True
    elif mutate == "unknown-kind":
        document["kind"] = "Deploymnet"
    elif mutate == "wrong-group":
        document["apiVersion"] = "batch/v1"
    elif mutate == "no-namespace":
        del document["metadata"]["namespace"]
    return document


def _broken_custom_resource(mutate: str) -> Document:
    document = copy.deepcopy(find("PrometheusRule", "lifeboat", variant="monitoring"))
    if mutate == "metadata-typo":
        document["metadata"]["label"] = document["metadata"].pop("labels")
    elif mutate == "spec-beside-spec":
        document["groups"] = document["spec"]["groups"]
    elif mutate == "no-namespace":
        del document["metadata"]["namespace"]
    return document


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        ("metadata-typo", "PrometheusRule.metadata.label"),
        ("spec-beside-spec", "unknown top-level fields ['groups']"),
        ("no-namespace", "metadata.namespace must be set"),
    ],
)
def test_the_validator_checks_the_envelope_of_custom_resources(mutate: str, named: str) -> None:
    assert manifest_problems(find("PrometheusRule", "lifeboat", variant="monitoring")) == []
    problems = manifest_problems(_broken_custom_resource(mutate))
    assert named in " ".join(problems), problems


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        ("misspelled-field", "spec.replica"),
        ("snake-case-field", "spec.revision_history_limit"),
        ("number-as-text", "'1'"),
        ("missing-required-field", "name"),
        ("nested-typo", "readOnlyRootFileSystem"),
        ("unknown-kind", "Deploymnet"),
        ("wrong-group", "not served under apiVersion 'batch/v1'"),
        ("no-namespace", "metadata.namespace must be set"),
    ],
)
def test_the_validator_catches_a_broken_manifest(mutate: str, named: str) -> None:
    problems = manifest_problems(_broken(mutate))
    assert problems, f"a Deployment with a {mutate} passed the validator"
    assert named in " ".join(problems)


# ---- kustomize ----------------------------------------------------------------------------------


def _kustomization(variant: str) -> Document:
    return load_documents(KUBERNETES / variant / "kustomization.yaml")[0]


def test_kustomizations_list_existing_files_and_every_manifest_is_listed_or_an_example() -> None:
    listed: set[Path] = set()
    for kustomization in sorted(KUBERNETES.rglob("kustomization.yaml")):
        for entry in load_documents(kustomization)[0].get("resources", []):
            target = (kustomization.parent / entry).resolve()
            assert target.exists(), f"{kustomization.relative_to(ROOT)} lists {entry}, which does not exist"
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{entry} is a directory without kustomization.yaml"
            else:
                listed.add(target)
    unlisted = [
        str(path.relative_to(ROOT))
        for path in manifest_files()
        if path.resolve() not in listed and not path.name.endswith(EXAMPLE_SUFFIX)
    ]
    assert unlisted == [], "neither listed by a kustomization.yaml nor named *.example.yaml"
    assert (KUBERNETES / "base" / "secret.example.yaml").is_file()


def test_examples_are_not_applied_by_kustomize() -> None:
    for variant in VARIANTS:
        assert not [entry for entry in _kustomization(variant).get("resources", []) if entry.endswith(EXAMPLE_SUFFIX)]


@functools.cache
def rendered(variant: str) -> tuple[Document, ...]:
    """``kubectl kustomize deploy/kubernetes/<variant>``: what `kubectl apply -k` would send."""
    if shutil.which("kubectl") is None:
        missing_requirement("kubectl (with kustomize v5) is not on PATH; it renders the kustomizations")
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES / variant)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {variant} failed:\n{result.stderr}"
    return tuple(document for document in yaml.safe_load_all(result.stdout) if document is not None)


def _kinds(documents: tuple[Document, ...]) -> set[tuple[str, str]]:
    return {(document["kind"], document["metadata"]["name"]) for document in documents}


@pytest.mark.parametrize("variant", VARIANTS)
def test_kustomize_renders_valid_objects_with_the_common_label(variant: str) -> None:
    documents = rendered(variant)
    problems = {f"{document['kind']}/{document['metadata']['name']}": manifest_problems(document) for document in documents}
    assert {name: found for name, found in problems.items() if found} == {}
    for document in documents:
        labels = document["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "lifeboat", document["metadata"]["name"]
        assert MANAGED_BY not in labels, "managed-by=lifeboat marks drill namespaces for the janitor"


def test_cronjob_variant_keeps_the_shared_objects_and_drops_the_scheduler() -> None:
    kinds = _kinds(rendered("cronjob"))
    shared = {
        ("Namespace", "lifeboat"),
        ("ServiceAccount", "lifeboat"),
        ("ServiceAccount", "lifeboat-runner"),
        ("ConfigMap", "lifeboat-policy"),
        ("ClusterRole", "lifeboat-drills"),
        ("ClusterRoleBinding", "lifeboat-drills"),
        ("ValidatingAdmissionPolicy", "lifeboat-stays-in-its-namespaces"),
    }
    assert shared <= kinds
    assert shared <= _kinds(rendered("base"))
    assert ("Deployment", "lifeboat") not in kinds  # two schedulers would run every job twice
    assert ("PersistentVolumeClaim", "lifeboat-state") not in kinds
    assert {kind for kind, _ in kinds} >= {"CronJob"}
    assert not [kind for kind, _ in _kinds(rendered("base")) if kind == "CronJob"]


def test_no_common_label_marks_lifeboats_own_objects_as_a_drill_namespace() -> None:
    for variant in VARIANTS:
        kustomization = _kustomization(variant)
        pairs = [group.get("pairs", {}) for group in kustomization.get("labels", [])] + [
            kustomization.get("commonLabels", {})
        ]
        assert not [labels for labels in pairs if MANAGED_BY in labels]
    for _, document in manifests():
        assert MANAGED_BY not in document["metadata"].get("labels", {}), manifest_id((Path(), document))
    assert find("Namespace", "lifeboat")["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"


# ---- the CLI contract (DESIGN section 7) --------------------------------------------------------

# Command path -> {option: number of values}; "NAME" counts the positional arguments.
CLI_CONTRACT: dict[tuple[str, ...], dict[str, int]] = {
    ("policy", "validate"): {"--json": 0},
    # --shard, --part-of: executor Jobs
    ("backup", "run"): {"--source": 1, "--restore-point": 1, "--json": 0, "--shard": 1, "--part-of": 1},
    ("backup", "merge"): {"--source": 1, "--part-of": 1, "--json": 0},
    ("prune",): {"--dry-run": 0, "--json": 0},
    ("check",): {"--read-data": 0, "--read-data-subset": 1, "--json": 0},
    ("drill", "run"): {"NAME": 1, "--json": 0, "--report-dir": 1, "--no-email": 0},
    ("restore",): {  # the etcd restore init container of kubernetes scratch (drills/scratch/kubernetes/)
        "NAME": 1,
        "--snapshot": 1,
        "--to-data-dir": 1,
        "--name": 1,
        "--initial-cluster": 1,
        "--initial-advertise-peer-urls": 1,
        "--yes": 0,
    },
    ("janitor",): {"--dry-run": 0},
    ("serve",): {},
}
GLOBAL_OPTIONS = {"--config": 1, "--log-format": 1}


@dataclass(frozen=True)
class Invocation:
    command: tuple[str, ...]
    options: dict[str, str | None]
    arguments: tuple[str, ...]
    config: str | None


def parse_invocation(argv: list[str]) -> Invocation:
    """``lifeboat [global options] COMMAND [options] [NAME]`` per the CLI contract; AssertionError if not."""
    assert argv and Path(argv[0]).name == "lifeboat", f"not a lifeboat command: {argv}"
    words = argv[1:]
    globals_: dict[str, str] = {}
    while words and words[0] in GLOBAL_OPTIONS:
        assert len(words) >= 2, f"{words[0]} needs a value"
        globals_[words[0]], words = words[1], words[2:]
    assert globals_.get("--log-format", "json") in ("console", "json")
    command = next((path for path in sorted(CLI_CONTRACT, key=len, reverse=True) if tuple(words[: len(path)]) == path), None)
    assert command is not None, f"{' '.join(words)!r} is not a command of the CLI contract"
    allowed = CLI_CONTRACT[command]
    words = words[len(command) :]
    options: dict[str, str | None] = {}
    arguments: list[str] = []
    while words:
        word, words = words[0], words[1:]
        if word.startswith("--"):
            assert word in allowed, f"{' '.join(command)} has no option {word}"
            options[word] = words.pop(0) if allowed[word] else None
        else:
            arguments.append(word)
    assert len(arguments) == allowed.get("NAME", 0), f"{' '.join(command)} takes {allowed.get('NAME', 0)} argument(s)"
    subset = options.get("--read-data-subset")
    assert subset is None or re.fullmatch(r"\d{1,3}%", subset), f"--read-data-subset {subset!r} is not like 10%"
    return Invocation(command, options, tuple(arguments), globals_.get("--config"))


def test_the_contract_parser_refuses_what_the_cli_does_not_have() -> None:
    for argv in (
        "lifeboat backup --source x",
        "lifeboat drill run",
        "lifeboat prune --yes",
        "lifeboat check --read-data-subset 10",
        "lifebot serve",
    ):
        with pytest.raises(AssertionError):
            parse_invocation(argv.split())


def test_commands_that_exist_in_the_click_cli_accept_the_options_the_deploy_files_use() -> None:
    """Every command the deploy files run exists in the click CLI and takes every option used."""
    import click

    from lifeboat.cli import cli

    invocations = list(_all_invocations())
    assert invocations
    for invocation in invocations:
        group: Any = cli
        for word in invocation.command:
            group = group.get_command(click.Context(group), word)
            assert group is not None, f"the CLI has no command {' '.join(invocation.command)!r}"
        known = {option for param in group.params for option in getattr(param, "opts", [])}
        assert set(invocation.options) <= known, f"{' '.join(invocation.command)} lacks {set(invocation.options) - known}"


def _pod_spec(document: Document) -> Document:
    if document["kind"] == "CronJob":
        return document["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return document["spec"]["template"]["spec"]


def _argv(document: Document) -> list[str]:
    container = _pod_spec(document)["containers"][0]
    return [*container.get("command", []), *container.get("args", [])]


def _all_invocations() -> Iterator[Invocation]:
    yield parse_invocation(_argv(find("Deployment", "lifeboat")))
    for cronjob in of_kind("CronJob"):
        yield parse_invocation(_argv(cronjob))
    yield parse_invocation(shlex.split(systemd_unit()["Service"]["ExecStart"][0]))
    for line in crontab_lines():
        yield line.invocation


# ---- the Deployment -----------------------------------------------------------------------------


def test_deployment_runs_exactly_one_scheduler_and_stops_it_before_starting_another() -> None:
    spec = find("Deployment", "lifeboat")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # no surge: never two schedulers at once
    invocation = parse_invocation(_argv(find("Deployment", "lifeboat")))
    assert invocation.command == ("serve",)
    assert invocation.config == "/etc/lifeboat/lifeboat.yaml"


def test_deployment_gives_the_running_job_time_to_finish_on_sigterm() -> None:
    grace = _pod_spec(find("Deployment", "lifeboat"))["terminationGracePeriodSeconds"]
    assert timedelta(seconds=grace) > cluster_policy().service.stop_timeout


def test_probes_and_metrics_port_match_the_policys_listen_address() -> None:
    policy = cluster_policy()
    host, _, port = policy.service.listen.rpartition(":")
    assert host == "0.0.0.0", "on 127.0.0.1 the kubelet's probes and Prometheus cannot reach /healthz"
    container = _pod_spec(find("Deployment", "lifeboat"))["containers"][0]
    ports = {entry["name"]: entry["containerPort"] for entry in container["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/healthz"
        assert ports[check["port"]] == int(port)
    service = find("Service", "lifeboat")["spec"]
    assert ports[service["ports"][0]["targetPort"]] == int(port)
    template_labels = find("Deployment", "lifeboat")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= template_labels.items()


def test_deployment_runs_non_root_read_only_with_no_capabilities() -> None:
    pod = _pod_spec(find("Deployment", "lifeboat"))
    _assert_locked_down(pod)
    assert pod["serviceAccountName"] == LIFEBOAT_SA[1]


def _assert_locked_down(pod: Document) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "limits" in container["resources"]
        assert "memory" in container["resources"]["limits"]


def _mounts(pod: Document) -> dict[str, Document]:
    """mountPath -> the volume mounted there (with the mount's readOnly)."""
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        assert mount["name"] in volumes, f"mount of undefined volume {mount['name']}"
        mounts[mount["mountPath"]] = {**volumes[mount["name"]], "readOnly": mount.get("readOnly", False)}
    return mounts


def test_the_state_db_lives_on_the_persistent_volume_and_tmp_is_writable() -> None:
    pod = _pod_spec(find("Deployment", "lifeboat"))
    mounts = _mounts(pod)
    state_dir = str(cluster_policy().state.parent)
    assert mounts[state_dir]["persistentVolumeClaim"]["claimName"] == "lifeboat-state"
    assert not mounts[state_dir]["readOnly"]
    find("PersistentVolumeClaim", "lifeboat-state")
    assert "emptyDir" in mounts["/tmp"]  # the root file system is read-only; snapshots are staged in /tmp
    assert "emptyDir" in mounts[str(cluster_policy().scratch.local.workdir)]


# ---- the policy ConfigMap -----------------------------------------------------------------------


def test_configmap_policy_validates_with_lifeboats_loader_and_no_environment() -> None:
    policy = cluster_policy()
    assert "${" not in cluster_policy_text()
    assert policy.scratch.kind == "kubernetes"
    assert policy.scratch.kubernetes.access == "service-dns"  # Lifeboat runs inside the cluster
    assert str(policy.state) == "/var/lib/lifeboat/state.db"
    assert set(policy.sources) == set(example_policy().sources)
    assert set(policy.drills) == set(example_policy().drills)


def _policy_files(node: Any) -> Iterator[str]:
    """Every path under /etc/lifeboat/ that the raw policy names (secret files, TLS files, keys)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from _policy_files(value)
    elif isinstance(node, list):
        for value in node:
            yield from _policy_files(value)
    elif isinstance(node, str) and node.startswith("/etc/lifeboat/"):
        yield node


def _projected_files(pod: Document) -> dict[str, tuple[str, str, str]]:
    """Absolute path in the container -> (ConfigMap|Secret, object name, key), for projected volumes."""
    files: dict[str, tuple[str, str, str]] = {}
    for mount_path, volume in _mounts(pod).items():
        for source in volume.get("projected", {}).get("sources", []):
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in source:
                    for item in source[field]["items"]:
                        files[f"{mount_path}/{item['path']}"] = (kind, source[field]["name"], item["key"])
    return files


def _pods_running_lifeboat() -> list[tuple[str, Document]]:
    return [("Deployment/lifeboat", _pod_spec(find("Deployment", "lifeboat")))] + [
        (f"CronJob/{cronjob['metadata']['name']}", _pod_spec(cronjob)) for cronjob in of_kind("CronJob")
    ]


def test_every_file_the_policy_reads_is_mounted_from_the_secret_example_in_every_pod() -> None:
    needed = sorted(set(_policy_files(yaml.safe_load(cluster_policy_text()))))
    assert needed, "the in-cluster policy names no secret file"
    secret = find("Secret", "lifeboat-secrets", examples=True)
    for where, pod in _pods_running_lifeboat():
        files = _projected_files(pod)
        assert files["/etc/lifeboat/lifeboat.yaml"] == ("ConfigMap", "lifeboat-policy", "lifeboat.yaml"), where
        for path in needed:
            assert path in files, f"{where} does not mount {path}, which the policy reads"
            kind, name, key = files[path]
            assert (kind, name) == ("Secret", "lifeboat-secrets"), where
            assert key in secret["stringData"], f"secret.example.yaml has no key {key}"
        assert _mounts(pod)["/etc/lifeboat"]["readOnly"], where


# ---- the CronJobs -------------------------------------------------------------------------------


def test_every_cronjob_cleans_up_after_itself_and_never_overlaps() -> None:
    cronjobs = of_kind("CronJob")
    assert len(cronjobs) >= 5
    for cronjob in cronjobs:
        name, spec = cronjob["metadata"]["name"], cronjob["spec"]
        job = spec["jobTemplate"]["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert spec["successfulJobsHistoryLimit"] <= 3, name
        assert spec["failedJobsHistoryLimit"] <= 3, name
        assert 0 < job["ttlSecondsAfterFinished"] <= 7 * 86400, name  # finished pods must not pile up in etcd
        assert 0 <= job["backoffLimit"] <= 2, name
        assert job["activeDeadlineSeconds"] > 0, name
        assert spec["startingDeadlineSeconds"] > 0, name
        assert spec["timeZone"] == "Etc/UTC", name  # the policy's schedules are UTC
        assert expand_cron(spec["schedule"])
        pod = _pod_spec(cronjob)
        assert pod["restartPolicy"] == "Never", name
        _assert_locked_down(pod)


def job_key(invocation: Invocation) -> tuple[str, ...]:
    """What a scheduled run does: ``('backup', 'run', 'features')``, ``('drill', 'run', 'nightly')``, ``('prune',)``,
    ``('backup', 'run', '--restore-point', 'platform')``."""
    source = invocation.options.get("--source")
    point = invocation.options.get("--restore-point")
    named = [source] if source else ["--restore-point", point] if point else []
    return (*invocation.command, *invocation.arguments, *named)


def scheduled_jobs(policy: Policy) -> dict[tuple[str, ...], str | None]:
    """Every job ``lifeboat serve`` would schedule for ``policy``, with its cron expression."""
    jobs: dict[tuple[str, ...], str | None] = {
        ("backup", "run", name): source.schedule for name, source in policy.sources.items()
    }
    jobs |= {("drill", "run", name): drill.schedule for name, drill in policy.drills.items()}
    jobs |= {("backup", "run", "--restore-point", name): point.schedule for name, point in policy.restore_points.items()}
    jobs |= {("prune",): policy.repository.prune.schedule, ("check",): policy.repository.check.schedule}
    return jobs


def _cronjobs_by_job() -> dict[tuple[str, ...], Document]:
    found: dict[tuple[str, ...], Document] = {}
    for cronjob in of_kind("CronJob"):
        invocation = parse_invocation(_argv(cronjob))
        assert invocation.config == "/etc/lifeboat/lifeboat.yaml"
        assert job_key(invocation) not in found, f"two CronJobs run {job_key(invocation)}"
        found[job_key(invocation)] = cronjob
    return found


def test_cronjobs_run_every_scheduled_piece_of_the_policy_on_its_schedule() -> None:
    cronjobs = _cronjobs_by_job()
    for job, schedule in scheduled_jobs(cluster_policy()).items():
        assert job in cronjobs, f"no CronJob runs `lifeboat {' '.join(job)}`"
        assert cronjobs[job]["spec"]["schedule"] == schedule, f"`lifeboat {' '.join(job)}` is off the policy's schedule"
    assert ("janitor",) in cronjobs
    check = parse_invocation(_argv(cronjobs[("check",)]))
    assert check.options["--read-data-subset"] == "10%"


def test_cronjob_pods_get_api_rights_only_when_their_work_needs_them() -> None:
    for command, cronjob in _cronjobs_by_job().items():
        pod = _pod_spec(cronjob)
        needs_api = command[0] in ("drill", "janitor")
        assert pod["serviceAccountName"] == (LIFEBOAT_SA if needs_api else RUNNER_SA)[1], command
        assert pod["automountServiceAccountToken"] is needs_api, command


# ---- RBAC ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    verb: str
    group: str
    resource: str  # "pods", or a subresource "pods/log"
    namespace: str | None  # None: cluster-scoped

    def __str__(self) -> str:
        return f"{self.verb} {self.group or 'core'}/{self.resource} in {self.namespace or 'the cluster'}"


def rbac_allows(access: Access, subject: tuple[str, str] = LIFEBOAT_SA) -> bool:
    """Whether the Roles and ClusterRoles of deploy/kubernetes (examples included) let the service
    account ``subject`` (namespace, name) do ``access``, by Kubernetes' RBAC rules."""
    roles = {(None, role["metadata"]["name"]): role for role in of_kind("ClusterRole")}
    roles |= {(role["metadata"]["namespace"], role["metadata"]["name"]): role for role in of_kind("Role")}
    for binding in of_kind("ClusterRoleBinding") + of_kind("RoleBinding"):
        if not any(
            entry["kind"] == "ServiceAccount" and (entry["namespace"], entry["name"]) == subject
            for entry in binding["subjects"]
        ):
            continue
        scope = binding["metadata"].get("namespace")  # None for a ClusterRoleBinding: everywhere
        if scope is not None and access.namespace != scope:
            continue
        ref = binding["roleRef"]
        role = roles[(None if ref["kind"] == "ClusterRole" else scope, ref["name"])]
        if any(_rule_allows(rule, access) for rule in role["rules"]):
            return True
    return False


def _rule_allows(rule: Document, access: Access) -> bool:
    return (
        access.verb in rule["verbs"]
        and access.group in rule["apiGroups"]
        and access.resource in rule["resources"]
        and not rule.get("resourceNames")
    )


def _accesses(verbs: str, group: str, resources: str, namespace: str | None) -> list[Access]:
    return [Access(verb, group, resource, namespace) for verb in verbs.split() for resource in resources.split()]


# What issue 9 says the code does. When the scratch, janitor and executor code lands, the requests
# its HTTP-level fake API server records should be checked with rbac_allows as well.
NEEDED = [
    # drills: the namespace, its fences, the restored copies, readiness, kill-target, port-forward
    *_accesses("create get list watch delete", "", "namespaces", None),
    *_accesses("create", "apps", "statefulsets", DRILL_NAMESPACE),
    *_accesses(
        "create", "", "services persistentvolumeclaims resourcequotas limitranges configmaps secrets", DRILL_NAMESPACE
    ),
    *_accesses("create", "networking.k8s.io", "networkpolicies", DRILL_NAMESPACE),
    *_accesses("get list watch delete", "", "pods", DRILL_NAMESPACE),
    *_accesses("get", "", "pods/log", DRILL_NAMESPACE),
    *_accesses("list", "", "events", DRILL_NAMESPACE),
    *_accesses("create get", "", "pods/portforward", DRILL_NAMESPACE),
    # drills: a command check is a Job of the drill namespace, followed to its end, deleted by teardown
    *_accesses("create get delete", "batch", "jobs", DRILL_NAMESPACE),
    # backup executor: Jobs in Lifeboat's namespace, followed to the end, their logs read
    *_accesses("create get list watch delete", "batch", "jobs", "lifeboat"),
    *_accesses("list", "", "pods", "lifeboat"),
    *_accesses("get", "", "pods/log", "lifeboat"),
    # janitor: finished pods and Jobs in a configured namespace (janitor-rbac-ml-jobs.example.yaml)
    *_accesses("list delete", "", "pods", "ml-jobs"),
    *_accesses("list delete", "batch", "jobs", "ml-jobs"),
]

NOT_NEEDED = [
    *_accesses("get list watch", "", "secrets", "kube-system"),
    *_accesses("get list watch", "", "secrets", DRILL_NAMESPACE),
    *_accesses("get list", "", "configmaps", "kube-system"),
    *_accesses("create", "", "pods", "default"),  # pods come from StatefulSets and Jobs only
    *_accesses("create", "", "pods/exec pods/attach", DRILL_NAMESPACE),
    # Creating and deleting Jobs cannot be limited to the drill namespaces, made at run time (the
    # ClusterRoleBinding grants it everywhere, as for StatefulSets): admission-guard.yaml fences those
    # writes. Listing them, which the guard cannot see, stays Lifeboat's and the janitor's namespaces' only.
    *_accesses("list watch", "batch", "jobs", "default"),
    *_accesses("list watch", "batch", "jobs", DRILL_NAMESPACE),
    *_accesses("update patch", "", "namespaces", None),
    *_accesses("create", "rbac.authorization.k8s.io", "rolebindings clusterrolebindings", DRILL_NAMESPACE),
    *_accesses("bind escalate", "rbac.authorization.k8s.io", "clusterroles roles", None),
    *_accesses("delete", "", "nodes persistentvolumes", None),
    *_accesses("impersonate", "", "serviceaccounts users", None),
]


@pytest.mark.parametrize("access", NEEDED, ids=str)
def test_lifeboat_may_do_what_drills_the_janitor_and_backup_jobs_need(access: Access) -> None:
    assert rbac_allows(access)


@pytest.mark.parametrize("access", NOT_NEEDED, ids=str)
def test_lifeboat_may_not_do_what_it_does_not_need(access: Access) -> None:
    assert not rbac_allows(access)


def test_the_runner_account_has_no_rights_at_all() -> None:
    assert not [access for access in NEEDED if rbac_allows(access, RUNNER_SA)]
    assert find("ServiceAccount", "lifeboat-runner")["automountServiceAccountToken"] is False


def test_rbac_rules_have_no_wildcards_or_escalation_verbs() -> None:
    rules = [rule for role in of_kind("ClusterRole") + of_kind("Role") for rule in role["rules"]]
    assert rules
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert not {"update", "patch", "deletecollection"} & set(rule["verbs"]), rule


def test_secrets_can_only_be_created_in_drill_namespaces_never_read() -> None:
    granting = [
        (role["kind"], role["metadata"]["name"], sorted(rule["verbs"]))
        for role in of_kind("ClusterRole") + of_kind("Role")
        for rule in role["rules"]
        if "secrets" in rule["resources"]
    ]
    assert granting == [("ClusterRole", "lifeboat-drills", ["create"])]


def test_janitor_example_is_a_namespaced_role_not_a_cluster_wide_one() -> None:
    path = KUBERNETES / "base" / "janitor-rbac-ml-jobs.example.yaml"
    kinds = {(document["kind"], document["metadata"]["namespace"]) for document in load_documents(path)}
    assert kinds == {("Role", "ml-jobs"), ("RoleBinding", "ml-jobs")}


def test_admission_guard_fences_the_same_account_prefix_and_namespaces() -> None:
    policy_doc = find("ValidatingAdmissionPolicy", "lifeboat-stays-in-its-namespaces")
    binding = find("ValidatingAdmissionPolicyBinding", "lifeboat-stays-in-its-namespaces")
    assert binding["spec"]["policyName"] == policy_doc["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy_doc["spec"]["failurePolicy"] == "Fail"
    condition = " ".join(entry["expression"] for entry in policy_doc["spec"]["matchConditions"])
    assert f"system:serviceaccount:{LIFEBOAT_SA[0]}:{LIFEBOAT_SA[1]}" in condition
    expressions = " ".join(entry["expression"] for entry in policy_doc["spec"]["validations"])
    prefix = cluster_policy().scratch.kubernetes.namespace_prefix
    assert expressions.count(f"startsWith('{prefix}')") == 2
    janitor_namespaces = {
        role["metadata"]["namespace"] for role in of_kind("Role") if role["metadata"]["name"] == "lifeboat-janitor"
    }
    for namespace in {LIFEBOAT_SA[0], *janitor_namespaces}:
        assert f"'{namespace}'" in expressions, f"the guard would refuse Lifeboat's writes in {namespace}"


# ---- systemd ------------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "lifeboat.service"


@functools.cache
def systemd_unit() -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd allows a key more than once)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {raw}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _seconds(value: str) -> timedelta:
    return parse_duration(value.replace("min", "m"))


def test_systemd_unit_runs_serve_and_lets_the_running_job_finish() -> None:
    service = {key: values[-1] for key, values in systemd_unit()["Service"].items()}
    invocation = parse_invocation(shlex.split(service["ExecStart"]))
    assert shlex.split(service["ExecStart"])[0] == "/usr/local/bin/lifeboat"
    assert invocation.command == ("serve",)
    assert invocation.config == "/etc/lifeboat/lifeboat.yaml"
    assert service["Type"] == "simple"
    assert service["User"] == "lifeboat"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"  # SIGTERM to the service, not to the etcdctl it runs
    assert _seconds(service["TimeoutStopSec"]) > example_policy().service.stop_timeout


def test_systemd_unit_is_hardened_and_may_write_only_the_state_directory() -> None:
    service = {key: values[-1] for key, values in systemd_unit()["Service"].items()}
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    writable = service["ReadWritePaths"].split()
    assert writable == ["/var/lib/lifeboat"]
    assert str(example_policy().state).startswith("/var/lib/lifeboat/")
    assert systemd_unit()["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_analyze_finds_nothing_wrong_with_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        missing_requirement("systemd-analyze is not on PATH (Debian package: systemd)")
    # verify wants ExecStart's binary to exist; point it at this test's Python, same arguments.
    unit = tmp_path / "lifeboat.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/usr/local/bin/lifeboat", sys.executable), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    output = "\n".join(
        line for line in (result.stdout + result.stderr).splitlines() if str(unit) in line or "lifeboat.service" in line
    )
    assert result.returncode == 0, output or result.stderr
    assert not re.search(r"Unknown|Invalid|Failed|ignoring|not executable", output), output


# ---- crontab ------------------------------------------------------------------------------------

CRONTAB = DEPLOY / "cron" / "lifeboat.crontab"
_ENVIRONMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class CronLine:
    schedule: str
    command: str
    invocation: Invocation


def crontab_lines() -> list[CronLine]:
    """The job lines of the crontab (environment lines and comments left out)."""
    lines = []
    for raw in CRONTAB.read_text(encoding="utf-8").splitlines():
        text = raw.strip()
        if not text or text.startswith("#") or _ENVIRONMENT.match(text):
            continue
        fields = text.split(None, 5)
        assert len(fields) == 6, f"not a five-field cron line with a command: {raw}"
        schedule, command = " ".join(fields[:5]), fields[5]
        words = shlex.split(command.replace("\\%", "%"))
        lifeboat = words[words.index("lifeboat") :]
        lines.append(CronLine(schedule, command, parse_invocation(lifeboat[: lifeboat.index("2>&1")])))
    return lines


def test_crontab_lines_are_valid_cron_running_contract_commands_without_overlap() -> None:
    lines = crontab_lines()
    assert lines
    for line in lines:
        assert expand_cron(line.schedule)
        assert not re.search(r"(?<!\\)%", line.command), "a bare % ends a crontab command: write \\%"
        assert line.command.startswith("flock -n /run/lock/"), line.command  # a slow run is skipped, not doubled
        assert re.search(r"2>&1 \| logger -t lifeboat-[a-z0-9-]+$", line.command), line.command
    locks = [line.command.split()[2] for line in lines]
    assert len(set(locks)) == len(locks), "two jobs share a lock file"


def test_crontab_runs_every_scheduled_piece_of_the_example_policy() -> None:
    policy = example_policy()
    environment = {
        key: value
        for key, _, value in (
            line.partition("=") for line in CRONTAB.read_text(encoding="utf-8").splitlines() if _ENVIRONMENT.match(line)
        )
    }
    assert environment["LIFEBOAT_CONFIG"] == "/etc/lifeboat/lifeboat.yaml"
    assert "/usr/local/bin" in environment["PATH"].split(":")
    found = {job_key(line.invocation): line.schedule for line in crontab_lines()}
    for job, schedule in scheduled_jobs(policy).items():
        assert found.get(job) == schedule, f"`lifeboat {' '.join(job)}` is missing or off the policy's schedule"
    assert {("janitor",), ("policy", "validate")} <= set(found)


# ---- Dockerfile ---------------------------------------------------------------------------------

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n\s*",
        " ",
        "\n".join(line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")),
    )
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


@functools.cache
def dockerfile_uid() -> int:
    users = [arguments for instruction, arguments in _instructions() if instruction == "USER"]
    assert users, "the image must not run as root"
    return int(users[-1].split(":")[0])


def test_dockerfile_builds_from_the_wheelhouse_on_a_python_base_and_runs_lifeboat_as_non_root() -> None:
    instructions = _instructions()
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    assert instructions[1] == ("FROM", "${BASE_IMAGE}")
    assert dockerfile_uid() != 0
    for instruction, arguments in instructions:
        if instruction == "COPY" and "--from" not in arguments:
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context (the repository root)"
    runs = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert re.search(r"apt-get install .*\betcd-client\b", runs)
    # Only the wheelhouse deploy/docker/build.sh makes from this tree, bind-mounted (no wheel stays in a layer).
    assert "--mount=type=bind,source=build/wheels,target=/wheels" in runs
    assert "pip install --no-index --find-links=/wheels lifeboat" in runs
    assert ("ENTRYPOINT", '["lifeboat"]') in instructions
    build = (DEPLOY / "docker" / "build.sh").read_text(encoding="utf-8")
    assert "--wheel-dir build/wheels --constraint deploy/docker/constraints.txt ." in build
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert "!build/wheels" in ignore
    with (ROOT / "pyproject.toml").open("rb") as stream:
        dependencies = tomllib.load(stream)["project"]["dependencies"]
    pinned = {
        line.split("==")[0]
        for line in (DEPLOY / "docker" / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    }
    names = {re.split(r"[\[<>=!~ ]", dependency, maxsplit=1)[0].lower() for dependency in dependencies}
    assert names <= pinned, f"not pinned in deploy/docker/constraints.txt: {sorted(names - pinned)}"
