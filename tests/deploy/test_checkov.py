"""checkov (scripts/install-checkov.sh, deploy/.checkov.yaml) passes the rendered overlays, the training Job's
manifests, the pod KServe would create and every Dockerfile with no failed check, fails planted insecure ones,
and every skip has a reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_manifests import K8S, NAMESPACE, OVERLAYS, ROOT, kserve, kserve_pod, render, tls_overlay

CHECKOV_CONFIG = ROOT / "deploy" / ".checkov.yaml"
DOCKERFILES = ("Dockerfile", "Dockerfile.cpu", "Dockerfile.train")


def _checkov() -> str:
    override = os.environ.get("CHECKOV")
    binary = Path(override) if override else Path(sys.prefix) / "tools" / "checkov" / "bin" / "checkov"
    if not binary.exists():
        pytest.fail(
            f"checkov is not installed at {binary}: run `bash scripts/install-checkov.sh` "
            "(make install does it; it gets its own virtual environment)"
        )
    return str(binary)


def checkov(framework: str, files: list[Path]) -> tuple[int, list[dict], str]:
    """checkov's exit code, its reports (one per framework) and its output, with the project's config."""
    command = [_checkov(), "--config-file", str(CHECKOV_CONFIG), "--framework", framework, "--output", "json"]
    for path in files:
        command += ["--file", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    reports = json.loads(result.stdout) if result.stdout.strip() else []
    return (
        result.returncode,
        reports if isinstance(reports, list) else [reports],
        result.stdout + result.stderr,
    )


def _failed(reports: list[dict]) -> list[str]:
    return [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]


def _rendered_manifests(tmp_path: Path) -> list[Path]:
    files = []
    for overlay in OVERLAYS:
        out = tmp_path / f"{overlay}.yaml"
        out.write_text(yaml.safe_dump_all(render(overlay)))
        files.append(out)
    tls = tmp_path / "gpu-s3-grpc-tls"
    tls.mkdir()
    out = tmp_path / "gpu-s3-grpc-tls.yaml"
    out.write_text(yaml.safe_dump_all(render(tls_overlay(tls, "gpu-s3"))))
    # checkov has no policies for KServe's InferenceService: it checks the pod KServe makes of it.
    kserve_file = tmp_path / "kserve-pod.yaml"
    kserve_file.write_text(yaml.safe_dump(kserve_pod(kserve())))
    # The fine-tuning Job with its namespace, claim, headless Service and NetworkPolicy (deploy/k8s/training).
    training = tmp_path / "training.yaml"
    training.write_text(yaml.safe_dump_all(render(K8S / "training")))
    return [*files, out, kserve_file, training]


def test_checkov_passes_the_rendered_overlays_training_and_kserve(tmp_path):
    files = _rendered_manifests(tmp_path)
    code, reports, output = checkov("kubernetes", files)
    assert reports, output
    summary = reports[0]["summary"]
    assert not _failed(reports) and summary["failed"] == 0 and code == 0, (
        "\n".join(_failed(reports)) or output
    )
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 4 * 10, summary
    assert summary["passed"] > 0


def test_checkov_passes_every_dockerfile():
    code, reports, output = checkov("dockerfile", [ROOT / "docker" / name for name in DOCKERFILES])
    assert reports, output
    assert reports[0]["summary"]["resource_count"] == len(DOCKERFILES), reports[0]["summary"]  # one each
    assert not _failed(reports) and reports[0]["summary"]["failed"] == 0 and code == 0, "\n".join(
        _failed(reports)
    )
    assert reports[0]["summary"]["passed"] > 0


def test_checkov_fails_a_planted_insecure_manifest(tmp_path):
    insecure = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "insecure", "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "insecure"}},
            "template": {
                "metadata": {"labels": {"app": "insecure"}},
                "spec": {
                    "containers": [
                        {"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}
                    ]
                },
            },
        },
    }
    path = tmp_path / "insecure.yaml"
    path.write_text(yaml.safe_dump(insecure))
    code, reports, _ = checkov("kubernetes", [path])
    failed = {entry.split()[0] for entry in _failed(reports)}
    assert code != 0 and {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_38"} <= failed, failed


def test_checkov_fails_a_planted_insecure_dockerfile(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("FROM python:latest\nRUN pip install requests\n")
    code, reports, _ = checkov("dockerfile", [path])
    failed = {entry.split()[0] for entry in _failed(reports)}
    assert code != 0 and {"CKV_DOCKER_2", "CKV_DOCKER_3"} <= failed, failed


def test_every_checkov_skip_has_a_reason():
    lines = CHECKOV_CONFIG.read_text().splitlines()
    skipped = yaml.safe_load(CHECKOV_CONFIG.read_text()).get("skip-check", [])
    assert len(skipped) <= 3, skipped  # few, and each one argued
    for check in skipped:
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {check}"]
        assert lines[index - 1].strip().startswith("#"), f"{check} has no reason above it"
