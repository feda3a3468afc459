"""The layers import only downward, and the pure core stays pure.

Ranks: common=0 < certs = client = server = 1 < simulations=2 < cli=3. A module may import
its own package and packages of a lower rank: never one above it, and never another
package of the same rank (the node's side and the coordinator's side share only
`common`). There is no import cycle between project modules, and `common/` imports no
argparse, rich or subprocess and never calls `print`. Every import counts, including
those inside functions and under `if TYPE_CHECKING:`; `from X import Y` counts as an
import of the submodule `X.Y` where Y is one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RANK = {"common": 0, "certs": 1, "client": 1, "server": 1, "simulations": 2, "cli": 3}
PURE = "common"
NOT_IN_PURE = ("argparse", "rich", "subprocess")


@dataclass(frozen=True)
class Import:
    """One import statement's edge: `module` (at `line`) imports `target`."""

    module: str
    line: int
    target: str
    text: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.text}"


def find_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under each package folder."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name `from <...> import` refers to, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[:len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def _known(name: str, modules: dict[str, Path]) -> str:
    """The longest prefix of `name` that is a project module, else `name` itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import in the file, anywhere in it, resolved to the module it loads."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, _known(alias.name, modules),
                             f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            dots = "." * node.level
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in modules else _known(base, modules)
                yield Import(module, node.lineno, target,
                             f"from {dots}{node.module or ''} import {alias.name}")


def project_imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    modules = find_modules(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def _top(name: str) -> str:
    return name.split(".")[0]


def layer_violations(imports: list[Import], rank: dict[str, int]) -> list[str]:
    """Imports of a package above the importer's layer, or of another one beside it."""
    found = []
    for imp in imports:
        src, dst = _top(imp.module), _top(imp.target)
        if dst not in rank or dst == src:
            continue
        if rank[dst] > rank[src]:
            found.append(f"{imp}: upward import, {src} (layer {rank[src]}) imports "
                         f"{imp.target} (layer {rank[dst]})")
        elif rank[dst] == rank[src]:
            found.append(f"{imp}: {src} imports {imp.target}, a package of its own "
                         f"layer {rank[src]}: share it through a lower layer")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with a cycle (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_violations(imports: list[Import], packages: tuple[str, ...]) -> list[str]:
    """Each import cycle between project modules, with every import that closes it."""
    edges = [imp for imp in imports if _top(imp.target) in packages]
    graph: dict[str, set[str]] = {}
    for imp in edges:
        graph.setdefault(imp.module, set()).add(imp.target)
    found = []
    for component in _cycles(graph):
        members = set(component)
        inside = sorted((imp for imp in edges if imp.module in members and imp.target in members),
                        key=lambda imp: (imp.module, imp.line))
        found.append(f"import cycle between {', '.join(component)}: "
                     + "; ".join(str(imp) for imp in inside))
    return found


def purity_violations(root: Path, imports: list[Import], pure: str = PURE) -> list[str]:
    """The pure core's imports of command-line or process tools, and its print calls."""
    found = [f"{imp}: {pure}/ must not import {_top(imp.target)}" for imp in imports
             if _top(imp.module) == pure and _top(imp.target) in NOT_IN_PURE]
    for name, path in find_modules(root, (pure,)).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "print"):
                found.append(f"{name}:{node.lineno}: print(...): {pure}/ must not print; "
                             "return or raise, and let cli/ show it")
    return found


def all_violations(root: Path, rank: dict[str, int] = RANK) -> list[str]:
    packages = tuple(rank)
    imports = project_imports(root, packages)
    return [*cycle_violations(imports, packages), *layer_violations(imports, rank),
            *purity_violations(root, imports)]


# --------------------------------------------------------------------------- the real tree


def test_the_checker_sees_the_whole_project():
    """Guards the test itself: every layer is found and its imports are read."""
    imports = project_imports(ROOT, tuple(RANK))
    assert {_top(imp.module) for imp in imports} == set(RANK)
    assert any(imp.module.startswith("cli.") and _top(imp.target) == "common" for imp in imports)


def test_layers_import_only_downward_without_cycles_and_the_core_is_pure():
    problems = all_violations(ROOT)
    assert problems == [], "\n" + "\n".join(problems)


# --------------------------------------------------------------------------- self-test


FAKE_TREE = {
    "common/__init__.py": "",
    "common/a.py": "import os\n\ndef f():\n    from cli import tool\n    return tool\n",
    "common/b.py": "from . import c\n",
    "common/c.py": "from common.b import thing\n",
    "common/d.py": "import subprocess\nfrom rich.console import Console\nprint('hi')\n",
    "common/inner/__init__.py": "from .. import e\n",
    "common/e.py": "VALUE = 1\n",
    "client/__init__.py": "",
    "client/x.py": "from server import y\n",
    "server/__init__.py": "",
    "server/y.py": "from common.e import VALUE\n",
    "cli/__init__.py": "",
    "cli/tool.py": "import argparse\nprint('fine up here')\nfrom common import a\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_finds_a_cycle_an_upward_and_a_sideways_import_and_impurity(tmp_path):
    rank = {"common": 0, "client": 1, "server": 1, "cli": 3}
    problems = all_violations(write_tree(tmp_path, FAKE_TREE), rank)
    assert problems == [
        # common.a's upward import also closes a cycle with cli.tool
        "import cycle between cli.tool, common.a: cli.tool:3: from common import a; "
        "common.a:4: from cli import tool",
        "import cycle between common.b, common.c: common.b:1: from . import c; "
        "common.c:1: from common.b import thing",
        "common.a:4: from cli import tool: upward import, common (layer 0) imports cli.tool "
        "(layer 3)",
        "client.x:1: from server import y: client imports server.y, a package of its own "
        "layer 1: share it through a lower layer",
        "common.d:1: import subprocess: common/ must not import subprocess",
        "common.d:2: from rich.console import Console: common/ must not import rich",
        "common.d:3: print(...): common/ must not print; return or raise, and let cli/ show it",
    ]


def test_relative_and_package_imports_resolve_to_modules(tmp_path):
    root = write_tree(tmp_path, FAKE_TREE)
    modules = find_modules(root, ("common",))
    inner = list(imports_of("common.inner", modules["common.inner"], modules))
    assert [(imp.target, imp.line) for imp in inner] == [("common.e", 1)]
    outside = list(imports_of("common.a", modules["common.a"], modules))
    assert [imp.target for imp in outside] == ["os", "cli"]  # cli is not among `modules`


def test_a_clean_tree_passes(tmp_path):
    clean = {k: v for k, v in FAKE_TREE.items() if k not in ("common/a.py", "common/c.py",
                                                            "common/d.py", "client/x.py")}
    assert all_violations(write_tree(tmp_path, clean), {"common": 0, "client": 1,
                                                        "server": 1, "cli": 3}) == []
