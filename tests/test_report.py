"""`ttsvar report`: one HTML page of job outputs, checked in a real headless browser (Debian's chromium, driven
through its command line: the DOM after the page's script ran, and a screenshot).

The search trees are checked against the trace files: one node per trace row, one edge per row with a parent
(into the node of that parent in the previous column), the pick highlighted, the ESS of every resampling shown.
A real tts-var job (shapes-tiny, with previews and candidates, evaluated) covers the path from `ttsvar run`;
synthetic runs of every strategy (the real Coordinator on random rewards) cover the strategies and a run large
enough to page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helpers_components  # noqa: F401 - registers test-pixels
import pytest
from helpers_report import Elements
from PIL import Image

from search import list_strategies
from ttsvar.cli import main
from ttsvar.core.errors import ConfigError, OutputError
from ttsvar.output import OutputDir
from ttsvar.report import build_report
from ttsvar.report.browser import NO_BROWSER, chromium, dump_dom, screenshot
from ttsvar.testbed.model import weights_available
from ttsvar.testing import fabricate_run

FAST = ["reward.name=helpers_components:redness", "search.features=test-pixels", "runtime.quiet=true"]
# CI (.ci/run installs chromium) sets TTSVAR_REQUIRE_BROWSER: there a missing browser fails the tests instead
needs_browser = pytest.mark.skipif(chromium() is None and not os.environ.get("TTSVAR_REQUIRE_BROWSER"),
                                   reason=NO_BROWSER)


def _traces(run: Path) -> dict[int, dict]:
    recs = [json.loads(x) for x in (run / "manifest.jsonl").read_text().splitlines() if x.strip()]
    return {r["index"]: json.loads((run / r["trace"]).read_text()) for r in recs if r.get("trace")}


def check_tree(dom: Elements, trace: dict, run: int = 0) -> None:
    """The tree of run `run` in the DOM is the trace: nodes, edges, pick, ESS."""
    nodes = [a for a in dom.having("node", "div") if a["data-run"] == str(run)]
    edges = [a for a in dom.having("edge", "path") if a["data-run"] == str(run)]
    decisions = trace["decisions"]
    # one node per trace row, column by column, in row order
    assert [(int(a["data-col"]), int(a["data-row"])) for a in nodes] == \
        [(c, r["row_id"]) for c, d in enumerate(decisions) for r in d["rows"]]
    for a, r in zip(nodes, [r for d in decisions for r in d["rows"]]):
        assert a["data-parent"] == ("" if r["parent"] is None else str(r["parent"]))
        assert ("pruned" in a["class"].split()) == (r.get("kept") is False)
    # one edge per row that has a parent, from that parent's node in the previous column
    ids = {(int(a["data-col"]), int(a["data-row"])) for a in nodes}
    want = sorted(f"{c - 1}:{r['parent']}->{c}:{r['row_id']}" for c, d in enumerate(decisions) for r in d["rows"]
                  if c > 0 and r["parent"] is not None)
    assert sorted(f"{a['data-from']}->{a['data-to']}" for a in edges) == want
    for a in edges:
        c, r = map(int, a["data-from"].split(":"))
        assert (c, r) in ids
    # the pick: exactly one highlighted node, in the last column, the trace's picked row
    picked = [a for a in nodes if "picked" in a["class"].split()]
    assert [(int(a["data-col"]), int(a["data-row"])) for a in picked] == [(len(decisions) - 1,
                                                                            decisions[-1]["picked_row"])]
    lineage = [a for a in nodes if "lineage" in a["class"].split()]
    assert len(lineage) == len(decisions)  # one node per column: the pick's ancestors
    ess = [float(a["data-value"]) for a in dom.having("ess", "div") if a["data-run"] == str(run)]
    want_ess = [d["info"]["ess"] for d in decisions if "ess" in d["info"]]
    assert ess == pytest.approx(want_ess, rel=1e-3)


def check_screenshot(png: Path, size: tuple[int, int]) -> None:
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50, "the screenshot is (nearly) blank"


# ----------------------------------------------------------------------------- a real job


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    if not weights_available():
        pytest.skip("the embedded shapes-tiny weights are not installed")
    from ttsvar.testbed import world

    d = tmp_path_factory.mktemp("report")
    prompts = d / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in world.eval_prompts(1, seed=0, split="train")))
    out = d / "tts-var"
    assert main(["run", f"prompts={prompts}", "limit=2", "search.strategy=tts-var", "search.n=2", f"output.dir={out}",
                 "output.save_previews=true", "output.save_candidates=true", *FAST]) == 0
    assert main(["evaluate", str(out)]) == 0
    return out


def test_save_previews_writes_one_strip_per_decision_linked_from_the_trace(real_run):
    for index, trace in _traces(real_run).items():
        decisions = [d for d in trace["decisions"] if d["info"].get("kind") != "final"]
        assert decisions and not [d for d in decisions if "preview" not in d]
        for d in decisions:
            h, w = d["preview_tile"]
            assert d["preview"] == f"previews/{index:05d}_s{d['scale']}.png"
            with Image.open(real_run / d["preview"]) as im:
                assert im.size == (w * len(d["rows"]), h) and max(h, w) <= 64


def test_save_previews_is_validated_like_every_field():
    from ttsvar.config import ignored_fields, load_config, saves_previews

    assert load_config(None, ["output.save_previews=true"]).output.save_previews is True
    with pytest.raises(ConfigError, match="output.save_previews"):
        load_config(None, ["output.save_previews=maybe"])
    job = load_config(None, ["output.save_previews=true", "output.traces=false"])  # previews are named by traces
    assert any(f.startswith("output.save_previews=true") for f in ignored_fields(job)) and not saves_previews(job)


def test_fresh_deletes_a_report_made_in_the_output_dir(tmp_path):
    run = fabricate_run(tmp_path / "run", "best-of-n", prompts=1, num_scales=4)
    build_report([run])
    assert "report.html" in OutputDir(run).clear() and not (run / "report.html").exists()


@needs_browser
def test_report_of_a_real_job_shows_each_trace_as_a_tree(real_run, tmp_path, capsys):
    assert main(["report", str(real_run)]) == 0
    page = real_run / "report.html"
    assert f"report: {page}" in capsys.readouterr().out
    html = page.read_text()
    assert not re.findall(r"https?://(?!www\.w3\.org/2000/svg)", html)  # nothing from the network (an SVG namespace)
    for index, trace in _traces(real_run).items():
        dom = Elements(dump_dom(page, f"prompt={index}"))
        check_tree(dom, trace)
        assert len(dom.having("final-image", "img")) == 1
        assert any("thumb" in c for _, _, c in dom.items)  # the preview thumbnails
        assert "GenEval overall" in html and "single_object" in html  # evaluated: per-tag scores
    # without a #prompt= the page opens on the first prompt, unscrolled (headless chromium paints a scrolled page
    # blank): the summary, the prompt table and the first prompt's tree
    png = tmp_path / "page.png"
    screenshot(page, png, (1400, 2000))
    check_screenshot(png, (1400, 2000))


# ----------------------------------------------------------------------------- every strategy, synthetic


@needs_browser
def test_every_strategy_gets_its_tree(tmp_path):
    strategies = list_strategies()
    runs = [fabricate_run(tmp_path / s, s, n=2, prompts=2, num_scales=8, previews=s == "tts-var", evaluated=True)
            for s in strategies]
    info = build_report(runs, tmp_path / "all.html")
    assert info.embedded and info.prompts == 2 * len(strategies)
    dom = Elements(dump_dom(info.path, "prompt=1"))
    for k, run in enumerate(runs):
        check_tree(dom, _traces(run)[1], run=k)
    # the summary: one column per run, one chart point per run
    head = [a for t, a, _ in Elements(info.path.read_text()).items if t == "th"]
    assert len(head) >= len(strategies)
    assert len(dom.having("point", "g")) == len(strategies)


@needs_browser
def test_a_large_run_is_paged_and_opens_any_prompt(tmp_path):
    run = fabricate_run(tmp_path / "big", "best-of-n", n=4, prompts=120, num_scales=6)
    info = build_report([run], embed="none")
    assert not info.embedded and "data:image" not in info.path.read_text()
    dom = Elements(dump_dom(info.path, "prompt=119"))
    rows = dom.having("prompt-row", "tr")
    assert len(rows) == 20 and rows[-1]["data-index"] == "119"  # page 3 of 3 (50 per page) holds 100..119
    assert [a for a in dom.having("selected", "tr")] == [rows[-1]]
    check_tree(dom, _traces(run)[119])  # best-of-n: one column, no edges
    img = dom.having("final-image", "img")[0]["src"]
    assert img == "images/00119.png" and (run / img).is_file()


def test_linked_images_are_relative_to_the_report(tmp_path):
    run = fabricate_run(tmp_path / "run", "beam", prompts=1, num_scales=6, candidates=True)
    info = build_report([run], tmp_path / "elsewhere" / "r.html", embed="none")
    data = _page_data(info.path)
    assert data["images"] and all((info.path.parent / p).is_file() for p in data["images"])
    assert all(p.startswith("../run/") for p in data["images"])
    assert build_report([run], tmp_path / "elsewhere").path == tmp_path / "elsewhere" / "report.html"


def _page_data(page: Path) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page.read_text(), re.S)
    return json.loads(m.group(1))


def test_prompt_text_cannot_inject_markup(tmp_path):
    run = fabricate_run(tmp_path / "run", "best-of-n", prompts=1, num_scales=4)
    man = run / "manifest.jsonl"
    man.write_text(man.read_text().replace("a photo of", "</script><script>alert(1)</script><!-- a photo of"))
    (run / "job.json").write_text(json.dumps({"fingerprint": {"model.name": "<b>x</b>"}}))
    html = build_report([run]).path.read_text()
    assert "</script><script>alert(1)" not in html and "<b>x</b>" not in html  # the JSON cannot end its script
    assert html.count("</script>") == 2  # the data and the script
    assert _page_data(run / "report.html")["runs"][0]["prompts"][0]["p"].startswith("</script><script>alert(1)")
    if chromium() is not None:  # and the page's script reads it back, as text
        dom = dump_dom(run / "report.html")
        assert len(Elements(dom).having("prompt-row", "tr")) == 1
        assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;!-- a photo of" in dom


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("what", ["missing", "file", "not-a-run", "empty-manifest"])
def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys, what):
    path = tmp_path / what
    if what == "file":
        path.write_text("x")
    elif what == "not-a-run":
        path.mkdir()
    elif what == "empty-manifest":
        path.mkdir()
        (path / "manifest.jsonl").write_text("")
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ttsvar: error: ") and str(path) in err
    assert "manifest.jsonl" in err and "Traceback" not in err
    with pytest.raises(OutputError if what != "empty-manifest" else ValueError):
        build_report([path])


def test_debug_shows_the_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ttsvar.cli", "report", str(tmp_path), "--debug"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" in res.stderr and "has no manifest.jsonl" in res.stderr


def test_a_geneval_generate_folder_scored_by_geneval_score_shows_its_scores(tmp_path):
    """`ttsvar geneval generate` runs prompt f's sample k as job line f * n_samples + k; `ttsvar geneval score`
    writes results.jsonl by sample path. The report maps each result back to its line."""
    run = fabricate_run(tmp_path / "D", "tts-var", prompts=4, num_scales=6)
    (run / "geneval.json").write_text(json.dumps({"n_samples": 2}))
    verdicts = {(0, 0): True, (0, 1): False, (1, 0): False, (1, 1): True}
    text = {json.loads(x)["index"]: json.loads(x)["prompt"] for x in (run / "manifest.jsonl").read_text().splitlines()}
    (run / "results.jsonl").write_text("".join(
        json.dumps({"filename": f"{run}/{f:05d}/samples/{k:05d}.png", "tag": ["colors", "counting"][f],
                    "prompt": text[f * 2 + k], "correct": ok, "reason": "", "metadata": json.dumps({"prompt": f"p{f}"}),
                    "details": "{}"}) + "\n" for (f, k), ok in verdicts.items()))
    page = build_report([run]).path
    assert "GenEval overall" in page.read_text() and "counting" in page.read_text()
    got = {p["i"]: p["ok"] for p in _page_data(page)["runs"][0]["prompts"]}
    assert got == {f * 2 + k: ok for (f, k), ok in verdicts.items()}


def test_runs_scored_by_different_rewards_get_no_mean_reward_chart(tmp_path):
    a = fabricate_run(tmp_path / "A", "tts-var", prompts=2, num_scales=6)
    b = fabricate_run(tmp_path / "B", "best-of-n", prompts=2, num_scales=6, seed=1)
    lines = [json.loads(x) for x in (b / "manifest.jsonl").read_text().splitlines()]
    for r in lines:
        r["reward_name"] = "another-reward"
    (b / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = build_report([a, b], out=f"{tmp_path}/rep/new/").path  # a trailing slash: a folder to create
    assert page == tmp_path / "rep" / "new" / "report.html"
    assert "No chart: the runs score with different rewards" in page.read_text()
    assert 'id="quality-chart"' not in page.read_text()


def test_stale_scores_and_runs_of_other_prompts_are_flagged(tmp_path):
    run = fabricate_run(tmp_path / "R", "tts-var", prompts=4, num_scales=6, evaluated=True)
    page = build_report([run]).path.read_text()
    assert "GenEval scores stale" not in page  # evaluated as it is
    # a resumed run: one more prompt finished after the evaluation
    recs = [json.loads(x) for x in (run / "manifest.jsonl").read_text().splitlines()]
    extra = {**recs[0], "index": 4, "image": "images/00004.png", "prompt": "a new prompt"}
    shutil.copyfile(run / recs[0]["image"], run / "images" / "00004.png")
    with open(run / "manifest.jsonl", "a") as f:
        f.write(json.dumps(extra) + "\n")
    page = build_report([run]).path.read_text()
    assert "GenEval scores stale" in page and "the scores cover 4 of the run&#x27;s 5 finished images" in page
    summary = json.loads((run / "geneval_summary.json").read_text())
    summary["skipped_without_metadata"] = [4]  # a prompt without GenEval metadata is never scored: not stale
    (run / "geneval_summary.json").write_text(json.dumps(summary))
    assert "GenEval scores stale" not in build_report([run]).path.read_text()
    other = fabricate_run(tmp_path / "O", "best-of-n", prompts=4, num_scales=6, seed=1)
    lines = [json.loads(x) for x in (other / "manifest.jsonl").read_text().splitlines()]
    lines[1]["prompt"] = "another prompt file's line"
    (other / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page = build_report([run, other], out=tmp_path / "both.html").path.read_text()
    assert "different prompts at 1 index(es) (first #1" in page
