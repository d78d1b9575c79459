"""Validation of the Kubernetes recipe in cluster/kubernetes/, offline.

Every document of every ``cluster/kubernetes/*.yaml`` is checked:

- core resources (PersistentVolumeClaim, Job) against the Kubernetes JSON schemas that
  ``kubernetes-validate`` ships, in strict mode (unknown fields are errors, as with kubectl's
  default server-side field validation), for Kubernetes ``KUBERNETES_VERSION``;
- the DaskCluster against the openAPIV3Schema of the dask-kubernetes operator's CRD, read from
  the installed ``dask-kubernetes`` package, with unknown fields rejected as the API server does;
  its pod specs, scheduler Service spec and metadata also against the Kubernetes schemas;
- the Kustomization against the part of kustomize's format it uses, and by rendering it with
  ``kubectl kustomize`` (the image it sets must reach every container).

Each check is also shown to reject a manifest with a misnamed field.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = ROOT / "cluster"
K8S_DIR = CLUSTER_DIR / "kubernetes"

# The Kubernetes release whose API schemas the manifests are checked against (shipped by
# kubernetes-validate >= 1.33; it checks against the newest shipped release not newer).
KUBERNETES_VERSION = "1.33.0"
# The image docker-compose.yml builds from cluster/Dockerfile; the manifests' default.
DEFAULT_IMAGE = "roidask:local"
CRD_IN_PACKAGE = "operator/deployment/helm/dask-kubernetes-operator/crds/daskcluster.yaml"
SCHEDULER_ADDRESS = "tcp://roidask-scheduler.roidask.svc.cluster.local:8786"


# --------------------------------------------------------------------------- helpers


def load_documents(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path.name} has no YAML document"
    return docs


def manifest_files() -> list[Path]:
    files = sorted(K8S_DIR.glob("*.yaml"))
    assert files, f"no *.yaml in {K8S_DIR}"
    return files


def all_documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in manifest_files() for doc in load_documents(path)]


def the_document(name: str) -> dict:
    (doc,) = load_documents(K8S_DIR / name)
    return doc


def container_args(container: dict) -> list[str]:
    return [str(a) for a in container.get("command", []) + container.get("args", [])]


def containers(node) -> list[dict]:
    """Every container (``containers`` and ``initContainers`` items) anywhere in ``node``."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += value
            else:
                found += containers(value)
    elif isinstance(node, list):
        for item in node:
            found += containers(item)
    return found


def renamed(doc: dict, path: list, new_key: str) -> dict:
    """A copy of ``doc`` whose key at ``path`` is renamed ``new_key`` (value kept)."""
    broken = copy.deepcopy(doc)
    parent = broken
    for step in path[:-1]:
        parent = parent[step]
    parent[new_key] = parent.pop(path[-1])
    return broken


# --------------------------------------------------------------------------- the checks


def validate_core(doc: dict) -> None:
    """Strict Kubernetes JSON schema validation (raises for unknown kinds too)."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@functools.cache
def daskcluster_crd() -> dict:
    # find_spec locates the package without importing it (and its kubernetes clients)
    spec = importlib.util.find_spec("dask_kubernetes")
    assert spec is not None, "dask-kubernetes is not installed (pip install -e '.[test]')"
    (package_dir,) = spec.submodule_search_locations
    text = (Path(package_dir) / CRD_IN_PACKAGE).read_text()
    (crd,) = yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition"
    return crd


def strict_structural(schema: dict) -> dict:
    """A CRD structural schema as the API server applies it with strict field validation.

    Objects with ``properties`` accept no other field unless they declare
    ``additionalProperties`` or ``x-kubernetes-preserve-unknown-fields``.
    """
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {k: strict_structural(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict_structural(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        out["items"] = strict_structural(schema["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [strict_structural(s) for s in schema[key]]
    if "not" in schema:
        out["not"] = strict_structural(schema["not"])
    return out


def crd_validator(crd: dict) -> jsonschema.protocols.Validator:
    """A validator of whole custom resources of ``crd`` (its served versions)."""
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    served = [v for v in crd["spec"]["versions"] if v.get("served", True)]
    assert len(served) == 1, "expected one served version in the CRD"
    (version,) = served
    schema = strict_structural(version["schema"]["openAPIV3Schema"])
    # apiVersion, kind and metadata are checked by the API server itself, outside the schema
    schema["properties"] = {
        **schema["properties"],
        "apiVersion": {"enum": [f"{group}/{version['name']}"]},
        "kind": {"enum": [kind]},
        "metadata": {"type": "object"},
    }
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    # OpenAPI v3.0 schemas are JSON Schema draft 4 with extensions (x-kubernetes-*, format
    # int-or-string) that the validator ignores.
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


@functools.cache
def daskcluster_validator() -> jsonschema.protocols.Validator:
    return crd_validator(daskcluster_crd())


def validate_against_crd(doc: dict) -> None:
    daskcluster_validator().validate(doc)


def validate_embedded_specs(doc: dict) -> None:
    """The DaskCluster's pod specs, Service spec and metadata as core Kubernetes objects."""
    spec, metadata = doc["spec"], doc["metadata"]
    for pod_spec in (spec["worker"]["spec"], spec["scheduler"]["spec"]):
        validate_core({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec})
    service = spec["scheduler"]["service"]
    validate_core({"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": service})


# The part of kustomize's Kustomization format the recipe uses (kustomize ships no JSON
# schema); the rendering test below runs the real kustomize of kubectl.
KUSTOMIZATION_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "resources", "images"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"enum": ["kustomize.config.k8s.io/v1beta1"]},
        "kind": {"enum": ["Kustomization"]},
        "resources": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "newName": {"type": "string"},
                    "newTag": {"type": "string"},
                    "digest": {"type": "string"},
                },
            },
        },
    },
}


def validate_kustomization(doc: dict) -> None:
    jsonschema.Draft7Validator(KUSTOMIZATION_SCHEMA).validate(doc)


def validate_document(doc: dict) -> None:
    if doc.get("kind") == "DaskCluster":
        validate_against_crd(doc)
        validate_embedded_specs(doc)
    elif doc.get("kind") == "Kustomization":
        validate_kustomization(doc)
    else:
        validate_core(doc)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("name", "doc"),
    all_documents(),
    ids=[f"{name}:{doc.get('kind')}" for name, doc in all_documents()],
)
def test_every_manifest_document_validates(name, doc):
    validate_document(doc)


def test_core_schemas_are_the_pinned_kubernetes_release():
    job = the_document("batch-job.yaml")
    assert kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True) == "1.33"
    # a kind the schemas do not know is an error, not a silent pass
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_core({**job, "kind": "Jobb"})


def test_crd_is_the_operators_daskcluster_definition():
    crd = daskcluster_crd()
    assert crd["metadata"]["name"] == "daskclusters.kubernetes.dask.org"
    dc = the_document("daskcluster.yaml")
    assert dc["apiVersion"] == f"{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert set(schema["properties"]["spec"]["required"]) == {"scheduler", "worker"}


CORE_BREAKS = [
    ("data-pvc.yaml", ["spec", "accessModes"], "accessMode"),
    ("data-pvc.yaml", ["metadata", "namespace"], "namespaces"),
    ("batch-job.yaml", ["spec", "backoffLimit"], "backofLimit"),
    (
        "batch-job.yaml",
        ["spec", "template", "spec", "containers", 0, "volumeMounts", 0, "mountPath"],
        "mountpath",
    ),
    ("batch-job.yaml", ["spec", "template", "spec", "initContainers", 0, "command"], "cmd"),
    ("batch-job.yaml", ["spec", "template", "spec", "securityContext", "fsGroup"], "fsgroup"),
]


@pytest.mark.parametrize(("name", "path", "new_key"), CORE_BREAKS)
def test_kubernetes_schema_rejects_a_misnamed_field(name, path, new_key):
    doc = the_document(name)
    validate_core(doc)
    with pytest.raises(kubernetes_validate.ValidationError, match=repr(new_key)):
        validate_core(renamed(doc, path, new_key))


CRD_BREAKS = [
    (["spec", "worker", "replicas"], "replica"),
    (["spec", "worker", "spec", "containers", 0, "imagePullPolicy"], "pullPolicy"),
    (["spec", "worker", "spec", "volumes", 0, "persistentVolumeClaim"], "pvc"),
    (["spec", "scheduler", "service", "ports", 0, "targetPort"], "target_port"),
    (["spec", "scheduler", "service"], "services"),  # also drops a required field
    (["spec"], "specs"),
    (["kind"], "Kind"),
]


@pytest.mark.parametrize(("path", "new_key"), CRD_BREAKS)
def test_crd_schema_rejects_a_misnamed_field(path, new_key):
    doc = the_document("daskcluster.yaml")
    validate_against_crd(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_against_crd(renamed(doc, path, new_key))


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("4", ["spec", "worker", "replicas"]),  # a string where the CRD wants an integer
        (8786, ["spec", "scheduler", "service", "ports", 0, "targetPort"]),  # CRD: a string
        ("kubernetes.dask.org/v2", ["apiVersion"]),
    ],
)
def test_crd_schema_rejects_a_wrong_value(value, path):
    doc = copy.deepcopy(the_document("daskcluster.yaml"))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_against_crd(doc)


@pytest.mark.parametrize(
    ("path", "new_key"),
    [
        (["spec", "worker", "spec", "containers", 0, "resources"], "resource"),
        (["spec", "scheduler", "spec", "containers", 0, "readinessProbe", "httpGet"], "http"),
        (["spec", "scheduler", "service", "selector"], "selectors"),
        (["spec", "worker", "spec", "securityContext", "fsGroup"], "fs_group"),
        (["metadata", "name"], "nom"),
    ],
)
def test_embedded_specs_check_rejects_a_misnamed_field(path, new_key):
    doc = the_document("daskcluster.yaml")
    validate_embedded_specs(doc)
    with pytest.raises(kubernetes_validate.ValidationError, match=repr(new_key)):
        validate_embedded_specs(renamed(doc, path, new_key))


@pytest.mark.parametrize(
    ("path", "new_key"),
    [(["images", 0, "newName"], "new_name"), (["resources"], "resource")],
)
def test_kustomization_check_rejects_a_misnamed_field(path, new_key):
    doc = the_document("kustomization.yaml")
    validate_kustomization(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate_kustomization(renamed(doc, path, new_key))


# --------------------------------------------------------------------------- image


def test_kustomization_applies_every_resource_of_the_folder():
    doc = the_document("kustomization.yaml")
    others = {p.name for p in manifest_files()} - {"kustomization.yaml"}
    assert sorted(doc["resources"]) == sorted(others)


def test_default_image_is_the_one_docker_compose_builds():
    (entry,) = the_document("kustomization.yaml")["images"]
    assert f"{entry['newName']}:{entry['newTag']}" == DEFAULT_IMAGE
    assert DEFAULT_IMAGE.split(":")[0] == entry["name"]
    images = {c["image"] for _, doc in all_documents() for c in containers(doc)}
    assert images == {DEFAULT_IMAGE}
    (compose,) = load_documents(CLUSTER_DIR / "docker-compose.yml")
    assert {svc["image"] for svc in compose["services"].values()} == {DEFAULT_IMAGE}
    dockerfile = (CLUSTER_DIR / "Dockerfile").read_text()
    assert f"docker build -f cluster/Dockerfile -t {DEFAULT_IMAGE} ." in dockerfile
    readme = (CLUSTER_DIR / "README.md").read_text()
    assert "kubectl apply -k cluster/kubernetes" in readme
    assert f"-t {DEFAULT_IMAGE}" in readme


def kustomize(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def test_kustomize_sets_the_image_of_every_container(tmp_path):
    folder = tmp_path / "kubernetes"
    shutil.copytree(K8S_DIR, folder)
    source = [doc for _, doc in all_documents() if doc["kind"] != "Kustomization"]
    default = kustomize(folder)
    assert sorted(d["kind"] for d in default) == sorted(d["kind"] for d in source)
    assert {c["image"] for d in default for c in containers(d)} == {DEFAULT_IMAGE}
    # what cluster/README.md tells users to do: set newName/newTag
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    kustomization["images"][0].update(newName="registry.example.org/lab/roidask", newTag="0.1.0")
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    rendered = kustomize(folder)
    images = [c["image"] for d in rendered for c in containers(d)]
    assert len(images) == sum(len(containers(d)) for d in source) == 4
    assert set(images) == {"registry.example.org/lab/roidask:0.1.0"}
    by_kind = {d["kind"]: d for d in rendered}
    assert {c["image"] for c in containers(by_kind["DaskCluster"])} == {
        "registry.example.org/lab/roidask:0.1.0"
    }
    for doc in rendered:
        validate_document(doc)


# --------------------------------------------------------------------------- consistency


def test_daskcluster_resource():
    dc = the_document("daskcluster.yaml")
    assert dc["apiVersion"] == "kubernetes.dask.org/v1"
    assert dc["kind"] == "DaskCluster"
    (worker,) = dc["spec"]["worker"]["spec"]["containers"]
    (scheduler,) = dc["spec"]["scheduler"]["spec"]["containers"]
    wargs = container_args(worker)
    assert wargs[:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in wargs
    limit = wargs[wargs.index("--memory-limit") + 1]
    assert limit == "7GiB"
    # dask's limit stays below the pod's, so it spills before the pod is killed
    assert worker["resources"]["limits"]["memory"] == "8Gi"
    assert {"name": "data", "mountPath": "/data"} in worker["volumeMounts"]
    assert container_args(scheduler)[:2] == ["dask", "scheduler"]
    ports = {p["name"]: p["port"] for p in dc["spec"]["scheduler"]["service"]["ports"]}
    assert ports["tcp-comm"] == 8786
    selector = dc["spec"]["scheduler"]["service"]["selector"]
    assert selector["dask.org/cluster-name"] == dc["metadata"]["name"]


def test_batch_job_targets_the_daskcluster_scheduler():
    dc = the_document("daskcluster.yaml")
    job = the_document("batch-job.yaml")
    pvc = the_document("data-pvc.yaml")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container_args(container)
    assert args[:3] == ["roidask", "batch", "/data/manifest.tsv"]
    assert args[args.index("--out") + 1] == "/data/out"
    name, ns = dc["metadata"]["name"], dc["metadata"]["namespace"]
    # the operator's scheduler Service is "<cluster name>-scheduler"
    assert args[args.index("--scheduler") + 1] == SCHEDULER_ADDRESS
    assert SCHEDULER_ADDRESS == f"tcp://{name}-scheduler.{ns}.svc.cluster.local:8786"
    # the init container waits for that same address
    (wait,) = pod["initContainers"]
    assert wait["command"][3] == SCHEDULER_ADDRESS
    assert job["metadata"]["namespace"] == ns == pvc["metadata"]["namespace"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/data"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    worker_volumes = dc["spec"]["worker"]["spec"]["volumes"]
    assert volume in worker_volumes  # the workers see the same data


def test_pods_that_write_the_data_volume_run_as_the_images_user_with_its_group():
    """The image runs as uid 1000 (cluster/Dockerfile); a new ReadWriteMany volume is
    root's: fsGroup gives the pods' group the volume (only when its root is not already
    the group's, not at every start), so the Job and the workers can write /data/out."""
    uid = int(
        re.search(r"useradd .*--uid (\d+) roidask", (CLUSTER_DIR / "Dockerfile").read_text())[1]
    )
    job = the_document("batch-job.yaml")["spec"]["template"]["spec"]
    worker = the_document("daskcluster.yaml")["spec"]["worker"]["spec"]
    for pod in (job, worker):
        assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
        assert pod["securityContext"] == {
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "fsGroupChangePolicy": "OnRootMismatch",
        }
    readme = " ".join((CLUSTER_DIR / "README.md").read_text().split())
    assert f"uid {uid}" in readme
    assert "fsGroup" in readme


def test_logs_commands_name_the_batch_container():
    """The Job's pod has an init container too: `kubectl logs` names the batch's."""
    (container,) = the_document("batch-job.yaml")["spec"]["template"]["spec"]["containers"]
    for path in (CLUSTER_DIR / "README.md", K8S_DIR / "batch-job.yaml"):
        commands = re.findall(r"kubectl .*\blogs\b.*", path.read_text())
        assert commands, path
        for command in commands:
            assert f" -c {container['name']}" in f"{command} ", (path.name, command)


def run_wait_for_scheduler(address: str, deadline_s: str) -> subprocess.CompletedProcess:
    (wait,) = the_document("batch-job.yaml")["spec"]["template"]["spec"]["initContainers"]
    python, flag, script = wait["command"][:3]
    assert (python, flag) == ("python", "-c")
    return subprocess.run(
        [sys.executable, "-c", script, address, deadline_s],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_wait_for_scheduler_returns_once_the_port_answers():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = run_wait_for_scheduler(f"tcp://127.0.0.1:{port}", "30")
    assert out.returncode == 0, out.stderr


def test_wait_for_scheduler_fails_after_its_deadline():
    with socket.socket() as closed:  # bound, not listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        out = run_wait_for_scheduler(f"tcp://127.0.0.1:{port}", "0")
    assert out.returncode == 1
    assert re.fullmatch(
        rf"scheduler tcp://127\.0\.0\.1:{port} not reachable: .*refused.*\n", out.stderr
    )
