"""A results folder is shared, copied and downloaded: what is in it must not make ttsvar read, write or delete
files outside it. Paths read from a manifest, trace or results file stay inside the run (`output.inside`), and
a symbolic link planted where a job writes (its lock, manifest, output folders, GenEval's sample folders) is
refused instead of written through; results files are replaced atomically, never written through a link."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from test_bad_input import PROMPTS, make_job

from ttsvar.core.errors import ManifestError, OutputError
from ttsvar.jobs import run_job
from ttsvar.output import inside


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("finished")
    job = make_job(tmp, "output.traces=true", prompts=PROMPTS[:2])
    run_job(job)
    return Path(job.output.dir)


@pytest.fixture
def run(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, symlinks=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY----- TOPSECRET")
    (secret / "creds.json").write_text(json.dumps({"decisions": [], "key": "AKIA-SECRET"}))
    return out


def _rewrite_manifest(out: Path, **fields) -> None:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    for rec in lines:
        rec.update({k: v(rec) if callable(v) else v for k, v in fields.items()})
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_inside_keeps_paths_in_the_run(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "images" / "out").symlink_to("/etc")
    assert inside(tmp_path, "images/a.png") == tmp_path / "images" / "a.png"
    for bad in ["/etc/passwd", "../secret", "images/../../x", "images/out/passwd", "", None, 3]:
        assert inside(tmp_path, bad) is None, bad


@pytest.mark.parametrize("image", ["{secret}/id_rsa", "../secret/id_rsa", "images/leak.png"])
def test_a_report_does_not_embed_files_from_outside_the_run(run, image):
    from ttsvar.report import build_report

    secret = run.parent / "secret"
    (run / "images" / "leak.png").symlink_to(secret / "id_rsa")
    _rewrite_manifest(run, image=image.format(secret=secret), trace=str(secret / "creds.json"))
    page = build_report([run], embed="all").path.read_text()
    encoded = base64.b64encode((secret / "id_rsa").read_bytes()).decode()
    assert "TOPSECRET" not in page and encoded[:40] not in page and "AKIA-SECRET" not in page


def test_a_planted_lock_or_manifest_link_is_refused_and_its_target_untouched(run, tmp_path):
    victim = tmp_path / "victim_bashrc"
    victim.write_text("export IMPORTANT=1\nno newline at the end")
    (run / ".ttsvar.lock").unlink(missing_ok=True)
    (run / ".ttsvar.lock").symlink_to(victim)
    with pytest.raises(OutputError, match=r"\.ttsvar\.lock is a symbolic link"):
        run_job(make_job(tmp_path, "output.traces=true", out="run", prompts=PROMPTS[:2]))
    (run / ".ttsvar.lock").unlink()
    (run / "manifest.jsonl").unlink()
    (run / "manifest.jsonl").symlink_to(victim)
    with pytest.raises(OutputError, match=r"manifest.jsonl is a symbolic link"):
        run_job(make_job(tmp_path, "output.traces=true", out="run", prompts=PROMPTS[:2]))
    assert victim.read_text() == "export IMPORTANT=1\nno newline at the end"


@pytest.mark.parametrize("folder", ["images", "traces"])
def test_an_output_folder_that_is_a_link_is_refused(run, tmp_path, folder):
    victim = tmp_path / "victim_dir"
    victim.mkdir()
    (victim / "00000.png").write_bytes(b"precious")
    (victim / "0.json").write_text("precious")
    shutil.rmtree(run / folder)
    (run / folder).symlink_to(victim)
    with pytest.raises(OutputError, match=rf"{folder} is a symbolic link"):
        run_job(make_job(tmp_path, "output.traces=true", "output.overwrite=true", out="run", prompts=PROMPTS[:2]))
    assert sorted(p.name for p in victim.iterdir()) == ["0.json", "00000.png"]
    assert (victim / "00000.png").read_bytes() == b"precious"


def test_evaluate_reads_only_the_runs_images_and_replaces_a_planted_results_link(run, tmp_path):
    from ttsvar.eval.evaluate import evaluate_output_dir

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "geneval_results.jsonl").symlink_to(victim)
    _rewrite_manifest(run, metadata=lambda r: {"tag": "colors", "prompt": r["prompt"],
                                               "include": [{"class": "circle", "count": 1}]})
    evaluate_output_dir(run, "shapes")
    assert victim.read_text() == "precious" and not (run / "geneval_results.jsonl").is_symlink()
    assert len((run / "geneval_results.jsonl").read_text().splitlines()) == 2
    _rewrite_manifest(run, image=str(tmp_path / "secret" / "id_rsa"))
    with pytest.raises(ManifestError, match="is not inside the output.dir"):
        evaluate_output_dir(run, "shapes")


def test_geneval_layout_writes_and_deletes_only_inside_the_run(tmp_path):
    from ttsvar.cli import main
    from ttsvar.geneval_jobs import write_layout
    from ttsvar.testbed import world

    md = [m for m in world.eval_prompts(1, seed=0) if m["tag"] in ("colors", "counting")]
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in md))
    out = tmp_path / "gen"
    args = ["geneval", "generate", f"prompts={prompts}", f"output.dir={out}", "n_samples=1",
            "model.name=shapes-tiny", "search.strategy=best-of-n", "search.n=1", "runtime.quiet=true",
            "reward.name=helpers_components:redness", "search.features=test-pixels"]
    assert main(args) == 0
    victim = tmp_path / "victim_pics"
    victim.mkdir()
    (victim / "holiday.png").write_bytes(b"precious")
    shutil.rmtree(out / "00000" / "samples")
    (out / "00000" / "samples").symlink_to(victim)
    assert main(args) == 2  # refused: nothing written into or deleted from the linked folder
    assert sorted(p.name for p in victim.iterdir()) == ["holiday.png"]
    (out / "00000" / "samples").unlink()
    secret = tmp_path / "token.txt"
    secret.write_text("SECRET-TOKEN")
    _rewrite_manifest(out, image=str(secret))  # a manifest naming a file outside the run's images
    write_layout(out, md, 1)
    assert not any("SECRET" in p.read_text(errors="ignore") for p in out.rglob("*.png"))
