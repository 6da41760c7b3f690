"""Every kustomize overlay renders and validates offline (Kubernetes 1.30 schemas, strict); the pieces point
at each other (HPA -> Deployment, probes -> ports the Service exposes, selectors -> pod labels). The hardened
defaults hold: every container of every overlay, the export Job and KServe meets the Pod Security Standard
"restricted" with a read-only root; a NetworkPolicy admits inference only from client pods and metrics only
from the monitoring namespace; every overlay has its namespace; the admin key is a Secret nobody committed;
and checkov passes them (tests/deploy/test_checkov.py)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from captioning import contract
from captioning.server.security import RESTRICTED_APIS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.30.0"
OVERLAYS = ("cpu", "gpu", "gpu-s3")
# Custom resources have no schema in kubernetes-validate: the fields their controllers require.
CUSTOM_REQUIRED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (("spec", "selector"), ("spec", "endpoints")),
    ("serving.kserve.io/v1beta1", "InferenceService"): (
        ("spec", "predictor", "model", "modelFormat", "name"),
        ("spec", "predictor", "model", "runtime"),
        ("spec", "predictor", "model", "storageUri"),
    ),
}


def render(overlay: str | Path) -> list[dict]:
    """An overlay's rendered objects: a name under deploy/k8s/overlays, or the path of any kustomization."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed: the manifests were not rendered")
    path = overlay if isinstance(overlay, Path) else K8S / "overlays" / overlay
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, check=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def kustomization(tmp_path: Path, **fields) -> Path:
    """A kustomization in tmp_path; `resources` and `components` are paths under the repository (kustomize
    takes them relative to the kustomization)."""
    for key in ("resources", "components"):
        if key in fields:
            fields[key] = [os.path.relpath(path, tmp_path) for path in fields[key]]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(fields))
    return tmp_path


def _get(doc: dict, path: tuple[str, ...]):
    for key in path:
        doc = doc[key]
    return doc


def validate(doc: dict) -> None:
    import kubernetes_validate

    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM_REQUIRED:
        for path in CUSTOM_REQUIRED[key]:
            assert _get(doc, path), f"{doc['kind']} {doc['metadata']['name']}: {'.'.join(path)} is empty"
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def _one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay):
    docs = render(overlay)
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"} <= {
        d["kind"] for d in docs
    }
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pieces_point_at_each_other(overlay):
    docs = render(overlay)
    deployment, service, hpa = (
        _one(docs, "Deployment"),
        _one(docs, "Service"),
        _one(docs, "HorizontalPodAutoscaler"),
    )
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        _one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    exposed = {p["targetPort"] for p in service["spec"]["ports"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports and container[probe]["httpGet"]["port"] in exposed
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert _one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }
    # The grace period covers the preStop pause and Triton's drain.
    drain = int(container["args"][container["args"].index("--exit-timeout") + 1])
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + drain
    volumes = {v["name"] for v in pod["spec"]["volumes"]}
    assert "dshm" in volumes and {m["name"] for m in container["volumeMounts"]} <= volumes


def test_gpu_overlay_requests_a_gpu_and_exports_a_gpu_repository():
    docs = render("gpu")
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and container["image"].endswith(":gpu")
    job = _one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert "--target=gpu" in job["args"] and job["image"].endswith(":cpu")


def test_object_storage_overlay_reads_s3_with_credentials_from_a_secret():
    pod = _one(render("gpu-s3"), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][1].startswith("s3://")
    assert container["envFrom"] == [{"secretRef": {"name": "captioning-s3"}}]
    assert "models" not in {v["name"] for v in pod["volumes"]}


def test_kserve_inference_service():
    doc = yaml.safe_load((K8S / "kserve" / "inferenceservice.yaml").read_text())
    validate(doc)
    assert doc["spec"]["predictor"]["model"]["runtime"] == "kserve-tritonserver"


def test_grafana_dashboard_plots_what_the_autoscaler_uses():
    import json

    dashboard = json.loads((ROOT / "deploy" / "monitoring" / "captioning-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in ("nv_inference_queue_duration_us", "nv_inference_request_success", "nv_inference_request_failure",
                   "nv_inference_request_summary_us", "nv_inference_exec_count", "nv_gpu_utilization"):  # fmt: skip
        assert metric in exprs
    rules = (K8S / "components" / "autoscaling" / "prometheus-adapter-rules.yaml").read_text()
    assert "nv_inference_queue_duration_us" in rules and "triton_queue_time_per_request_us" in rules


# --- Hardened defaults -------------------------------------------------------------------------------------

NAMESPACE = "bilingual-captioning"
CLIENT_LABEL = ("bilingual-captioning/client", "true")
ADMIN_SECRET, ADMIN_SECRET_KEY = "captioning-admin-key", "admin-key"
# What the launcher restricts (one source: captioning.server.security), so KServe's own flags cannot drift.
CONTROL_PLANE = set(RESTRICTED_APIS)
KSERVE = K8S / "kserve" / "inferenceservice.yaml"
WORKLOADS = {"Deployment", "Job", "StatefulSet", "DaemonSet", "ReplicaSet", "CronJob", "Pod"}
# The volume types the restricted profile admits.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}  # fmt: skip
# KServe's own fields of a predictor and its model; the rest are the PodSpec and Container the pod gets.
KSERVE_PREDICTOR_ONLY = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
                         "timeout", "canaryTrafficPercent", "logger", "batcher", "model", "deploymentStrategy"}  # fmt: skip
KSERVE_MODEL_ONLY = {"modelFormat", "runtime", "runtimeVersion", "storageUri", "protocolVersion"}
# The image of the kserve-tritonserver runtime at the InferenceService's runtimeVersion.
KSERVE_RUNTIME_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"


def kserve() -> dict:
    return yaml.safe_load(KSERVE.read_text())


def kserve_pod(doc: dict) -> dict:
    """The pod KServe makes of the InferenceService: the predictor's PodSpec fields, the model as its one
    container (the image and HTTP port come from the kserve-tritonserver runtime)."""
    predictor = doc["spec"]["predictor"]
    spec = {k: copy.deepcopy(v) for k, v in predictor.items() if k not in KSERVE_PREDICTOR_ONLY}
    model = {k: copy.deepcopy(v) for k, v in predictor["model"].items() if k not in KSERVE_MODEL_ONLY}
    spec["containers"] = [{"name": "kserve-container", "image": KSERVE_RUNTIME_IMAGE, **model}]
    metadata = {"name": f"{doc['metadata']['name']}-predictor", "namespace": doc["metadata"]["namespace"]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def workloads(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", pod_spec(d)) for d in docs if d["kind"] in WORKLOADS]


def every_workload() -> list[tuple[str, dict]]:
    found = [
        (f"{overlay}: {name}", spec) for overlay in OVERLAYS for name, spec in workloads(render(overlay))
    ]
    return found + [("kserve: InferenceService", pod_spec(kserve_pod(kserve())))]


def _under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def restricted_violations(spec: dict) -> list[str]:
    """What keeps a PodSpec from the Pod Security Standard "restricted" profile, read-only root filesystem and
    no service account token included ([] when it meets them). Container fields override the pod's."""
    problems = []
    pod = spec.get("securityContext", {})
    if spec.get("automountServiceAccountToken") is not False:
        problems.append("pod: automountServiceAccountToken is not false")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(host):
            problems.append(f"pod: {host}")
    emptydirs = set()
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds - RESTRICTED_VOLUMES)} is not allowed")
        if "emptyDir" in volume:
            emptydirs.add(volume["name"])
    containers = [
        *spec.get("initContainers", []),
        *spec.get("containers", []),
        *spec.get("ephemeralContainers", []),
    ]
    if not spec.get("containers"):
        problems.append("pod: no containers")
    for container in containers:
        name, own = container["name"], container.get("securityContext", {})

        def field(key, own=own, pod=pod):
            return own.get(key, pod.get(key))

        if field("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if not isinstance(field("runAsUser"), int) or field("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is not a non-root uid")
        if own.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if own.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = own.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if (field("seccompProfile") or {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if own.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        # With a read-only root, what the container writes must be on an emptyDir.
        writable = {m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in emptydirs}
        if "/tmp" not in writable:
            problems.append(f"{name}: /tmp is not an emptyDir")
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for variable in ("HOME", "CAPTIONING_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
            if variable in env and not _under(env[variable] or "", writable):
                problems.append(f"{name}: {variable}={env[variable]} is not on an emptyDir")
        if "HOME" not in env:
            problems.append(f"{name}: HOME is not set (to an emptyDir)")
    return problems


def test_every_container_meets_the_restricted_profile():
    found = every_workload()
    assert {name.split(": ")[1] for name, _ in found} >= {
        "Deployment/captioning-triton",
        "Job/captioning-export",
        "InferenceService",
    }
    for name, spec in found:
        assert not restricted_violations(spec), (name, restricted_violations(spec))


def test_the_server_and_export_caches_are_on_emptydirs():
    docs = render("gpu")
    server = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert "CAPTIONING_CACHE" in env  # the launcher's backend directory (else ~/.cache/captioning)
    job = _one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert "HF_HOME" in {e["name"] for e in job["env"]}  # the downloaded checkpoints


RESTRICTED_FIELDS = [
    ("pod", "automountServiceAccountToken"),
    ("both", "runAsNonRoot"),
    ("both", "runAsUser"),
    ("container", "allowPrivilegeEscalation"),
    ("container", "capabilities"),
    ("both", "seccompProfile"),
    ("container", "readOnlyRootFilesystem"),
    ("mount", "/tmp"),
    ("env", "CAPTIONING_CACHE"),
]


@pytest.mark.parametrize("where,key", RESTRICTED_FIELDS)
def test_the_restricted_check_fails_on_a_missing_field(where, key):
    spec = copy.deepcopy(_one(render("cpu"), "Deployment")["spec"]["template"]["spec"])
    assert not restricted_violations(spec)
    container = spec["containers"][0]
    if where == "pod":
        del spec[key]
    if where in ("both", "container"):
        spec["securityContext"].pop(key, None)
        del container["securityContext"][key]
    if where == "mount":
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] != key]
    if where == "env":  # the cache moved off its emptyDir
        for variable in container["env"]:
            if variable["name"] == key:
                variable["value"] = "/opt/captioning/cache"
    assert restricted_violations(spec)


def test_an_init_container_is_checked_too():
    spec = copy.deepcopy(_one(render("cpu"), "Deployment")["spec"]["template"]["spec"])
    spec["initContainers"] = [{"name": "setup", "image": "busybox:1.36"}]
    assert any(p.startswith("setup:") for p in restricted_violations(spec))


def _server_policy(docs: list[dict]) -> dict:
    labels = _one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    return policy


def _admits(peer: dict) -> str:
    """What one `from` peer admits: the client pods of this namespace, the monitoring namespace, or other."""
    client = {"matchExpressions": [{"key": CLIENT_LABEL[0], "operator": "In", "values": [CLIENT_LABEL[1]]}]}
    if peer == {"podSelector": client} or peer == {"podSelector": {"matchLabels": dict([CLIENT_LABEL])}}:
        return "clients"
    if peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}:
        return "monitoring"
    return f"other: {peer}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_admits_clients_to_inference_and_monitoring_to_metrics(overlay):
    docs = render(overlay)
    policy = _server_policy(docs)
    assert policy["spec"]["podSelector"]["matchLabels"]  # selects the server pods, not every pod
    assert "Ingress" in policy["spec"]["policyTypes"]
    admitted: dict[int, set[str]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from") and rule.get("ports"), f"a rule without from/ports admits everyone: {rule}"
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP"
            admitted.setdefault(port["port"], set()).update(_admits(peer) for peer in rule["from"])
    assert admitted == {8000: {"clients"}, 8001: {"clients"}, 8002: {"monitoring"}}
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_export_job_admits_no_ingress(overlay):
    docs = render(overlay)
    labels = _one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert [p["spec"].get("ingress", []) for p in policies] == [[]]
    assert "Ingress" in policies[0]["spec"]["policyTypes"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_has_its_restricted_namespace(overlay):
    overlay_file = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
    assert overlay_file["namespace"] == NAMESPACE
    docs = render(overlay)
    namespace = _one(docs, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']} {doc['metadata']['name']}"
    assert kserve()["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_admin_key_is_a_file_from_an_optional_secret_in_the_server_only(overlay):
    docs = render(overlay)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == ADMIN_SECRET]
    # Optional: without the Secret the server starts with a random per-pod key, and the control plane is shut.
    assert volume["secret"]["optional"] is True
    assert [item["key"] for item in volume["secret"]["items"]] == [ADMIN_SECRET_KEY]
    assert volume["secret"].get("defaultMode", 0o644) & 0o007 == 0  # not world-readable
    (server,) = pod["containers"]
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e for e in server["env"]}
    key_file = f"{mount['mountPath']}/{volume['secret']['items'][0]['path']}"
    assert env["CAPTIONING_ADMIN_KEY_FILE"]["value"] == key_file and mount.get("readOnly") is True
    assert "CAPTIONING_ADMIN_KEY" not in env  # a file, not an environment variable
    for container in pod.get("initContainers", []):
        assert volume["name"] not in {m["name"] for m in container.get("volumeMounts", [])}
    # The export Job writes files and never talks to the server: no key.
    for name, spec in workloads(docs):
        if name.startswith("Job/"):
            assert ADMIN_SECRET not in json.dumps(spec), name


def test_kserve_restricts_the_control_plane_with_the_secret():
    doc = kserve()
    model = doc["spec"]["predictor"]["model"]
    (variable,) = [e for e in model["env"] if e["name"] == "CAPTIONING_ADMIN_KEY"]
    reference = variable["valueFrom"]["secretKeyRef"]
    assert (reference["name"], reference["key"]) == (ADMIN_SECRET, ADMIN_SECRET_KEY)
    # Required: an optional, missing Secret would leave the literal "$(CAPTIONING_ADMIN_KEY)" as the key.
    assert reference.get("optional", False) is False
    for flag in ("--http-restricted-api", "--grpc-restricted-protocol"):
        (arg,) = [a for a in model["args"] if a.startswith(flag + "=")]
        apis, header = arg.split("=", 1)[1].split(":", 1)
        assert set(apis.split(",")) == CONTROL_PLANE
        assert header == f"{contract.ADMIN_KEY_HEADER}=$(CAPTIONING_ADMIN_KEY)"
    # The pod KServe makes of it is a valid PodSpec (the predictor's fields are real pod fields).
    validate(kserve_pod(doc))


def test_no_secret_with_data_is_committed():
    committed = [
        doc for path in (ROOT / "deploy").rglob("*.y*ml") for doc in yaml.safe_load_all(path.read_text())
    ]
    rendered = [doc for overlay in OVERLAYS for doc in render(overlay)]
    for doc in [d for d in committed + rendered if isinstance(d, dict)]:
        if doc.get("kind") == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), doc["metadata"]["name"]
    docs = render("cpu")
    assert "Secret" not in {d["kind"] for d in docs}
    assert ADMIN_SECRET in json.dumps(_one(docs, "Deployment"))  # referenced, created in the cluster


def test_the_cpu_image_listens_on_the_pod_address():
    """`captioning serve` (the CPU image's entrypoint) binds 127.0.0.1 by default; node-start binds 0.0.0.0."""
    args = _one(render("cpu"), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    cmd = [
        line
        for line in (ROOT / "docker" / "Dockerfile.cpu").read_text().splitlines()
        if line.startswith("CMD")
    ]
    assert json.loads(cmd[0].removeprefix("CMD "))[-2:] == ["--host", "0.0.0.0"]


def tls_overlay(tmp_path: Path, overlay: str) -> Path:
    return kustomization(
        tmp_path,
        resources=[K8S / "overlays" / overlay],
        components=[K8S / "components" / "grpc-tls"],
    )


@pytest.mark.parametrize("overlay", ["gpu", "gpu-s3"])
def test_grpc_tls_component_mounts_the_tls_secret_into_the_server(tmp_path, overlay):
    pod = _one(render(tls_overlay(tmp_path, overlay)), "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "captioning-grpc-tls"]
    assert not volume["secret"].get("optional")  # asked for TLS: no start without the certificate
    (server,) = pod["containers"]
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == volume["name"]]
    args = server["args"]
    assert args[args.index("--grpc-tls-cert") + 1] == f"{mount['mountPath']}/tls.crt"
    assert args[args.index("--grpc-tls-key") + 1] == f"{mount['mountPath']}/tls.key"
    assert args[args.index("--repository") + 1]  # the repository survives (s3-repository replaces the args)
    assert not restricted_violations(pod)


def test_images_are_tags_in_the_base_and_an_overlay_can_pin_digests(tmp_path):
    base = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    assert "@" not in base["spec"]["template"]["spec"]["containers"][0]["image"]
    digest = "sha256:" + "0" * 64
    pinned = kustomization(
        tmp_path,
        resources=[K8S / "overlays" / "gpu"],
        images=[
            {"name": "registry.example.com/bilingual-captioning:gpu", "digest": digest},
            {"name": "registry.example.com/bilingual-captioning:cpu", "digest": digest},
        ],
    )
    images = {c["image"] for _, spec in workloads(render(pinned)) for c in spec["containers"]}
    assert images and all(image.endswith("@" + digest) for image in images), images
    for overlay in OVERLAYS:
        assert "digest:" in (K8S / "overlays" / overlay / "kustomization.yaml").read_text()  # says how
