"""Search strategies: a common contract test over every registered strategy, then per-strategy specifications
on synthetic features and rewards (numpy only, no models)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from scipy import stats

from search import Observation, SearchPlan, create_strategy, list_strategies
from search.base import RNG_RESAMPLE, group_rng
from search.potentials import normalize_log_weights, resample
from ttsvar.testing import strategy_options

F_DIM = 8


def observe(plan: SearchPlan, scale: int, data_seed: int, rows: np.ndarray, final: bool = False):
    """The engine's side of one group: features/rewards only where the plan asks, from (data_seed, scale)."""
    rng = np.random.default_rng([data_seed, scale])
    n = len(rows)
    rewards = rng.normal(size=n).astype(np.float32) if final or scale in plan.reward_scales else None
    features = rng.normal(size=(n, F_DIM)).astype(np.float32) if scale in plan.feature_scales else None
    log_prob = -rng.gamma(2.0, size=n).astype(np.float32)  # the generator's free per-row token statistics
    entropy = rng.gamma(2.0, size=n).astype(np.float32)
    return Observation(scale, plan.num_scales, rows, rewards, features, log_prob, entropy)


def run_group(strategy, plan: SearchPlan, seed: int, data_seed: int, steps=None):
    """Drive one group through all decisions; returns (list of parents, final pick). `steps` collects
    (state, obs, decision) triples when given."""
    state = strategy.init_group(prompt_index=data_seed, seed=seed)
    rows = np.arange(plan.batch_sizes[0])
    history = []
    for s in plan.decision_scales:
        obs = observe(plan, s, data_seed, rows)
        d = strategy.decide(state, obs)
        history.append(d.parents.copy())
        if steps is not None:
            steps.append((state, obs, d))
        rows = rows[d.parents]
    final = observe(plan, plan.num_scales - 1, data_seed, rows, final=True)
    return history, strategy.pick(state, final)


CASES = [(6, 1), (10, 2), (13, 3)]


def make(name: str):
    """The registered strategy with its defaults, plus what it cannot run without (a value file for `value`)."""
    return create_strategy(name, **strategy_options(name, F_DIM))


@pytest.mark.parametrize("num_scales,n", CASES)
@pytest.mark.parametrize("name", list_strategies())
class TestEveryStrategy:
    """The engine contract, for every registered strategy."""

    def test_plan_is_valid(self, name, num_scales, n):
        plan = make(name).plan(num_scales, n)
        assert isinstance(plan, SearchPlan) and plan.num_scales == num_scales
        assert all(b >= 1 for b in plan.batch_sizes)
        assert list(plan.batch_sizes) == sorted(plan.batch_sizes, reverse=True)  # never grows
        assert all(0 <= k <= num_scales - 2 for k in plan.decision_scales)
        assert plan.feature_scales | plan.reward_scales <= set(plan.decision_scales)

    def test_decisions_have_the_planned_shape(self, name, num_scales, n):
        strategy = make(name)
        plan = strategy.plan(num_scales, n)
        steps = []
        _, best = run_group(strategy, plan, seed=5, data_seed=11, steps=steps)
        assert [obs.scale for _, obs, _ in steps] == list(plan.decision_scales)
        for _, obs, d in steps:
            assert d.parents.dtype == np.int64
            assert d.parents.shape == (plan.batch_sizes[obs.scale + 1],)
            assert d.parents.min() >= 0 and d.parents.max() < obs.num_rows
            assert all(len(v) == obs.num_rows for v in d.trace.values())
            json.dumps({"trace": d.trace, "info": d.info}, allow_nan=False)
        assert 0 <= best < plan.final_batch

    def test_same_seed_same_result(self, name, num_scales, n):
        strategy = make(name)
        plan = strategy.plan(num_scales, n)
        a = run_group(strategy, plan, seed=3, data_seed=7)
        other = make(name)
        b = run_group(other, other.plan(num_scales, n), seed=3, data_seed=7)
        assert _same(a, b)

    def test_state_survives_pickling(self, name, num_scales, n):
        strategy = make(name)
        plan = strategy.plan(num_scales, n)
        expected = run_group(strategy, plan, seed=2, data_seed=4)
        # Replay with the state round-tripped through pickle before every call, as between processes.
        state = strategy.init_group(4, 2)
        rows, parents = np.arange(plan.batch_sizes[0]), []
        for s in plan.decision_scales:
            state = pickle.loads(pickle.dumps(state))
            d = pickle.loads(pickle.dumps(strategy)).decide(state, observe(plan, s, 4, rows))
            parents.append(d.parents)
            rows = rows[d.parents]
        state = pickle.loads(pickle.dumps(state))
        best = strategy.pick(state, observe(plan, num_scales - 1, 4, rows, final=True))
        assert _same(expected, (parents, best))

    def test_groups_do_not_interfere(self, name, num_scales, n):
        strategy = make(name)
        plan = strategy.plan(num_scales, n)
        alone = run_group(strategy, plan, seed=9, data_seed=1)
        # Interleave group A with another group B decision by decision.
        sa, sb = strategy.init_group(1, 9), strategy.init_group(2, 10)
        ra, rb = np.arange(plan.batch_sizes[0]), np.arange(plan.batch_sizes[0])
        parents = []
        for s in plan.decision_scales:
            db = strategy.decide(sb, observe(plan, s, 2, rb))
            da = strategy.decide(sa, observe(plan, s, 1, ra))
            parents.append(da.parents)
            ra, rb = ra[da.parents], rb[db.parents]
        best = strategy.pick(sa, observe(plan, num_scales - 1, 1, ra, final=True))
        assert _same(alone, (parents, best))

    def test_wrong_observations_are_refused(self, name, num_scales, n):
        strategy = make(name)
        plan = strategy.plan(num_scales, n)
        state = strategy.init_group(0, 0)
        wrong_rows = np.arange(plan.batch_sizes[0] + 1)
        with pytest.raises(ValueError, match="live rows"):
            if plan.decision_scales:
                strategy.decide(state, observe(plan, plan.decision_scales[0], 0, wrong_rows))
            else:
                strategy.pick(state, observe(plan, num_scales - 1, 0, wrong_rows, final=True))
        with pytest.raises(ValueError, match="last scale"):
            strategy.pick(state, Observation(0, num_scales, np.arange(plan.final_batch),
                                             np.zeros(plan.final_batch), None))


def _same(a, b) -> bool:
    return len(a[0]) == len(b[0]) and all(np.array_equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]


def test_plan_before_init_group_is_required():
    with pytest.raises(RuntimeError, match="plan"):
        create_strategy("tts-var").init_group(0, 0)


# ---------------------------------------------------------------- TTS-VAR schedule (official run.bash facts)


def test_tts_var_default_plan_matches_the_official_run():
    plan = create_strategy("tts-var").plan(13, 1)
    # bs_sis 8 8 6 6 6 4 2 2 2 1 1 1 1 = rows kept after each scale -> rows generating each scale:
    assert plan.batch_sizes == (8, 8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1)
    assert plan.feature_scales == {2, 5} and plan.reward_scales == {6, 9}
    assert plan.decision_scales == (2, 5, 6, 9)
    assert create_strategy("tts-var").plan(13, 4).batch_sizes == tuple(4 * b for b in plan.batch_sizes)


@pytest.mark.parametrize("num_scales,cluster,resample,sizes", [
    (10, {1, 4}, {5, 7}, (8, 8, 6, 6, 6, 4, 2, 2, 1, 1)),
    (6, {1, 2}, {3, 4}, (8, 8, 6, 4, 2, 1)),
])
def test_tts_var_schedule_adapts_to_other_scale_counts(num_scales, cluster, resample, sizes):
    plan = create_strategy("tts-var").plan(num_scales, 1)
    assert plan.feature_scales == cluster and plan.reward_scales == resample and plan.batch_sizes == sizes


def test_ablations_skip_the_disabled_reductions_like_the_official_code():
    cluster_only = create_strategy("cluster-only").plan(13, 1)
    assert cluster_only.batch_sizes == (8, 8, 8, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4)
    assert cluster_only.reward_scales == frozenset()
    resample_only = create_strategy("resample-only").plan(13, 1)
    assert resample_only.batch_sizes == (8,) * 7 + (2,) * 3 + (1,) * 3
    assert resample_only.feature_scales == frozenset()


def test_tts_var_rejects_a_no_op_cluster_decision():
    with pytest.raises(ValueError, match="cluster_scales: clustering after scale 3 keeps all"):
        create_strategy("tts-var", cluster_scales=[2, 3]).plan(13, 1)  # 8 -> 6 after 2, 6 -> 6 after 3


def test_too_few_scales_for_the_default_decisions():
    with pytest.raises(ValueError, match="do not fit into 5 scales"):
        create_strategy("tts-var").plan(5, 1)
    strategy = create_strategy("tts-var", batch_schedule=[4, 2, 1, 1], cluster_scales=[1],
                               resample_scales=[2])
    plan = strategy.plan(4, 1)
    assert plan.batch_sizes == (4, 4, 2, 1)


# ---------------------------------------------------------------- clustering decision


def blob_features(rng, centers: np.ndarray, members: list[int], spread: float = 0.05):
    labels = np.repeat(np.arange(len(centers)), members)
    rng.shuffle(labels)
    feats = centers[labels] + spread * rng.normal(size=(len(labels), centers.shape[1]))
    return feats.astype(np.float32), labels


def test_cluster_keeps_the_member_nearest_to_each_centroid():
    strategy = create_strategy("tts-var")
    strategy.plan(13, 1)
    rng = np.random.default_rng(0)
    centers = 10.0 * np.eye(6, F_DIM)
    for seed in range(5):
        feats, labels = blob_features(rng, centers, [3, 1, 1, 1, 1, 1])  # 8 rows, 6 well separated blobs
        state = strategy.init_group(0, seed)
        d = strategy.decide(state, Observation(2, 13, np.arange(8), None, feats))
        assert sorted(labels[d.parents]) == list(range(6))  # one representative per blob
        for p in d.parents:
            same = np.flatnonzero(labels == labels[p])
            centroid = feats[same].astype(np.float64).mean(0)
            dist = np.linalg.norm(feats[same] - centroid, axis=1)
            assert p == same[np.argmin(dist)]
        assert d.trace["representative"] == [i in set(d.parents.tolist()) for i in range(8)]
        assert sum(d.trace["children"]) == 6 and max(d.trace["children"]) == 1


def test_cluster_history_follows_the_representatives():
    strategy = create_strategy("tts-var", batch_schedule=[4, 4, 2, 2, 1], cluster_scales=[2],
                               resample_scales=[0, 3], potential="sum")
    plan = strategy.plan(5, 1)
    state = strategy.init_group(0, 1)
    strategy.decide(state, Observation(0, 5, np.arange(4), np.array([1, 2, 3, 4], np.float32), None))
    lineage = state.past_rewards[:, 0].copy()
    feats = np.eye(4, F_DIM, dtype=np.float32) * 10
    d = strategy.decide(state, Observation(2, 5, np.arange(4), None, feats))
    np.testing.assert_array_equal(state.past_rewards[:, 0], lineage[d.parents])
    assert plan.batch_sizes == (4, 4, 4, 2, 2)


# ---------------------------------------------------------------- resampling decision


def test_resampling_frequencies_follow_the_value_potential():
    lam, rewards = 10.0, np.array([0.0, 0.05, 0.1, 0.2], np.float32)
    expected = normalize_log_weights(lam * rewards.astype(np.float64))
    strategy = create_strategy("importance", resample_scales=[0], lam=lam)
    plan = strategy.plan(2, 4)
    counts = np.zeros(4)
    for seed in range(1500):  # 6000 draws
        d = strategy.decide(strategy.init_group(0, seed), Observation(0, 2, np.arange(4), rewards, None))
        counts += np.bincount(d.parents, minlength=4)
    assert plan.batch_sizes == (4, 4)
    assert stats.chisquare(counts, counts.sum() * expected).pvalue > 1e-3
    uniform = np.full(4, counts.sum() / 4)
    assert stats.chisquare(counts, uniform).pvalue < 1e-12  # and the test has the power to see a wrong law


def test_nan_rewards_are_never_resampled_and_inf_takes_all():
    strategy = create_strategy("importance", resample_scales=[0])
    strategy.plan(2, 5)
    nan_rewards = np.array([np.nan, 0.0, 0.1, np.nan, 0.05], np.float32)
    inf_rewards = np.array([0.0, np.inf, 5.0, np.inf, np.nan], np.float32)
    for seed in range(200):
        d = strategy.decide(strategy.init_group(0, seed), Observation(0, 2, np.arange(5), nan_rewards, None))
        assert not set(d.parents.tolist()) & {0, 3}
        d = strategy.decide(strategy.init_group(0, seed), Observation(0, 2, np.arange(5), inf_rewards, None))
        assert set(d.parents.tolist()) <= {1, 3}
    assert d.trace["weight"] == [0.0, 0.5, 0.0, 0.5, 0.0]
    assert d.trace["reward"][1] == "inf" and d.trace["reward"][4] == "nan"


def test_all_nan_rewards_resample_uniformly():
    strategy = create_strategy("importance", resample_scales=[0])
    strategy.plan(2, 4)
    counts = np.zeros(4)
    for seed in range(500):
        obs = Observation(0, 2, np.arange(4), np.full(4, np.nan), None)
        d = strategy.decide(strategy.init_group(0, seed), obs)
        counts += np.bincount(d.parents, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("potential", ["value", "diff", "max", "sum"])
def test_potentials_match_a_float64_reference_over_a_multi_step_history(potential):
    lam, n, num_scales = 3.0, 6, 5
    strategy = create_strategy("importance", potential=potential, lam=lam)
    plan = strategy.plan(num_scales, n)
    state = strategy.init_group(0, 42)
    rng = np.random.default_rng(1)
    lineage = [[] for _ in range(n)]  # reference: rewards seen along each live row's ancestry
    for s in plan.decision_scales:
        rewards = rng.normal(size=n).astype(np.float32)
        d = strategy.decide(state, Observation(s, num_scales, np.arange(n), rewards, None))
        ref = []
        for i in range(n):
            r, past = float(rewards[i]), lineage[i]
            x = {"value": r, "diff": r - past[-1] if past else r, "max": max([r] + past),
                 "sum": r + sum(past)}[potential]
            ref.append(lam * x)
        np.testing.assert_allclose(d.trace["log_potential"], ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d.trace["weight"], normalize_log_weights(np.array(ref)), rtol=1e-12)
        lineage = [lineage[p] + [float(rewards[p])] for p in d.parents]
    np.testing.assert_array_equal(state.past_rewards, np.array(lineage, dtype=np.float32).astype(np.float64))


def test_tts_var_resamples_down_to_the_next_batch_size():
    strategy = create_strategy("tts-var")
    plan = strategy.plan(13, 2)
    state = strategy.init_group(0, 0)
    state.past_rewards = np.zeros((8, 0))  # as if clustering left 8 rows before scale 6
    rewards = np.array([5, 0, 0, 0, 0, 0, 0, 0], np.float32)  # lam=10: row 0 has ~all the mass
    d = strategy.decide(state, Observation(6, 13, np.arange(8), rewards, None))
    assert plan.batch_sizes[7] == 4 and d.parents.tolist() == [0, 0, 0, 0]
    assert state.past_rewards.shape == (4, 1)



@pytest.mark.parametrize("name", ["tts-var", "resample-only", "importance", "fk"])
def test_resampler_option_reaches_every_resampling_strategy(name):
    opts = {"resample_scales": [0], "lam": 1.0, "resampler": "systematic"}
    if name in ("tts-var", "resample-only"):
        opts["batch_schedule"] = [1, 1]
    if name == "tts-var":
        opts["cluster_scales"] = []
    if name == "fk":
        opts["ess_threshold"] = 1.0  # resample whenever the weights are not flat
    strategy = create_strategy(name, **opts)
    strategy.plan(2, 6)
    rewards = np.array([0.0, 0.3, -0.2, 1.5, 0.1, -1.0], np.float32)
    for seed in range(20):
        d = strategy.decide(strategy.init_group(0, seed), Observation(0, 2, np.arange(6), rewards, None))
        expected = resample(np.array(d.trace["weight"]), 6, group_rng(seed, 0, RNG_RESAMPLE), "systematic")
        np.testing.assert_array_equal(d.parents, expected)
    if name != "fk":  # fk's info says whether it resampled; the option is in the job's config
        assert d.info["resampler"] == "systematic"
    with pytest.raises(ValueError, match="resampler: 'sorted' is not one of"):
        create_strategy(name, resampler="sorted")


def test_systematic_resampling_keeps_every_row_of_flat_weights():
    strategy = create_strategy("tts-var", batch_schedule=[1, 1], cluster_scales=[], resample_scales=[0],
                               lam=0.0, resampler="systematic")
    strategy.plan(2, 6)
    for seed in range(20):
        d = strategy.decide(strategy.init_group(0, seed), Observation(0, 2, np.arange(6), np.zeros(6), None))
        assert d.parents.tolist() == list(range(6))

# ---------------------------------------------------------------- beam, best-of-n, random, fk


def test_beam_keeps_the_top_k_and_refills_the_batch():
    strategy = create_strategy("beam", beam_scales=[1], beam_width=3)
    strategy.plan(3, 8)
    rewards = np.array([0.1, np.nan, 0.9, 0.3, 0.9, -1.0, 0.5, 0.2], np.float32)
    d = strategy.decide(strategy.init_group(0, 0), Observation(1, 3, np.arange(8), rewards, None))
    # top-3: rows 2 and 4 (0.9, tie -> lower index first) then 6 (0.5); 8 = 3 + 3 + 2 children
    assert d.parents.tolist() == [2, 2, 2, 4, 4, 4, 6, 6]
    assert d.trace["rank"][1] == 7  # NaN ranks last
    with pytest.raises(ValueError, match="beam_width"):
        create_strategy("beam", beam_scales=[1], beam_width=9).plan(3, 8)


def test_best_of_n_picks_the_highest_reward_ignoring_nan():
    strategy = create_strategy("best-of-n")
    strategy.plan(4, 5)
    state = strategy.init_group(0, 0)

    def pick(r):
        return strategy.pick(state, Observation(3, 4, np.arange(5), np.array(r, np.float32), None))

    assert pick([0.1, np.nan, 0.7, 0.7, -2]) == 2
    assert pick([0.1, np.nan, 0.7, np.inf, -2]) == 3
    assert pick([np.nan] * 5) == 0


def test_random_ignores_rewards_and_is_uniform_over_seeds():
    strategy = create_strategy("random")
    strategy.plan(2, 4)
    rewards = np.array([9.0, 0.0, 0.0, 0.0], np.float32)
    picks = [strategy.pick(strategy.init_group(0, s), Observation(1, 2, np.arange(4), rewards, None))
             for s in range(800)]
    assert stats.chisquare(np.bincount(picks, minlength=4)).pvalue > 1e-3


def test_fk_resamples_only_when_ess_is_low():
    strategy = create_strategy("fk", resample_scales=[0, 1], ess_threshold=0.5, lam=1.0)
    strategy.plan(3, 4)
    state = strategy.init_group(0, 0)
    flat = np.array([0.1, 0.1, 0.1, 0.1], np.float32)
    d = strategy.decide(state, Observation(0, 3, np.arange(4), flat, None))
    assert not d.info["resampled"] and d.parents.tolist() == [0, 1, 2, 3]
    assert d.info["ess"] == pytest.approx(4)
    np.testing.assert_allclose(state.log_weights, 0.1)  # weights carry over when not resampling
    skewed = np.array([0.0, 10.0, 0.0, 0.0], np.float32)
    d = strategy.decide(state, Observation(1, 3, np.arange(4), skewed, None))
    assert d.info["resampled"] and d.info["ess"] < 2 and d.parents.tolist() == [1, 1, 1, 1]
    np.testing.assert_array_equal(state.log_weights, 0.0)  # reset after resampling


@pytest.mark.parametrize("potential", ["value", "diff", "max", "sum"])
def test_fk_final_weight_correction_targets_exp_lam_final_reward(potential):
    lam = 2.0
    strategy = create_strategy("fk", resample_scales=[0, 1, 2], potential=potential, lam=lam,
                               ess_threshold=1.0)
    strategy.plan(4, 3)
    state = strategy.init_group(0, 3)
    rng = np.random.default_rng(0)
    lineage = [[] for _ in range(3)]
    log_w = np.zeros(3)
    for s in (0, 1, 2):
        r = rng.normal(size=3).astype(np.float32)
        d = strategy.decide(state, Observation(s, 4, np.arange(3), r, None))
        g = np.array(d.trace["log_potential"])
        log_w = (log_w + g)[d.parents] * (0 if d.info["resampled"] else 1)
        lineage = [lineage[p] + [(float(r[p]), g[p])] for p in d.parents]
    final = rng.normal(size=3).astype(np.float32)
    got = strategy.final_log_weights(state, Observation(3, 4, np.arange(3), final, None))
    path = np.array([sum(lg for _, lg in lin) for lin in lineage])
    np.testing.assert_allclose(got, log_w + lam * final.astype(np.float64) - path, rtol=1e-12, atol=1e-12)
    if potential == "diff":  # telescoping: sum of lam*(r_t - r_prev) along a lineage is lam * last reward
        np.testing.assert_allclose(path, [lam * lin[-1][0] for lin in lineage], rtol=1e-12)


def test_fk_pick_by_weights_follows_the_corrected_weights():
    strategy = create_strategy("fk", resample_scales=[0], lam=1.0, ess_threshold=0.01)
    strategy.plan(2, 3)
    counts = np.zeros(3)
    r0 = np.array([0.0, 1.0, 2.0], np.float32)  # never resampled (threshold tiny): weights exp(r0)
    final = np.array([1.0, 0.5, 0.0], np.float32)
    for seed in range(1200):
        state = strategy.init_group(0, seed)
        strategy.decide(state, Observation(0, 2, np.arange(3), r0, None))
        counts[strategy.pick(state, Observation(1, 2, np.arange(3), final, None))] += 1
    # log w = r0 + final - r0 = final
    expected = normalize_log_weights(final.astype(np.float64))
    assert stats.chisquare(counts, counts.sum() * expected).pvalue > 1e-3


# ---------------------------------------------------------------- beam-wc (Riise et al.: w beams x c candidates)


@pytest.mark.parametrize("n,w,c", [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 2), (5, 2, 2), (8, 4, 2)])
def test_beam_wc_defaults_derive_w_and_c_from_n(n, w, c):
    strategy = create_strategy("beam-wc")
    plan = strategy.plan(6, n)
    assert strategy.beams_and_candidates(n) == (w, c)
    assert plan.batch_sizes == (w * c,) * 6 and plan.decision_scales == (0, 1, 2, 3, 4)  # every scale but the last
    assert plan.reward_scales == set(plan.decision_scales) and not plan.feature_scales


def test_beam_wc_keeps_the_top_w_and_gives_each_exactly_c_children():
    strategy = create_strategy("beam-wc", beams=2, candidates=3, beam_scales=[1])
    plan = strategy.plan(3, 6)
    rewards = np.array([0.1, np.nan, 0.9, 0.3, -1.0, 0.5], np.float32)
    d = strategy.decide(strategy.init_group(0, 0), Observation(1, 3, np.arange(6), rewards, None))
    assert plan.batch_sizes == (6, 6, 6)
    assert d.parents.tolist() == [2, 2, 2, 5, 5, 5]
    assert d.info == {"kind": "beam-wc", "width": 2, "candidates": 3}
    assert d.trace["rank"][1] == 5  # NaN ranks last


def test_beam_wc_equals_beam_when_n_is_w_times_c_on_the_same_scales():
    wc = create_strategy("beam-wc", beams=3, candidates=2)
    plan = wc.plan(6, 6)
    beam = create_strategy("beam", beam_width=3, beam_scales=list(plan.decision_scales))
    assert beam.plan(6, 6) == plan
    assert _same(run_group(wc, plan, seed=1, data_seed=5), run_group(beam, plan, seed=1, data_seed=5))
    assert create_strategy("beam").plan(6, 6).decision_scales == (1, 2, 3, 4)  # beam: TTS-VAR's scales
    assert plan.decision_scales == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("options,n,match", [
    ({"beams": 3, "candidates": 2}, 4, "beams: 3 beams x 2 candidates = 6 rows exceeds the row budget n = 4"),
    ({"candidates": 5}, 4, "candidates: 1 beams x 5 candidates"),
    ({"beams": 0}, 4, "beams: 0 must be a positive integer"),
    ({"candidates": 2.5}, 4, "candidates: 2.5 must be a positive integer"),
])
def test_beam_wc_bad_options_name_the_option(options, n, match):
    with pytest.raises(ValueError, match=match):
        create_strategy("beam-wc", **options).plan(6, n)


# ---------------------------------------------------------------- density (VAR-Scaling)


def test_kde_density_matches_a_brute_force_reference():
    from search.strategies.density import kde_density

    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    dens, h = kde_density(x, bandwidth=1.5)
    xd = x.astype(np.float64)
    d2 = np.array([[np.sum((a - b) ** 2) for b in xd] for a in xd])
    med = np.median([d2[i, j] for i in range(7) for j in range(7) if i != j])
    h2 = 1.5 ** 2 * med / 2
    ref = [np.mean([np.exp(-d2[i, j] / (2 * h2)) for j in range(7) if j != i]) for i in range(7)]
    np.testing.assert_allclose(dens, ref, rtol=1e-9)
    assert h == pytest.approx(np.sqrt(h2))
    same, h0 = kde_density(np.ones((3, 4)))
    assert same.tolist() == [1.0, 1.0, 1.0] and h0 == 0.0  # identical rows: every other row is a duplicate
    assert kde_density(np.ones((1, 4)))[0].tolist() == [0.0]


def test_density_takes_top_k_by_reward_in_the_dense_blob_and_random_k_from_the_sparse_rows():
    strategy = create_strategy("density", density_scales=[1], keep=0.5, top_fraction=0.5)
    plan = strategy.plan(4, 8)
    assert plan.batch_sizes == (8, 8, 4, 4) and plan.feature_scales == {1} and plan.reward_scales == {1}
    rng = np.random.default_rng(3)
    blob = 0.01 * rng.normal(size=(5, F_DIM))  # rows 0-4: one tight mode
    far = 10.0 * np.eye(3, F_DIM) * np.array([[1], [2], [3]])  # rows 5-7: isolated
    feats = np.concatenate([blob, far]).astype(np.float32)
    rewards = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 5.0, 6.0, 7.0], np.float32)
    seen = set()
    for seed in range(40):
        d = strategy.decide(strategy.init_group(0, seed), Observation(1, 4, np.arange(8), rewards, feats))
        assert d.trace["dense"] == [True] * 5 + [False] * 3
        kept = d.parents.tolist()
        assert kept[:2] == [1, 3]  # the two best rewards among the dense rows, not the sparse 5, 6, 7
        assert len(kept) == 4 and set(kept[2:]) <= {5, 6, 7}
        seen |= set(kept[2:])
        assert d.info["top"] == 2 and d.info["random"] == 2
    assert seen == {5, 6, 7}  # the random part covers the sparse rows


def test_density_fills_from_the_other_side_and_needs_no_reward_at_top_fraction_0():
    only_random = create_strategy("density", density_scales=[0], keep=0.75, top_fraction=0.0)
    plan = only_random.plan(2, 4)
    assert plan.reward_scales == frozenset() and plan.batch_sizes == (4, 3)
    feats = np.array([[0, 0], [0, 0.01], [0, 0.02], [9, 9]], np.float32)  # one sparse row
    d = only_random.decide(only_random.init_group(0, 0), Observation(0, 2, np.arange(4), None, feats))
    assert 3 in d.parents.tolist() and len(set(d.parents.tolist())) == 3  # sparse first, dense fill the rest


@pytest.mark.parametrize("options,match", [
    ({"keep": 0}, "keep: 0 must be in"), ({"top_fraction": 1.5}, "top_fraction: 1.5 must be in"),
    ({"bandwidth": -1.0}, "bandwidth: -1.0 must be"), ({"density_scales": [5]}, "density_scales: scale 5"),
])
def test_density_bad_options_name_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        create_strategy("density", **options).plan(6, 4)


def test_density_refuses_non_finite_features():
    strategy = create_strategy("density", density_scales=[0])
    strategy.plan(2, 2)
    feats = np.array([[0.0, np.nan], [1.0, 1.0]], np.float32)
    with pytest.raises(ValueError, match=r"rows \[0\] contain NaN"):
        strategy.decide(strategy.init_group(0, 0), Observation(0, 2, np.arange(2), np.zeros(2), feats))


# ---------------------------------------------------------------- confidence (ScalingAR-style, reward-free)


def test_confidence_prunes_the_least_confident_without_previews_or_rewards():
    strategy = create_strategy("confidence", prune_scales=[0, 1], keep=0.5)
    plan = strategy.plan(3, 8)
    assert plan.batch_sizes == (8, 4, 2) and not plan.reward_scales and not plan.feature_scales
    state = strategy.init_group(0, 0)
    entropy = np.array([0.5, 0.1, 0.9, 0.2, np.nan, 0.2, 0.3, 0.4], np.float32)
    d = strategy.decide(state, Observation(0, 3, np.arange(8), None, None, -entropy, entropy))
    assert d.parents.tolist() == [1, 3, 5, 6]  # lowest entropy; tie 3/5 both kept; NaN least confident
    assert d.trace["rank"][4] == 7
    # the second decision ranks by the mean over the lineage's prune scales
    entropy2 = np.array([0.6, 0.0, 0.1, 0.1], np.float32)  # lineage means: 0.35, 0.1, 0.15, 0.2
    d = strategy.decide(state, Observation(1, 3, np.arange(4), None, None, -entropy2, entropy2))
    assert d.parents.tolist() == [1, 2]
    np.testing.assert_allclose(d.trace["confidence"], [-0.35, -0.1, -0.15, -0.2], rtol=1e-6)


def test_confidence_by_log_prob():
    strategy = create_strategy("confidence", prune_scales=[0], keep=0.5, signal="log_prob")
    strategy.plan(2, 4)
    log_prob = np.array([-3.0, -0.5, -1.0, -2.0], np.float32)
    d = strategy.decide(strategy.init_group(0, 0), Observation(0, 2, np.arange(4), None, None, log_prob,
                                                                np.zeros(4, np.float32)))
    assert d.parents.tolist() == [1, 2]


def test_confidence_needs_the_generators_token_statistics():
    strategy = create_strategy("confidence", prune_scales=[0])
    strategy.plan(2, 4)
    with pytest.raises(ValueError, match="does not report them"):
        strategy.decide(strategy.init_group(0, 0), Observation(0, 2, np.arange(4), None, None))


@pytest.mark.parametrize("options,match", [
    ({"keep": 1.5}, "keep: 1.5 must be in"), ({"signal": "margin"}, "signal: 'margin' is not one of"),
    ({"prune_scales": [9]}, "prune_scales: scale 9"),
])
def test_confidence_bad_options_name_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        create_strategy("confidence", **options).plan(6, 4)


def test_observation_checks_the_token_statistics_shape():
    with pytest.raises(ValueError, match=r"Observation.entropy has shape \(3,\), expected \(2,\)"):
        Observation(0, 2, np.arange(2), None, None, np.zeros(2), np.zeros(3))
