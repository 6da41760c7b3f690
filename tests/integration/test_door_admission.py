"""Admission at the door against a real tritonserver: a burst of clients several times the capacity, through
`arabic_caption`, with and without deadlines, keeps useful answers near the capacity measured in the same run,
answers no request after its client gave up, refuses fast, and serves normally right after."""

from __future__ import annotations

import pytest

from captioning import contract

pytestmark = pytest.mark.integration

BUDGET_S = 6.0  # the server's latency budget: the deadline of a request without one
CLIENT_TIMEOUT_S = 8.0


@pytest.fixture(scope="module")
def door_repository(fixture_checkpoints, tmp_path_factory):
    """Translations forced to 240 tokens and 4 beams, batches of 4: a fraction of a second to a few seconds a
    batch on the fixture checkpoints, as the full-size ones cost; everything else at the export defaults, so
    the inner stages keep their queue bounds and the door has to keep them from shedding."""
    from captioning.decoding import Overrides
    from captioning.export.build import BuildOptions, build_repository
    from captioning.export.repository import RepositoryOptions

    options = BuildOptions(
        progress=False,
        validate=False,
        max_length=120,
        caption=Overrides(num_beams=4, min_new_tokens=100, max_new_tokens=100),
        translation=Overrides(num_beams=4, min_new_tokens=100, max_new_tokens=100),
        repository=RepositoryOptions(latency_budget_s=BUDGET_S, max_queue_delay_us=50_000),
    )
    path = tmp_path_factory.mktemp("door") / "repository"
    return build_repository(fixture_checkpoints.blip, fixture_checkpoints.mbart, path, options)


@pytest.fixture(scope="module")
def door_server(door_repository, tmp_path_factory):
    from serving_helpers import serve

    with serve(door_repository, tmp_path_factory.mktemp("door-server")) as running:
        yield running


def _failures(server, model: str) -> int:
    """Requests the model failed or shed, from the server's own statistics."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"].get("fail", {}).get("count", 0))


@pytest.mark.parametrize("plain", [True, False], ids=["plain-clients", "sdk-clients"])
def test_a_burst_keeps_goodput_near_capacity_with_no_client_timeout(door_server, plain):
    from captioning.bench.overload import OverloadOptions, format_report, run_overload

    options = OverloadOptions(
        url=door_server.grpc_url, kind="image", capacity_s=15, capacity_concurrency=16,
        client_timeout_s=CLIENT_TIMEOUT_S, plain_clients=plain, burst=48, requests_per_client=3,
    )  # fmt: skip
    inner = (contract.VISION_MODEL, contract.CAPTION_MODEL, contract.TRANSLATOR_MODEL)
    failed_before = {model: _failures(door_server, model) for model in inner}
    report = run_overload(options)
    print(format_report(report))
    assert report["requests"] == 144 == sum(o["count"] for o in report["outcomes"].values())
    # refused by the door, or by the first model's queue bound in front of it; never by a later stage
    assert set(report["outcomes"]) <= {"ok", "ServerBusyError: door", "ServerBusyError: queue full"}
    assert "ServerBusyError: door" in report["outcomes"]
    assert {model: _failures(door_server, model) for model in inner} == failed_before
    assert report["client_timeouts"] == 0
    assert report["goodput_ratio"] >= 0.6, (report["goodput_per_s"], report["capacity_per_s"])
    assert report["refusal_max_s"] is None or report["refusal_max_s"] < 1.0
    assert report["right_after"]["outcome"] == "ok"
