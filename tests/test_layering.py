"""The package layers. Bottom up: the core (`ttsvar.core`: errors, generator interface, option checking,
checkpoints, devices), then `search` and `rewards` side by side (and `ttsvar.models`, `ttsvar.eval`), then
`ttsvar`'s engine, jobs, config and CLI, then `cluster`; the testbed on top, registering itself.

Read from the source with `ast` (nothing is imported):

* no import cycle at module level, between modules or between packages (`ttsvar` = the modules directly in
  ttsvar/, `ttsvar.core`, `ttsvar.models`, `ttsvar.models.infinity`, `ttsvar.eval`, `ttsvar.testbed`, `search`,
  `search.strategies`, `rewards`, `cluster`);
* `ttsvar.core` is the bottom: it imports nothing of ours outside itself, and nothing but the standard library,
  numpy, torch and safetensors;
* the testbed sits on top: no module outside it imports `ttsvar.testbed` at module level (registries name its
  modules as strings and import them on first lookup), and the few lazy imports of it are listed here;
* `cluster` is the only package that imports Ray.

* `search` is numpy-only and imports no other package of the project (not even lazily or for type checking);
* `rewards` imports no higher layer (not even lazily) and, at module level, nothing of ttsvar but the core.

Imports inside functions (lazy plugin loading) are not module-level edges; imports under `if TYPE_CHECKING:`
are ignored by the cycle and testbed checks. The subprocess checks at the end catch what a fresh import
really pulls in.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ttsvar", "search", "rewards", "cluster")
CORE_THIRD_PARTY = {"numpy", "torch", "safetensors"}
# modules that import the testbed inside a function, and why
LAZY_TESTBED_IMPORTERS = {
    "ttsvar.cli": "the train-testbed command",
    "ttsvar.demo": "the demo runs on the testbed's world and weights",
    "rewards.shapes_reward": "the testbed's reward model, loaded when the reward is built",
    "rewards.shapes_clip": "the testbed's CLIP weights and tokenizer",
    "rewards.testing": "writes tiny testbed weights for tests",
    "rewards.features": "the default weights of the shapes-clip features",
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module of ours (the deepest module of ours the statement names)
    top: str  # top-level name of what is imported (for third-party checks)
    lazy: bool  # inside a function


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def package_of(module: str) -> str:
    """The package a module belongs to: itself for a package's __init__, else its parent."""
    path = MODULES[module]
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _ours(name: str) -> str | None:
    """The deepest module of ours that `name` (a dotted import name) is or lies in."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str) -> list[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = package_of(module)
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_stmt(sub, lazy)
                continue
            visit_stmt(child, lazy)

    def visit_stmt(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, lazy)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            for alias in node.names:  # `from pkg import sub` imports the submodule `pkg.sub` when there is one
                add(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in MODULES else stem, lazy)
        else:
            visit(node, lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    def add(name: str, lazy: bool) -> None:
        target = _ours(name)
        out.append(Import(module, target or "", name.split(".")[0], lazy))

    visit(tree, False)
    return out


IMPORTS = {m: _imports(m) for m in MODULES}


def _edges(level: str) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for m, imps in IMPORTS.items():
        src = m if level == "module" else package_of(m)
        graph.setdefault(src, set())
        for imp in imps:
            if imp.target and not imp.lazy:
                dst = imp.target if level == "module" else package_of(imp.target)
                if dst != src:
                    graph[src].add(dst)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_scan_sees_the_packages():
    assert {"ttsvar.core.errors", "ttsvar.engine", "search.base", "rewards.registry", "cluster.driver"} <= set(MODULES)
    assert "ttsvar.core.generator" in {i.target for i in IMPORTS["ttsvar.engine"]}
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("level", ["module", "package"])
def test_no_import_cycles(level):
    cycle = _find_cycle(_edges(level))
    assert cycle is None, f"{level}-level import cycle: {' -> '.join(cycle)}"


def test_core_imports_nothing_of_ours_and_only_numpy_torch_safetensors():
    allowed = set(sys.stdlib_module_names) | CORE_THIRD_PARTY | {"__future__"}
    core = [m for m in MODULES if _in(m, "ttsvar.core")]
    assert {"ttsvar.core", "ttsvar.core.errors", "ttsvar.core.generator", "ttsvar.core.checkpoint"} <= set(core)
    for m in core:
        for imp in IMPORTS[m]:  # lazy imports too
            if imp.target:
                assert _in(imp.target, "ttsvar.core"), f"{m} imports {imp.target} (core imports nothing of ours)"
            else:
                assert imp.top in allowed, f"{m} imports {imp.top}"


def test_only_the_testbed_imports_the_testbed_at_module_level():
    eager, lazy = [], set()
    for m, imps in IMPORTS.items():
        if not _in(m, "ttsvar.testbed"):
            for imp in imps:
                if _in(imp.target, "ttsvar.testbed"):
                    if imp.lazy:
                        lazy.add(m)
                    else:
                        eager.append(f"{m} -> {imp.target}")
    assert not eager, f"module-level imports of the testbed: {eager}"
    unlisted = sorted(lazy - set(LAZY_TESTBED_IMPORTERS))
    assert not unlisted, f"new lazy imports of the testbed (list them with a reason, or avoid them): {unlisted}"


@pytest.mark.parametrize("registry", ["ttsvar.models.registry", "ttsvar.eval.registry", "rewards.registry"])
def test_registries_name_their_builtin_modules(registry):
    names = importlib.import_module(registry)._BUILTIN_MODULES
    assert names and all(n in MODULES for n in names), names


def test_only_cluster_imports_ray():
    bad = sorted({m for m, imps in IMPORTS.items() for i in imps if i.top == "ray" and not m.startswith("cluster")})
    assert not bad, f"ray imported outside cluster/: {bad}"


# ----------------------------------------------------------------------------- search and rewards

# what rewards may import from ttsvar at module level: the bottom layer
CORE = ("ttsvar.core",)
# above rewards and search: never imported by them, not even lazily
HIGHER = ("ttsvar.config", "ttsvar.jobs", "ttsvar.engine", "ttsvar.cli", "ttsvar.demo", "ttsvar.output",
          "ttsvar.report", "cluster")


def _all_imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, imported at module level) for every import statement of a file, including those
    under `if TYPE_CHECKING:` (stricter than `_imports` above, for the search and rewards checks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) not in nested) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            out.append((base, id(node) not in nested))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _is_in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_search_imports_no_torch_and_nothing_of_the_other_packages():
    bad = [(str(f.relative_to(ROOT)), m) for f in _files("search") for m, _ in _all_imports(f)
           if _is_in(m, ("torch", "torchvision", "timm", "open_clip", "ttsvar", "rewards", "cluster"))]
    assert not bad, f"search must stay numpy-only and import no other package of the project: {bad}"


def test_rewards_import_only_the_bottom_layer_of_ttsvar():
    bad, eager = [], []
    for f in _files("rewards"):
        for m, top_level in _all_imports(f):
            if _is_in(m, HIGHER) or _is_in(m, ("search",)):
                bad.append((str(f.relative_to(ROOT)), m))
            elif _is_in(m, ("ttsvar",)) and top_level and not _is_in(m, CORE):
                eager.append((str(f.relative_to(ROOT)), m))
    assert not bad, f"rewards import higher layers: {bad}"
    # the testbed's models are plugged in lazily, inside the functions that need them
    assert not eager, f"rewards import ttsvar beyond the core at module level: {eager}"


def _fresh_import(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code`."""
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_search_loads_no_torch():
    mods = _fresh_import("import search, search.clustering, search.potentials, search.schedule, search.strategies\n"
                         "search.list_strategies()")
    assert "torch" not in mods and "numpy" in mods
    assert not {m for m in mods if _is_in(m, ("ttsvar", "rewards", "cluster"))}


@pytest.mark.parametrize("what", ["rewards", "features"])
def test_loading_every_builtin_reward_and_feature_extractor_imports_no_higher_layer(what):
    call = "rewards.list_rewards()" if what == "rewards" else "rewards.list_features()"
    mods = _fresh_import(f"import rewards\n{call}")
    assert not {m for m in mods if _is_in(m, HIGHER)}
    assert not {m for m in mods if _is_in(m, ("search",))}
