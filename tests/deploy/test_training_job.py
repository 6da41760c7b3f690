"""The Kubernetes training Job (deploy/k8s/training): it renders and validates offline (Kubernetes 1.30 schemas,
strict), meets the same hardened defaults as the serving manifests (restricted pods, read-only root, its own
restricted namespace, ingress only from its own pods), its pieces agree (node count, GPUs per node, the
rendezvous name and port), and the trainer command it runs parses. checkov checks it with the serving manifests
(tests/deploy/test_checkov.py, `_rendered_manifests`)."""

from __future__ import annotations

import yaml

from test_manifests import (
    K8S,
    NAMESPACE,
    _one,
    kustomization,
    render,
    restricted_violations,
    validate,
    workloads,
)

TRAINING = K8S / "training"
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def _container(docs: list[dict]) -> dict:
    (container,) = _one(docs, "Job")["spec"]["template"]["spec"]["containers"]
    return container


def test_the_training_job_renders_and_validates():
    docs = render(TRAINING)
    assert {d["kind"] for d in docs} == {
        "Namespace",
        "PersistentVolumeClaim",
        "Service",
        "NetworkPolicy",
        "Job",
    }
    for doc in docs:
        validate(doc)


def test_the_training_pods_are_restricted_in_their_restricted_namespace():
    docs = render(TRAINING)
    ((name, spec),) = workloads(docs)
    assert restricted_violations(spec) == [], name
    namespace = _one(docs, "Namespace")
    serving = yaml.safe_load((K8S / "base" / "namespace.yaml").read_text())  # the same object
    assert namespace["metadata"]["name"] == serving["metadata"]["name"] == NAMESPACE
    assert serving["metadata"]["labels"].items() <= namespace["metadata"]["labels"].items()
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")
    container = _container(docs)
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    assert "dshm" in {v["name"] for v in spec["volumes"]}


def _assert_consistent(docs: list[dict], nodes: int, gpus: int) -> None:
    job = _one(docs, "Job")
    container, args = _container(docs), _container(docs)["args"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == int(_flag(args, "nnodes")) == nodes
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == gpus
    assert int(_flag(args, "nproc-per-node")) == gpus


def test_the_node_and_gpu_counts_agree_and_an_overlay_can_change_them(tmp_path):
    docs = render(TRAINING)
    _assert_consistent(docs, nodes=2, gpus=8)
    ops = [
        {"op": "replace", "path": "/spec/completions", "value": 4},
        {"op": "replace", "path": "/spec/parallelism", "value": 4},
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/0", "value": "--nnodes=4"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/args/1", "value": "--nproc-per-node=2"},
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
            "value": 2,
        },
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/resources/requests/nvidia.com~1gpu",
            "value": 2,
        },
    ]
    overlay = kustomization(
        tmp_path,
        resources=[TRAINING],
        patches=[{"target": {"kind": "Job", "name": "captioning-train"}, "patch": yaml.safe_dump(ops)}],
    )
    _assert_consistent(render(overlay), nodes=4, gpus=2)


def test_every_node_finds_rank_0_through_the_headless_service():
    docs = render(TRAINING)
    job, service = _one(docs, "Job"), _one(docs, "Service")
    pod = job["spec"]["template"]
    container = _container(docs)
    args = container["args"]
    assert service["spec"]["clusterIP"] == "None" and pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # An Indexed Job's pod i is named <job>-i: pod 0 hosts the rendezvous.
    assert _flag(args, "master-addr") == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(_flag(args, "master-port")) in {p["port"] for p in service["spec"]["ports"]}
    assert _flag(args, "node-rank") == "$(NODE_RANK)"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == INDEX_ANNOTATION
    # The run folder is one claim every node mounts (the trainer refuses a last/ only some ranks see).
    claim = _one(docs, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (volume,) = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert _flag(args, "output").startswith(mount["mountPath"] + "/")


def test_only_the_jobs_own_pods_may_connect():
    docs = render(TRAINING)
    labels = _one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            assert (
                set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"].items() <= labels.items()
            )


def test_the_job_runs_the_trainer_command_unchanged_and_resumes():
    from captioning.cli import build_parser
    from captioning.training.train_args import config_from_args

    container = _container(render(TRAINING))
    args = container["args"]
    assert container["command"] == ["torchrun"] and "--no-python" in args
    command = args[args.index("--no-python") + 1 :]
    assert command[0] == "captioning"
    config = config_from_args(build_parser().parse_args(command[1:]))
    assert config.resume and not config.progress and config.report_to == "tensorboard"


def test_the_image_is_a_tag_an_overlay_can_pin_by_digest(tmp_path):
    job = yaml.safe_load((TRAINING / "job.yaml").read_text())
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "bilingual-captioning:train"
    digest = "sha256:" + "0" * 64
    pinned = kustomization(
        tmp_path,
        resources=[TRAINING],
        images=[{"name": "registry.example.com/bilingual-captioning:train", "digest": digest}],
    )
    assert _container(render(pinned))["image"].endswith("@" + digest)
    assert "digest:" in (TRAINING / "kustomization.yaml").read_text()  # says how
