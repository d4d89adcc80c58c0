"""`ttsvar geneval generate` (GenEval's layout, resume, refusal) and `ttsvar geneval score --detector shapes`
(GenEval's results.jsonl and summary), on the shapes testbed: the whole GenEval flow on CPU."""

import json
from pathlib import Path

import helpers_components  # noqa: F401 - registers test-pixels
import numpy as np
import pytest
from PIL import Image

from ttsvar import jobs
from ttsvar.cli import main
from ttsvar.eval.geneval import read_results, summarize, write_sample_folder
from ttsvar.testbed import world

FAST = ["model.name=shapes-tiny", "search.strategy=best-of-n", "search.n=1", "reward.name=helpers_components:redness",
        "search.features=test-pixels", "runtime.quiet=true", "runtime.prompts_per_unit=2"]
# GenEval's results.jsonl fields, in the order its evaluate_images.py writes them
RESULT_FIELDS = ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """Three shapes-world prompts in GenEval's metadata format (counting, position, colors)."""
    md = [m for m in world.eval_prompts(1, seed=0) if m["tag"] in ("counting", "position", "colors")]
    path = tmp_path_factory.mktemp("md") / "evaluation_metadata.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in md))
    return path


def _manifest(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def generated(prompts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "out"
    rc = main(["geneval", "generate", f"prompts={prompts}", f"output.dir={out}", "limit=2", "n_samples=2",
               "grid=true", *FAST])
    assert rc == 0
    return out


def test_generate_writes_genevals_layout(prompts, generated, capsys):
    out = generated
    md = [json.loads(x) for x in prompts.read_text().splitlines()]
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000", "00001"]  # limit=2
    for i in (0, 1):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == md[i]
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["00000.png", "00001.png"]
        grid = Image.open(folder / "grid.png")
        assert grid.size == (2 * 32 + 3 * 2, 32 + 2 * 2)  # two 32x32 samples, 2-pixel padding
    recs = sorted(_manifest(out), key=lambda r: r["index"])
    # line k of the expanded prompts = sample k % 2 of prompt k // 2, each with its own seed
    assert [r["prompt"] for r in recs] == [md[0]["prompt"]] * 2 + [md[1]["prompt"]] * 2
    assert len({r["seed"] for r in recs}) == 4
    for r in recs:
        i, j = divmod(r["index"], 2)
        sample = np.asarray(Image.open(out / f"{i:05d}" / "samples" / f"{j:05d}.png"))
        assert np.array_equal(sample, np.asarray(Image.open(out / r["image"])))
        assert (out / r["trace"]).is_file()  # the job's traces beside the layout


def test_score_with_the_shapes_detector_writes_genevals_results(generated, capsys):
    capsys.readouterr()
    assert main(["geneval", "score", str(generated), "--detector", "shapes", "--quiet"]) == 0
    text = capsys.readouterr().out
    results = [json.loads(x) for x in (generated / "results.jsonl").read_text().splitlines()]
    assert len(results) == 4 and all(list(r) == RESULT_FIELDS for r in results)
    assert results[0]["filename"] == str(generated / "00000" / "samples" / "00000.png")
    assert all(isinstance(r["correct"], bool) and isinstance(json.loads(r["details"]), dict) for r in results)
    summary = summarize(read_results(generated / "results.jsonl"))
    assert summary["n_images"] == 4 and summary["n_prompts"] == 2
    per_tag = {r["tag"] for r in results}
    assert summary["overall"] == pytest.approx(np.mean([summary["per_tag"][t]["accuracy"] for t in per_tag]))
    assert "Task breakdown" in text and f"Overall score (avg. over tasks): {summary['overall']:.5f}" in text


def test_score_reads_a_folder_written_by_another_tool(tmp_path, capsys):
    """Rendered ground truth in GenEval's layout (no manifest, no job): the exact evaluator says all correct."""
    rng = np.random.default_rng(0)
    for i, md in enumerate(world.eval_prompts(1, seed=1)):
        write_sample_folder(tmp_path, i, md, [world.render(world.sample_scene_for(md, rng)) for _ in range(2)])
    assert main(["geneval", "score", str(tmp_path), "--detector", "shapes", "--quiet",
                 "--out", str(tmp_path / "r.jsonl")]) == 0
    summary = summarize(read_results(tmp_path / "r.jsonl"))
    assert summary["n_images"] == 12 and summary["overall"] == 1.0


def test_score_errors_are_one_line(generated, tmp_path, capsys, monkeypatch):
    assert main(["geneval", "score", str(tmp_path / "nope"), "--detector", "shapes"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["geneval", "score", str(tmp_path), "--detector", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--detector='nope' is unknown" in err and "shapes" in err and "Traceback" not in err
    assert main(["geneval", "score", str(generated), "--detector", "shapes", "--options", "min_score=2"]) == 2
    assert "min_score" in capsys.readouterr().err
    assert main(["geneval", "score", str(generated), "--detector", "shapes", "--options", "min_area=abc"]) == 2
    assert "min_area must be a number, got 'abc'" in capsys.readouterr().err
    # a detector's models load only once DIR and --out are known good (they used to load first, then fail)
    from ttsvar.eval import registry

    built = []
    real = registry.create_evaluator
    monkeypatch.setattr(registry, "create_evaluator", lambda *a, **k: built.append(1) or real(*a, **k))
    assert main(["geneval", "score", str(tmp_path), "--detector", "shapes"]) == 2
    assert "holds no samples" in capsys.readouterr().err
    assert main(["geneval", "score", str(generated), "--detector", "shapes", "--out", str(tmp_path)]) == 2
    assert "--out " in capsys.readouterr().err  # a folder: refused before scoring, not after it
    assert built == []


def test_score_names_a_bad_metadata_file_and_checks_every_sample_first(generated, tmp_path, capsys):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(generated, d)
    (d / "results.jsonl").unlink(missing_ok=True)
    (d / "00001" / "samples" / "00007.png").mkdir()  # a folder named like a sample: skipped, as GenEval does
    (d / "00001" / "samples" / "00001.png").write_bytes((d / "00001" / "samples" / "00001.png").read_bytes()[:60])
    assert main(["geneval", "score", str(d), "--detector", "shapes", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "1 sample(s) cannot be read as images" in err and "00001/samples/00001.png" in err
    assert not (d / "results.jsonl").exists()
    (d / "00000" / "metadata.jsonl").write_text("")
    assert main(["geneval", "score", str(d), "--detector", "shapes", "--quiet"]) == 2
    assert "00000/metadata.jsonl is not one JSON object" in capsys.readouterr().err


def test_generate_refuses_a_changed_configuration(prompts, generated, capsys):
    base = ["geneval", "generate", f"prompts={prompts}", f"output.dir={generated}", "limit=2", *FAST]
    assert main([*base, "n_samples=3"]) == 2
    assert "n_samples: 2 -> 3" in capsys.readouterr().err
    assert main([*base, "n_samples=2", "search.n=2"]) == 2
    assert "search.n: 1 -> 2" in capsys.readouterr().err
    assert main([*base, "n_samples=0"]) == 2
    assert "n_samples must be in [1," in capsys.readouterr().err


def test_an_interrupted_run_resumes(prompts, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["geneval", "generate", f"prompts={prompts}", f"output.dir={out}", "n_samples=2", *FAST]
    real = jobs.ResultWriter.write_unit
    calls = []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(jobs.ResultWriter, "write_unit", interrupted)
    assert main(args) == 130
    monkeypatch.undo()
    # the first unit (two samples of prompt 0) finished and is already in the layout
    assert sorted(p.name for p in (out / "00000" / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert not (out / "00001").exists()
    first = (out / "00000" / "samples" / "00000.png").read_bytes()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 3)[3])
    assert summary["skipped_done"] == 2 and summary["prompts_ok"] == 4 and summary["folders_complete"] == 3
    assert (out / "00000" / "samples" / "00000.png").read_bytes() == first
    assert sorted(r["index"] for r in _manifest(out)) == list(range(6))
    # --fresh deletes the layout too, and starts over
    assert main([*args, "--fresh", "limit=1"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000"]


def test_fresh_that_fails_to_start_and_foreign_sample_folders_lose_nothing(prompts, generated, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(generated, out)
    (out / "results.jsonl").write_text('{"filename": "scored for hours"}\n')
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
              and p.name not in (".ttsvar.lock", "geneval_prompts.jsonl")}
    args = ["geneval", "generate", f"prompts={prompts}", f"output.dir={out}", "limit=2", "n_samples=2", *FAST]
    assert main([*args, "--fresh", "model.weights=/nonexistent/shapes.safetensors"]) == 2  # fails to start
    assert "not found" in capsys.readouterr().err
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
             and p.name not in (".ttsvar.lock", "geneval_prompts.jsonl")}
    assert after == before
    # sample folders of someone else (no manifest, no job.json): neither mixed into nor deleted, with or without --fresh
    foreign = tmp_path / "foreign"
    shutil.copytree(generated / "00000", foreign / "00000")
    for extra in ([], ["--fresh"]):
        assert main(["geneval", "generate", f"prompts={prompts}", f"output.dir={foreign}", *FAST, *extra]) == 2
        assert "GenEval sample folders that no ttsvar job wrote (00000)" in capsys.readouterr().err
    assert sorted(p.name for p in (foreign / "00000" / "samples").iterdir()) == ["00000.png", "00001.png"]


def test_the_layout_holds_only_samples_the_manifest_stands_behind(prompts, generated, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(generated, out)
    stray = out / "00000" / "samples" / "00002.png"  # beyond n_samples=2, e.g. from another tool
    shutil.copyfile(out / "00000" / "samples" / "00000.png", stray)
    md = [json.loads(x) for x in prompts.read_text().splitlines()]
    edited = tmp_path / "md.jsonl"  # prompt 1's text changed: its old samples no longer stand for it
    md[1] = {**md[1], "prompt": md[0]["prompt"]} if md[0]["prompt"] != md[1]["prompt"] else md[1]
    edited.write_text("".join(json.dumps(m) + "\n" for m in md))
    assert main(["geneval", "generate", f"prompts={edited}", f"output.dir={out}", "limit=2", "n_samples=2",
                 *FAST]) == 0
    assert not stray.exists()
    assert sorted(p.name for p in (out / "00000" / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert json.loads((out / "00001" / "metadata.jsonl").read_text()) == md[1]


def test_a_class_conditional_model_gets_genevals_layout_too(tmp_path, capsys):
    """shapes-var-tiny records the class (`prompt` "3") and its text (`class_name`): the layout matches the
    metadata by either, so `geneval score` finds the samples."""
    from ttsvar.testbed.var_model import WEIGHTS

    md = json.loads(WEIGHTS.with_suffix(".json").read_text())["class_metadata"][:2]
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in md))
    out = tmp_path / "out"
    fast = [x for x in FAST if not x.startswith("model.name=")]
    assert main(["geneval", "generate", f"prompts={prompts}", f"output.dir={out}", "n_samples=2",
                 "model.name=shapes-var-tiny", *fast]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 3)[3])
    assert (summary["samples_written"], summary["folders_written"]) == (4, 2), summary
    for i in (0, 1):
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text()) == md[i]
    assert main(["geneval", "score", str(out), "--detector", "shapes", "--quiet"]) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    from ttsvar.report.runs import load_run

    run = load_run(out)  # the report matches each verdict to its image by the class's text
    assert len(run.correct) == 4 and run.geneval_note is None
    from ttsvar.report.runs import Images, page_data

    shown = [p["p"] for p in page_data([run], Images(out, embed=False))["runs"][0]["prompts"]]
    assert shown[0] == f"{md[0]['prompt']} (class 0)"  # the table shows (and filters by) the class's text
    # `ttsvar evaluate` on the same job's manifest: its verdicts carry the class's text too
    assert main(["evaluate", str(out), "--evaluator", "shapes"]) == 0
    assert len(load_run(out).correct) == 4


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
            and p.name != ".ttsvar.lock"}


def test_a_refused_run_leaves_the_earlier_layout_and_prompts_as_they_were(prompts, generated, tmp_path, capsys):
    """The audit of session 13: a refused run rebuilt the layout under its own metadata (deleting every earlier
    sample) and replaced the expanded prompts the earlier results stand on."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(generated, out)
    before = _files(out)
    md = prompts.read_text().splitlines()
    shifted = tmp_path / "shifted.jsonl"  # one line added at the top: every prompt moves to another folder
    shifted.write_text("\n".join([md[2], *md]) + "\n")
    args = ["geneval", "generate", f"prompts={shifted}", f"output.dir={out}", "limit=2", "n_samples=2", *FAST]
    assert main([*args, "search.n=3"]) == 2  # another configuration: refused
    assert "another configuration" in capsys.readouterr().err
    assert _files(out) == before
    zebra = tmp_path / "zebra.jsonl"  # a prompt the model cannot read, on line 3 after a blank line
    zebra.write_text(f"{md[0]}\n\n" + md[1].replace(json.loads(md[1])["prompt"], "a photo of a zebra") + "\n")
    assert main(["geneval", "generate", f"prompts={zebra}", f"output.dir={out}", "n_samples=2", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{zebra}:3: " in err[0] and "geneval_prompts" not in err[0], err  # the user's line
    assert _files(out) == before


def test_a_grid_always_shows_the_samples_of_its_folder(prompts, generated, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(generated, out)
    md = [json.loads(x) for x in prompts.read_text().splitlines()]
    md[0]["prompt"] = md[2]["prompt"]  # prompt 0's text changed: its samples are made again
    edited = tmp_path / "md.jsonl"
    edited.write_text("".join(json.dumps(m) + "\n" for m in md))
    old = (out / "00000" / "grid.png").read_bytes()
    assert main(["geneval", "generate", f"prompts={edited}", f"output.dir={out}", "limit=2", "n_samples=2",
                 *FAST]) == 0  # no grid=true this time: the grid of the earlier run is redrawn all the same
    from ttsvar.geneval_jobs import write_grid

    write_grid(tmp_path / "want.png", sorted((out / "00000" / "samples").iterdir()))
    assert (out / "00000" / "grid.png").read_bytes() != old
    assert np.array_equal(np.asarray(Image.open(out / "00000" / "grid.png")), np.asarray(Image.open(tmp_path /
                                                                                                    "want.png")))


@pytest.mark.parametrize("make, match", [
    (lambda d: d / "nope.jsonl", "metadata file not found: "),
    (lambda d: d, "metadata file is a folder: "),
    (lambda d: (d / "bin.jsonl").write_bytes(b"\xff\xfe") and d / "bin.jsonl", "not UTF-8 text"),
    (lambda d: (d / "empty.jsonl").write_text("") or d / "empty.jsonl", "holds no prompts"),
])
def test_a_bad_metadata_file_is_one_line_and_writes_nothing(tmp_path, capsys, make, match):
    src = make(tmp_path)
    out = tmp_path / "out"
    assert main(["geneval", "generate", f"prompts={src}", f"output.dir={out}", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]
    assert not out.exists()


def test_a_misspelt_geneval_option_is_named(prompts, tmp_path, capsys):
    assert main(["geneval", "generate", f"prompts={prompts}", f"output.dir={tmp_path}", "n_sample=2", *FAST]) == 2
    assert "unknown key 'n_sample': did you mean 'n_samples'?" in capsys.readouterr().err
