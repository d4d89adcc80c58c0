"""`dts`: soft-value backups over the rows' shared prefixes and the Boltzmann descent that allocates the next
scale's rows (search/strategies/dts.py). The engine contract is covered for it by tests/test_search_strategies.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from search import Observation, create_strategy
from search.strategies.dts import ROOT, allocate, log_mean_exp, soft_values


def lme(xs, lam):
    """Reference soft backup, straight from the definition (1/lam) log mean exp(lam x)."""
    return math.log(sum(math.exp(lam * x) for x in xs) / len(xs)) / lam


# A hand-built tree, numbered parents first:
#   root -> A(0), B(1);  A -> a1(2), a2(3);  B -> b1(4);  a1 -> x(5), y(6)
# Leaves: a2 (pruned earlier, keeps its own reward), b1, x, y. Own values of internal nodes are superseded.
PARENT = np.array([ROOT, ROOT, 0, 0, 1, 2, 2])
OWN = np.array([9.0, 9.0, 9.0, -0.5, 0.25, 1.0, -1.0])


def test_soft_backup_on_a_hand_built_tree():
    lam = 2.0
    values, root = soft_values(PARENT, OWN, lam)
    a1 = lme([1.0, -1.0], lam)
    a = lme([a1, -0.5], lam)
    b = 0.25  # one child: the backup of a single value is that value
    np.testing.assert_allclose(values, [a, b, a1, -0.5, 0.25, 1.0, -1.0], rtol=1e-14)
    assert root == pytest.approx(lme([a, b], lam), rel=1e-14)


def test_log_mean_exp_limits_and_non_finite_children():
    x = np.array([0.3, -0.2, 1.1])
    assert log_mean_exp(x, 0.0) == pytest.approx(x.mean(), rel=1e-15)  # lam = 0: the mean, its limit
    assert log_mean_exp(x, 1e-7) == pytest.approx(x.mean(), rel=1e-6)
    assert log_mean_exp(x, 1e4) == pytest.approx(1.1 - math.log(3) / 1e4, rel=1e-12)  # large lam: max - log(k)/lam
    assert log_mean_exp(np.array([1e4, 1e4 - 1]), 10.0) == pytest.approx(1e4 + lme([0.0, -1.0], 10.0))  # no overflow
    assert log_mean_exp(np.array([0.0, -np.inf]), 1.0) == pytest.approx(math.log(0.5))  # a failure counts, weight 0
    assert log_mean_exp(np.array([-np.inf, -np.inf]), 1.0) == -math.inf
    assert log_mean_exp(np.array([0.0, np.inf]), 1.0) == math.inf
    with pytest.raises(ValueError, match="NaN"):
        soft_values(PARENT, np.where(np.arange(7) == 3, np.nan, OWN), 1.0)
    with pytest.raises(ValueError, match="parents first"):
        soft_values(np.array([1, ROOT]), np.zeros(2), 1.0)


def test_descent_probability_is_the_product_of_softmax_shares_of_backed_up_values():
    lam = 2.0
    values, _ = soft_values(PARENT, OWN, lam)
    leaves = np.array([4, 5, 6])  # a2 (node 3) is pruned: no row can go there
    _, prob = allocate(PARENT, values, leaves, 1, lam, None)
    a, b = values[0], values[1]
    p_a = math.exp(lam * a) / (math.exp(lam * a) + math.exp(lam * b))
    # inside A only a1 has live rows below it, so a1 takes all of A's share; then x vs y by exp(lam r)
    p_x = math.exp(lam * 1.0) / (math.exp(lam * 1.0) + math.exp(lam * -1.0))
    np.testing.assert_allclose(prob, [1 - p_a, p_a * p_x, p_a * (1 - p_x)], rtol=1e-13)


def test_without_pruned_leaves_the_descent_telescopes_to_exp_lam_r_over_prior_branching():
    # root -> P(0), Q(1); P -> three leaves (2, 3, 4); Q -> one leaf (5)
    parent = np.array([ROOT, ROOT, 0, 0, 0, 1])
    r = np.array([0.0, 0.0, 0.4, -0.3, 0.1, 0.2])
    lam = 3.0
    values, root = soft_values(parent, r, lam)
    _, prob = allocate(parent, values, np.array([2, 3, 4, 5]), 1, lam, None)
    prior = np.array([1 / 2 / 3] * 3 + [1 / 2])  # 1 / (children of each ancestor)
    np.testing.assert_allclose(prob, np.exp(lam * r[2:]) / math.exp(lam * root) * prior, rtol=1e-12)


def test_sampled_allocation_follows_exp_lam_v():
    # one level (the first decision): the rows are the root's children, so rows ~ Multinomial(m, softmax(lam r))
    lam, r = 2.0, np.array([0.0, 0.3, -0.4, 0.6])
    parent = np.full(4, ROOT)
    values, _ = soft_values(parent, r, lam)
    expected = np.exp(lam * r) / np.exp(lam * r).sum()
    counts = np.zeros(4)
    for seed in range(1000):
        rows, prob = allocate(parent, values, np.arange(4), 5, lam, np.random.default_rng(seed))
        assert rows.sum() == 5
        counts += rows
    np.testing.assert_allclose(prob, expected, rtol=1e-12)
    assert stats.chisquare(counts, counts.sum() * expected).pvalue > 1e-3
    assert stats.chisquare(counts, np.full(4, counts.sum() / 4)).pvalue < 1e-12  # power to see a wrong law


def test_greedy_follows_the_best_backed_up_prefix_not_the_best_leaf():
    # A's samples were 3.0 and a pruned -10; B's one sample 2.5. v(A) = 3 + log((1 + e^-13)/2) ~ 2.31 < 2.5,
    # so DTS* sends every row into B although the best single leaf is in A.
    parent = np.array([ROOT, ROOT, 0, 0, 1])
    own = np.array([0.0, 0.0, 3.0, -10.0, 2.5])
    values, _ = soft_values(parent, own, 1.0)
    rows, _ = allocate(parent, values, np.array([2, 4]), 4, 1.0, None)
    assert rows.tolist() == [0, 4]


def run_decisions(strategy, rewards_per_scale, seed=0):
    """Drive one group through the given decisions (scale -> rewards of the live rows); returns the decisions."""
    plan = strategy.require_plan()
    state = strategy.init_group(0, seed)
    out = []
    for scale, r in rewards_per_scale:
        out.append(strategy.decide(state, Observation(scale, plan.num_scales, np.arange(len(r)),
                                                      np.asarray(r, np.float32), None)))
    return state, out


def test_decide_builds_the_tree_from_row_ancestry_and_weighs_by_it():
    """Two decisions through the strategy against a reference that builds the same tree by hand from the
    first decision's parents: pruned rows stay as leaves, rewards are centred per scale."""
    lam = 1.5
    strategy = create_strategy("dts", tree_scales=[1, 2], lam=lam)
    strategy.plan(4, 4)
    r1, r2 = [0.5, -0.25, 0.0, 1.0], [0.25, 0.75, -0.5, 0.0]
    for seed in range(6):
        state, (d1, d2) = run_decisions(strategy, [(1, r1), (2, r2)], seed)
        own1 = np.array(r1) - np.mean(r1)
        own2 = np.array(r2) - np.mean(r2)
        kids = {j: [i for i, p in enumerate(d1.parents) if p == j] for j in range(4)}
        v1 = [lme(own2[kids[j]], lam) if kids[j] else own1[j] for j in range(4)]
        live = [j for j in range(4) if kids[j]]
        z = sum(math.exp(lam * v1[j]) for j in live)
        ref = []
        for i, p in enumerate(d1.parents):
            zp = sum(math.exp(lam * own2[k]) for k in kids[p])
            ref.append(math.exp(lam * v1[p]) / z * math.exp(lam * own2[i]) / zp)
        np.testing.assert_allclose(d2.trace["weight"], ref, rtol=1e-12)
        np.testing.assert_allclose(d2.trace["branch_value"], [v1[p] for p in d1.parents], rtol=1e-12)
        assert d2.info["ess"] == pytest.approx(1 / np.sum(np.square(ref)), rel=1e-12)
        assert d2.info["nodes"] == 8 and len(d2.parents) == 4
        assert state.row_node.tolist() == [4 + p for p in d2.parents]


def test_a_constant_offset_on_one_scale_changes_nothing():
    strategy = create_strategy("dts", tree_scales=[0, 1], lam=2.0)
    strategy.plan(3, 4)
    r0, r1 = [0.5, 0.25, -0.75, 0.0], [1.0, -0.5, 0.25, 0.75]
    pruned = 0
    for seed in range(5):
        _, a = run_decisions(strategy, [(0, r0), (1, r1)], seed)
        _, b = run_decisions(strategy, [(0, [x + 8 for x in r0]), (1, [x - 4 for x in r1])], seed)
        for x, y in zip(a, b):
            assert x.parents.tolist() == y.parents.tolist() and x.trace["weight"] == y.trace["weight"]
        pruned += 0 in a[0].trace["children"]
    assert pruned  # the offset would matter, uncentred, where a pruned row's value meets a live one's


def test_degenerate_rewards():
    strategy = create_strategy("dts", tree_scales=[0], lam=10.0)
    strategy.plan(2, 4)
    _, (d,) = run_decisions(strategy, [(0, [np.nan, 0.0, 0.5, np.nan])])
    assert not set(d.parents.tolist()) & {0, 3} and d.trace["weight"][0] == 0.0  # NaN: weight 0
    _, (d,) = run_decisions(strategy, [(0, [np.nan] * 4)])
    assert d.trace["weight"] == [0.25] * 4  # nothing to prefer: uniform
    _, (d,) = run_decisions(strategy, [(0, [0.0, np.inf, 5.0, np.nan])])
    assert d.parents.tolist() == [1] * 4  # +inf takes all
    _, (d,) = run_decisions(strategy, [(0, [0.5] * 4)])
    assert d.trace["weight"] == [0.25] * 4 and d.info["ess"] == pytest.approx(4.0)
    one = create_strategy("dts")
    one.plan(6, 1)
    _, ds = run_decisions(one, [(k, [float(k)]) for k in (3, 4)])
    assert [x.parents.tolist() for x in ds] == [[0]] * 2


def test_lam_zero_splits_evenly_at_every_node():
    strategy = create_strategy("dts", tree_scales=[0, 1], lam=0.0)
    strategy.plan(3, 4)
    _, (d1, d2) = run_decisions(strategy, [(0, [3.0, -1.0, 0.0, 2.0]), (1, [5.0, -5.0, 0.0, 1.0])], seed=1)
    assert d1.trace["weight"] == [0.25] * 4
    groups = np.bincount(d1.parents, minlength=4)
    live = int((groups > 0).sum())
    np.testing.assert_allclose(d2.trace["weight"], [1 / live / groups[p] for p in d1.parents], rtol=1e-12)


def test_default_plan_and_options():
    plan = create_strategy("dts").plan(6, 4)
    # from TTS-VAR's first resampling scale (where preview rewards start to rank paths) to the last but one
    assert plan.batch_sizes == (4,) * 6 and plan.decision_scales == (3, 4)
    assert plan.reward_scales == {3, 4} and not plan.feature_scales
    assert create_strategy("dts").plan(13, 1).decision_scales == (6, 7, 8, 9, 10, 11)
    assert create_strategy("dts").plan(5, 1).decision_scales == (1, 2, 3)  # too short for TTS-VAR's defaults
    assert create_strategy("dts").plan(2, 3).decision_scales == (0,)
    with pytest.raises(ValueError, match="lam:"):
        create_strategy("dts", lam=-1.0)
    with pytest.raises(ValueError, match="greedy:"):
        create_strategy("dts", greedy="yes")
    with pytest.raises(ValueError, match="tree_scales: scale 5"):
        create_strategy("dts", tree_scales=[5]).plan(6, 2)
