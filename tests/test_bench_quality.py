"""`bench/bench_engine.py quality --from-json`: the merge behind the documented tables (no record twice, only the
seeds asked for)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_engine", Path(__file__).parents[1] / "bench" / "bench_engine.py")
bench_engine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_engine)


def _write(path: Path, seeds, strategy="random", n=1):
    path.write_text(json.dumps([{"strategy": strategy, "n": n, "seed": s, "overall": 0.5} for s in seeds]))
    return str(path)


def test_from_json_merges_files_and_keeps_only_the_seeds_asked_for(tmp_path):
    a = _write(tmp_path / "a.json", [0, 1, 2])
    b = _write(tmp_path / "b.json", [0, 1], strategy="best-of-n", n=8)
    got = bench_engine._read_results([a, b], seeds=[0, 1])
    assert sorted((r["strategy"], r["seed"]) for r in got) == [("best-of-n", 0), ("best-of-n", 1), ("random", 0),
                                                               ("random", 1)]


def test_from_json_refuses_a_record_in_two_files(tmp_path):
    a = _write(tmp_path / "a.json", [0, 1])
    b = _write(tmp_path / "b.json", [1, 2])  # a re-run of seed 1 would be counted twice, shrinking the s.e.
    with pytest.raises(SystemExit, match="random:1 seed 1 is in both"):
        bench_engine._read_results([a, b], seeds=[0, 1, 2])
