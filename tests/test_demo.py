"""`ttsvar demo`: plain sampling vs TTS-VAR on the same prompts, both scores printed, one grid.png."""

import json
import re

import helpers_components  # noqa: F401 - registers test-pixels
import pytest
from PIL import Image

from ttsvar.cli import main
from ttsvar.demo import grid_size
from ttsvar.testbed.model import weights_available
from ttsvar.testbed.world import TAGS

# a cheap reward and cheap features: the test checks the demo's plumbing and grid, not the search's quality
FAST = ["reward.name=helpers_components:redness", "search.features=test-pixels", "runtime.quiet=true"]


def _manifest(d):
    return [json.loads(x) for x in (d / "manifest.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.skipif(not weights_available(), reason="the embedded shapes-tiny weights are not installed")
def test_demo_compares_plain_sampling_with_tts_var_and_writes_a_grid(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--per-tag", "1", "--n", "2", *FAST]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^plain sampling \(N=1\): overall \d\.\d\d \(single_object \d/1, ", printed, re.M), printed
    assert re.search(r"^TTS-VAR \(N=2\): overall \d\.\d\d \(single_object \d/1, ", printed, re.M), printed

    plain, search = _manifest(out / "plain"), _manifest(out / "tts-var")
    n_prompts = len(TAGS)  # one per tag
    assert len(plain) == len(search) == n_prompts
    assert all(r["strategy"] == "random" and r["n"] == 1 and r["candidates"] == [] for r in plain)
    assert all(r["strategy"] == "tts-var" and r["n"] == 2 and len(r["candidates"]) >= 2 for r in search)
    assert [r["prompt"] for r in plain] == [r["prompt"] for r in search]  # the same prompts, same seeds
    assert [r["seed"] for r in plain] == [r["seed"] for r in search]
    for d in ("plain", "tts-var"):
        assert json.loads((out / d / "geneval_summary.json").read_text())["n_images"] == n_prompts

    grid = out / "grid.png"
    assert f"grid: {grid}" in printed
    n_cols = 2 + min(4, max(len(r["candidates"]) - 1 for r in search))  # plain, pick, the other candidates
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == grid_size(n_prompts, n_cols, 96)
        im.load()  # decodes the whole file
    report = out / "report.html"
    assert f"report: {report}" in printed and report.is_file()
    html = report.read_text()
    assert "<th>plain</th><th>tts-var</th>" in html and 'id="quality-chart"' in html
    assert any((out / "tts-var" / "previews").iterdir())
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_demo_refuses_overrides_of_what_it_sets(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "search.n=4"]) == 2
    assert "use --n" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
