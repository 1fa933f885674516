"""The architecture's layering, checked on the source: which project modules each layer may import.

Every import counts: top-level ones, those inside functions (deferred imports) and those under
``if TYPE_CHECKING:`` (a type-only dependency is still a dependency of the design). Each rule of
``LAYER_RULES`` is one test, which lists every import that breaks it as ``file:line``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "fednode", "cli")  # the project's import roots; programs/ and bench/ sit outside the layers

# fednode's root utility modules: usable by every layer, importing nothing above them.
UTILITIES = ("fednode.atomic", "fednode.errors", "fednode.lazy", "fednode.logs", "fednode.nativebuild",
             "fednode.safejson", "fednode.sealing")
ANY = ("protocol", "fednode", "cli")


@dataclass(frozen=True)
class Rule:
    """The project modules a layer may import: those under a ``may_import`` prefix, except those under
    a ``never`` prefix. A layer's own modules are always allowed, except where ``siblings`` is False."""

    may_import: tuple[str, ...]
    never: tuple[str, ...] = ()
    siblings: bool = True  # False: a module of the layer may not import another module of the same layer
    why: str = ""


# layer (a package prefix) -> the imports it may have. A module follows the rule of the longest layer
# prefix that contains it; docs/architecture.md quotes this table.
LAYER_RULES: dict[str, Rule] = {
    "protocol": Rule(("protocol",), why="pure wire formats: nothing of the node or the CLI"),
    "fednode.errors": Rule(("protocol", *UTILITIES), why="a utility: below every layer"),
    "fednode.lazy": Rule(("protocol", *UTILITIES), why="a utility: below every layer"),
    "fednode.logs": Rule(("protocol", *UTILITIES), why="a utility: below every layer"),
    "fednode.nativebuild": Rule(("protocol", *UTILITIES), why="a utility: below every layer"),
    "fednode.safejson": Rule(("protocol", *UTILITIES), why="a utility: below every layer"),
    "fednode.sealing": Rule(("protocol", *UTILITIES), why="a utility: below every layer"),
    "fednode.identity": Rule(("protocol", *UTILITIES), why="the node's key: a leaf the layers above sign with"),
    "fednode.storage": Rule(("protocol", *UTILITIES), why="blocks and records, below history"),
    "fednode.tensors": Rule(("protocol", "fednode.errors", "fednode.lazy", "fednode.nativebuild", "fednode.safejson"),
                            why="model files and tensor encodings: no storage, no history"),  # fmt: skip
    "fednode.strategies": Rule(("protocol", *UTILITIES, "fednode.tensors"), why="aggregation on tensors only"),
    "fednode.zk": Rule(("protocol", *UTILITIES), why="commitments and their checks: pure arithmetic, no store"),
    "fednode.nft": Rule(ANY, never=("fednode.daemon", "fednode.chain", "fednode.demo", "cli"),
                        why="the NFT's metadata files, made from history: no network, no chain"),
    "fednode.history": Rule(ANY, never=("fednode.workflows", "fednode.daemon", "fednode.chain", "fednode.demo", "cli"),
                            why="commits and refs know nothing of the operations, network, chain or CLI above"),
    "fednode.workflows": Rule(ANY, never=("fednode.daemon", "fednode.chain", "fednode.demo", "cli"),
                              why="local operations: no network, no chain, no CLI"),
    "fednode.daemon": Rule(ANY, never=("fednode.demo", "cli"), why="the network layer serves the CLI, never uses it"),
    "fednode.chain": Rule(ANY, never=("fednode.demo", "cli"), why="anchoring serves the CLI, never uses it"),
    "fednode": Rule(ANY, never=("cli",), why="the core never imports the CLI"),
    "cli.commands": Rule(ANY, siblings=False,
                         why="one module per command group: shared code lives in cli.context, not in a sibling"),
}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str  # the project module imported, fully qualified

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: imports {self.module}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


@cache
def project_modules() -> frozenset[str]:
    return frozenset(module_name(p) for p in source_files())


@cache
def source_files() -> tuple[Path, ...]:
    return tuple(sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                        if "__pycache__" not in p.parts))  # fmt: skip


def in_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def imports_in(source: str, module: str, package: bool) -> list[tuple[int, str]]:
    """(line, module) for every import in ``source``, at any depth of the tree, relative imports made
    absolute. ``from X import name`` names ``X.name`` where that is a module of the project, else ``X``."""
    found: list[tuple[int, str]] = []
    here = module.split(".") if package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here[: len(here) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((node.lineno, submodule if submodule in project_modules() else base))
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    found: dict[Import, None] = {}  # ordered, and one entry for `from X import a, b`
    for path in source_files():
        module = module_name(path)
        for line, target in imports_in(path.read_text(), module, is_package(path)):
            if in_project(target):
                found[Import(path, line, target)] = None
    return tuple(found)


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    """The longest layer prefix that contains ``module``."""
    return max((layer for layer in LAYER_RULES if under(module, layer)), key=len, default=None)


def breaks(rule: Rule, layer: str, importer: str, target: str) -> bool:
    if under(target, layer):
        # A package's __init__ gathering its own modules is no sibling import.
        return not rule.siblings and target != layer and importer != layer and target != importer
    allowed = any(under(target, prefix) for prefix in rule.may_import)
    return not allowed or any(under(target, prefix) for prefix in rule.never)


def violations(layer: str) -> list[Import]:
    rule = LAYER_RULES[layer]
    return [imp for imp in all_imports()
            if layer_of(module_name(imp.path)) == layer
            and breaks(rule, layer, module_name(imp.path), imp.module)]  # fmt: skip


@pytest.mark.parametrize("layer", list(LAYER_RULES))
def test_layer_imports_only_what_its_rule_allows(layer: str) -> None:
    found = violations(layer)
    if found:
        report = "\n".join(str(imp) for imp in found)
        why = LAYER_RULES[layer].why
        pytest.fail(f"{layer} ({why}) breaks its rule {len(found)} time(s):\n{report}", pytrace=False)


def test_every_kind_of_import_is_seen() -> None:
    """Top-level, relative, in-function and TYPE_CHECKING imports all count."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import fednode.errors\n"
        "from . import fixedpoint\n"
        "if TYPE_CHECKING:\n"
        "    from fednode.history import History\n"
        "def later():\n"
        "    from cli import context\n"
    )
    found = imports_in(source, "fednode.tensors.encodings", package=False)
    assert (2, "fednode.errors") in found
    assert (3, "fednode.tensors.fixedpoint") in found
    assert (5, "fednode.history") in found
    assert (7, "cli.context") in found


def test_the_rules_see_the_tree() -> None:
    """Every layer of the table has modules (a renamed package would silently check nothing), except
    cli.commands, whose rule holds trivially until that package exists."""
    modules = project_modules()
    empty = [layer for layer in LAYER_RULES
             if layer != "cli.commands" and not any(under(m, layer) for m in modules)]  # fmt: skip
    assert not empty, f"layers without modules: {empty}"
    storage_imports = [imp.module for imp in all_imports() if layer_of(module_name(imp.path)) == "fednode.storage"]
    assert any(under(module, "protocol") for module in storage_imports), "the scan finds no imports"
