"""Every kustomize overlay renders and validates offline (Kubernetes 1.30 schemas, strict); the pieces point
at each other (HPA -> Deployment, probes -> ports the Service exposes, selectors -> pod labels)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with kustomize) is not installed: the manifests were not rendered")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, check=True
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


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
