"""The import graph keeps its layers: files -> preprocess -> conditioning -> models -> pipelines -> parallel, with
data, train and eval above conditioning, and no module reaching into another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import scail2

PACKAGE = Path(scail2.__file__).parent
# What each layer must never import (function-level imports included): the layers above it.
APPLICATION = {"animate", "batch", "finish", "demo", "bundled", "cli", "commands", "app"}
FORBIDDEN = {
    "preprocess": {"conditioning", "models", "diffusion", "pipelines", "data", "train", "eval"} | APPLICATION,
    "conditioning": {"models", "diffusion", "pipelines", "data", "train", "eval"} | APPLICATION,
    "diffusion": {"preprocess", "conditioning", "models", "pipelines", "data", "train", "eval"} | APPLICATION,
    "models": {"pipelines", "parallel", "data", "train", "eval"} | APPLICATION,
    "pipelines": {"parallel", "data", "train", "eval"} | APPLICATION,
    "parallel": {"data", "train", "eval"} | APPLICATION,
    "data": {"pipelines", "train", "eval"} | APPLICATION,
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import statement of a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return found


# Shared by every layer that writes files: the atomic-write, JSON and checksum helpers depend on nothing above.
BASE_MODULES = {"scail2.data.format"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if module in BASE_MODULES or parts[0] != "scail2" or len(parts) < 2:
        return None
    return parts[1]


def test_base_modules_import_nothing_of_the_package_but_errors():
    for module in BASE_MODULES:
        path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
        assert {m for m, _ in _imports(path) if m.startswith("scail2")} <= {"scail2.errors"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_it(path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    forbidden = FORBIDDEN.get(own, set())
    wrong = [module for module, _ in _imports(path) if _layer(module) in forbidden]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({own}) imports {wrong}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_another_modules_private_names(path):
    own = "scail2." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    private = [
        f"{module}.{name}"
        for module, names in _imports(path)
        if module.startswith("scail2") and module != own
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not private, f"{own} imports private names {private}"


def test_the_old_homes_of_conditioning_are_gone():
    assert not (PACKAGE / "pipelines" / "vae.py").exists()
    assert not (PACKAGE / "pipelines" / "conditioning.py").exists()
