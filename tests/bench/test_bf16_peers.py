"""The bench's bf16 peers: batched generate() in bf16 on the fixture checkpoints, on the fp32 peer's batches,
its outputs counted against exact mode in the tables, results.json and plot; the CPU-flag note; and the rows
skipped, with the reason, where switched off or where torch cannot run bf16.

Apart from test_peers.py, which needs CTranslate2: these rows do not."""

from __future__ import annotations

import json
import re

import pytest

from captioning.bench import bf16, comparison, ctranslate
from captioning.bench import peers as bench_peers
from captioning.bench.options import BenchOptions
from captioning.bench.peers import BF16, PIPELINE, SINGLE, TRANSLATION, Peers

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2\n"
AMX = "flags\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
BF16_NAME, FP32_NAME = "generate() bf16, batches of 2", "generate() batches of 2"  # --peer-batch-size 2


@pytest.fixture
def no_ctranslate2(monkeypatch):
    """The CTranslate2 rows skipped: not what these tests are about, and conversion is slow."""
    monkeypatch.setattr(ctranslate, "available", lambda: "not in this test")


def _options(fixture_checkpoints, shared_data, tmp_path, **kw) -> BenchOptions:
    return BenchOptions(
        captioner=fixture_checkpoints.blip,
        translator=fixture_checkpoints.mbart,
        images_dir=shared_data / "flickr8k" / "Images",
        num_images=3,
        num_texts=5,  # batches of 2: two full and one partial, padding included
        caption_num_beams=2,
        caption_tokens=4,
        translation_num_beams=2,
        translation_tokens=5,
        output_dir=tmp_path,
        peer_batch_size=2,
        triton=False,
        threads=1,
        **kw,
    )


def _key(output) -> tuple:
    return (output["english"], output["arabic"]) if isinstance(output, dict) else (output,)


def _record_batches(monkeypatch, peers: Peers) -> dict:
    """(stage, precision) -> the batches `_batches` cut for that row, warm-up and passes."""
    calls: dict = {}
    current: list = []
    real = bench_peers._batches

    def spy(items, size):
        out = real(items, size)
        calls.setdefault(current[-1], []).append([list(b) for b in out])
        return out

    def tagged(row, run):
        def wrapped(items):
            current.append((row.stage, row.precision, row.name))
            return run(items)

        return wrapped

    monkeypatch.setattr(bench_peers, "_batches", spy)
    for row in peers.rows:
        if row.run is not None:
            row.run = tagged(row, row.run)
    return calls


def test_bf16_peers_run_the_fp32_batches_and_state_their_agreement(
    fixture_checkpoints, shared_data, tmp_path, monkeypatch, no_ctranslate2
) -> None:
    import torch

    from captioning.bench import report
    from captioning.bench.baseline import Baseline, original_pipeline
    from captioning.bench.run import caption_texts, load_images

    options = _options(fixture_checkpoints, shared_data, tmp_path)
    images, texts = load_images(options), caption_texts(options)
    pipeline = original_pipeline(options, fixture_checkpoints.blip, fixture_checkpoints.mbart)
    baseline = Baseline(options, pipeline)
    baseline.run_passes(images, 1, "alone")
    peers = Peers(options, pipeline, fixture_checkpoints.mbart, None)
    calls = _record_batches(monkeypatch, peers)
    peers.run_passes(images, texts, 1, "alone")

    # The bf16 rows are the fp32 ones cast: the same batches, the fp32 models left as they were.
    for stage in (PIPELINE, TRANSLATION):
        assert calls[stage, BF16, BF16_NAME] == calls[stage, "fp32", FP32_NAME]
    assert [len(b) for b in calls[TRANSLATION, BF16, BF16_NAME][-1]] == [2, 2, 1]
    assert pipeline.mbart.dtype == pipeline.blip.dtype == torch.float32
    assert (
        peers._bf16_models[1].dtype == torch.bfloat16
        and peers._bf16_models[1].lm_head.weight.dtype == torch.bfloat16
    )
    peers.pipeline = None  # as the bench does before serving a repository: the bf16 copies go too
    assert peers._bf16_models is None

    results = {
        "settings": options.settings(),
        "machine": report.machine(),
        "images": [name for name, _ in images],
        "repeats": 1,
        "texts": texts,
        "baseline": baseline.result(),
        "peers": peers.result(),
        "runs": [],
    }
    _assert_report(results, tmp_path)


def _assert_report(results: dict, tmp_path) -> None:
    """Each bf16 row's outputs counted against exact mode, and the count in the tables, JSON and plot."""
    from captioning.bench import report

    by_key = {(p["stage"], p["name"], p["precision"]): p for p in results["peers"]}
    exact = {
        PIPELINE: results["baseline"]["outputs"],
        TRANSLATION: by_key[TRANSLATION, SINGLE, "fp32"]["outputs"],
    }
    table = report.format_table(results)
    for stage in (PIPELINE, TRANSLATION):
        row = by_key[stage, BF16_NAME, BF16]
        assert (
            row["skipped"] is None and row["rate"]["median"] > 0 and len(row["outputs"]) == len(exact[stage])
        )
        assert row["fp32_peer"] == FP32_NAME and row["cpu"] == bf16.support(bf16.cpu_flags())
        # Counted against exact mode: the same count the table states, line by line.
        same = sum(_key(a) == _key(b) for a, b in zip(row["outputs"], exact[stage], strict=True))
        stated = f"{same}/{len(exact[stage])}"
        assert comparison.agreement(row["outputs"], exact[stage]) == stated
        assert [x for x in table.splitlines() if x.startswith(BF16_NAME) and stated in x.split()]
        assert f"{BF16_NAME} ({stage}): {stated} equal to exact mode" in table
        # On these fixtures bf16 keeps most of exact mode's outputs (its floor, so a broken cast shows).
        assert same >= len(exact[stage]) // 2, (stage, row["outputs"], exact[stage])
    rows = {r["system"]: r for r in comparison.pipeline_rows(results)}
    assert rows[BF16_NAME]["x_batched"] != "-"  # against the fp32 batches, not itself
    assert rows[FP32_NAME]["x_batched"] == "1.00x"
    assert "bf16 peers (model.to(torch.bfloat16), the fp32 peers' batches):" in table
    assert f"CPU flags: {', '.join(results['machine']['cpu_flags']) or 'none of note'}; " in table

    paths = report.write_outputs(results, tmp_path / "out")
    written = json.loads(paths["json"].read_text())
    assert any(p["precision"] == BF16 and p["outputs"] for p in written["peers"])
    assert paths["plot"].stat().st_size > 1000


def test_the_cpu_flags_say_whether_bf16_is_native(tmp_path) -> None:
    (tmp_path / "avx2").write_text(AVX2)
    (tmp_path / "amx").write_text(AMX)
    flags = bf16.cpu_flags(tmp_path / "avx2")
    assert flags == {"fpu", "sse2", "avx", "avx2", "fma"}  # the first processor's
    emulated = bf16.support(flags)
    assert emulated["cpu_flags"] == ["avx2"] and emulated["native"] is False
    assert "neither avx512_bf16 nor amx_bf16" in emulated["note"] and "emulated" in emulated["note"]
    native = bf16.support(bf16.cpu_flags(tmp_path / "amx"))
    assert (
        native["native"] is True
        and "natively" in native["note"]
        and "amx_bf16, avx512_bf16" in native["note"]
    )
    assert native["cpu_flags"] == [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]
    assert bf16.support(bf16.cpu_flags(tmp_path / "missing"))["native"] is None
    assert bf16.support(frozenset({"fp", "asimd", "bf16"}))["native"] is True  # aarch64's Features line


@pytest.mark.parametrize("switched_off", [True, False])
def test_bf16_rows_are_skipped_with_the_reason(monkeypatch, no_ctranslate2, switched_off) -> None:
    broken = "torch cannot multiply bf16 on this CPU: RuntimeError: no"
    monkeypatch.setattr(bf16, "unavailable", lambda: broken)
    peers = Peers(BenchOptions(bf16_peers=not switched_off, peer_batch_size=2), None, None, None)
    reason = bf16.SWITCHED_OFF if switched_off else broken
    rows = [r for r in peers.rows if r.precision == BF16]
    assert [(r.stage, r.run, r.skipped) for r in rows] == [
        (PIPELINE, None, reason),
        (TRANSLATION, None, reason),
    ]
    results = {"runs": [], "baseline": None, "peers": peers.result()}
    table = "\n".join(comparison.format_peers(results))
    assert len(re.findall(rf"generate\(\) bf16, batches of 2 +skipped: {re.escape(reason)}", table)) == 2
    assert f"generate() bf16, batches of 2 (translation): skipped: {reason}" in table
