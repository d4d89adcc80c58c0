"""The Ray runtime (`cluster/`) on a local Ray with 2 CPUs shared by the whole module.

Specification: a job run on Ray writes the same files as the local runtime (same PNG bytes, rewards, row
ids and traces), with one or two generator actors, with a shared reward-actor pool, after an actor is
killed mid-unit, and after the driver is killed and the job resumed. Failing units are retried a bounded
number of times and then recorded as failed while the job goes on.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers_components  # noqa: F401 - registers the test-pixels features in this process
import numpy as np
import pytest
import ray
import torch

from cluster import ClusterError, run_ray_job
from ttsvar.config import load_config
from ttsvar.jobs import run_job

pytestmark = pytest.mark.slow  # each test starts actors (seconds each); the module is ~2 min

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PROMPTS = ["a photo of a red circle", "a photo of two blue squares", "a photo of a green triangle",
           "a photo of a circle left of a triangle", "a photo of a yellow square", "a photo of three red circles"]
# tts-var with n=1: clustering (features) at coarse scales, resampling (rewards) at fine scales
COMMON = ["search.strategy=tts-var", "search.n=1", "reward.name=helpers_components:redness",
          "search.features=test-pixels", "runtime.quiet=true", "runtime.cpus_per_actor=1", "seed=3"]
PYTHONPATH = os.pathsep.join([str(ROOT), str(TESTS)])  # actors import the helper reward by this path


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p


def make_job(prompts, out, *overrides):
    return load_config(None, [f"prompts={prompts}", f"output.dir={out}", *COMMON, *overrides])


def read_outputs(out: Path) -> dict[int, dict]:
    """index -> manifest record (+ image bytes, trace) of every prompt finished ok; at most one ok line
    per prompt (a torn last line from a killed writer is skipped, as the resume logic does)."""
    recs: dict[int, dict] = {}
    for line in (out / "manifest.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec["status"] == "ok":
            assert rec["index"] not in recs, f"prompt {rec['index']} finished twice"
            rec["png"] = (out / rec["image"]).read_bytes()
            rec["trace_json"] = json.loads((out / rec["trace"]).read_text())
            recs[rec["index"]] = rec
    return recs


def assert_same_results(out: Path, ref: dict[int, dict]) -> None:
    got = read_outputs(out)
    assert sorted(got) == sorted(ref) == list(range(len(PROMPTS)))
    for i, r in ref.items():
        g = got[i]
        assert g["png"] == r["png"], f"prompt {i}: image bytes differ from the local run"
        assert (g["reward"], g["row_id"], g["seed"]) == (r["reward"], r["row_id"], r["seed"])
        assert g["trace_json"] == r["trace_json"]


@pytest.fixture(scope="module")
def reference(prompts_file, tmp_path_factory):
    """The local runtime's results (this process, 1 torch thread as in the actors: conftest sets it)."""
    assert torch.get_num_threads() == 1
    out = tmp_path_factory.mktemp("local")
    s = run_job(make_job(prompts_file, out, "runtime.prompts_per_unit=2"))
    assert s["prompts_ok"] == len(PROMPTS) and s["runtime"] == "local"
    return read_outputs(out)


@pytest.mark.parametrize("actors", [1, 2])
def test_ray_writes_the_same_files_as_local(ray_local, prompts_file, reference, tmp_path, actors):
    s = run_job(make_job(prompts_file, tmp_path, "runtime.kind=ray", f"runtime.actors={actors}",
                         "runtime.prompts_per_unit=2"))
    assert (s["runtime"], s["prompts_ok"], s["prompts_failed"], s["actors_started"]) == ("ray", 6, 0, actors)
    assert s["units"] == 3 and s["units_retried"] == s["units_requeued"] == s["actors_restarted"] == 0
    # one decide call per unit and decision scale, each with its latency measured
    assert s["coordinator_latency_ms"]["decisions"] == 3 * len(reference[0]["trace_json"]["decisions"][:-1])
    assert json.loads((tmp_path / "summary.json").read_text())["prompts_ok"] == 6
    assert_same_results(tmp_path, reference)


def test_reward_actor_pool_gives_the_same_files(ray_local, prompts_file, reference, tmp_path):
    s = run_job(make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=1", "runtime.reward_actors=1",
                         "runtime.prompts_per_unit=2"))
    assert (s["prompts_ok"], s["reward_actors"]) == (6, 1)
    assert_same_results(tmp_path, reference)


def test_a_dead_reward_pool_stops_the_job_keeping_what_is_done(ray_local, prompts_file, reference, tmp_path):
    """With its only reward actor gone no unit can be scored: the job stops with one ClusterError (it used to
    fail every remaining prompt, each after its retries), the finished prompts stay, and a re-run finishes."""
    def kill_reward_actor(rj):
        if rj.writer.ok >= 1 and not getattr(rj, "_killed", False):
            rj._killed = True
            os.kill(ray.get(rj.reward_handles[0].ready.remote())["pid"], signal.SIGKILL)

    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=1", "runtime.reward_actors=1",
                   "runtime.prompts_per_unit=1")
    with pytest.raises(ClusterError, match="every reward actor of the pool .* has died"):
        run_ray_job(job, on_event=kill_reward_actor)
    recs = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert recs and all(r["status"] == "ok" for r in recs) and len(recs) < len(PROMPTS)
    s = run_job(job)  # the same job again finishes the rest
    assert s["prompts_ok"] + s["skipped_done"] == len(PROMPTS)
    assert_same_results(tmp_path, reference)


def test_killed_actor_loses_and_duplicates_no_prompt(ray_local, prompts_file, reference, tmp_path):
    killed = []

    def kill_busy_actor(rj):
        # after the first unit is on disk, SIGKILL an actor that holds a unit before its final report (so the
        # driver must still call it, and learns of the death from that call)
        if killed or rj.writer.ok < 1:
            return
        busy = [s for s in rj.slots if not s.dead and any(rj.flights[u].final is None for u in s.units)]
        if busy:
            units = busy[0].units
            killed.append((sum(rj.flights[u].final is None for u in units), len(units)))
            os.kill(busy[0].pid, signal.SIGKILL)


    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=2", "runtime.prompts_per_unit=2")
    s = run_ray_job(job, on_event=kill_busy_actor)
    assert killed, "the test never found an actor to kill"
    early, held = killed[0]  # a unit past its final report may still have delivered its images in time
    assert s["actors_restarted"] == 1 and early <= s["units_requeued"] <= held
    assert (s["prompts_ok"], s["prompts_failed"]) == (6, 0)
    assert_same_results(tmp_path, reference)  # the re-run units give the same images


def test_failing_unit_is_retried_then_recorded_as_failed(ray_local, prompts_file, tmp_path):
    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=1", "runtime.prompts_per_unit=1",
                   "runtime.retries=1", "reward.name=helpers_components:failing_on_squares")
    s = run_job(job)
    squares = [i for i, p in enumerate(PROMPTS) if "square" in p]
    assert (s["prompts_ok"], s["prompts_failed"]) == (len(PROMPTS) - len(squares), len(squares))
    assert s["units_retried"] == len(squares)  # one re-run each (retries=1), then recorded
    assert s["actors_restarted"] == 0  # an exception in a unit does not cost the actor
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    failed = {r["index"]: r for r in lines if r["status"] == "failed"}
    assert sorted(failed) == squares and len(lines) == len(PROMPTS)
    assert all("this reward refuses squares" in r["error"] for r in failed.values())
    assert sorted(read_outputs(tmp_path)) == [i for i in range(len(PROMPTS)) if i not in squares]


def _driver_with_results(args: list[str], out: Path, lines: int = 2) -> subprocess.Popen:
    """`python -m ttsvar run ARGS` in a subprocess (its own session, so its Ray can be killed with it), returned
    once `lines` prompts are in its manifest."""
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    proc = subprocess.Popen([sys.executable, "-m", "ttsvar", "run", *args], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest, t0 = out / "manifest.jsonl", time.monotonic()
    try:
        while not (manifest.exists() and manifest.read_text().count("\n") >= lines):
            assert proc.poll() is None, f"driver exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() - t0 < 150, "no prompt finished in time"
            time.sleep(0.05)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc


def test_driver_killed_mid_job_then_resumed(ray_local, prompts_file, reference, tmp_path):
    """`ttsvar run ... runtime.kind=ray` in a subprocess (it starts its own Ray), SIGKILLed with its Ray
    processes once a unit is on disk; the same job re-run finishes the rest, redoing nothing twice."""
    args = [f"prompts={prompts_file}", f"output.dir={tmp_path}", *COMMON, "runtime.kind=ray",
            "runtime.prompts_per_unit=2"]
    proc = _driver_with_results(args, tmp_path)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started (same session)
    proc.wait()
    first = read_outputs(tmp_path)
    assert 2 <= len(first) < len(PROMPTS), "the kill came too late to test a resume"
    s = run_job(load_config(None, args))  # resumed in this process, on the module's Ray
    assert s["skipped_done"] == len(first) and s["prompts_ok"] == len(PROMPTS) - len(first)
    assert_same_results(tmp_path, reference)
    again = run_job(load_config(None, args))  # nothing left: no actor is started
    assert (again["prompts_ok"], again["skipped_done"], again["actors"]) == (0, len(PROMPTS), 0)


@pytest.mark.parametrize("kind", ["local", "ray"])
def test_sigterm_stops_the_command_like_ctrl_c(prompts_file, reference, tmp_path, kind):
    """SIGTERM (a scheduler's stop, `timeout`): one line, exit 143, finished prompts kept, and the same command
    finishes the rest. Under Ray, ray.init's native handler used to abort the driver with a stack dump."""
    args = [f"prompts={prompts_file}", f"output.dir={tmp_path}", *COMMON, f"runtime.kind={kind}",
            "runtime.prompts_per_unit=2"]
    proc = _driver_with_results(args, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)  # the driver only, as `kill PID` does
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = proc.stderr.read().decode()
    assert rc == 143, err[-2000:]
    assert "ttsvar: terminated (SIGTERM); finished prompts are in the manifest" in err and "SIGTERM received" not in err
    first = read_outputs(tmp_path)
    assert 2 <= len(first) < len(PROMPTS)
    s = run_job(load_config(None, [*args[:-2], "runtime.kind=local", "runtime.prompts_per_unit=2"]))
    assert s["skipped_done"] == len(first)
    assert_same_results(tmp_path, reference)


def test_actor_constructor_error_stops_the_job_with_its_message(ray_local, prompts_file, tmp_path):
    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=1",
                   "model.weights=/nonexistent/shapes.safetensors")
    with pytest.raises(ClusterError, match="could not start(.|\n)*nonexistent/shapes.safetensors") as info:
        run_job(job)
    assert info.value.exit_code == 2  # bad input (MissingFileError), as on the local runtime


def test_actors_that_never_fit_stop_the_job(ray_local, prompts_file, tmp_path, monkeypatch):
    import cluster.driver

    monkeypatch.setattr(cluster.driver, "START_TIMEOUT_S", 1.0)
    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.cpus_per_actor=64")  # the cluster has 2
    with pytest.raises(ClusterError, match="cannot place 1 generator actor"):
        run_job(job)


def test_cuda_model_on_a_cpu_cluster_is_refused(ray_local, prompts_file, tmp_path):
    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "model.device=cuda")
    with pytest.raises(ClusterError, match="no GPUs"):
        run_job(job)


def test_one_to_one_check_refuses_missing_repeated_and_foreign_prompts():
    from cluster.driver import _check_one_to_one
    from ttsvar.engine import WorkUnit

    unit = WorkUnit(3, [4, 5], ["a", "b"], [1, 2])
    _check_one_to_one(unit, 3, [5, 4], "report")
    for uid, got in ((3, [4]), (3, [4, 5, 5]), (3, [4, 6]), (2, [4, 5])):
        with pytest.raises(ValueError, match=r"expected unit 3 with prompts \[4, 5\]"):
            _check_one_to_one(unit, uid, got, "report")


def test_a_bad_prompt_is_reported_before_any_unit_runs(ray_local, tmp_path):
    """The first actor checks every prompt against its text models; the job stops with all bad lines."""
    from ttsvar.core.errors import PromptError

    p = tmp_path / "p.txt"
    p.write_text("a photo of a red circle\na photo of a dog\n")
    job = make_job(p, tmp_path / "out", "runtime.kind=ray", "runtime.actors=1")
    with pytest.raises(PromptError, match=r"p.txt:2: the generator's text encoder: .*\['dog'\]"):
        run_job(job)
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_one_bad_prompt_fails_alone(ray_local, prompts_file, tmp_path):
    """A unit that raises a deterministic error is re-run prompt by prompt; only the bad prompts fail, and
    nothing is retried (tests/test_bad_input.py has the local runtime's version)."""
    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=1", "runtime.prompts_per_unit=3",
                   "reward.name=test_bad_input:refuses_triangles")
    s = run_job(job)
    triangles = [i for i, p in enumerate(PROMPTS) if "triangle" in p]
    assert (s["prompts_ok"], s["prompts_failed"], s["units_retried"]) == (len(PROMPTS) - len(triangles),
                                                                          len(triangles), 0)
    recs = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in recs if r["status"] == "failed") == triangles
    assert sorted(r["index"] for r in recs) == list(range(len(PROMPTS)))


@pytest.mark.slow
def test_a_prompt_that_kills_its_actor_fails_alone(ray_local, prompts_file, reference, tmp_path):
    """Prompt 2 kills whichever actor scores it. It shares the actor with another unit when it first does so;
    that unit is not blamed, every lost unit runs alone from then on, and only prompt 2 is recorded as failed,
    after its actor died under it alone MAX_ACTOR_LOSSES times (each prompt that did so buys back the actor
    replacements it used)."""
    from cluster.driver import MAX_ACTOR_LOSSES

    job = make_job(prompts_file, tmp_path, "runtime.kind=ray", "runtime.actors=1", "runtime.units_in_flight=2",
                   "runtime.prompts_per_unit=1", "limit=3", "reward.name=helpers_components:dies_on_triangles")
    s = run_job(job)
    recs = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    failed = [r for r in recs if r["status"] == "failed"]
    assert [r["index"] for r in failed] == [2] and s["prompts_ok"] == 2
    assert f"died {MAX_ACTOR_LOSSES} times" in failed[0]["error"] and failed[0]["error_type"]
    assert s["prompts_abandoned_actor_lost"] == 1 and s["actors_restarted"] >= MAX_ACTOR_LOSSES


def _local_and_ray(prompts_file, tmp_path, option: str) -> dict:
    """The same 2-prompt job (one unit) with `option`, once per runtime: {kind: its output folder}."""
    outs = {}
    for kind in ("local", "ray"):
        outs[kind] = tmp_path / kind
        s = run_job(make_job(prompts_file, outs[kind], f"runtime.kind={kind}", option, "limit=2",
                             "runtime.prompts_per_unit=2"))
        assert s["prompts_ok"] == 2
    return outs


def test_ray_writes_the_same_previews_as_local(ray_local, prompts_file, tmp_path):
    """`output.save_previews`: the thumbnails cross from the actor with the final images (UnitImages)."""
    outs = _local_and_ray(prompts_file, tmp_path, "output.save_previews=true")
    names = sorted(p.name for p in (outs["local"] / "previews").iterdir())
    assert names and names == sorted(p.name for p in (outs["ray"] / "previews").iterdir())
    for n in names:
        assert (outs["local"] / "previews" / n).read_bytes() == (outs["ray"] / "previews" / n).read_bytes()
    for i in range(2):
        assert read_outputs(outs["ray"])[i]["trace_json"] == read_outputs(outs["local"])[i]["trace_json"]


def test_ray_writes_the_same_search_data_as_local(ray_local, prompts_file, tmp_path):
    """`output.save_search_data`: the actors report rewards and features at every decision (GroupArrays), the
    driver's coordinator keeps them and its writer stores them: the same arrays as the local runtime."""
    outs = _local_and_ray(prompts_file, tmp_path, "output.save_search_data=true")
    names = sorted(p.name for p in (outs["local"] / "search_data").iterdir())
    assert names == ["00000.npz", "00001.npz"] == sorted(p.name for p in (outs["ray"] / "search_data").iterdir())
    for n in names:
        with np.load(outs["local"] / "search_data" / n) as a, np.load(outs["ray"] / "search_data" / n) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{n}: {k}")
    for i in range(2):
        assert read_outputs(outs["ray"])[i]["trace_json"] == read_outputs(outs["local"])[i]["trace_json"]
