"""Potentials, weight normalisation (NaN/inf policy), ESS and the resamplers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from search.potentials import (
    RESAMPLERS,
    check_potential,
    check_resampler,
    effective_sample_size,
    log_potential,
    multinomial_resample,
    normalize_log_weights,
    potential_argument,
    resample,
)


def test_potential_arguments_match_their_definitions():
    r = np.array([0.5, -1.0, 2.0])
    past = np.array([[0.1, 0.9], [-3.0, -2.0], [4.0, 1.0]])
    np.testing.assert_array_equal(potential_argument(r, past, "value"), r)
    np.testing.assert_array_equal(potential_argument(r, past, "diff"), [0.5 - 0.9, -1.0 + 2.0, 2.0 - 1.0])
    np.testing.assert_array_equal(potential_argument(r, past, "max"), [0.9, -1.0, 4.0])
    np.testing.assert_array_equal(potential_argument(r, past, "sum"), [1.5, -6.0, 7.0])
    for kind in ("diff", "max", "sum"):  # no history: every potential is the value potential
        np.testing.assert_array_equal(potential_argument(r, np.zeros((3, 0)), kind), r)


def test_weights_are_the_softmax_of_log_potentials_without_overflow():
    r = np.array([100.0, 101.0, 99.0])  # exp(10 * 101) overflows float64; normalising in log space does not
    p = normalize_log_weights(log_potential(r, np.zeros((3, 0)), "value", 10.0))
    ref = np.exp(10 * (r - r.max()))
    np.testing.assert_allclose(p, ref / ref.sum(), rtol=1e-12)


def test_nan_inf_policy():
    np.testing.assert_array_equal(normalize_log_weights(np.array([np.nan, 0.0, 0.0])), [0, 0.5, 0.5])
    np.testing.assert_array_equal(normalize_log_weights(np.array([np.inf, 3.0, np.nan])), [1, 0, 0])
    np.testing.assert_array_equal(normalize_log_weights(np.array([np.inf, 3.0, np.inf, 0])), [0.5, 0, 0.5, 0])
    np.testing.assert_array_equal(normalize_log_weights(np.array([np.nan, np.nan])), [0.5, 0.5])
    np.testing.assert_array_equal(normalize_log_weights(np.array([-np.inf, -np.inf, np.nan])), [1 / 3] * 3)
    np.testing.assert_array_equal(normalize_log_weights(np.array([-np.inf, 0.0])), [0, 1])


def test_lambda_zero_is_uniform_even_with_infinite_rewards():
    lp = log_potential(np.array([np.inf, 1.0, np.nan]), np.zeros((3, 0)), "value", 0.0)
    np.testing.assert_array_equal(normalize_log_weights(lp), [0.5, 0.5, 0.0])


def test_effective_sample_size():
    assert effective_sample_size(np.full(8, 1 / 8)) == pytest.approx(8)
    assert effective_sample_size(np.array([1.0, 0, 0])) == pytest.approx(1)
    assert effective_sample_size(np.array([0.5, 0.5, 0, 0])) == pytest.approx(2)


def test_multinomial_frequencies_follow_the_probabilities():
    p = normalize_log_weights(np.array([0.0, 1.0, 2.0, -1.0, 0.5]))
    idx = multinomial_resample(p, 20000, np.random.default_rng(0))
    assert np.all(np.diff(idx) >= 0) and idx.dtype == np.int64
    counts = np.bincount(idx, minlength=5)
    assert stats.chisquare(counts, 20000 * p).pvalue > 1e-3
    assert stats.chisquare(counts, np.full(5, 4000)).pvalue < 1e-12


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match="potential: 'best'"):
        check_potential("best", 1.0)
    with pytest.raises(ValueError, match="lam: inf"):
        check_potential("value", float("inf"))
    with pytest.raises(ValueError, match="lam: -1"):
        check_potential("value", -1)


@pytest.mark.parametrize("resampler", RESAMPLERS)
def test_every_resampler_is_unbiased_and_skips_zero_weights(resampler):
    # zero-weight rows last and in the middle: rounding must not let the CDF's flat tail pick them
    p = np.array([0.1, 0.0, 0.4 - 1e-17, 0.25, 0.25, 0.0])
    rng = np.random.default_rng(0)
    counts = np.zeros(6)
    for _ in range(4000):
        idx = resample(p, 4, rng, resampler)
        assert idx.dtype == np.int64 and idx.shape == (4,) and np.all(np.diff(idx) >= 0)
        counts += np.bincount(idx, minlength=6)
    assert counts[1] == counts[5] == 0
    np.testing.assert_allclose(counts / counts.sum(), p, atol=0.012)


@pytest.mark.parametrize("resampler", ["systematic", "residual", "stratified"])
def test_low_variance_resamplers_keep_every_row_of_uniform_weights(resampler):
    # the point of them: m of m rows with equal weights survive all; multinomial keeps ~63%
    rng = np.random.default_rng(1)
    for m in (2, 4, 7, 16):
        np.testing.assert_array_equal(resample(np.full(m, 1 / m), m, rng, resampler), np.arange(m))
    kept = [len(set(resample(np.full(16, 1 / 16), 16, rng, "multinomial").tolist())) for _ in range(200)]
    assert 9 < np.mean(kept) < 12


@pytest.mark.parametrize("m", [1, 3, 8])
def test_systematic_and_residual_copies_are_floor_or_ceil_of_m_p(m):
    rng = np.random.default_rng(2)
    p = normalize_log_weights(rng.normal(size=7))
    for resampler in ("systematic",):
        for _ in range(200):
            c = np.bincount(resample(p, m, rng, resampler), minlength=7)
            assert np.all(c >= np.floor(m * p)) and np.all(c <= np.ceil(m * p))
    for _ in range(200):
        assert np.all(np.bincount(resample(p, m, rng, "residual"), minlength=7) >= np.floor(m * p))


def test_resampler_option_errors_name_it():
    assert check_resampler("systematic") == "systematic"
    for bad in ("sys", 3, None):
        with pytest.raises(ValueError, match=f"resampler: {bad!r} is not one of"):
            check_resampler(bad)


@pytest.mark.parametrize("resampler", ["systematic", "residual", "stratified"])
def test_resample_refuses_weights_without_mass(resampler):
    for bad in (np.zeros(3), np.array([0.5, np.nan, 0.5]), np.array([1.0, -0.5, 0.5])):
        with pytest.raises(ValueError, match="weights must be finite"):
            resample(bad, 2, np.random.default_rng(0), resampler)
