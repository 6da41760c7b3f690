"""The layout rules of docs/design.md, checked so that they can fail: import contracts, adapters, sizes."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from lint_imports import package_dirs  # noqa: E402 - the one reading of pyproject's package map

PACKAGES = package_dirs(ROOT)  # dotted name -> directory: captioning.export lives in export/, ...
REPOSITORY = ROOT / "model_repository"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# What a Triton adapter may import: the glue, the runtime it drives, the contract, and numpy.
ADAPTER_IMPORTS = (
    "captioning.backend",
    "captioning.contract",
    "captioning.decoding",
    "captioning.runtime",
    "numpy",
    "triton_python_backend_utils",
)


def _lint_imports(*args: str) -> subprocess.CompletedProcess:
    script = ROOT / "scripts" / "lint_imports.py"
    return subprocess.run(
        [sys.executable, str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the installed package (the adapters are data)."""
    modules = {}
    for name, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            relative = path.relative_to(directory).with_suffix("")
            if "__pycache__" in relative.parts or (
                name.endswith("model_repository") and len(relative.parts) > 1
            ):
                continue
            parts = [p for p in relative.parts if p != "__init__"]
            modules[".".join([name, *parts])] = path
    return modules


def test_the_top_level_shows_the_deliverables():
    top = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    assert {"model_repository", "export", "client", "training", "tests", "docker", "README.md"} <= top
    assert {PACKAGES[f"captioning.{name}"] for name in ("export", "client", "training")} == {
        ROOT / "export",
        ROOT / "client",
        ROOT / "training",
    }
    for name in ("export", "client", "training"):
        assert not (ROOT / "captioning" / name).exists(), f"captioning/{name} shadows the top-level {name}/"


def test_import_contracts_hold():
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_import_checker_catches_a_violation(tmp_path):
    # runtime imports decoding (as it should); a contract that forbids it must fail.
    config = tmp_path / "planted.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "captioning"\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "planted"\ntype = "forbidden"\n'
        'source_modules = ["captioning.runtime"]\nforbidden_modules = ["captioning.decoding"]\n'
    )
    result = _lint_imports(str(config))
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "captioning.runtime" in result.stdout


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:  # `from a import b` may import module a.b
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_adapters_touch_only_the_glue_runtime_and_contract():
    adapters = sorted({p.resolve() for p in REPOSITORY.glob("*/1/model.py")})  # graph models share one
    assert len(adapters) == 4
    for adapter in adapters:
        outside = {
            name
            for name in _imports(adapter)
            if not any(name == a or name.startswith(a + ".") for a in ADAPTER_IMPORTS)
        }
        assert not outside, f"{adapter.relative_to(ROOT)} imports {sorted(outside)}"


def test_only_the_backend_imports_triton_python_backend_utils():
    for module, path in _modules().items():
        if any(name.split(".")[0] == "triton_python_backend_utils" for name in _imports(path)):
            assert module.startswith("captioning.backend."), path


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for path in sorted({*_modules().values(), *REPOSITORY.glob("*/1/model.py")}):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for fn in _functions(ast.parse(text)):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                long_functions.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({length} lines)")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_client_imports_without_torch_or_the_serving_packages():
    code = (
        "import sys, captioning.client, captioning.client.cli; "
        "bad = {'torch', 'transformers', 'onnxruntime', 'captioning.runtime', 'captioning.decoding'} & set(sys.modules); "
        "assert not bad, sorted(bad)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
