"""The one-way layers, checked: each qiedge package imports only itself and the packages of the
layers below it, and the torch-free packages import no torch, transformers or diffusers, lazily
or not. The contract is `[tool.qiedge.layers]` in pyproject.toml; the folders are read from its
`[tool.setuptools.package-dir]`. Prints every wrong import as `file:line` and exits 1 if any.

    python .ci/layers.py [ROOT]
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

HEAVY = ("torch", "torchvision", "transformers", "diffusers", "onnx", "onnxscript", "onnx_ir")


def _contract(root: Path) -> tuple[dict[str, int], dict[str, Path], set[str]]:
    """(package -> layer index, top first; package -> folder; torch-free packages)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    contract = project["tool"]["qiedge"]["layers"]
    rank = {f"qiedge.{name.strip()}": i for i, layer in enumerate(contract["order"]) for name in layer.split("|")}
    folders = {package: root / folder for package, folder in project["tool"]["setuptools"]["package-dir"].items()}
    return rank, folders, {f"qiedge.{name}" for name in contract["torch_free"]}


def _imports(path: Path, package: str):
    """(line, absolute module) for every import in the file, relative ones resolved."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            yield node.lineno, ".".join(part for part in (base, node.module) if part)


def _owner(module: str, rank: dict[str, int]) -> str | None:
    """The layered package a module belongs to (the longest match), None outside them."""
    matches = [p for p in rank if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def _modules(folders: dict[str, Path]):
    """(file, its package, its module name) for every Python file of the mapped packages; a
    folder's subfolders are its subpackages."""
    for root_package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            package = ".".join([root_package, *path.parent.relative_to(folder).parts])
            yield path, package, package if path.stem == "__init__" else f"{package}.{path.stem}"


def violations(root: Path) -> list[str]:
    rank, folders, torch_free = _contract(root)
    found = []
    for path, package, name in _modules(folders):
        owner = _owner(name, rank)
        if owner is None:  # the root package's __init__ and the test packages are not layered
            continue
        where = path.relative_to(root)
        for line, module in _imports(path, package):
            target = _owner(module, rank)
            if target is not None and target != owner and rank[target] <= rank[owner]:
                found.append(f"{where}:{line}: {owner} imports {module}, which is not in a layer below it")
            if owner in torch_free and module.split(".")[0] in HEAVY:
                found.append(f"{where}:{line}: {owner} must stay torch-free but imports {module}")
    return found


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    found = violations(root)
    print("\n".join(found) if found else "layers: every import points down")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
