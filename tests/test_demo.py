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
    (out / "plain").mkdir(parents=True)  # an earlier demo's run: replaced; the user's file beside it: kept
    (out / "plain" / "job.json").write_text("{}")
    (out / "grid.png").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(out), "--per-tag", "1", "--n", "2", "--seed", "3", *FAST]) == 0
    printed = capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"
    for d in ("plain", "tts-var"):  # --seed is the job seed of both runs, not only the prompts' draw
        assert json.loads((out / d / "job.json").read_text())["fingerprint"]["seed"] == 3
    assert json.loads((out / "demo.json").read_text())["seed"] == 3
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
    assert "--n for TTS-VAR's N" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("args, match", [
    (["--n", "0"], "--n must be in 1..65536"), (["--n", "100000"], "--n must be in 1..65536"),
    (["--per-tag", "0"], "--per-tag must be in 1..50"), (["--seed", "-1"], "--seed must be >= 0"),
    (["search={n: 3}"], "the demo sets"), (["output={dir: x}"], "the demo sets"), (["seed=5"], "use --seed"),
    # a bad TTS-VAR option is refused before the plain run (which does not take it) or any file
    (["search.options.lam=-1"], "lam: -1"),
])
def test_demo_checks_everything_before_writing(tmp_path, capsys, args, match):
    assert main(["demo", "--out", str(tmp_path / "d"), *args]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_demo_refuses_an_empty_out_and_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ""]) == 2
    assert "--out is empty" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_demo_never_replaces_files_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my report")
    (out / "notes.txt").write_text("notes")
    assert main(["demo", "--out", str(out), "--per-tag", "1"]) == 2
    assert "holds report.html, which no ttsvar demo wrote" in capsys.readouterr().err
    assert (out / "report.html").read_text() == "my report"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.html"]


def test_a_demo_folder_in_use_is_refused_before_anything_is_deleted(tmp_path, capsys):
    from ttsvar.output import OutputDir

    out = tmp_path / "demo"
    (out / "plain").mkdir(parents=True)
    (out / "plain" / "job.json").write_text("{}")
    (out / "plain" / "manifest.jsonl").write_text('{"index": 0}\n')
    (out / "grid.png").write_bytes(b"png")
    other = OutputDir(out)
    other.lock()  # another demo holds the folder (flock: a second open file conflicts, even in one process)
    try:
        assert main(["demo", "--out", str(out), "--per-tag", "1"]) == 2
    finally:
        other.unlock()
    assert "--out='" in (err := capsys.readouterr().err) and "in use by another ttsvar job" in err
    assert (out / "plain" / "manifest.jsonl").is_file() and (out / "grid.png").is_file()


def test_evaluate_and_report_on_the_demo_folder_point_at_its_runs(tmp_path, capsys):
    for sub in ("plain", "tts-var"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "manifest.jsonl").write_text("")
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "its subfolders plain/, tts-var/ are" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "its subfolders plain/, tts-var/ are" in capsys.readouterr().err
