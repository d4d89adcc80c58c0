"""CLI smoke tests (in-process `ttsvar.cli.main`, plus the installed console script once)."""

import json
import subprocess
import sys
from pathlib import Path

import helpers_components  # noqa: F401 - registers test-pixels
import pytest

from ttsvar.cli import build_parser, main

GENEVAL = Path(__file__).resolve().parents[2] / "shared" / "geneval" / "evaluation_metadata.jsonl"
FAST = ["reward.name=helpers_components:redness", "search.features=test-pixels", "runtime.quiet=true"]


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for cmd in ("info", "run", "generate", "demo", "evaluate", "config", "train-testbed"):
        assert cmd in out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "cuda" in out and "faiss" in out and "ray" in out and "shapes-tiny" in out


def test_run_from_the_command_line_alone(tmp_path, capsys):
    p = GENEVAL
    if not p.exists():
        pytest.skip(f"GenEval metadata not found at {p}")
    out = tmp_path / "out"
    # GenEval words are not in the shapes world: the random-weight tiny Infinity reads any word
    rc = main(["run", f"prompts={p}", "limit=2", "search.strategy=best-of-n", "search.n=2", f"output.dir={out}",
               "model.name=infinity-tiny-random", *FAST])
    assert rc == 0
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in recs] == [0, 1] and all("metadata" in r for r in recs)
    assert "manifest" in capsys.readouterr().out


def test_generate_and_evaluate(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["generate", "a photo of a red circle", "--n", "2", "--strategy", "best-of-n", "--out", str(out),
                 *FAST]) == 0
    assert "image:" in capsys.readouterr().out
    assert main(["evaluate", str(out)]) == 0
    summary = json.loads((out / "geneval_summary.json").read_text())
    assert summary["n_images"] == 1 and 0.0 <= summary["overall"] <= 1.0


def test_generate_reads_overrides_and_yaml_and_its_flags_win(tmp_path, capsys):
    def manifest(out):
        return json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])

    # key=value and the YAML set what no flag names (the flags' defaults used to override them silently)
    out = tmp_path / "from-overrides"
    assert main(["generate", "a photo of a red circle", "search.strategy=best-of-n", "search.n=1",
                 f"output.dir={out}", *FAST]) == 0
    rec = manifest(out)
    assert (rec["strategy"], rec["n"]) == ("best-of-n", 1) and (out / "prompts.txt").is_file()
    yml = tmp_path / "job.yaml"
    yml.write_text("search:\n  strategy: random\n  n: 3\n")
    out = tmp_path / "from-yaml"
    assert main(["generate", "a photo of a red circle", "--config", str(yml), "--out", str(out), *FAST]) == 0
    assert (manifest(out)["strategy"], manifest(out)["n"]) == ("random", 3)
    # a flag given on the line wins over both
    out = tmp_path / "flags"
    assert main(["generate", "a photo of a red circle", "--config", str(yml), "--n", "2", "search.n=1",
                 "--out", str(out), *FAST]) == 0
    assert (manifest(out)["strategy"], manifest(out)["n"]) == ("random", 2)


def test_generate_refused_keeps_its_prompt_file_and_an_empty_prompt_is_one_line(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["generate", "a photo of a red circle", "--n", "1", "--strategy", "best-of-n", "--out", str(out),
                 *FAST]) == 0
    assert main(["generate", "a photo of a red circle", "--n", "2", "--out", str(out), *FAST]) == 2  # other config
    assert "another configuration" in capsys.readouterr().err
    assert (out / "prompts.txt").read_text() == "a photo of a red circle\n"  # still the prompt of the results
    assert main(["generate", "  ", "--out", str(tmp_path / "e")]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


def test_generate_keeps_one_folder_per_prompt_and_never_replaces_another_prompts_image(tmp_path, monkeypatch,
                                                                                       capsys):
    """The audit of session 13: every `generate` without --out wrote outputs/generate, so a second prompt replaced
    the first's image, and a --out holding another run's results had its result 0 replaced."""
    monkeypatch.chdir(tmp_path)
    fast = ["--n", "1", "--strategy", "best-of-n", *FAST]
    assert main(["generate", "a photo of a red circle", *fast]) == 0
    assert main(["generate", "A photo of a blue square.", *fast]) == 0  # punctuation: the folder's name adds a hash
    folders = sorted(p.name for p in (tmp_path / "outputs" / "generate").iterdir())
    assert folders[0].startswith("a-photo-of-a-blue-square-") and folders[1] == "a-photo-of-a-red-circle"
    first = (tmp_path / "outputs" / "generate" / folders[1] / "images" / "00000.png").read_bytes()
    capsys.readouterr()
    assert main(["generate", "a photo of a red circle", *fast]) == 0  # the same prompt resumes: nothing redone
    assert (tmp_path / "outputs" / "generate" / folders[1] / "images" / "00000.png").read_bytes() == first
    out = tmp_path / "outputs" / "generate" / folders[1]
    assert main(["generate", "a photo of two red circles", *fast, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds the result of another prompt ('a photo of a red circle')" in err and "--fresh" in err
    assert (out / "images" / "00000.png").read_bytes() == first and "red circle" in (out / "prompts.txt").read_text()
    assert main(["generate", "a photo of two red circles", *fast, "--out", str(out), "--fresh"]) == 0
    assert "two red circles" in (out / "prompts.txt").read_text()


def test_generate_refuses_keys_it_has_no_use_for_and_a_refused_prompt_leaves_no_folder(tmp_path, capsys, caplog):
    out = tmp_path / "g"
    for key in ("prompts=other.txt", "limit=5"):
        assert main(["generate", "a photo of a red circle", "--out", str(out), key, *FAST]) == 2
        assert "ttsvar generate runs the one prompt on its command line" in capsys.readouterr().err
    yml = tmp_path / "job.yaml"
    yml.write_text("prompts: other.txt\nsearch:\n  n: 1\n")
    assert main(["generate", "a photo of a red circle", "--config", str(yml), "--out", str(out), *FAST]) == 0
    assert "prompts not used by ttsvar generate" in caplog.text
    assert main(["generate", "a photo of a zebra", "--out", str(tmp_path / "z"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ttsvar: error: the prompt: ") and "zebra" in err[0], err
    assert "prompts.txt" not in err[0] and not (tmp_path / "z").exists()  # a file the user never made, and its folder


def test_a_prompts_file_where_the_job_yaml_goes_gets_a_hint(tmp_path, capsys):
    p = tmp_path / "p.txt"
    p.write_text("a photo of a red circle\n")
    assert main(["run", str(p)]) == 2
    assert f"looks like a prompts file, not a job YAML; pass it as prompts={p}" in capsys.readouterr().err
    assert main(["demo", "--per-tag", "100000"]) == 2
    assert "--per-tag must be in 1..50" in capsys.readouterr().err


def test_train_testbed_passes_its_options_to_the_trainer(capsys):
    assert main(["train-testbed", "--set", "no_such_key=1"]) == 2  # the trainer's own one-line error
    assert "no_such_key" in capsys.readouterr().err


def test_config_prints_resolved_yaml(tmp_path, capsys):
    assert main(["config", "search.n=3", "seed=9"]) == 0
    out = capsys.readouterr().out
    assert "'n': 3" in out and "seed: 9" in out


def test_config_shows_what_the_models_defaults_resolve_to(tmp_path, capsys):
    assert main(["config", "model.name=shapes-tiny", "search.options.lam=2"]) == 0
    out = capsys.readouterr().out
    assert "#   search.options: {'batch_schedule': [4, 3, 3, 2, 2, 2], " in out
    assert "'lam': 2" in out and "'resampler': 'systematic'" in out  # the user's lam over the model's
    assert "#   reward.name: shapes-reward   search.features: shapes-clip" in out
    (tmp_path / "job.yaml").write_text(out)  # still a job file: the resolution is comments
    assert main(["config", str(tmp_path / "job.yaml")]) == 0
    assert "lam: 2" in capsys.readouterr().out


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["run", f"prompts={tmp_path / 'missing.txt'}", *FAST]) == 2
    assert "prompts file not found" in capsys.readouterr().err
    assert main(["run", "search.strategy=nope", f"prompts={tmp_path}"]) == 2


def test_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).parent / "ttsvar"
    if not exe.exists():
        pytest.skip("console script not installed (package not installed with pip)")
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "generate" in r.stdout


def test_library_log_lines_are_lower_case_one_liners(capsys):
    import logging

    from ttsvar.cli import _StderrHandler

    lg = logging.getLogger("ttsvar.test-handler")
    h = _StderrHandler()
    lg.addHandler(h)
    try:
        lg.warning("retrying %s", "prompt 3")
        lg.error("prompt %d recorded as failed", 4)
    finally:
        lg.removeHandler(h)
    assert capsys.readouterr().err.splitlines() == ["ttsvar: warning: retrying prompt 3",
                                                   "ttsvar: error: prompt 4 recorded as failed"]


def test_an_interrupt_says_what_the_stopped_command_left(tmp_path, monkeypatch, capsys):
    """A trainer or `evaluate` stopped by Ctrl-C said "finished prompts are in the manifest", which only a job's
    commands have."""
    from ttsvar.eval import evaluate
    from ttsvar.testbed import train

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "main", stop)
    assert main(["train-testbed", "--quick"]) == 130
    assert capsys.readouterr().err.strip() == ("ttsvar: interrupted; the weights are written only when training "
                                               "finishes: nothing was saved")
    monkeypatch.setattr(evaluate, "evaluate_output_dir", stop)
    assert main(["evaluate", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "ttsvar: interrupted"
    monkeypatch.setattr("ttsvar.jobs.run_job", stop)
    assert main(["run", "prompts=p.txt", *FAST]) == 130
    assert "re-run the same command to resume" in capsys.readouterr().err


def test_config_prints_the_config_then_refuses_what_run_would(capsys):
    assert main(["config", "reward.name=no-such-reward"]) == 2
    out, err = capsys.readouterr()
    assert "reward:" in out and "unknown reward 'no-such-reward'" in err  # the config first, then the error
    assert main(["config", "search.features=no-such-features"]) == 2
    assert "search.features='no-such-features' is unknown" in capsys.readouterr().err
