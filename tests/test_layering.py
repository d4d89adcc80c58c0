"""The package layering holds: `search` is numpy-only, and `search` / `rewards` import nothing above them.

Layers, bottom up: the core (`ttsvar.core`: errors, generator interface, checkpoints, devices), then `search`
and `rewards` side by side, then `ttsvar`'s engine, jobs, config and CLI, then `cluster`. The static checks read
every import statement, including the lazy ones inside functions, so a violation fails here even on a code path
no other test runs; the subprocess checks catch what a fresh import really pulls in."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what rewards may import from ttsvar at module level: the bottom layer
CORE = ("ttsvar.core",)
# above rewards and search: never imported by them, not even lazily
HIGHER = ("ttsvar.config", "ttsvar.jobs", "ttsvar.engine", "ttsvar.cli", "ttsvar.demo", "ttsvar.output", "cluster")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module name, imported at module level) for every import statement of a file."""
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


def _is(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_search_imports_no_torch_and_nothing_of_the_other_packages():
    bad = [(str(f.relative_to(ROOT)), m) for f in _files("search") for m, _ in _imports(f)
           if _is(m, ("torch", "torchvision", "timm", "open_clip", "ttsvar", "rewards", "cluster"))]
    assert not bad, f"search must stay numpy-only and import no other package of the project: {bad}"


def test_rewards_import_only_the_bottom_layer_of_ttsvar():
    bad, eager = [], []
    for f in _files("rewards"):
        for m, top_level in _imports(f):
            if _is(m, HIGHER) or _is(m, ("search",)):
                bad.append((str(f.relative_to(ROOT)), m))
            elif _is(m, ("ttsvar",)) and top_level and not _is(m, CORE):
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
    assert not {m for m in mods if _is(m, ("ttsvar", "rewards", "cluster"))}


@pytest.mark.parametrize("what", ["rewards", "features"])
def test_loading_every_builtin_reward_and_feature_extractor_imports_no_higher_layer(what):
    call = "rewards.list_rewards()" if what == "rewards" else "rewards.list_features()"
    mods = _fresh_import(f"import rewards\n{call}")
    assert not {m for m in mods if _is(m, HIGHER)}
    assert not {m for m in mods if _is(m, ("search",))}
