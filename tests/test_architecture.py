"""The layout rules of ARCHITECTURE.md, checked on the source (imports read with ``ast``).

* ``objective/`` imports only the ground files; ``landscape/`` and ``hessian/`` only
  ``objective/``; ``sharpness/`` may add them; ``training/`` imports no measure;
  ``policy/`` only ``objective/``;
  ``plots/`` reads results only; ``experiments/`` may import everything but the CLI;
  ``cli/`` parses and calls.
* No source file over 500 lines; no function over 80 lines unless the comment right
  above it says why.
* A subpackage's ``__init__.py`` is its contract: re-exports only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "basinscope"
GROUND = {
    "errors", "_version", "_rng", "_io", "_checks", "_results", "_keys", "_lock", "_partial", "_dist",
}  # fmt: skip
WINGS = (
    "objective",
    "landscape",
    "hessian",
    "sharpness",
    "training",
    "policy",
    "experiments",
    "plots",
    "cli",
)
# What each part may import besides itself and the ground files.
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "objective": set(),
    "landscape": {"objective"},
    "hessian": {"objective"},
    "sharpness": {"objective", "landscape", "hessian"},
    "training": set(),
    "policy": {"objective"},
    "plots": {"landscape"},
    "experiments": {
        "objective",
        "landscape",
        "hessian",
        "sharpness",
        "training",
        "policy",
        "plots",
    },
    "cli": {
        "objective",
        "landscape",
        "hessian",
        "sharpness",
        "training",
        "policy",
        "plots",
        "experiments",
    },
}


def _part(module: str) -> str | None:
    """``basinscope.landscape._grid`` -> ``landscape``; ground files -> ``ground``."""
    parts = module.split(".")
    if parts[0] != "basinscope" or len(parts) == 1:
        return None
    if parts[1] in GROUND:
        return "ground"
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``basinscope`` module imported by ``path`` (also inside functions)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level and not node.module:
                # ``from . import plots``: each name is a module of that package
                found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, m) for line, m in found if m.split(".")[0] == "basinscope"]


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_layout_has_its_wings():
    for wing in WINGS:
        assert (SRC / wing / "__init__.py").is_file(), wing
    top = {p.stem for p in SRC.glob("*.py")}
    assert top <= GROUND | {"__init__", "__main__"}, sorted(top - GROUND)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_layering(path: Path):
    own = _part(_module_name(path)) if path.parent != SRC or path.stem in GROUND else None
    if own is None:  # the package face and __main__ may import anything
        return
    allowed = ALLOWED[own] | {own, "ground"}
    bad = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if _part(module) is not None and _part(module) not in allowed
    ]
    assert not bad, f"{own}/ may not import: {bad}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_file_and_function_sizes(path: Path):
    lines = path.read_text().splitlines()
    assert len(lines) <= 500, f"{len(lines)} lines"
    tree = ast.parse("\n".join(lines))
    long = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            size = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2].strip() if first >= 2 else ""
            if size > 80 and not above.startswith("#"):
                long.append(f"{node.name} ({size} lines)")
    assert not long, f"functions over 80 lines without a comment saying why: {long}"


@pytest.mark.parametrize("wing", WINGS)
def test_a_wing_init_only_re_exports(wing: str):
    tree = ast.parse((SRC / wing / "__init__.py").read_text())
    for node in tree.body:
        ok = isinstance(node, ast.ImportFrom | ast.Import) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # docstring
        )
        ok = ok or (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["__all__"]
        )
        assert ok, f"{wing}/__init__.py line {node.lineno} is not a re-export"
