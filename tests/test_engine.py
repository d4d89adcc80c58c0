"""The local engine on the embedded shapes-tiny model: outputs, traces, packing, resume, failures, config."""

import json
import os
from pathlib import Path

import helpers_components  # noqa: F401 - registers the test-pixels features
import numpy as np
import pytest
import torch
from PIL import Image

from search.base import Decision
from ttsvar.config import ConfigError, load_config
from ttsvar.jobs import run_job, search_plan
from ttsvar.output import atomic_write_bytes

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle",
           "a photo of a circle left of a square", "a photo of a green square and a red circle"]
COMMON = ["reward.name=helpers_components:redness", "search.features=test-pixels", "runtime.quiet=true"]


def job(tmp_path, *extra, prompts=PROMPTS, name="out"):
    pfile = tmp_path / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    return load_config(None, [f"prompts={pfile}", f"output.dir={tmp_path / name}", *COMMON, *extra])


def manifest(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def tts_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tts")
    j = job(tmp, "search.strategy=tts-var", "search.n=2", "runtime.prompts_per_unit=2", "output.save_candidates=true")
    return j, run_job(j), Path(j.output.dir)


def test_manifest_images_and_traces(tts_run):
    j, summary, out = tts_run
    recs = manifest(out)
    assert summary["prompts_ok"] == len(PROMPTS) == len(recs) and summary["prompts_failed"] == 0
    assert sorted(r["index"] for r in recs) == list(range(len(PROMPTS)))
    for r in recs:
        for key in ("index", "prompt", "seed", "image", "reward", "compute", "trace", "strategy"):
            assert key in r
        assert r["prompt"] == PROMPTS[r["index"]]
        img = np.array(Image.open(out / r["image"]))
        assert img.shape == (32, 32, 3)
        trace = json.loads((out / r["trace"]).read_text())
        final = trace["decisions"][-1]
        assert final["picked_row"] == r["row_id"]
        rewards = [row["reward"] for row in final["rows"]]
        assert r["reward"] == pytest.approx(max(rewards))
        # the saved image scores (up to PNG rounding) what the manifest says
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        assert float(helpers_components.redness(x, [r["prompt"]])) == pytest.approx(r["reward"], abs=2e-3)
        assert len(r["candidates"]) == search_plan(j, 6)[1].batch_sizes[-1] == 4  # shapes-tiny's defaults: 2n rows


def test_traces_follow_the_batch_schedule(tts_run):
    j, _, out = tts_run
    plan = search_plan(j, 6)[1]  # the model's TTS-VAR defaults under the job's options, as the job ran
    trace = json.loads((out / "traces" / "0.json").read_text())
    scales = [d["scale"] for d in trace["decisions"]]
    assert scales == [*plan.decision_scales, 5]
    for d in trace["decisions"]:
        assert len(d["rows"]) == plan.batch_sizes[d["scale"]]
        if d["scale"] != 5:
            assert sum(row["children"] for row in d["rows"]) == plan.batch_sizes[d["scale"] + 1]
    # every row's parent was alive at the previous decision
    for prev, cur in zip(trace["decisions"], trace["decisions"][1:]):
        alive = {row["row_id"] for row in prev["rows"] if row["kept"]}
        assert {row["parent"] for row in cur["rows"]} <= alive


def test_confidence_prunes_on_the_generators_statistics_without_decoding(tmp_path):
    """The engine hands the generator's free token statistics to the strategy: `confidence` prunes after its
    scales with no preview decode and no reward call; only the final images are scored."""
    j = job(tmp_path, "search.strategy=confidence", "search.n=4", "runtime.prompts_per_unit=2",
            prompts=PROMPTS[:2])
    summary = run_job(j)
    assert summary["prompts_ok"] == 2
    assert summary["compute"]["preview_decodes"] == 0
    for r in manifest(Path(j.output.dir)):
        trace = json.loads((Path(j.output.dir) / r["trace"]).read_text())
        assert trace["batch_sizes"] == [4, 4, 3, 2, 2, 2] and trace["decision_scales"] == [1, 2]
        assert r["compute"]["reward_images"] == 2  # the two final candidates
        for d in trace["decisions"][:-1]:
            assert all(row["entropy"] >= 0 and row["log_prob"] <= 0 for row in d["rows"])
            assert "reward" not in d["rows"][0]


def test_coordinator_keeps_the_strategys_trace_columns():
    """A strategy column the coordinator also writes is kept: once when it says the same (`row_id`,
    `children`), as `strategy.<name>` when it differs (`reward` as the strategy saw it, `kept`)."""
    from search.base import Decision, SearchPlan, Strategy
    from ttsvar.engine import Coordinator, GroupArrays, Report, WorkUnit

    class Echo(Strategy):
        name = "echo"

        def plan(self, num_scales, n):
            return SearchPlan((n, 1), frozenset(), frozenset({0}), (0,))

        def init_group(self, prompt_index, seed):
            return None

        def decide(self, state, obs):
            parents = np.array([1])
            trace = {"row_id": obs.row_ids.tolist(), "children": [0, 1], "reward": obs.rewards.tolist(),
                     "kept": ["no", "yes"], "score": [7, 8]}
            return Decision(parents, trace, {"kind": "echo"})

        def pick(self, state, obs):
            return 0

    strategy = Echo()
    coord = Coordinator(strategy, strategy.plan(2, 2), reward_scale=2.0)
    coord.begin(WorkUnit(0, [4], ["p"], [1]))
    coord.decide(Report(0, 0, False, [GroupArrays(4, np.array([0, 1]), np.array([1.0, 3.0], np.float32), None)],
                        {4: {}}))
    rows = coord.trace(4)["decisions"][0]["rows"]
    assert rows == [
        {"row_id": 0, "parent": None, "reward": 1.0, "children": 0, "kept": False, "strategy.reward": 0.5,
         "strategy.kept": "no", "score": 7},
        {"row_id": 1, "parent": None, "reward": 3.0, "children": 1, "kept": True, "strategy.reward": 1.5,
         "strategy.kept": "yes", "score": 8},
    ]


def test_compute_accounting(tts_run):
    j, summary, out = tts_run
    plan = search_plan(j, 6)[1]
    tokens = [1, 4, 9, 16, 36, 64]
    expected = sum(b * t for b, t in zip(plan.batch_sizes, tokens)) * 2  # CFG doubles the rows
    for r in manifest(out):
        assert r["compute"]["token_forwards"] == expected
        assert 0 < r["compute"]["preview_decodes"] <= sum(plan.batch_sizes[k] for k in plan.decision_scales)
    assert summary["compute"]["token_forwards"] == expected * len(PROMPTS)


def packing_results(out: Path) -> dict[int, tuple]:
    """Per prompt: what a packing must not change (PNG bytes of the image and every candidate, the trace, the
    manifest record without its timings)."""
    res = {}
    for r in manifest(out):
        cands = sorted((out / "candidates").glob(f"{r['index']}_*.png"))
        rec = {k: v for k, v in r.items() if k != "compute"}
        res[r["index"]] = ((out / r["image"]).read_bytes(), [c.read_bytes() for c in cands],
                           (out / r["trace"]).read_text(), json.dumps(rec, sort_keys=True))
    return res


def test_released_memory_changes_no_result(tmp_path, monkeypatch):
    """`runtime.release_memory` (default on) trims the heap once per finished unit; off, it never does; the images,
    candidates and traces are byte-identical either way."""
    import platform

    import ttsvar.engine as E
    from ttsvar.core.memory import can_release_memory, release_free_memory

    if platform.libc_ver()[0] == "glibc":
        assert can_release_memory() and release_free_memory()
    calls = []
    monkeypatch.setattr(E, "release_free_memory", lambda: calls.append(1) or True)
    common = ("search.strategy=tts-var", "search.n=1", "output.save_candidates=true", "runtime.prompts_per_unit=1")
    on = job(tmp_path, *common, prompts=PROMPTS[:2], name="on")
    assert on.runtime.release_memory is True
    run_job(on)
    assert len(calls) == 2  # one unit per prompt
    calls.clear()
    run_job(job(tmp_path, *common, "runtime.release_memory=false", prompts=PROMPTS[:2], name="off"))
    assert calls == []
    assert packing_results(tmp_path / "on") == packing_results(tmp_path / "off")


@pytest.mark.parametrize("mode", ["auto", "false"])
def test_results_do_not_depend_on_packing(tmp_path, mode):
    """One prompt per unit against four per unit with forwards cut into chunks of 5 rows: with the batch-invariant
    mode (the CPU default) every image, candidate and trace is byte-identical. Without it, float rounding that
    depends on the forward's batch can flip a sampled bit (1 of these 5 prompts on the CPU this was written on),
    so only seeds and the compute are compared there."""
    common = ("search.strategy=tts-var", "search.n=2", "output.save_candidates=true",
              f"runtime.batch_invariant={mode}")
    one = job(tmp_path, *common, "runtime.prompts_per_unit=1", name="one")
    four = job(tmp_path, *common, "runtime.prompts_per_unit=4", "runtime.max_rows_per_forward=5", name="four")
    s1, s4 = run_job(one), run_job(four)
    assert s1["prompts_ok"] == s4["prompts_ok"] == len(PROMPTS)
    a, b = packing_results(Path(one.output.dir)), packing_results(Path(four.output.dir))
    assert sorted(a) == sorted(b) == list(range(len(PROMPTS)))
    if mode == "auto":
        for i in a:
            assert a[i] == b[i], f"prompt {i} differs between packings"
    else:
        assert s1["compute"]["token_forwards"] == s4["compute"]["token_forwards"]
        for i in a:
            assert json.loads(a[i][3])["seed"] == json.loads(b[i][3])["seed"]


def test_cheap_previews_run_the_same_schedule_and_refuse_to_resume_a_full_job(tmp_path, tts_run):
    """`runtime.preview=cheap` decodes previews at each decision scale's grid: the same compute in tokens, a
    trace of the same shape, full-size final images; it changes decisions, so it is part of the fingerprint."""
    j_full, s_full, out_full = tts_run
    j = job(tmp_path, "search.strategy=tts-var", "search.n=2", "runtime.prompts_per_unit=2",
            "runtime.preview=cheap")
    s = run_job(j)
    out = Path(j.output.dir)
    assert s["prompts_ok"] == len(PROMPTS) and s["prompts_failed"] == 0
    assert s["compute"]["token_forwards"] == s_full["compute"]["token_forwards"]
    assert 0 < s["compute"]["preview_decodes"] and s["compute"]["time_decode"] > 0
    for r in manifest(out):
        assert np.asarray(Image.open(out / r["image"])).shape == (32, 32, 3)
        ta = json.loads((out / r["trace"]).read_text())
        tb = json.loads((out_full / "traces" / f"{r['index']}.json").read_text())
        assert [(d["scale"], len(d["rows"])) for d in ta["decisions"]] == \
            [(d["scale"], len(d["rows"])) for d in tb["decisions"]]
    with pytest.raises(Exception, match="runtime.preview"):
        run_job(job(tmp_path, "search.strategy=tts-var", "search.n=2", "runtime.prompts_per_unit=2"))
    # a full-preview job keeps the fingerprint it had before the option existed, so its results still resume
    from ttsvar.jobs import job_fingerprint

    assert "runtime.preview" not in job_fingerprint(j_full)
    assert job_fingerprint(j)["runtime.preview"] == "cheap"


@pytest.mark.parametrize("strategy", ["random", "best-of-n", "beam", "fk", "importance", "cluster-only",
                                      "resample-only"])
def test_every_strategy_runs_end_to_end(tmp_path, strategy):
    j = job(tmp_path, f"search.strategy={strategy}", "search.n=2", prompts=PROMPTS[:2])
    s = run_job(j)
    assert s["prompts_ok"] == 2


def test_resume_skips_finished_prompts(tmp_path):
    j = job(tmp_path, "search.strategy=best-of-n", "search.n=2", "limit=2")
    assert run_job(j)["prompts_ok"] == 2
    j2 = job(tmp_path, "search.strategy=best-of-n", "search.n=2")
    s = run_job(j2)
    assert s["prompts_ok"] == 3 and s["skipped_done"] == 2
    recs = manifest(Path(j2.output.dir))
    assert sorted(r["index"] for r in recs) == list(range(5))  # each prompt exactly once


def test_a_torn_manifest_line_is_redone(tmp_path):
    j = job(tmp_path, "search.strategy=random", "limit=2")
    run_job(j)
    mf = Path(j.output.dir) / "manifest.jsonl"
    lines = mf.read_text().splitlines()
    mf.write_text(lines[0] + "\n" + lines[1][:20])  # killed mid-append
    s = run_job(j)
    assert s["prompts_ok"] == 1 and s["skipped_done"] == 1


def test_failing_unit_is_recorded_and_the_job_goes_on(tmp_path):
    j = job(tmp_path, "search.strategy=best-of-n", "search.n=2", "reward.name=helpers_components:failing_on_squares",
            "runtime.prompts_per_unit=1", "runtime.retries=1")
    s = run_job(j)
    recs = {r["index"]: r for r in manifest(Path(j.output.dir))}
    failed = {i for i, r in recs.items() if r["status"] == "failed"}
    assert failed == {1, 3, 4} and s["prompts_failed"] == 3 and s["prompts_ok"] == 2
    assert "refuses squares" in recs[1]["error"]


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"abc")
    assert not target.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- config validation


@pytest.mark.parametrize("override, message", [
    ("search.strategy=nope", "nope"),
    ("search.n=0", "search.n"),
    ("search.options.lam=inf", "search.options.lam"),
    ("search.options.batch_schedule=[1,2,2,2,2,2]", "search.options.batch_schedule"),
    ("search.options.batch_schedule=[8,8,6]", "search.options.batch_schedule"),
    ("search.options.cluster_scales=[9]", "search.options.cluster_scales"),
    ("model.name=nope", "model.name"),
    ("runtime.kind=slurm", "runtime.kind"),
    ("runtime.max_rows_per_forward=0", "runtime.max_rows_per_forward"),
    ("runtime.preview=tiny", "runtime.preview='tiny'"),
    ("runtime.release_memory=sometimes", "release_memory"),
    ("sampling.tau=0", "sampling.tau"),
    ("nonsense.key=1", "nonsense"),
])
def test_config_errors_name_the_field(tmp_path, override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        j = job(tmp_path, override)
        run_job(j)


def test_unknown_reward_lists_the_available_ones(tmp_path):
    with pytest.raises((KeyError, ValueError), match="clip-score"):
        run_job(job(tmp_path, "reward.name=no-such-reward"))


def test_yaml_and_cli_overrides_compose(tmp_path):
    y = tmp_path / "job.yaml"
    y.write_text("search:\n  strategy: beam\n  n: 3\nseed: 5\n")
    j = load_config(y, ["search.n=4", "runtime.quiet=true"])
    assert (j.search.strategy, j.search.n, j.seed, j.runtime.quiet) == ("beam", 4, 5, True)
    assert type(j.search).__name__ == "SearchConfig"  # plain dataclasses, not DictConfig


def test_component_options_come_from_yaml_and_overrides(tmp_path):
    y = tmp_path / "job.yaml"
    y.write_text("model:\n  name: infinity-2b\n  options: {pixels: 0.25M, h_div_w: 0.5}\n"
                 "search:\n  strategy: fk\n  n: 4\n  options: {lam: 2.0, resample_scales: [3, 5]}\n")
    j = load_config(y, ["search.options.ess_threshold=0.3", "model.options.vae_weights=/ckpt/vae.pth"])
    assert j.search.options == {"lam": 2.0, "resample_scales": [3, 5], "ess_threshold": 0.3}
    assert j.model.options == {"pixels": "0.25M", "h_div_w": 0.5, "vae_weights": "/ckpt/vae.pth"}
    assert type(j.search.options) is dict and type(j.search.options["resample_scales"]) is list


def test_legacy_flat_keys_still_work_with_a_warning_naming_the_new_key(tmp_path):
    from ttsvar.config import ConfigDeprecationWarning
    from ttsvar.jobs import job_fingerprint

    y = tmp_path / "old.yaml"
    y.write_text("model: {name: infinity-2b, pixels: 0.25M, vae_weights: /ckpt/vae.pth}\n"
                 "search: {strategy: fk, n: 4, lam: 2.0}\n")
    with pytest.warns(ConfigDeprecationWarning, match=r"search.lam is deprecated: use search.options.lam"):
        old = load_config(y, ["search.ess_threshold=0.3"])
    with pytest.warns(ConfigDeprecationWarning, match=r"model.pixels is deprecated: use model.options.pixels"):
        load_config(y)
    new = load_config(None, ["model.name=infinity-2b", "model.options.pixels=0.25M",
                             "model.options.vae_weights=/ckpt/vae.pth", "search.strategy=fk", "search.n=4",
                             "search.options={lam: 2.0, ess_threshold: 0.3}"])
    assert old.search.options == new.search.options == {"lam": 2.0, "ess_threshold": 0.3}
    assert old.model.options == new.model.options
    # the same job for resume; the flat names of the old layout are kept, so job.json files written before resume
    fp = job_fingerprint(old)
    assert fp == job_fingerprint(new)
    assert (fp["search.lam"], fp["search.ess_threshold"], fp["search.beam_width"]) == (2.0, 0.3, None)
    assert (fp["model.pixels"], fp["model.h_div_w"], fp["model.text_encoder"]) == ("0.25M", 1.0, None)
    # an old key left at its old default for a strategy that never read it had no effect, and still has none
    with pytest.warns(ConfigDeprecationWarning):
        j = load_config(None, ["search.strategy=best-of-n", "search.lam=10.0", "model.h_div_w=1.0"])
    assert j.search.options == {} and j.model.options == {}


def test_resume_accepts_the_new_style_equivalent_of_an_old_style_job(tmp_path):
    with pytest.warns(DeprecationWarning):
        old = job(tmp_path, "search.strategy=importance", "search.n=2", "search.lam=3.0", prompts=PROMPTS[:1])
    assert run_job(old)["prompts_ok"] == 1
    new = job(tmp_path, "search.strategy=importance", "search.n=2", "search.options.lam=3", prompts=PROMPTS[:2])
    s = run_job(new)
    assert (s["skipped_done"], s["prompts_ok"]) == (1, 1)


def test_an_edited_prompt_is_redone(tmp_path):
    j = job(tmp_path, "search.strategy=random", prompts=PROMPTS[:2])
    run_job(j)
    j2 = job(tmp_path, "search.strategy=random", prompts=[PROMPTS[0], "a photo of three circles"])
    s = run_job(j2)
    assert s["prompts_ok"] == 1 and s["skipped_done"] == 1
    from ttsvar.output import OutputDir

    assert OutputDir(j2.output.dir).done()[1]["prompt"] == "a photo of three circles"


# ---------------------------------------------------------------------------- the failure policy (both runtimes)


def test_the_coordinator_owns_the_retry_policy():
    from search.registry import create_strategy
    from ttsvar.engine import Action, Coordinator, WorkUnit

    strategy = create_strategy("best-of-n")
    coord = Coordinator(strategy, strategy.plan(4, 2), retries=1, next_unit_id=10, max_losses=2)
    unit = WorkUnit(3, [0, 1], ["a", "b"], [5, 6])
    coord.begin(unit)
    v = coord.fail(unit, RuntimeError("boom"))
    assert v.action is Action.SPLIT and [u.unit_id for u in v.units] == [10, 11] and coord.next_unit_id == 12
    assert [(u.prompt_indices, u.seeds) for u in v.units] == [([0], [5]), ([1], [6])]
    assert not coord.groups  # the unit's search state is forgotten
    single = v.units[0]
    assert coord.fail(single, MemoryError()).action is Action.RETRY  # transient, 1st failure, retries=1
    last = coord.fail(single, MemoryError())
    assert (last.action, last.attempts) == (Action.ABANDON, 2)
    assert coord.fail(v.units[1], ValueError("bad prompt")).action is Action.ABANDON  # never transient
    other = WorkUnit(12, [2], ["c"], [7])
    assert coord.fail(other, ValueError("x"), transient=True).action is Action.RETRY  # the caller knows better
    assert coord.lost(single).action is Action.RETRY
    assert coord.lost(single, alone=False).action is Action.RETRY  # it shared the actor: not blamed
    assert coord.lost(single).action is Action.ABANDON  # max_losses=2, both alone
    pair = coord.lost(WorkUnit(13, [3, 4], ["d", "e"], [8, 9]))  # any of its prompts may be what killed it
    assert pair.action is Action.SPLIT and [u.prompt_indices for u in pair.units] == [[3], [4]]


def test_a_selection_frees_the_rows_it_drops_before_the_next_step(tmp_path, monkeypatch):
    """The caches before a selection hold the KV blocks of the rows it dropped; the worker lets them go before it
    steps on (it kept them until the next decision; docs/benchmarks.md, memory during a run)."""
    import gc
    import weakref

    from ttsvar.models.infinity.generator import InfinityGenerator

    before_select: list[weakref.ref] = []
    alive_at_step: list[bool] = []
    select, step = InfinityGenerator.select, InfinityGenerator.step

    def tracked_select(self, state, *args, **kwargs):
        if state.caches is not None:
            before_select.append(weakref.ref(state.caches))
        return select(self, state, *args, **kwargs)

    def tracked_step(self, state):
        gc.collect()
        alive_at_step.extend(r() is not None for r in before_select)
        before_select.clear()
        return step(self, state)

    monkeypatch.setattr(InfinityGenerator, "select", tracked_select)
    monkeypatch.setattr(InfinityGenerator, "step", tracked_step)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a red circle\na photo of two blue squares\n")
    run_job(load_config(None, [f"prompts={prompts}", f"output.dir={tmp_path / 'out'}", "runtime.quiet=true",
                               "model.name=infinity-tiny-random", "search.strategy=tts-var", "search.n=2",
                               "search.features=test-pixels", "reward.name=helpers_components:ScaledRedness"]))
    assert alive_at_step and not any(alive_at_step)


@pytest.mark.parametrize("what, bad, says", [
    ("pick", lambda self, state, obs: -1, "pick returned -1: it must be the position of a final row"),
    ("pick", lambda self, state, obs: 0.5, "pick returned 0.5"),
    ("decide", lambda self, state, obs: Decision(np.arange(state.plan.batch_sizes[obs.scale + 1]) + 0.9, {}),
     "must be integer positions"),
    ("decide", lambda self, state, obs: Decision(np.zeros(obs.num_rows + 3, dtype=np.int64), {}),
     "returned 11 parents"),
])
def test_a_strategy_that_breaks_its_contract_fails_its_prompts_loudly(tmp_path, monkeypatch, what, bad, says):
    """Not silently: a negative pick used to save another prompt's image, extra parents to run rows the plan (and
    the memory check) never counted."""
    from search.strategies.tts_var import TTSVar

    monkeypatch.setattr(TTSVar, what, bad)
    s = run_job(job(tmp_path, "search.strategy=tts-var", "search.n=2", prompts=PROMPTS[:2]))
    assert (s["prompts_ok"], s["prompts_failed"]) == (0, 2)
    assert all(says in r["error"] for r in manifest(tmp_path / "out")), manifest(tmp_path / "out")[0]["error"]


def test_a_prebuilt_generator_runs_with_the_jobs_sampling(tmp_path):
    from ttsvar.models.registry import create_generator

    gen = create_generator("shapes-tiny")  # its own default: cfg 3
    j = job(tmp_path, "model.name=shapes-tiny", "search.strategy=random", "search.n=1", "sampling.cfg=1.0",
            prompts=PROMPTS[:1])
    run_job(j, generator=gen)
    assert gen.cfg_list == [1.0] * gen.num_scales
    own = job(tmp_path, "model.name=shapes-tiny", "search.strategy=random", "search.n=1", "sampling.cfg=1.0",
              prompts=PROMPTS[:1], name="own")
    run_job(own)  # the same job building its own generator draws the same image
    assert (tmp_path / "out" / "images" / "00000.png").read_bytes() == \
        (tmp_path / "own" / "images" / "00000.png").read_bytes()


@pytest.mark.parametrize("bad, says", [
    (lambda self, images: torch.zeros(len(images) - 1, self.dim), "must return [images, 192]"),  # a row short
    (lambda self, images: torch.zeros(len(images), 3), "of shape ("),  # not its declared width
])
def test_a_feature_extractor_of_the_wrong_shape_fails_its_prompts_loudly(tmp_path, monkeypatch, bad, says):
    from rewards.features import create_features

    PixelFeatures = type(create_features("test-pixels"))
    monkeypatch.setattr(PixelFeatures, "features", bad)
    s = run_job(job(tmp_path, "search.strategy=tts-var", "search.n=1", "runtime.prompts_per_unit=1",
                    prompts=PROMPTS[:1]))
    assert s["prompts_failed"] == 1 and "feature extractor" in manifest(tmp_path / "out")[0]["error"]
    assert says in manifest(tmp_path / "out")[0]["error"]
