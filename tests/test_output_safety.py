"""output.dir safety: `--fresh` deletes only what jobs wrote, and only once the job has started for real; one
job at a time per folder; summary.json's job totals over resumes; the memory check sized by the real units."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bad_input import PROMPTS, make_job, manifest, snapshot

import ttsvar.jobs
from ttsvar.core.errors import ConfigError, OutputError, ResumeError, TtsvarError
from ttsvar.jobs import check_memory, run_job
from ttsvar.output import OutputDir


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    job = make_job(tmp)
    run_job(job)
    return Path(job.output.dir)


def _copy(finished, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


def test_fresh_leaves_a_folder_that_holds_no_job_alone(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "traces").mkdir()
    (out / "images" / "holiday.jpg").write_text("precious")
    (out / "traces" / "notes.txt").write_text("mine")
    (out / "report.html").write_text("<html/>")
    s = run_job(make_job(tmp_path, "output.overwrite=true", prompts=PROMPTS[:1]))
    assert s["prompts_ok"] == 1
    assert (out / "images" / "holiday.jpg").read_text() == "precious"
    assert (out / "traces" / "notes.txt").read_text() == "mine" and (out / "report.html").exists()


def test_fresh_deletes_only_the_files_a_job_names(finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "images" / "cover.png").write_text("mine")
    (out / "traces" / "notes.txt").write_text("mine")
    s = run_job(make_job(tmp_path, "seed=1", "output.overwrite=true", prompts=PROMPTS[:2]))
    assert s["prompts_ok"] == 2 and sorted(r["index"] for r in manifest(out)) == [0, 1]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.png", "00001.png", "cover.png"]
    assert sorted(p.name for p in (out / "traces").iterdir()) == ["0.json", "1.json", "notes.txt"]


@pytest.mark.parametrize("overrides", [
    ("search.strategy=tts-var", "search.options.batch_schedule=[1,2]"),  # found when the model is known
    ("sampling.cfg=[1,2]",),  # found when the model's scales are known
    ("model.weights=/nonexistent/shapes.safetensors",),  # the model fails to load
    ("search.n=60000", "search.strategy=tts-var"),  # the memory check, once the model is loaded
])
def test_fresh_that_fails_to_start_deletes_nothing(finished, tmp_path, overrides, monkeypatch):
    monkeypatch.setattr(ttsvar.jobs, "_free_memory", lambda device: (2**30, "the test's 1 GiB"))
    out = _copy(finished, tmp_path)
    before, job_json = snapshot(out), (out / "job.json").read_bytes()
    with pytest.raises((TtsvarError, ValueError)):  # ValueError: sampling.cfg against the scales
        run_job(make_job(tmp_path, *overrides, "output.overwrite=true"))
    assert snapshot(out) == before and (out / "job.json").read_bytes() == job_json
    assert run_job(make_job(tmp_path))["skipped_done"] == len(PROMPTS)  # and it still resumes as before


def test_a_second_job_on_a_folder_in_use_is_refused(tmp_path):
    job = make_job(tmp_path, prompts=PROMPTS[:1])
    held = OutputDir(job.output.dir)
    held.lock()
    try:
        with pytest.raises(OutputError, match=r"in use by another ttsvar job \(pid \d+\).*another output.dir"):
            run_job(job)
    finally:
        held.unlock()
    assert run_job(job)["prompts_ok"] == 1  # released: it runs
    assert run_job(job)["skipped_done"] == 1  # and the job released it when it ended


def test_summary_holds_the_job_totals_across_resumes(tmp_path):
    run_job(make_job(tmp_path, "limit=1"))
    s = run_job(make_job(tmp_path, "limit=3"))
    out = tmp_path / "out"
    recs = manifest(out)
    assert (s["prompts_ok"], s["skipped_done"]) == (2, 1)  # this run
    job = json.loads((out / "summary.json").read_text())["job"]
    assert (job["prompts"], job["prompts_ok"], job["prompts_failed"], job["prompts_not_run"]) == (3, 3, 0, 0)
    assert job["compute"]["token_forwards"] == sum(r["compute"]["token_forwards"] for r in recs)
    assert job["mean_reward"] == pytest.approx(sum(r["reward"] for r in recs) / 3)
    again = run_job(make_job(tmp_path))  # all 4 prompts now, one of them new
    assert again["job"]["prompts_ok"] == 4 and again["prompts_ok"] == 1


def test_the_memory_check_counts_the_prompts_a_unit_really_holds(tmp_path, monkeypatch):
    job = make_job(tmp_path, "runtime.prompts_per_unit=4")
    comp = SimpleNamespace(generator=SimpleNamespace(state_bytes_per_row=lambda k: 100, device="cpu"),
                           plan=SimpleNamespace(batch_sizes=(10, 5)))
    monkeypatch.setattr(ttsvar.jobs, "_free_memory", lambda device: (2500, "the test's RAM"))
    with pytest.raises(ConfigError, match=r"4 prompts per work unit .* needs up to 40 candidate rows"):
        check_memory(job, comp)  # 4 x 10 rows x 100 B > 0.8 x 2500 B
    check_memory(job, comp, unit_prompts=2)  # 2 x 10 x 100 = 0.8 x 2500: fits
    with pytest.raises(ConfigError, match=r"1 prompt per work unit .*: lower search.n$"):
        monkeypatch.setattr(ttsvar.jobs, "_free_memory", lambda device: (100, "the test's RAM"))
        check_memory(job, comp, unit_prompts=1)


def test_a_checkpoint_replaced_at_the_same_path_is_another_configuration(tmp_path):
    """The fingerprint names weights by path; what the path holds (size, first and last MiB) is in it too, so
    a re-trained file at the same path is refused while a copy that only changed its mtime resumes."""
    from ttsvar.testbed.model import WEIGHTS

    w = tmp_path / "w" / "shapes_tiny.safetensors"
    w.parent.mkdir()
    shutil.copy(WEIGHTS, w)
    shutil.copy(WEIGHTS.with_suffix(".json"), w.with_suffix(".json"))
    run_job(make_job(tmp_path, f"model.weights={w}", prompts=PROMPTS[:2]))
    out = tmp_path / "out"
    fp = json.loads((out / "job.json").read_text())["fingerprint"]
    assert fp["model.weights#content"].startswith(f"{w.stat().st_size}:")
    os.utime(w, (1, 1))  # a copy that kept the bytes (rsync, cp): the same job
    assert run_job(make_job(tmp_path, f"model.weights={w}", prompts=PROMPTS[:2]))["skipped_done"] == 2
    data = bytearray(w.read_bytes())
    data[-3] ^= 0xFF  # other weights of the same architecture and size
    w.write_bytes(bytes(data))
    before = snapshot(out)
    with pytest.raises(ResumeError, match=r"model\.weights: the file at that path changed \(size:hash \d+:"):
        run_job(make_job(tmp_path, f"model.weights={w}", prompts=PROMPTS[:2]))
    assert snapshot(out) == before
    del fp["model.weights#content"]  # as a ttsvar that did not record it wrote job.json: still resumes
    (out / "job.json").write_text(json.dumps({"fingerprint": fp}))
    assert run_job(make_job(tmp_path, f"model.weights={w}", prompts=PROMPTS[:2]))["skipped_done"] == 2


def test_content_ids_take_only_values_that_name_paths(tmp_path, monkeypatch):
    from ttsvar.core.files import content_id, content_ids

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu").write_text("not a checkpoint")  # a value that is not a path never reads a file
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "ckpt" / ".cache").write_text("skipped")
    ids = content_ids({"model.device": "cpu", "reward.options": {"path": "ckpt/a.bin", "dir": str(tmp_path / "ckpt"),
                                                                 "members": [{"w": "./ckpt/a.bin"}]},
                       "reward.weights_dir": "missing/dir", "search.options.value": "ckpt/a.bin"},
                      skip=frozenset({"search.options.value"}))
    # a folder (a lookup folder such as reward.weights_dir gains unrelated files) is not identified
    assert set(ids) == {"reward.options.path#content", "reward.options.members[0].w#content"}
    assert ids["reward.options.path#content"] == content_id("ckpt/a.bin") and content_id("ckpt/a.bin").startswith("10:")
    before = content_id("ckpt/a.bin")
    os.utime(tmp_path / "ckpt" / "a.bin", (1, 1))
    assert content_id("ckpt/a.bin") == before
    (tmp_path / "ckpt" / "a.bin").write_bytes(b"y" * 10)
    assert content_id("ckpt/a.bin") != before
    big = tmp_path / "big.safetensors"  # only the first and last MiB are read: a change in the middle is not seen
    big.write_bytes(bytes(3 << 20))
    before = content_id(big)
    with open(big, "r+b") as f:
        f.seek((3 << 20) - 5)
        f.write(b"x")
    assert content_id(big) != before


def test_a_moved_checkpoint_resumes_only_with_the_same_content(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.check_fingerprint({"model.weights": "/a/w.pth", "model.weights#content": "1:aa",
                           "search.options.value": "v.safetensors", "search.value_sha256": "ff"})
    (out.root / "manifest.jsonl").write_text('{"index": 0, "prompt": "p", "status": "ok"}\n')
    with pytest.raises(ResumeError) as info:  # moved and changed: named by its path
        out.check_fingerprint({"model.weights": "/b/w.pth", "model.weights#content": "2:bb",
                               "search.options.value": "v.safetensors", "search.value_sha256": "ff"})
    assert 'model.weights: "/a/w.pth" -> "/b/w.pth")' in str(info.value) and "changed (size" not in str(info.value)
    # moved (or named from another working directory), same bytes: the same job
    out.check_fingerprint({"model.weights": "/b/w.pth", "model.weights#content": "1:aa",
                           "search.options.value": "/runs/v.safetensors", "search.value_sha256": "ff"})
    # a path inside a mapping field (reward.options): the same rule, entry by entry
    fp = {"reward.options": {"weights": "/a/r.safetensors", "sigma": 1}, "reward.options.weights#content": "3:cc"}
    out = OutputDir(tmp_path / "out2")
    out.check_fingerprint(fp)
    (out.root / "manifest.jsonl").write_text('{"index": 0, "prompt": "p", "status": "ok"}\n')
    out.check_fingerprint({**fp, "reward.options": {"weights": "/b/r.safetensors", "sigma": 1}})
    for changed in ({"weights": "/c/r.safetensors", "sigma": 2}, {"weights": "/c/r.safetensors", "sigma": 1,
                                                                  "extra": 0}):
        with pytest.raises(ResumeError, match="reward.options"):
            out.check_fingerprint({**fp, "reward.options": changed})
    with pytest.raises(ResumeError, match="reward.options"):
        out.check_fingerprint({"reward.options": {"weights": "/d/r.safetensors", "sigma": 1},
                               "reward.options.weights#content": "4:dd"})


def test_a_redone_prompt_never_leaves_a_record_pointing_at_another_prompts_files(tmp_path, monkeypatch):
    """The audit of session 13: an edited prompt line is redone in place; a kill while its image was replaced left
    the old record (whose text matched again after the edit was undone) pointing at the new prompt's image, and a
    redo that saves less (no trace, no candidates) left the old prompt's files looking valid."""
    run_job(make_job(tmp_path, "output.save_candidates=true"))
    out = tmp_path / "out"
    old_trace = (out / "traces" / "1.json").read_bytes()
    assert any((out / "candidates").glob("00001_*.png"))
    edited = [*PROMPTS]
    edited[1] = "a photo of three squares"
    # killed while the redone prompt's files are written: the index must not read as finished
    real = OutputDir.write_image
    monkeypatch.setattr(OutputDir, "write_image", lambda self, rel, im: (_ for _ in ()).throw(SystemExit(137)))
    with pytest.raises(SystemExit):
        run_job(make_job(tmp_path, "output.save_candidates=true", prompts=edited))
    monkeypatch.setattr(OutputDir, "write_image", real)
    assert manifest(out)[-1] == {"index": 1, "prompt": "a photo of three squares", "status": "redo"}
    assert 1 not in OutputDir(out, create=False).done()  # the old record no longer stands
    totals = ttsvar.jobs.ResultWriter(make_job(tmp_path, "output.save_candidates=true"),
                                      ttsvar.jobs.job_items(make_job(tmp_path))).job_totals()
    assert (totals["prompts_ok"], totals["prompts_failed"], totals["prompts_not_run"]) == (3, 0, 1)  # not "failed"
    # redone without traces or candidates: the old prompt's trace and candidates go
    s = run_job(make_job(tmp_path, "output.save_candidates=false", "output.traces=false", prompts=edited))
    assert s["prompts_ok"] == 1 and manifest(out)[-1]["prompt"] == "a photo of three squares"
    assert not (out / "traces" / "1.json").exists() and not any((out / "candidates").glob("00001_*.png"))
    assert (out / "traces" / "0.json").is_file() and any((out / "candidates").glob("00000_*.png"))  # others kept
    assert old_trace  # (the trace existed before)


def test_report_refuses_to_overwrite_a_runs_own_files_and_a_run_given_twice(tmp_path, capsys):
    from ttsvar.cli import main

    run_job(make_job(tmp_path, "limit=1"))
    out = tmp_path / "out"
    before = snapshot(out)
    for target in (out / "manifest.jsonl", out / "images" / "00000.png", out / "job.json"):
        assert main(["report", str(out), "-o", str(target)]) == 2
        assert "that is the run's own" in capsys.readouterr().err
    assert snapshot(out) == before
    assert main(["report", str(out), str(out)]) == 2
    assert "is given twice" in capsys.readouterr().err


def test_evaluate_says_when_its_score_covers_part_of_the_job(tmp_path, caplog):
    from ttsvar.eval.evaluate import evaluate_output_dir

    run_job(make_job(tmp_path, "limit=2"))
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    summary["job"].update(prompts=4, prompts_not_run=2)  # as an interrupted 4-prompt run records it
    (out / "summary.json").write_text(json.dumps(summary))
    res = evaluate_output_dir(out)["summary"]
    assert (res["prompts"], res["prompts_not_run"]) == (4, 2)
    assert "2 not yet run of its 4 prompts; the score is over the 2 finished ones" in caplog.text
    run_job(make_job(tmp_path, "limit=1"))  # the last run counts 1 prompt: the manifest holds 2 finished
    res = evaluate_output_dir(out)["summary"]
    assert res["results_beyond_the_job"] == 1 and "results of prompts it no longer had" in caplog.text


def test_a_run_folder_with_no_finished_prompt_is_named_as_one(tmp_path, capsys):
    from ttsvar.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "job.json").write_text("{}")
    for cmd in (["evaluate", str(out)], ["report", str(out)]):
        assert main(cmd) == 2
        assert "no prompt has finished there yet" in capsys.readouterr().err


def test_a_model_field_the_model_ignores_changes_no_fingerprint(tmp_path, caplog):
    run_job(make_job(tmp_path, "limit=1"))
    s = run_job(make_job(tmp_path, "limit=1", "model.dtype=float32"))  # warned as ignored: it must not block
    assert s["skipped_done"] == 1 and "model.dtype='float32' (model shapes-tiny does not read it)" in caplog.text


def test_a_legacy_key_and_its_new_name_with_two_values_is_an_error(tmp_path):
    yml = tmp_path / "job.yaml"
    yml.write_text("search:\n  lam: 3\n  options:\n    lam: 5\n")
    with pytest.raises(ConfigError, match="search.lam=3 and search.options.lam=5 are both set"):
        make_job(tmp_path, yaml=str(yml))
