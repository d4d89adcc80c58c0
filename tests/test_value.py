"""The learned value (issue 14, part 1): search data written by the engine, `ttsvar fit-value`, the `learned`
potential and the `value` strategy, strict value files. One tiny shapes-tiny run (2 prompts, tts-var n=2) is
shared by the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from search import Observation, create_strategy
from search.value import load_value
from ttsvar.cli import main
from ttsvar.config import load_config
from ttsvar.core.errors import ConfigError, ResumeError
from ttsvar.jobs import run_job
from ttsvar.testbed import world
from ttsvar.testing import write_value_file
from ttsvar.value import load_search_data, run_fit_value, within_prompt

PROMPTS = world.eval_prompts(1, seed=0, split="train")[:3]  # GenEval metadata: the exact evaluator judges them
KEYS = {"scale", "row_id", "parent", "children", "features", "reward", "log_prob", "entropy", "final_mean",
        "final_max", "final_count", "final_row_id", "final_reward", "final_ancestor", "picked", "prompt_index",
        "seed", "num_scales", "reward_scale"}


def job(tmp, out, *extra):
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in PROMPTS))
    return load_config(None, [f"prompts={prompts}", f"output.dir={out}", "search.n=2", "runtime.quiet=true",
                              "runtime.prompts_per_unit=3", "seed=5", *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same job without and with `output.save_search_data` (and candidates)."""
    tmp = tmp_path_factory.mktemp("value")
    plain, data = tmp / "plain", tmp / "data"
    run_job(job(tmp, plain))
    run_job(job(tmp, data, "output.save_search_data=true", "output.save_candidates=true"))
    return tmp, plain, data


def test_search_data_holds_every_decision_row_and_its_descendants(runs):
    _, plain, data = runs
    for i in range(len(PROMPTS)):
        trace = json.loads((data / "traces" / f"{i}.json").read_text())
        # the strategy saw what it sees without search data: the same trace and image
        assert trace == json.loads((plain / "traces" / f"{i}.json").read_text())
        assert (data / "images" / f"{i:05d}.png").read_bytes() == (plain / "images" / f"{i:05d}.png").read_bytes()
        with np.load(data / "search_data" / f"{i:05d}.npz") as z:
            d = {k: z[k] for k in z.files}
        assert set(d) == KEYS
        decisions = [e for e in trace["decisions"] if e["info"]["kind"] != "final"]
        final = trace["decisions"][-1]
        N = sum(len(e["rows"]) for e in decisions)
        assert d["features"].shape == (N, 64) and np.isfinite(d["features"]).all()  # shapes-clip, every decision
        assert np.isfinite(d["reward"]).all() and np.isfinite(d["entropy"]).all()  # scored at every decision
        assert d["scale"].tolist() == [e["scale"] for e in decisions for _ in e["rows"]]
        assert d["row_id"].tolist() == [r["row_id"] for e in decisions for r in e["rows"]]
        assert d["parent"].tolist() == [-1 if r["parent"] is None else r["parent"] for e in decisions
                                        for r in e["rows"]]
        assert d["children"].tolist() == [r["children"] for e in decisions for r in e["rows"]]
        # where the trace has a reward, it is the stored raw reward
        for j, r in enumerate(r for e in decisions for r in e["rows"]):
            if "reward" in r:
                assert r["reward"] == pytest.approx(float(d["reward"][j]))
        assert d["final_reward"].tolist() == pytest.approx([r["reward"] for r in final["rows"]])
        assert int(d["picked"]) == final["picked_position"] and int(d["reward_scale"] > 0)
        # lineage: each final row's ancestor at decision t+1 is a child of its ancestor at decision t
        anc = d["final_ancestor"]
        for j in range(len(d["final_row_id"])):
            for t in range(anc.shape[1] - 1):
                assert d["parent"][anc[j, t + 1]] == d["row_id"][anc[j, t]]
                assert d["scale"][anc[j, t]] == decisions[t]["scale"]
            assert final["rows"][j]["parent"] == d["row_id"][anc[j, -1]]
        # descendants' outcome, by brute force over the final rows
        for n in range(N):
            mine = [j for j in range(anc.shape[0]) if n in anc[j]]
            assert d["final_count"][n] == len(mine) == (0 if not mine else len(mine))
            if mine:
                assert d["final_mean"][n] == pytest.approx(d["final_reward"][mine].mean())
                assert d["final_max"][n] == pytest.approx(d["final_reward"][mine].max())
            else:
                assert np.isnan(d["final_mean"][n])


def test_fit_value_lowers_the_loss_and_writes_a_strictly_loadable_file(runs, capsys):
    tmp, _, data = runs
    out = tmp / "v" / "value.safetensors"
    assert main(["fit-value", str(data), "-o", str(out), "--threads", "1", "--epochs", "150"]) == 0
    printed = capsys.readouterr().out
    assert "rho V_k" in printed and "value:" in printed
    vm = load_value(out)
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["features"] == "shapes-clip" and cfg["reward"] == "shapes-reward" and vm.feature_dim == 64
    assert set(cfg["metrics"]["scales"]) == {str(k) for k in vm.scales} and vm.scales
    for e in cfg["metrics"]["scales"].values():
        assert e["train_loss_last"] < e["train_loss_first"]
    # verdicts of every final candidate, by the exact evaluator
    res = run_fit_value([str(data)], str(tmp / "v" / "verdict.safetensors"), target="verdict", epochs=50, threads=1)
    assert load_value(res["path"]).output == "sigmoid"
    d = load_search_data([data], "verdict")
    assert set(np.unique(d.y)) <= set(np.linspace(0, 1, 5)) and len(d.y) == len(load_search_data([data]).y)


def test_fit_value_refuses_bad_arguments_and_files_in_one_line(runs, tmp_path, capsys):
    _, _, data = runs
    out = str(tmp_path / "v.safetensors")
    for args, match in (((str(data), "-o", out, "--epochs", "0"), "--epochs 0: must be an integer >= 1"),
                        ((str(data), "-o", out, "--hidden", "0"), "--hidden 0: must be an integer >= 1"),
                        ((str(data), "-o", out, "--threads", "0"), "--threads 0: must be an integer >= 1"),
                        ((str(data), str(data), "-o", out), "given twice"),
                        ((str(data), "-o", str(tmp_path)), "is a folder; give the value file's path"),
                        ((str(data), "-o", "/proc/v.safetensors"), "/proc/v.safetensors: cannot write the value")):
        assert main(["fit-value", *args]) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    bad = tmp_path / "run"
    shutil.copytree(data, bad)
    victim = sorted((bad / "search_data").glob("*.npz"))[0]
    victim.write_bytes(b"not a zip")
    assert main(["fit-value", str(bad), "-o", out]) == 2
    assert f"{victim.name}: not a readable search-data file" in capsys.readouterr().err
    np.savez(victim, prompt_index=np.int64(0))  # a npz, but not ours
    assert main(["fit-value", str(bad), "-o", out]) == 2
    assert "not a search-data file of ttsvar (no reward_scale" in capsys.readouterr().err


def test_learned_potential_and_value_strategy_run_end_to_end(runs):
    tmp, _, data = runs
    value = write_value_file(tmp / "rand" / "value.safetensors", feature_dim=64, scales=[1, 2, 3, 4])
    s = run_job(job(tmp, tmp / "learned", "search.options.potential=learned", f"search.options.value={value}"))
    assert s["prompts_ok"] == len(PROMPTS)
    trace = json.loads((tmp / "learned" / "traces" / "0.json").read_text())
    resample = [e for e in trace["decisions"] if e["info"]["kind"] == "resample"]
    assert resample and all("value" in r for e in resample for r in e["rows"])
    for coarse in ("cluster", "top"):
        out = tmp / f"value-{coarse}"
        s = run_job(job(tmp, out, "search.strategy=value", f"search.options.value={value}",
                        f"search.options.coarse={coarse}"))
        assert s["prompts_ok"] == len(PROMPTS)
        first = json.loads((out / "traces" / "0.json").read_text())["decisions"][0]
        assert all("value" in r for r in first["rows"])
    # a value file fitted again at the same path is another configuration: the resume is refused
    again = job(tmp, tmp / "value-top", "search.strategy=value", f"search.options.value={value}",
                "search.options.coarse=top")
    assert run_job(again)["skipped_done"] == len(PROMPTS)
    write_value_file(value, feature_dim=64, scales=[1, 2, 3, 4], seed=1)
    with pytest.raises(ResumeError, match="search.value_sha256"):
        run_job(again)


def test_value_strategy_needs_its_file_and_a_matching_feature_dimension(runs, capsys):
    tmp, _, _ = runs
    with pytest.raises(ConfigError, match=r"search\.options\.value: the value strategy needs"):
        job(tmp, tmp / "x", "search.strategy=value")
    with pytest.raises(ConfigError, match=r"search\.options\.value: potential 'learned' needs"):
        job(tmp, tmp / "x", "search.options.potential=learned")
    with pytest.raises(ConfigError, match="search.options.potential: 'learned' needs a value file"):
        job(tmp, tmp / "x", "search.strategy=fk", "search.options.potential=learned")
    wrong = write_value_file(tmp / "dim8" / "value.safetensors", feature_dim=8, scales=[1, 2])
    with pytest.raises(ConfigError, match="fitted on 8-d features.*gives 64-d"):
        run_job(job(tmp, tmp / "x", "search.strategy=value", f"search.options.value={wrong}"))
    assert main(["run", f"prompts={tmp / 'prompts.jsonl'}", f"output.dir={tmp / 'x'}", "search.strategy=value"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.options.value" in err[0]


@pytest.mark.parametrize("fitted, match", [
    ({"model": "shapes-var-tiny"}, "fitted on runs of model 'shapes-var-tiny', but this job uses 'shapes-tiny'"),
    ({"reward": "shapes-clip"}, "fitted on runs of reward 'shapes-clip', but this job uses 'shapes-reward'"),
    ({"features": "dinov2"}, "fitted on runs of features 'dinov2', but this job uses 'shapes-clip'"),
    ({"reward_scale": 4.4}, "fitted on rewards in units of 4.4, but this job's reward scale is"),
])
def test_a_value_fitted_for_another_model_reward_or_features_is_refused(runs, fitted, match):
    tmp, _, _ = runs
    other = write_value_file(tmp / "other" / "value.safetensors", feature_dim=64, scales=[1, 2, 3, 4], **fitted)
    with pytest.raises(ConfigError, match=match):
        run_job(job(tmp, tmp / "x", "search.strategy=value", f"search.options.value={other}"))


def test_fit_value_pools_one_model_and_leaves_out_stale_search_data(runs, tmp_path, capsys, caplog):
    _, _, data = runs
    other = tmp_path / "other"
    shutil.copytree(data, other)
    meta = json.loads((other / "job.json").read_text())
    meta["fingerprint"]["model.name"] = "shapes-var-tiny"
    (other / "job.json").write_text(json.dumps(meta))
    assert main(["fit-value", str(data), str(other), "-o", str(tmp_path / "v.safetensors")]) == 2
    assert "model = 'shapes-var-tiny', but earlier runs have 'shapes-tiny'" in capsys.readouterr().err
    # a prompt redone without search data: its old file is not its record's, and is left out with a warning
    stale = tmp_path / "stale"
    shutil.copytree(data, stale)
    recs = [json.loads(x) for x in (stale / "manifest.jsonl").read_text().splitlines()]
    recs[0]["reward"] += 1.0
    (stale / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    full = load_search_data([data])
    assert len(set(load_search_data([stale]).group.tolist())) == len(set(full.group.tolist())) - 1
    assert "left out 1 search-data file(s)" in caplog.text
    fitted = run_fit_value([str(data)], str(tmp_path / "w.safetensors"), epochs=2)
    assert json.loads(Path(fitted["json"]).read_text())["model"] == "shapes-tiny"  # checked when the job uses it


def test_fit_value_arguments_that_would_lose_the_fit_are_refused(runs, tmp_path, capsys):
    _, _, data = runs
    assert main(["fit-value", str(data), "-o", str(tmp_path / "value.json")]) == 2
    assert "give the weights' path, e.g." in capsys.readouterr().err and not (tmp_path / "value.json").exists()
    assert main(["fit-value", str(tmp_path / "nope"), "-o", str(tmp_path / "v.safetensors")]) == 2
    assert "run folder" in capsys.readouterr().err
    assert main(["fit-value", str(data), "-o", str(tmp_path / "v.safetensors"), "--threads", "1000000",
                 "--epochs", "2"]) == 0  # capped at the machine's cores


def test_non_finite_inputs_become_the_mean(runs):
    from ttsvar.value import fit_value

    _, _, data = runs
    d = load_search_data([data])
    col = d.x.shape[1] - 3  # the scale-k reward
    clean = fit_value(d, epochs=2)[0]
    d.x[np.flatnonzero(d.scale == d.scale.max())[0], col] = np.inf
    dirty = fit_value(d, epochs=2)[0]
    k = int(d.scale.max())
    assert dirty[k]["norm"]["std"][col] > 0 and dirty[k]["norm"]["std"][col] != 1.0
    assert abs(dirty[k]["norm"]["mean"][col] - clean[k]["norm"]["mean"][col]) < 5 * clean[k]["norm"]["std"][col]


def _break(path, how):
    cfg_path = path.with_suffix(".json")
    cfg = json.loads(cfg_path.read_text())
    if how == "no json":
        cfg_path.unlink()
    elif how == "missing key":
        del cfg["norm"]
        cfg_path.write_text(json.dumps(cfg))
    elif how == "wrong dimension":
        cfg["feature_dim"] = 9  # the norm stats agree, the weights do not
        for k in cfg["norm"]:
            cfg["norm"][k].update(mean=[0.0] * 12, std=[1.0] * 12)
        cfg_path.write_text(json.dumps(cfg))
    elif how == "missing tensor":
        cfg["scales"] = cfg["scales"] + [7]
        cfg["norm"]["7"] = cfg["norm"]["1"]
        cfg_path.write_text(json.dumps(cfg))
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "bad format":
        cfg["format"] = "something/2"
        cfg_path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("how,match", [("no json", "value.json is missing"), ("missing key", "has no 'norm'"),
                                       ("wrong dimension", r"expected \(4, 12\)"),
                                       ("missing tensor", r"missing keys \['scale7"),
                                       ("truncated", "cannot be read as safetensors"),
                                       ("bad format", "not a value config")])
def test_bad_value_files_are_refused_with_one_line_naming_the_file(tmp_path, how, match):
    path = write_value_file(tmp_path / "value.safetensors", feature_dim=8, scales=[1, 2])
    _break(path, how)
    with pytest.raises(ValueError, match=match) as e:
        create_strategy("value", value=str(path))
    assert str(e.value).startswith(f"value: {path}") and "\n" not in str(e.value)


def test_value_model_forward_matches_a_float64_reference(tmp_path):
    path = write_value_file(tmp_path / "value.safetensors", feature_dim=8, scales=[2], hidden=5)
    vm = load_value(path)
    rng = np.random.default_rng(0)
    obs = Observation(2, 6, np.arange(6), rng.normal(size=6).astype(np.float32),
                      rng.normal(size=(6, 8)).astype(np.float32), -rng.gamma(2, size=6), rng.gamma(2, size=6))
    from safetensors.numpy import load_file

    t = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
    x = np.concatenate([obs.features, np.stack([obs.rewards, obs.log_prob, obs.entropy], 1)], 1).astype(np.float64)
    ref = np.maximum(x @ t["scale2.0.weight"].T + t["scale2.0.bias"], 0) @ t["scale2.1.weight"].T + t["scale2.1.bias"]
    assert np.allclose(vm.predict(obs), ref[:, 0], atol=1e-12)
    with pytest.raises(ValueError, match="fitted on 8-d features"):
        vm.predict(Observation(2, 6, np.arange(6), obs.rewards, np.zeros((6, 4), np.float32)))


def test_within_prompt_rank_correlation_and_concordance():
    group = np.array([0, 0, 0, 1, 1, 2, 2])
    target = np.array([0.0, 1.0, 2.0, 1.0, 1.0, 0.0, 1.0])  # group 1: constant target, skipped
    good = within_prompt(np.array([1.0, 2.0, 3.0, 5.0, 0.0, 0.0, 1.0]), target, group)
    assert [g for g, _, _ in good.pop("per_group")] == [0, 2]
    assert good == pytest.approx({"rho": 1.0, "concordance": 1.0, "groups": 2})
    flat = within_prompt(np.zeros(7), target, group)
    assert flat == {"rho": 0.0, "concordance": 0.5, "groups": 2, "per_group": [(0, 0.0, 0.5), (2, 0.0, 0.5)]}
