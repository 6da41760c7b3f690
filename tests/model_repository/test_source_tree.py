"""`model_repository/` is what `captioning export` writes by default: regenerated here, byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from captioning import contract
from captioning.export import repository as repo
from captioning.export import source_tree

ROOT = Path(__file__).resolve().parents[2]
TREE = ROOT / "model_repository"


def test_the_checked_in_configs_are_the_default_exports():
    expected = source_tree.source_configs()
    found = {p.parent.name: p.read_text() for p in TREE.glob("*/config.pbtxt")}
    assert sorted(found) == sorted(expected), "model folders differ from the exported models"
    stale = [name for name, text in expected.items() if found[name] != text]
    assert not stale, (
        f"stale configs (run `python -m captioning.export.source_tree model_repository`): {stale}"
    )


def test_a_changed_config_is_caught(tmp_path):
    source_tree.write_configs(tmp_path)
    path = tmp_path / contract.TRANSLATOR_MODEL / "config.pbtxt"
    path.write_text(path.read_text().replace('string_value: "256"', 'string_value: "255"'))
    assert source_tree.source_configs()[contract.TRANSLATOR_MODEL] != path.read_text()


def test_every_python_model_has_its_adapter():
    for config in TREE.glob("*/config.pbtxt"):
        python = 'backend: "python"' in config.read_text()
        assert (config.parent / "1" / "model.py").is_file() == python, config.parent.name
    graph_adapters = {(TREE / name / "1" / "model.py").resolve() for name in contract.GRAPH_MODELS}
    assert graph_adapters == {(TREE / contract.VISION_MODEL / "1" / "model.py").resolve()}


def _normalised(meta: dict) -> dict:
    """What a config takes from a graph: names, types, and each axis as a size or dynamic (-1)."""
    shapes = {n: [d if isinstance(d, int) and d > 0 else -1 for d in s] for n, s in meta["shapes"].items()}
    return {**meta, "shapes": shapes}


@pytest.mark.slow
def test_declared_metadata_matches_the_exported_graphs(repository, fixture_checkpoints):
    """The tree's configs come from declared shapes; on the fixture checkpoints they equal the graphs'."""
    from transformers import BlipConfig, MBartConfig

    dims = source_tree.GraphDims.from_configs(
        BlipConfig.from_pretrained(fixture_checkpoints.blip),
        MBartConfig.from_pretrained(fixture_checkpoints.mbart),
    )
    declared = source_tree.declared_metadata(dims)
    graphs = {name: Path(meta["file"]) for model in contract.GENERATOR_GRAPHS
              for meta in _graphs_json(repository, model).values() if "file" in meta
              for name in [meta["model"]]}  # fmt: skip
    graphs[contract.VISION_MODEL] = Path(contract.VISION_MODEL) / "1" / "model.onnx"
    assert sorted(graphs) == sorted(contract.GRAPH_MODELS)
    for name, file in graphs.items():
        assert _normalised(repo.graph_metadata(repository / file)) == _normalised(declared[name]), name


def _graphs_json(repository: Path, model: str) -> dict:
    import json

    return json.loads((repository / model / "1" / "graphs.json").read_text())


def test_an_export_copies_the_adapters_and_readme(repository):
    for adapter in repository.glob("*/1/model.py"):
        source = TREE / adapter.parent.parent.name / "1" / "model.py"
        assert adapter.read_bytes() == source.read_bytes(), adapter
    assert (repository / "README.md").read_text() == (TREE / "README.md").read_text()
