"""`captioning bench` plumbing on the small fixtures: perf_analyzer input data and reports, the full-size
benchmark checkpoint configs, and one tiny end-to-end run (baseline + a real tritonserver + perf_analyzer)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import struct
from pathlib import Path

import pytest

from captioning.bench import perf_analyzer as pa

# A report written by perf_analyzer 2.48.0 (-f) for arabic_caption at concurrency 2 on the fixture repository.
SAMPLE_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "2,7.98823,46,9019,1,265,139660,1077,2,169182,234944,237168,237168\n"
)

needs_perf_analyzer = pytest.mark.skipif(
    pa.find_perf_analyzer() is None,
    reason=f"perf_analyzer is not installed ({pa.INSTALL_HINT})",
)


def test_parse_csv_sample() -> None:
    (row,) = pa.parse_csv(SAMPLE_CSV)
    assert row.concurrency == 2
    assert row.throughput == pytest.approx(7.98823)
    assert (row.p50_ms, row.p90_ms, row.p95_ms, row.p99_ms) == pytest.approx(
        (169.182, 234.944, 237.168, 237.168)
    )
    # No "Avg latency" column in this version: the average is the sum of the stage columns.
    assert row.avg_ms == pytest.approx((46 + 9019 + 1 + 265 + 139660 + 1077 + 2) / 1000)
    assert row.server_compute_ms == pytest.approx((265 + 139660 + 1077) / 1000)


def test_parse_csv_rejects_other_files() -> None:
    with pytest.raises(pa.PerfAnalyzerError, match="not a perf_analyzer"):
        pa.parse_csv("a,b\n1,2\n")
    with pytest.raises(pa.PerfAnalyzerError, match="no rows"):
        pa.parse_csv(SAMPLE_CSV.splitlines()[0] + "\n")


def test_image_input_data_round_trips_jpeg_bytes(flickr_images, tmp_path) -> None:
    from PIL import Image

    jpegs = [p.read_bytes() for p in flickr_images[:3]]
    path = pa.write_input_data(tmp_path / "in.json", pa.bytes_input_data("image", jpegs))
    data = json.loads(path.read_text())
    assert len(data["data"]) == 3
    first = data["data"][0]["image"]
    assert first["shape"] == [1]
    raw = base64.b64decode(first["content"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(jpegs[0])  # BYTES element: uint32 length, then bytes
    assert pa.decode_input_data(data, "image") == jpegs
    with Image.open(io.BytesIO(pa.decode_input_data(data, "image")[1])) as image:
        assert image.format == "JPEG"


def test_text_input_data_round_trips(tmp_path) -> None:
    texts = ["A dog runs on the grass .", "Two children, one ball — \u00e9t\u00e9"]
    path = pa.write_input_data(tmp_path / "t.json", pa.text_input_data("text", texts))
    data = json.loads(path.read_text(encoding="utf-8"))
    assert [t.decode("utf-8") for t in pa.decode_input_data(data, "text")] == texts
    with pytest.raises(ValueError):
        pa.text_input_data("text", [])


def test_missing_binary_is_reported(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PERF_ANALYZER", str(tmp_path / "nope"))
    assert pa.find_perf_analyzer() is None
    with pytest.raises(pa.PerfAnalyzerError, match="install-perf-analyzer"):
        pa.require_perf_analyzer()


def test_perf_run_command_is_bounded(tmp_path) -> None:
    run = pa.PerfRun("arabic_caption", "localhost:1", tmp_path / "in.json", concurrency=16, requests=4)
    args = run.command(Path("perf_analyzer"), tmp_path / "out.csv")
    assert args[args.index("--concurrency-range") + 1] == "16:16"
    assert args[args.index("--measurement-mode") + 1] == "count_windows"
    assert args[args.index("--measurement-request-count") + 1] == "16"  # never fewer than concurrency
    # steady state: stability windows under continuous load, with a bounded number of them
    assert "--request-count" not in args
    assert args[args.index("--max-trials") + 1] == "8"
    assert args[args.index("--stability-percentage") + 1] == "50"


def test_perf_run_burst_is_one_window(tmp_path) -> None:
    run = pa.PerfRun(
        "translator", "localhost:1", tmp_path / "in.json", concurrency=4, requests=6, steady=False
    )
    args = run.command(Path("perf_analyzer"), tmp_path / "out.csv")
    assert args[args.index("--request-count") + 1] == "6"
    assert "--max-trials" not in args


def test_unsettled_steady_state_falls_back_to_one_burst(monkeypatch, tmp_path) -> None:
    from captioning.bench import report as bench_report
    from captioning.bench import run as bench
    from captioning.bench import stats as bench_stats

    calls = []

    def fake_run(run, workdir, binary=None):
        calls.append(run.steady)
        if run.steady:
            raise pa.PerfAnalyzerError("perf_analyzer failed (exit 2):\nFailed to obtain stable measurement.")
        return pa.PerfResult(4, 1.5, 10.0, 11.0, 12.0, 13.0, 10.5, 0.1, 9.0)

    monkeypatch.setattr(pa, "run_perf_analyzer", fake_run)
    run = pa.PerfRun("translator", "localhost:1", tmp_path / "in.json", concurrency=4)
    window = bench._one_measurement(run, tmp_path)
    assert calls == [True, False] and window["window"] == "burst" and window["throughput"] == 1.5

    def other_failure(run, workdir, binary=None):
        raise pa.PerfAnalyzerError("perf_analyzer failed (exit 1): connection refused")

    monkeypatch.setattr(pa, "run_perf_analyzer", other_failure)
    with pytest.raises(pa.PerfAnalyzerError, match="connection refused"):  # only instability falls back
        bench._one_measurement(run, tmp_path)

    summary = bench_stats.summary([1.5])
    result = {"label": "t", "model": "translator", "concurrency": 4, "windows": [window], "server": {}}
    result.update({k: summary for k in ("throughput", "p50_ms", "p95_ms", "p99_ms", "avg_ms")})
    results = {
        "settings": {
            "caption_num_beams": 1,
            "caption_new_tokens": 2,
            "translation_num_beams": 1,
            "translation_new_tokens": 2,
        },
        "machine": {"cores": 2, "cpu": "cpu"},
        "images": ["a.jpg"],
        "repeats": 1,
        "windows": "steady",
        "baseline": None,
        "runs": [result],
    }
    assert "measured as one burst: t translator c=4" in bench_report.format_table(results)


# ------------------------------------------------------------------------------------------ checkpoints


def test_baseline_passes_surround_every_repository() -> None:
    from captioning.bench.baseline import pass_plan

    assert pass_plan(2, ["a", "b"]) == [("before a", 1), ("before b", 1), ("after b", 1)]
    assert pass_plan(4, ["a"]) == [("before a", 2), ("after a", 2)]
    assert pass_plan(3, []) == [("alone", 3)]


def test_bench_checkpoint_configs_are_full_size() -> None:
    import torch
    from transformers import BlipForConditionalGeneration, MBartForConditionalGeneration

    from captioning.bench.checkpoints import blip_config, mbart_config, mbart_generation_config

    blip = blip_config()
    vision, text = blip.vision_config, blip.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers) == (
        384,
        16,
        768,
        12,
    )
    assert (text.vocab_size, text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (
        30524,
        768,
        12,
        12,
    )
    mbart = mbart_config()
    assert (mbart.vocab_size, mbart.d_model, mbart.max_position_embeddings) == (250054, 1024, 1024)
    assert (mbart.encoder_layers, mbart.decoder_layers) == (12, 12)
    assert (mbart.encoder_attention_heads, mbart.decoder_attention_heads) == (16, 16)
    assert (mbart.encoder_ffn_dim, mbart.decoder_ffn_dim, mbart.scale_embedding) == (4096, 4096, True)
    generation = mbart_generation_config(mbart)
    assert (generation.num_beams, generation.decoder_start_token_id, generation.forced_eos_token_id) == (
        5,
        2,
        2,
    )
    with torch.device("meta"):  # shapes only: no 2.4 GB of weights
        params = sum(p.numel() for p in MBartForConditionalGeneration(mbart).parameters())
        blip_params = sum(p.numel() for p in BlipForConditionalGeneration(blip).parameters())
    assert 605e6 < params < 615e6  # mBART-large-50: 611M
    assert 200e6 < blip_params < 260e6


def test_unwritable_ids_are_never_generated(shared_data, monkeypatch, tmp_path) -> None:
    """The 250k-wide output layer with a ~4k tokenizer: generated ids stay decodable."""
    import torch
    from transformers import AutoTokenizer, MBartForConditionalGeneration

    from captioning.bench import checkpoints as bench_checkpoints

    tiny = {"d_model": 32, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64}
    tiny |= {
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
    }
    for key, value in tiny.items():
        monkeypatch.setitem(bench_checkpoints.MBART_DIMS, key, value)
    torch.manual_seed(0)
    path = bench_checkpoints.make_mbart(tmp_path / "mbart", shared_data)
    tokenizer = AutoTokenizer.from_pretrained(path, src_lang="en_XX")
    model = MBartForConditionalGeneration.from_pretrained(path).eval()
    assert model.config.vocab_size == 250054 and len(tokenizer) < 5000
    ar = tokenizer.convert_tokens_to_ids("ar_AR")
    inputs = tokenizer(["a dog runs on the grass", "two people"], return_tensors="pt", padding=True)
    ids = model.generate(**inputs, forced_bos_token_id=ar, num_beams=2, min_new_tokens=6, max_new_tokens=6)
    assert ids.shape[1] == 7 and int(ids.max()) < len(tokenizer)
    assert all(isinstance(text, str) for text in tokenizer.batch_decode(ids, skip_special_tokens=True))


# ------------------------------------------------------------------------------------------ end to end


@needs_perf_analyzer
@pytest.mark.integration
def test_bench_end_to_end(fixture_checkpoints, shared_data, tmp_path, capsys) -> None:
    from PIL import Image

    from captioning.cli import main

    output = tmp_path / "bench"
    argv = [
        "bench",
        "--captioner",
        str(fixture_checkpoints.blip),
        "--translator",
        str(fixture_checkpoints.mbart),
    ]
    argv += [
        "--images-dir",
        str(shared_data / "flickr8k" / "Images"),
        "--num-images",
        "2",
        "--num-texts",
        "3",
    ]
    argv += ["--concurrency", "1,2", "--repeats", "1", "--requests", "2", "--output-dir", str(output)]
    argv += [
        "--caption-beams",
        "2",
        "--caption-tokens",
        "4",
        "--translation-beams",
        "2",
        "--translation-tokens",
        "5",
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "caption: 2 beams, 4 new tokens | translation: 2 beams, 5 new tokens" in table

    results = json.loads((output / "results.json").read_text())
    baseline = results["baseline"]
    # One pass before the repository and one after it, though --repeats is 1: the ratio needs both sides.
    assert [p["slot"] for p in baseline["passes"]] == ["before triton", "after triton"]
    assert len(baseline["latencies_s"]) == 4 and len(baseline["outputs"]) == 2
    assert "baseline passes, interleaved with the Triton runs:" in table
    # min = max new tokens really fixes the baseline's output lengths.
    assert all(o["new_tokens"] == {"caption": 4, "translation": 5} for o in baseline["outputs"])
    points = {(r["model"], r["concurrency"]) for r in results["runs"]}
    assert points == {("arabic_caption", 1), ("arabic_caption", 2), ("english_caption", 2), ("translator", 2)}
    for run in results["runs"]:
        assert run["throughput"]["median"] > 0 and run["p50_ms"]["median"] > 0
        top = run["server"][run["model"]]  # Triton's own count of what perf_analyzer sent
        assert top["requests"] >= run["requests"]
        assert f"triton    {run['model']}" in table
        # Every row says what the server's processes peaked at: the server and each model's stub.
        peak = run["peak_memory"]
        assert {"tritonserver", "caption_generator", "translator"} <= set(peak["per_model_mib"])
        assert peak["total_mib"] >= max(peak["per_model_mib"].values()) > 0
    assert "peak resident memory: " in table
    pipeline = next(r for r in results["runs"] if r["model"] == "arabic_caption")
    assert {"image_preprocess", "blip_vision", "caption_generator", "translator"} <= set(pipeline["server"])

    # The CSVs perf_analyzer wrote parse to what results.json holds.
    csv = output / "perf" / "triton"
    reports = sorted(csv.glob("translator-c2-*.csv"))
    assert reports, list(csv.iterdir())
    (row,) = pa.parse_csv(reports[-1].read_text())
    window = dict(next(r for r in results["runs"] if r["model"] == "translator")["windows"][-1])
    assert window.pop("window") in ("steady", "burst")  # burst only where no steady state was reached
    assert row.to_dict() == pytest.approx(window)

    # The peers ran at the baseline's slots, on the same texts the translator was loaded with, and every
    # system appears in the peer tables with its agreement with generate().
    peers = {(p["stage"], p["name"]): p for p in results["peers"]}
    assert set(peers) == {
        ("translation", "generate() one at a time"),
        ("pipeline", "generate() batches of 16"),
        ("translation", "generate() batches of 16"),
        ("pipeline", "generate() bf16, batches of 16"),
        ("translation", "generate() bf16, batches of 16"),
        ("translation", "CTranslate2 fp32, batches of 16"),
        ("translation", "CTranslate2 int8, batches of 16"),
    }
    for peer in peers.values():
        assert peer["skipped"] is None and len(peer["rates"]) == 2 and peer["rate"]["median"] > 0
    assert len(peers["pipeline", "generate() batches of 16"]["outputs"]) == 2
    assert len(peers["translation", "generate() one at a time"]["outputs"]) == len(results["texts"])
    served = results["outputs"]["triton"]
    assert len(served["pipeline"]) == 2 and len(served["translation"]) == len(results["texts"])
    # Exact mode: the served answers are generate()'s, and so are batched generate()'s on these fixtures.
    assert "triton arabic_caption, 2 clients" in table and "triton translator, 2 clients" in table
    for line in table.splitlines():
        if line.startswith(("triton arabic_caption", "triton translator", "generate() batches")):
            assert line.endswith(("2/2", f"{len(results['texts'])}/{len(results['texts'])}")), line
    assert "CTranslate2 int8, batches of 16" in table
    # bf16 on the fp32 peer's batches: each row states its agreement with exact mode and the CPU's flags.
    for stage, total in (("pipeline", 2), ("translation", len(results["texts"]))):
        bf16 = peers[stage, "generate() bf16, batches of 16"]
        assert bf16["precision"] == "bf16" and len(bf16["outputs"]) == total and bf16["cpu"]["note"]
        assert f"generate() bf16, batches of 16 ({stage}): " in table
        assert f"/{total} equal to exact mode (fp32 generate() one at a time)" in table
    assert "  CPU flags: " in table and results["machine"]["cpu_flags"] is not None

    with Image.open(output / "throughput.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 100
    assert (output / "table.txt").read_text().strip() == table.split("\nresults:")[0].strip()


def test_a_failing_repository_is_recorded_and_the_next_one_measured(monkeypatch, tmp_path) -> None:
    """A stub killed mid-run once cost a whole bench run; now that repository is named as failed and the rest
    are measured."""
    from captioning.bench import report as bench_report
    from captioning.bench import run as bench
    from captioning.bench.options import BenchOptions

    measured = []

    def fake_run(label, repository, inputs, options, served):
        if label == "broken":
            raise RuntimeError("Stub process 'caption_generator_0_0' is not healthy")
        measured.append(label)
        served["outputs"] = {"pipeline": [], "translation": []}
        return []

    monkeypatch.setattr(bench, "run_repository", fake_run)
    monkeypatch.setattr("captioning.bench.perf_analyzer.require_perf_analyzer", lambda: None)
    images = tmp_path / "flickr8k" / "Images"
    images.mkdir(parents=True)
    (images / "a.jpg").write_bytes(b"jpeg")
    (images.parent / "captions.txt").write_text("image,caption\na.jpg,a dog runs\n")
    options = BenchOptions(
        captioner="c", translator="t", images_dir=images, output_dir=tmp_path / "out",
        repositories=(("broken", tmp_path), ("good", tmp_path)), baseline=False, peers=False,
    )  # fmt: skip
    results = bench.run_bench(options)
    assert results["failed"] == {
        "broken": "RuntimeError: Stub process 'caption_generator_0_0' is not healthy"
    }
    assert measured == ["good"] and "good" in results["outputs"]
    assert "broken FAILED, not measured past this point: RuntimeError: Stub" in bench_report.format_table(
        results
    )

    with pytest.raises(RuntimeError, match="every repository failed"):
        bench.run_bench(dataclasses.replace(options, repositories=(("broken", tmp_path),)))
